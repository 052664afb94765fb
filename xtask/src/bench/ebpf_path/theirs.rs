//! The baseline's leg of the eBPF path: started and checked like ours, run in the same rounds;
//! any failure of it (a missed redirect included) ends it with the reason, never the whole bench.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use anyhow::Result;
use metadataproxy_tests::MetadataAddress;

use super::leg::Leg;
use super::{BaselineLeg, unseen};
use crate::bench::servers::{Kind, Programs};
use crate::bench::stats::Sample;

/// The baseline's leg while the rounds run: its samples so far, or why it stopped.
pub enum Theirs {
    Running(Box<Leg>, Vec<Sample>),
    Failed(String),
}

impl Theirs {
    /// Its redirected run of `round` (from 0), or `None` when it does not run (any more): a
    /// failure, a missed redirect included, ends its leg and says why.
    pub async fn run(
        &mut self,
        imds: SocketAddr,
        duration: Duration,
        (metadata, missed): (&MetadataAddress, &mut usize),
        round: usize,
    ) -> Option<Sample> {
        let Self::Running(leg, done) = self else {
            return None;
        };
        let loaded = leg.redirected_load(imds, duration).await;
        let checked = unseen(metadata, missed, true);
        match loaded.and_then(|sample| checked.map(|()| sample)) {
            Ok(sample) => {
                done.push(sample.clone());
                Some(sample)
            }
            Err(e) => {
                *self = Self::Failed(why(&e, round + 1));
                None
            }
        }
    }

    /// What the report shows (its daemon must still be running); `ours_target`: where ours sent
    /// callers.
    pub fn finish(self, ours_target: Option<String>) -> BaselineLeg {
        match self {
            Self::Failed(why) => BaselineLeg::NotMeasured(why),
            Self::Running(mut leg, rounds) => match leg.daemon.check_running() {
                Ok(()) => BaselineLeg::Measured {
                    rounds,
                    left_out: leg.left_out.clone(),
                    targets: [ours_target, leg.target.clone()],
                },
                Err(e) => BaselineLeg::NotMeasured(why(&e, rounds.len())),
            },
        }
    }
}

/// Starts the baseline's leg and checks its redirect as ours was checked.
pub async fn start_baseline(
    programs: &Programs,
    body: &Path,
    root: &str,
    imds: SocketAddr,
    metadata: &MetadataAddress,
    missed: &mut usize,
) -> Result<Leg> {
    let mut leg = Leg::start(
        programs,
        Kind::Baseline,
        "baseline-ebpf",
        &format!("{root}-baseline"),
        body,
    )
    .await?;
    let verified = leg.redirected_credentials(imds).await;
    unseen(metadata, missed, true)?;
    verified?;
    println!(
        "baseline's redirect verified: 169.254.169.254:80 from cgroup {} -> {} (its default \
         target), identified by cgroup path",
        leg.load.rel,
        leg.target.as_deref().unwrap_or("?")
    );
    Ok(leg)
}

/// Why the baseline's leg is not measured (`round` 0: it did not get to the rounds), in one line
/// for the report: the error's first line and, when it quotes the daemon's log, that log's last
/// line (the whole error is printed here).
pub fn why(e: &anyhow::Error, round: usize) -> String {
    println!("baseline's eBPF leg NOT MEASURED: {e:#}");
    let text = format!("{e:#}");
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    let first = lines.first().copied().unwrap_or_default();
    let mut short = first.strip_suffix("; its log:").unwrap_or(first).to_owned();
    if let [_, .., last] = lines[..] {
        // Without the log line's timestamp.
        let last = match last.split_once(' ') {
            Some((stamp, rest)) if stamp.ends_with('Z') && stamp.contains('T') => rest.trim(),
            _ => last,
        };
        short = format!("{short}; its log ends with: {last}");
    }
    if round == 0 {
        short
    } else {
        format!("failed in round {round}: {short}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn why_is_one_line_ending_with_the_daemons_last_log_line() {
        let e = anyhow::anyhow!(
            "baseline-ebpf exited (exit status: 1); its log:\n\
             2026-12-05T16:48:40.030000Z  INFO metadataproxy::app: AWS clients ready\n\
             2026-12-05T16:48:40.033622Z ERROR metadataproxy: metadataproxy failed error=bad object\n"
        );
        assert_eq!(
            why(&e, 0),
            "baseline-ebpf exited (exit status: 1); its log ends with: ERROR metadataproxy: \
             metadataproxy failed error=bad object"
        );
        let e = anyhow::anyhow!("3 request(s) reached the stand-in on 169.254.169.254");
        assert_eq!(
            why(&e, 2),
            "failed in round 2: 3 request(s) reached the stand-in on 169.254.169.254"
        );
    }
}
