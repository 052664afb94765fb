//! The eBPF redirect path: new connections from a redirected test cgroup to `169.254.169.254`
//! versus the same load straight to the daemon, in alternating rounds; with `--baseline`, also
//! through the redirect of the earlier build.
//!
//! A second instance of our daemon runs with `EBPF=required`, its programs attached to a test
//! cgroup `/mp-bench-<pid>` and pinned in a private bpffs. The mapping file gives the same role to
//! the child cgroup `load` (by `cgroup:` path: the kernel-attested identification) and to
//! 127.0.0.1 (by address), so both paths serve the same cached credentials. For a redirected round
//! this whole process moves into `load` (its load generator connects to `169.254.169.254:80`, the
//! kernel sends the connection to the daemon), and moves back for the direct round (to 127.0.0.1
//! and the daemon's port). The baseline gets the same setup of its own (`/mp-bench-<pid>-baseline`,
//! its own bpffs and mapping file, the same settings but those it does not know) and its
//! redirected round joins each round. `169.254.169.254` is made local first, with a stand-in behind
//! it, only through [`MetadataAddress`] (the machine-wide lock): a missed redirect reaches the
//! stand-in, which fails the bench (or marks the baseline not measured), and never leaves the machine.
//!
//! Without root, BTF or cgroup v2 the row is reported as not measured, with the reason.

mod inside;
mod leg;
mod theirs;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use metadataproxy_tests::{METADATA_IP, MetadataAddress};

pub use self::inside::why_not;
use self::leg::{Leg, credentials, run_load};
use self::theirs::{Theirs, start_baseline, why};
use super::servers::{Kind, Programs};
use super::stats::{Sample, median};

/// Concurrent workers, each opening a new connection per request (as the issue asks).
pub const CONCURRENCY: usize = 16;

/// The eBPF path's result.
#[derive(Debug)]
pub enum EbpfPath {
    /// This machine cannot run the redirect; the reason.
    NotMeasured(String),
    /// Rounds of the same load through the redirect and straight to the daemon.
    Measured(Redirect),
}

/// Each round's samples: through the redirect, and straight to the daemon.
#[derive(Debug)]
pub struct Redirect {
    pub rounds: Vec<(Sample, Sample)>,
    pub duration: Duration,
    /// With `--baseline`: its redirected leg.
    pub baseline: Option<BaselineLeg>,
}

/// The baseline's redirected leg.
#[derive(Debug)]
pub enum BaselineLeg {
    /// It could not run the leg (or failed in it); why.
    NotMeasured(String),
    /// One redirected sample per round, same rounds as ours; the settings of ours it was run
    /// without; where each redirect sent callers (ours, the baseline's), as the daemons logged it.
    Measured {
        rounds: Vec<Sample>,
        left_out: Vec<String>,
        targets: [Option<String>; 2],
    },
}

impl Redirect {
    /// Median over rounds of redirected / direct throughput (each pair from the same round).
    pub fn ratio(&self) -> f64 {
        median(self.rounds.iter().map(|(r, d)| r.rps / d.rps))
    }

    /// Median over rounds of redirected throughput, ours / the baseline's (same round each), or
    /// `None` when the baseline's leg did not run.
    pub fn baseline_ratio(&self) -> Option<f64> {
        match &self.baseline {
            Some(BaselineLeg::Measured { rounds, .. }) => Some(median(
                self.rounds
                    .iter()
                    .zip(rounds)
                    .map(|((r, _), b)| r.rps / b.rps),
            )),
            _ => None,
        }
    }

    /// Median req/s, p50 and p99 (µs) of the redirected (`true`) or direct samples.
    pub fn medians(&self, redirected: bool) -> (f64, f64, f64) {
        let pick = |s: &(Sample, Sample)| {
            if redirected { s.0.clone() } else { s.1.clone() }
        };
        let all: Vec<Sample> = self.rounds.iter().map(pick).collect();
        sample_medians(&all)
    }
}

/// Median req/s, p50 and p99 (µs) of `samples`.
pub fn sample_medians(samples: &[Sample]) -> (f64, f64, f64) {
    (
        median(samples.iter().map(|s| s.rps)),
        median(samples.iter().map(|s| s.p50_us)),
        median(samples.iter().map(|s| s.p99_us)),
    )
}

/// One load run of a round.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Run {
    /// Through our daemon's redirect.
    Redirected,
    /// Straight to our daemon.
    Direct,
    /// Through the baseline's redirect.
    Baseline,
}

