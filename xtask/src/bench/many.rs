//! Many callers: one daemon tracking N source IPs → N roles; its memory, its STS calls, and the
//! first request of a caller added while it runs (prefetch means no STS on that request).

use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};

use super::client;
use super::moto::Moto;
use super::servers::{Kind, Programs, Server, loopback};
use crate::process::free_port;

/// Parallel callers when fetching every role once.
const FETCHERS: usize = 16;
/// Time given to the daemon after moto recorded a prefetch, to store the answer.
const SETTLE: Duration = Duration::from_millis(100);

/// What the many-callers run measured.
#[derive(Debug, Default)]
pub struct ManyCallers {
    pub callers: usize,
    /// AssumeRole calls while the daemon started and prefetched every role (expected: `callers`).
    pub sts_at_start: usize,
    /// RSS once every role is prefetched, before any request.
    pub rss_prefetched_kib: u64,
    /// RSS after every caller fetched its credentials once.
    pub rss_after_fetch_kib: u64,
    /// AssumeRole calls during the two passes over every caller (expected: 0).
    pub sts_during_fetch: usize,
    /// First-request latencies of callers added to the mapping while the daemon runs.
    pub new_caller_first_us: Vec<u32>,
    /// AssumeRole calls per added caller (expected: exactly 1 each).
    pub sts_per_new_caller: Vec<usize>,
    /// First requests of added callers that waited for STS (the daemon's cache-miss counter
    /// moved during the request; expected: 0, i.e. the prefetch had finished).
    pub new_caller_sts_waits: usize,
    /// Failed STS calls the daemon logged (each is retried, so moto counts it twice).
    pub sts_failures_logged: usize,
}

/// The source address of caller `i` (127.0.1.1 upwards; never 127.0.0.1, the load runs' caller).
pub fn caller_ip(i: usize) -> Ipv4Addr {
    let third = u8::try_from(1 + i / 250).expect("at most 63,750 callers");
    let fourth = u8::try_from(1 + i % 250).expect("i % 250 + 1 fits");
    Ipv4Addr::new(127, 0, third, fourth)
}

fn role(i: usize) -> String {
    format!("bench-caller-{i:05}")
}

/// Runs the many-callers measurements with `callers` roles and `added` callers added later.
pub async fn run(
    programs: &Programs,
    moto: &Moto,
    callers: usize,
    added: usize,
    body: &Path,
) -> Result<ManyCallers> {
    let names: Vec<String> = (0..callers + added).map(role).collect();
    let t0 = Instant::now();
    moto.create_roles(&names).await?;
    println!(
        "  created {} roles in moto in {:?}",
        names.len(),
        t0.elapsed()
    );
    let mapping = programs.dir.join("many-callers.json");
    write_mapping(&mapping, callers)?;

    let before = moto.assume_role_count().await?;
    let t0 = Instant::now();
    // Its admin listener tells whether a first request waited for STS (a cache miss).
    let admin = loopback(free_port()?);
    let mut server = programs.start_with(
        Kind::Ours,
        "ours-many-callers",
        &mapping,
        body,
        &[("ADMIN_LISTEN", admin.to_string())],
    )?;
    moto.wait_assume_roles(before + callers, Duration::from_secs(300))
        .await
        .context("waiting for the daemon to prefetch every role")?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut out = ManyCallers {
        callers,
        sts_at_start: moto.assume_role_count().await? - before,
        rss_prefetched_kib: server.proc.rss_kib()?,
        ..ManyCallers::default()
    };
    println!("  prefetched {callers} roles in {:?}", t0.elapsed());

    let before = moto.assume_role_count().await?;
    fetch_all(&server, callers).await?;
    out.rss_after_fetch_kib = server.proc.rss_kib()?;
    fetch_all(&server, callers).await?;
    out.sts_during_fetch = moto.assume_role_count().await? - before;

    for j in 0..added {
        let before = moto.assume_role_count().await?;
        write_mapping(&mapping, callers + j + 1)?;
        moto.wait_assume_roles(before + 1, Duration::from_secs(30))
            .await
            .context("waiting for the prefetch of an added caller")?;
        tokio::time::sleep(SETTLE).await;
        let i = callers + j;
        let misses = cache_misses(admin).await?;
        let start = Instant::now();
        let resp = client::once(
            Some(caller_ip(i)),
            server.addr,
            "GET",
            &creds_path(i),
            &[],
            b"",
        )
        .await?;
        let micros = u32::try_from(start.elapsed().as_micros()).unwrap_or(u32::MAX);
        ensure!(
            resp.status == 200,
            "added caller {i}: {} {}",
            resp.status,
            resp.text()
        );
        out.new_caller_first_us.push(micros);
        if cache_misses(admin).await? > misses {
            out.new_caller_sts_waits += 1;
        }
        out.sts_per_new_caller
            .push(moto.assume_role_count().await? - before);
    }
    server.proc.check_running()?;
    out.sts_failures_logged = server.proc.log_lines_containing("sts:AssumeRole failed");
    Ok(out)
}

/// The daemon's count of credential requests that waited for STS, from its `/metrics`.
pub(crate) async fn cache_misses(admin: SocketAddr) -> Result<u64> {
    const NAME: &str = "metadataproxy_credential_cache_misses_total ";
    let resp = client::once(None, admin, "GET", "/metrics", &[], b"").await?;
    ensure!(resp.status == 200, "GET /metrics: {}", resp.status);
    let text = resp.text();
    let value = text
        .lines()
        .find_map(|line| line.strip_prefix(NAME))
        .with_context(|| format!("no {NAME}in /metrics"))?;
    value
        .trim()
        .parse()
        .with_context(|| format!("{NAME}{value}"))
}

/// Maps the first `n` caller IPs to their roles; written to a temporary file then renamed, so the
/// daemon never reads half a file.
fn write_mapping(path: &Path, n: usize) -> Result<()> {
    let map: serde_json::Map<String, serde_json::Value> = (0..n)
        .map(|i| (caller_ip(i).to_string(), role(i).into()))
        .collect();
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, serde_json::to_vec(&map)?)?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

fn creds_path(i: usize) -> String {
    format!("/latest/meta-data/iam/security-credentials/{}", role(i))
}

/// Every caller fetches its own credentials once, from its own source address.
async fn fetch_all(server: &Server, callers: usize) -> Result<()> {
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let addr = server.addr;
    let workers: Vec<_> = (0..FETCHERS)
        .map(|_| {
            let next = Arc::clone(&next);
            tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if i >= callers {
                        return anyhow::Ok(());
                    }
                    let resp =
                        client::once(Some(caller_ip(i)), addr, "GET", &creds_path(i), &[], b"")
                            .await?;
                    ensure!(
                        resp.status == 200 && resp.text().contains("AccessKeyId"),
                        "caller {} got {} {}",
                        caller_ip(i),
                        resp.status,
                        resp.text()
                    );
                }
            })
        })
        .collect();
    for w in workers {
        w.await??;
    }
    Ok(())
}
