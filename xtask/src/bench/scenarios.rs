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

    /// The samples of `kind`, one per round kept (see [`Self::kept`]).
    pub fn of(&self, kind: Kind) -> Vec<&Sample> {
        let Some(i) = self.kinds.iter().position(|k| *k == kind) else {
            return Vec::new();
        };
        self.kept().into_iter().map(|r| &r[i]).collect()
    }

    /// The rounds the figures use: those in which the host took no more than [`STEAL_LIMIT`] of
    /// the CPUs' time from any server's run, when at least [`MIN_ROUNDS`] are left; else every
    /// round. A whole round goes or stays, so same-round ratios stay same-round.
    pub fn kept(&self) -> Vec<&Vec<Sample>> {
        let calm: Vec<_> = self
            .rounds
            .iter()
            .filter(|r| r.iter().all(|s| s.stolen <= STEAL_LIMIT))
            .collect();
        if calm.len() >= MIN_ROUNDS || calm.len() == self.rounds.len() {
            calm
        } else {
            self.rounds.iter().collect()
        }
    }
}

/// How long and how often.
#[derive(Debug, Clone, Copy)]
pub struct Plan {
    pub rounds: usize,
    pub duration: Duration,
}

/// Most of the CPUs' time the host may take (steal) during a run whose round is kept.
pub const STEAL_LIMIT: f64 = 0.05;
/// Fewest rounds a scenario's figures rest on when disturbed rounds are left out.
pub const MIN_ROUNDS: usize = 3;

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
    let (ticks_before, steal_before) = super::machine::cpu_and_steal();
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
    let (ticks, steal) = super::machine::cpu_and_steal();
    #[expect(clippy::cast_precision_loss, reason = "clock ticks")]
    let stolen = steal.saturating_sub(steal_before) as f64
        / ticks.saturating_sub(ticks_before).max(1) as f64;
    sample.stolen = stolen;
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

#[cfg(test)]
mod tests {
    use super::*;

    fn round(stolen: &[f64]) -> Vec<Sample> {
        stolen
            .iter()
            .map(|&stolen| Sample {
                ops: 1,
                stolen,
                ..Sample::default()
            })
            .collect()
    }

    fn measured(rounds: Vec<Vec<Sample>>) -> Measured {
        Measured {
            scenario: ALL[0],
            kinds: vec![Kind::Ours, Kind::Bare],
            sts_calls: vec![0, 0],
            rounds,
        }
    }

    #[test]
    fn rounds_the_host_disturbed_are_left_out_whole_while_three_remain() {
        let m = measured(vec![
            round(&[0.01, 0.0]),
            round(&[0.0, 0.30]),
            round(&[0.05, 0.02]),
            round(&[0.0, 0.0]),
        ]);
        let kept: Vec<f64> = m.kept().iter().map(|r| r[0].stolen).collect();
        assert_eq!(kept, [0.01, 0.05, 0.0], "the round with 30 % stolen goes");
        assert_eq!(m.of(Kind::Bare).len(), 3);
        // Two calm rounds of four are too few: every round counts, disturbed or not.
        let m = measured(vec![
            round(&[0.2, 0.0]),
            round(&[0.0, 0.0]),
            round(&[0.0, 0.0]),
            round(&[0.0, 0.1]),
        ]);
        assert_eq!(m.kept().len(), 4);
    }
}