/// The runs of round `round`: ours redirected and direct, then the baseline's (when it runs);
/// reversed every other round so that no run always goes first.
fn order(round: usize, baseline: bool) -> Vec<Run> {
    let mut runs = vec![Run::Redirected, Run::Direct];
    if baseline {
        runs.push(Run::Baseline);
    }
    if !round.is_multiple_of(2) {
        runs.reverse();
    }
    runs
}

impl Run {
    /// Its name in the rounds' lines.
    fn label(self) -> &'static str {
        match self {
            Self::Redirected => "redirected",
            Self::Direct => "direct",
            Self::Baseline => "baseline",
        }
    }
}

/// Measures the redirect: `rounds` rounds of `duration` each way, alternating which goes first.
pub async fn measure(
    programs: &Programs,
    body: &Path,
    rounds: usize,
    duration: Duration,
) -> Result<EbpfPath> {
    if let Some(why) = why_not() {
        println!("eBPF path NOT MEASURED: {why}");
        return Ok(EbpfPath::NotMeasured(why));
    }
    println!("waiting for the machine-wide lock on 169.254.169.254 (other tests may hold it)");
    // Declared first, dropped last: the address stays local until every caller is gone.
    let metadata = MetadataAddress::start();
    let imds = SocketAddr::from((METADATA_IP, 80));
    let root = format!("/mp-bench-{}", std::process::id());
    let mut ours = Leg::start(programs, Kind::Ours, "ours-ebpf", &root, body).await?;

    let direct_doc = credentials(ours.addr).await.context("direct request")?;
    let redirected_doc = ours.redirected_credentials(imds).await?;
    let mut missed = 0;
    unseen(&metadata, &mut missed, false)?;
    ensure!(
        direct_doc == redirected_doc,
        "the redirected caller got other credentials than the direct one"
    );
    println!(
        "redirect verified: 169.254.169.254:80 from cgroup {} -> 127.0.0.1:{} (the default for \
         callers in the daemon's network namespace; others go to 169.254.170.45), identified by \
         cgroup path",
        ours.load.rel,
        ours.addr.port()
    );
    let mut theirs = match programs.baseline {
        None => None,
        Some(_) => Some(
            match start_baseline(programs, body, &root, imds, &metadata, &mut missed).await {
                Ok(leg) => Theirs::Running(Box::new(leg), Vec::new()),
                Err(e) => Theirs::Failed(why(&e, 0)),
            },
        ),
    };

    let mut samples = Vec::new();
    for round in 0..rounds {
        let mut pair = (Sample::default(), Sample::default());
        let running = matches!(theirs, Some(Theirs::Running(..)));
        for run in order(round, running) {
            let sample = match run {
                Run::Redirected => ours.redirected_load(imds, duration).await?,
                Run::Direct => run_load(ours.addr, duration).await?,
                Run::Baseline => {
                    let Some(theirs) = &mut theirs else { continue };
                    let Some(sample) = theirs
                        .run(imds, duration, (&metadata, &mut missed), round)
                        .await
                    else {
                        continue;
                    };
                    sample
                }
            };
            unseen(&metadata, &mut missed, false)?;
            println!(
                "  round {}: {:<11} {:>9.0} req/s  p50 {:>7.0} us  p99 {:>7.0} us",
                round + 1,
                run.label(),
                sample.rps,
                sample.p50_us,
                sample.p99_us,
            );
            match run {
                Run::Redirected => pair.0 = sample,
                Run::Direct => pair.1 = sample,
                Run::Baseline => {}
            }
        }
        samples.push(pair);
    }
    ours.daemon.check_running()?;
    let baseline = theirs.map(|t| t.finish(ours.target.clone()));
    // Stop the daemons (then their cgroups and pins) before the address goes.
    drop(ours);
    drop(metadata);
    Ok(EbpfPath::Measured(Redirect {
        rounds: samples,
        duration,
        baseline,
    }))
}

/// Fails if a request reached the stand-in "real IMDS" (a connection was not redirected) since the
/// last check; `missed` counts the requests already accounted for. With `baseline`, the misses are
/// the baseline's: accounted for, and its leg is the one that fails.
fn unseen(metadata: &MetadataAddress, missed: &mut usize, baseline: bool) -> Result<()> {
    let seen = metadata.standin.requests().len();
    let new = seen - *missed;
    if baseline {
        *missed = seen;
    }
    ensure!(
        new == 0,
        "{new} request(s) reached the stand-in on 169.254.169.254: the redirect missed them"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_alternate_which_goes_first() {
        use Run::{Baseline, Direct, Redirected};
        assert_eq!(order(0, false), [Redirected, Direct]);
        assert_eq!(order(1, false), [Direct, Redirected]);
        assert_eq!(order(0, true), [Redirected, Direct, Baseline]);
        assert_eq!(order(1, true), [Baseline, Direct, Redirected]);
    }
}
