//! A closed-loop load generator: N workers, each sending its next request when the last one is answered.
//!
//! wrk only keeps connections alive; SDKs in fresh processes open a new connection per request, and the
//! IMDSv2 sequence is two requests. This drives those patterns and records every latency.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::Result;

use super::client::Conn;
use super::stats::Sample;

/// How each worker talks to the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pattern {
    /// Connect, one `GET`, close: what a freshly started SDK does.
    NewConnection,
    /// Connect, `PUT /latest/api/token`, `GET` with the token, close (an IMDSv2 SDK). A server that
    /// refuses the `PUT` is asked without a token, as SDKs fall back to IMDSv1.
    TokenThenGet,
}

/// One load run.
#[derive(Debug, Clone)]
pub struct Load {
    pub addr: SocketAddr,
    pub path: String,
    pub pattern: Pattern,
    pub concurrency: usize,
    pub duration: Duration,
    /// Stop after this many operations in all, even before `duration`.
    pub max_ops: u64,
}

/// Per-worker tallies, merged at the end.
#[derive(Debug, Default)]
struct Tally {
    latencies_us: Vec<u32>,
    errors: u64,
    first_error: Option<String>,
    token_refused: u64,
}

/// Runs `load` and returns what it measured: an operation is one request, or one PUT + GET pair.
pub async fn run(load: &Load) -> Result<Sample> {
    let start = Instant::now();
    let deadline = start + load.duration;
    let per_worker = load.max_ops.div_ceil(load.concurrency as u64);
    let workers: Vec<_> = (0..load.concurrency)
        .map(|_| {
            let load = load.clone();
            tokio::spawn(async move { worker(&load, deadline, per_worker).await })
        })
        .collect();
    let mut all = Tally::default();
    for w in workers {
        let t = w.await?;
        all.latencies_us.extend(t.latencies_us);
        all.errors += t.errors;
        all.token_refused += t.token_refused;
        if all.first_error.is_none() {
            all.first_error = t.first_error;
        }
    }
    let elapsed = start.elapsed();
    let mut sample = Sample::from_latencies(all.latencies_us, elapsed);
    sample.errors = all.errors;
    sample.first_error = all.first_error;
    sample.token_refused = all.token_refused;
    Ok(sample)
}

async fn worker(load: &Load, deadline: Instant, max_ops: u64) -> Tally {
    let mut tally = Tally::default();
    let mut done = 0;
    while done < max_ops && Instant::now() < deadline {
        let t0 = Instant::now();
        let outcome = match load.pattern {
            Pattern::NewConnection => new_connection(load).await.map(|()| false),
            Pattern::TokenThenGet => token_then_get(load).await,
        };
        let micros = u32::try_from(t0.elapsed().as_micros()).unwrap_or(u32::MAX);
        done += 1;
        match outcome {
            Ok(refused) => {
                tally.latencies_us.push(micros);
                tally.token_refused += u64::from(refused);
            }
            Err(e) => {
                tally.errors += 1;
                tally.first_error.get_or_insert_with(|| format!("{e:#}"));
                // A server that refuses connections must not turn this into a busy loop.
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
    }
    tally
}

async fn new_connection(load: &Load) -> Result<()> {
    let mut conn = Conn::open(None, load.addr).await?;
    let resp = conn.send("GET", &load.path, &[], b"").await?;
    anyhow::ensure!(resp.status == 200, "GET {} -> {}", load.path, resp.status);
    Ok(())
}

/// Returns whether the server refused the token (and was asked without one).
async fn token_then_get(load: &Load) -> Result<bool> {
    let mut conn = Conn::open(None, load.addr).await?;
    let put = conn.put_token().await?;
    let refused = put.status != 200;
    if conn.closed() {
        conn = Conn::open(None, load.addr).await?;
    }
    let token = String::from_utf8_lossy(&put.body).into_owned();
    let headers: &[(&str, &str)] = if refused {
        &[]
    } else {
        &[("X-aws-ec2-metadata-token", token.as_str())]
    };
    let resp = conn.send("GET", &load.path, headers, b"").await?;
    anyhow::ensure!(resp.status == 200, "GET {} -> {}", load.path, resp.status);
    Ok(refused)
}
