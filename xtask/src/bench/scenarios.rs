//! The load matrix: every scenario against every server, rounds interleaved so noise hits all alike.

use std::time::Duration;

use anyhow::{Result, bail};

use super::loadgen::{self, Load, Pattern};
use super::moto::Moto;
use super::servers::{CREDS_PATH, Kind, MOCKED_PATH, Server};
use super::stats::Sample;
use super::wrk::Wrk;

/// What drives a scenario.
#[derive(Debug, Clone, Copy)]
pub enum Driver {
    /// wrk with this many keep-alive connections (2 threads).
    Wrk(usize),
    /// The xtask's closed-loop generator.
    Gen(Pattern, usize),
}

/// One row group of the table.
#[derive(Debug, Clone, Copy)]
pub struct Scenario {
    pub title: &'static str,
    pub path: &'static str,
    pub driver: Driver,
}

/// Every scenario the issue asks for (the eBPF ones live in `ebpf_path`).
pub const ALL: &[Scenario] = &[
    Scenario {
        title: "cached credentials, 16 keep-alive connections (wrk)",
        path: CREDS_PATH,
        driver: Driver::Wrk(16),
    },
    Scenario {
        title: "cached credentials, 64 keep-alive connections (wrk)",
        path: CREDS_PATH,
        driver: Driver::Wrk(64),
    },
    Scenario {
        title: "cached credentials, new connection per request, 16 concurrent",
        path: CREDS_PATH,
        driver: Driver::Gen(Pattern::NewConnection, 16),
    },
    Scenario {
        title: "mocked route instance-id, 16 keep-alive connections (wrk)",
        path: MOCKED_PATH,
        driver: Driver::Wrk(16),
    },
    Scenario {
        title: "IMDSv2: new connection, PUT token + GET credentials, 16 concurrent",
        path: CREDS_PATH,
        driver: Driver::Gen(Pattern::TokenThenGet, 16),
    },
];

/// Every round of one scenario: `rounds[r]` holds one sample per server, in `servers` order.
#[derive(Debug)]
pub struct Measured {
    pub scenario: Scenario,
    pub kinds: Vec<Kind>,
    pub rounds: Vec<Vec<Sample>>,
    /// AssumeRole calls moto answered while each server (in `kinds` order) was under this load.
    pub sts_calls: Vec<usize>,
}

impl Measured {
    /// AssumeRole calls made while `kind` was under this load.
    pub fn sts_calls_of(&self, kind: Kind) -> usize {
        self.kinds
            .iter()
            .position(|k| *k == kind)
            .map_or(0, |i| self.sts_calls[i])
    }

    /// The samples of `kind`, one per round.
    pub fn of(&self, kind: Kind) -> Vec<&Sample> {
        let Some(i) = self.kinds.iter().position(|k| *k == kind) else {
            return Vec::new();
        };
        self.rounds.iter().map(|r| &r[i]).collect()
    }
}

/// How long and how often.
#[derive(Debug, Clone, Copy)]
pub struct Plan {
    pub rounds: usize,
    pub duration: Duration,
}

/// Longest wait for a server to go quiet after its load run.
const SETTLE_LIMIT: Duration = Duration::from_secs(5);

/// Runs every scenario: round by round, each server in turn (the order rotates every round).
pub async fn run(servers: &[Server], wrk: &Wrk, moto: &Moto, plan: Plan) -> Result<Vec<Measured>> {
    let mut all = Vec::new();
    for scenario in ALL {
        println!("\n{}", scenario.title);
        let kinds: Vec<Kind> = servers.iter().map(|s| s.kind).collect();
        let mut rounds = Vec::new();
        let mut sts_calls = vec![0; servers.len()];
        for round in 0..plan.rounds {
            let mut samples = vec![Sample::default(); servers.len()];
            for k in 0..servers.len() {
                let i = (k + round) % servers.len();
                let before = moto.assume_role_count().await?;
                let sample = drive(&servers[i], scenario, wrk, plan.duration).await?;
                sts_calls[i] += moto.assume_role_count().await? - before;
                // The next server's run starts on quiet cores: a server that fell behind (Lyft's
                // p99 is near a second at 64 connections) still answers what it queued.
                servers[i].proc.settle(SETTLE_LIMIT).await;
                println!(
                    "  round {}: {:<34} {:>9.0} req/s  p50 {:>7.0} us  p99 {:>7.0} us{}",
                    round + 1,
                    servers[i].kind.name(),
                    sample.rps,
                    sample.p50_us,
                    sample.p99_us,
                    match &sample.first_error {
                        Some(e) => format!("  ({} errors; first: {e})", sample.errors),
                        None => String::new(),
                    }
                );
                samples[i] = sample;
            }
            rounds.push(samples);
        }
        all.push(Measured {
            scenario: *scenario,
            kinds,
            rounds,
            sts_calls,
        });
    }
    Ok(all)
}

async fn drive(
    server: &Server,
    scenario: &Scenario,
    wrk: &Wrk,
    duration: Duration,
) -> Result<Sample> {
    let cpu_before = server.proc.cpu_seconds();
    let mut sample = match scenario.driver {
        Driver::Wrk(connections) => wrk.run(server.addr, scenario.path, connections, duration)?,
        Driver::Gen(pattern, concurrency) => {
            loadgen::run(&Load {
                addr: server.addr,
                path: scenario.path.to_owned(),
                pattern,
                concurrency,
                duration,
                max_ops: u64::MAX,
            })
            .await?
        }
    };
    let cpu = server.proc.cpu_seconds() - cpu_before;
    #[expect(clippy::cast_precision_loss, reason = "a count of requests")]
    let ops = sample.ops as f64;
    sample.cpu_us_per_op = cpu * 1e6 / ops.max(1.0);
    if sample.ops == 0 {
        bail!(
            "{} answered nothing in \"{}\": {}",
            server.kind.name(),
            scenario.title,
            sample.first_error.as_deref().unwrap_or("no error recorded")
        );
    }
    Ok(sample)
}
