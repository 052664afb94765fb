//! `BENCHMARKS.md`: machine, method, the tables and the targets, then the hand-written notes.

use std::fmt::Write as _;

use super::Results;
use crate::bench::ebpf_path::{self, BaselineLeg, EbpfPath};
use crate::bench::scenarios::{MIN_ROUNDS, STEAL_LIMIT};

impl Results {
    /// The whole of `BENCHMARKS.md`.
    pub fn markdown(&self, notes: &str) -> String {
        let m = &self.machine;
        let stolen = super::steal_summary(&self.measured);
        let load_note = if self
            .machine
            .load_at_start
            .split_whitespace()
            .next()
            .and_then(|s| s.parse::<f64>().ok())
            .unwrap_or(0.0)
            >= 0.5
        {
            "**Taken under load**: other work (compilers, other engineers' jobs) shared these cores during the run, so absolute numbers are noisy and low. Compare the ratios, which are medians of per-round ratios measured side by side in the same run."
        } else {
            "The machine was otherwise mostly idle at the start of the run."
        };
        format!(
            "# Benchmarks\n\n\
             Our daemon against Lyft's metadataproxy 2.2.0{} a bare hyper server (the limit){}, \
             measured side by side in one run. Regenerate with:\n\n```sh\n{}\n```\n\n\
             ## Machine\n\n\
             - {} CPUs: {}\n- kernel {}\n- memory {}\n- load average at start {} (1, 5, 15 min), at end {}\n- CPU time taken by the host \
             during the load runs (steal): median {:.1} %, largest {:.1} %\n- taken {}\n\n{load_note}\n\n\
             ## Method\n\n\
             - Servers, all on 127.0.0.1: moto_server (STS and IAM); our daemon (release build, mapping-file \
             identification, `MOCK_API`); Lyft 2.2.0 under `gunicorn metadataproxy:app --workers=2 -k gevent` \
             (`DEFAULT_ACCOUNT_ID` set, no `AWS_REGION`, STS at moto); a bare hyper 1 server answering our \
             credentials document's bytes to every request.\n\
             - Keep-alive load: `wrk -t2 -c16|64 -d{}s`. New connection per request and the IMDSv2 sequence: \
             the xtask's closed-loop generator (16 workers; connect, request(s), close). {} round(s) per scenario, \
             the servers interleaved within each round (order rotating); figures are medians over rounds, ratios \
             are medians of same-round ratios.\n\
             - The load generators share the 2 cores with the server under test, as in the issue's reference figures.\n\
             - RSS is `VmRSS` from `/proc/<pid>/status`, summed over gunicorn's master and workers; \
             the idle rows also give its anonymous part (`RssAnon`): the rest is the executable and \
             libraries mapped from the page cache, shared and evictable, and how much of them is \
             mapped varies with the page cache (a just-built binary sits in large folios, and more \
             of it is mapped).\n\
             - A round in which the host (hypervisor) took more than {:.0} % of the CPUs' time (steal, \
             `/proc/stat`) during any server's run is left out of that scenario's figures, as a whole round, when \
             at least {} rounds are left; the table names the scenarios that left rounds out.\n\
             - CPU per request: the server's user + system time over the load run (`/proc/<pid>/stat`, every \
             thread, summed over gunicorn's processes; 10 ms ticks) divided by the requests it answered; \
             what an operator pays for each request, whatever the throughput the shared cores allowed.\n\
             - Cold start: process spawn until a polling client (connect + GET every 2 ms) gets credentials.\n\
             - STS calls are counted from moto's own record (`/moto-api/data.json`).\n{}\n\
             ## Throughput and latency\n\n{}\n\
             ## Memory, cold start, STS calls\n\n{}\n\
             ## eBPF redirect\n\n{}\n\n\
             {}\n\
             {}\n\
             {}\n\
             ## Targets (issue 5)\n\n{}\n\
             ## Targets (issue 15)\n\n{}\n\
             Everything above is written by `cargo xtask bench`; regenerate it rather than edit it.\n\n{notes}",
            if self.baseline.is_some() {
                ", against"
            } else {
                " and against"
            },
            if self.baseline.is_some() {
                " and against an earlier build of itself (the baseline)"
            } else {
                ""
            },
            self.command,
            m.cpus,
            m.model,
            m.kernel,
            m.memory,
            m.load_at_start,
            self.load_at_end,
            stolen.0,
            stolen.1,
            m.date,
            self.plan.duration.as_secs(),
            self.plan.rounds,
            STEAL_LIMIT * 100.0,
            MIN_ROUNDS,
            self.baseline_method(),
            self.table(),
            self.other_table(),
            self.ebpf_section(),
            self.scale.markdown(),
            self.instructions.markdown(),
            self.throttle.markdown(),
            self.targets_table(),
            self.issue15_targets_table(),
        )
    }

    /// The method's bullet for `--baseline` (empty without it).
    fn baseline_method(&self) -> String {
        let Some(run) = &self.baseline else {
            return String::new();
        };
        let left_out = if run.left_out.is_empty() {
            String::new()
        } else {
            format!(
                " but those it does not know ({})",
                run.left_out
                    .iter()
                    .map(|s| format!("`{s}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        };
        format!(
            "- `--baseline PATH`: the baseline is the binary at `{}` (`--version`: {}), started \
             exactly like ours: the same settings{left_out}, mapping file and moto. It runs in \
             every scenario, interleaved in the rounds like the others; \"× baseline\" and \"p99 × \
             baseline\" are ours over it (medians of same-round ratios of throughput and of p99). \
             In the eBPF section its redirect is measured the same way as ours, on a test cgroup \
             of its own with its programs in a private bpffs, in the same rounds.\n",
            run.baseline.path.display(),
            run.baseline.version,
        )
    }

    /// The eBPF section: how the redirect was measured and what it gave, or why it was not.
    fn ebpf_section(&self) -> String {
        let m = match &self.ebpf {
            EbpfPath::NotMeasured(why) => {
                return format!("Not measured on this machine: {why}.");
            }
            EbpfPath::Measured(m) => m,
        };
        let mut t = format!(
            "Our daemon (a second instance, `EBPF=required`, programs attached to a test cgroup and \
             pinned in a private bpffs; 169.254.169.254 made local with a stand-in behind it, which \
             saw no request). The xtask's generator, {} workers, a new connection per request: from \
             inside a redirected test cgroup to `169.254.169.254:80` (identified by the cgroup path \
             in the mapping file), versus from outside it to the daemon's address (identified by \
             source address); {} round(s) of {} s each way, alternating which goes first.\n\n\
             | path | req/s | p50 | p99 |\n|---|---:|---:|---:|\n",
            ebpf_path::CONCURRENCY,
            m.rounds.len(),
            m.duration.as_secs_f64(),
        );
        let ours: Vec<_> = m.rounds.iter().map(|(r, _)| r.clone()).collect();
        let direct: Vec<_> = m.rounds.iter().map(|(_, d)| d.clone()).collect();
        let mut rows = vec![
            ("redirected (eBPF)", m.medians(true), failures(&ours)),
            ("direct", m.medians(false), failures(&direct)),
        ];
        if let Some(BaselineLeg::Measured { rounds, .. }) = &m.baseline {
            rows.push((
                "redirected (eBPF), baseline",
                ebpf_path::sample_medians(rounds),
                failures(rounds),
            ));
        }
        for (name, (rps, p50, p99), failed) in rows {
            let _ = writeln!(
                t,
                "| {name}{failed} | {rps:.0} | {:.2} ms | {:.2} ms |",
                p50 / 1000.0,
                p99 / 1000.0
            );
        }
        let _ = write!(
            t,
            "\nRedirected / direct throughput: {:.2}× (median of same-round ratios).",
            m.ratio()
        );
        if let Some(line) = self.baseline_ebpf_line() {
            let _ = write!(t, "\n\n{line}.");
            if let Some(BaselineLeg::Measured {
                left_out, targets, ..
            }) = &m.baseline
            {
                let [ours, theirs] = targets.clone().map(|t| t.unwrap_or_else(|| "?".into()));
                let _ = write!(
                    t,
                    " The baseline ran in the same rounds (order reversed every other round), each \
                     daemon redirecting to its own default target (ours `{ours}`, the baseline \
                     `{theirs}`), {}.",
                    if left_out.is_empty() {
                        "with the same settings".to_owned()
                    } else {
                        format!(
                            "with the same settings but those of ours it does not know ({})",
                            left_out.join(", ")
                        )
                    }
                );
            }
        }
        t
    }
}

/// ` (N of M requests failed: first error)` for samples with failed requests, else nothing.
fn failures(samples: &[crate::bench::stats::Sample]) -> String {
    let failed: u64 = samples.iter().map(|s| s.errors).sum();
    if failed == 0 {
        return String::new();
    }
    let all = failed + samples.iter().map(|s| s.ops).sum::<u64>();
    let first = samples
        .iter()
        .find_map(|s| s.first_error.as_deref())
        .unwrap_or("no answer");
    format!(" ({failed} of {all} requests failed: {first})")
}

#[cfg(test)]
mod tests {
    use super::failures;
    use crate::bench::stats::Sample;

    #[test]
    fn failed_requests_are_counted_with_the_first_error() {
        let ok = Sample {
            ops: 90,
            ..Sample::default()
        };
        assert_eq!(failures(&[ok.clone(), ok.clone()]), "");
        let failing = Sample {
            ops: 70,
            errors: 30,
            first_error: Some("Cannot assign requested address (os error 99)".into()),
            ..Sample::default()
        };
        assert_eq!(
            failures(&[ok, failing]),
            " (30 of 190 requests failed: Cannot assign requested address (os error 99))"
        );
    }
}
