//! The scale section of `BENCHMARKS.md`: how it was measured, the tables, what they mean.

use std::fmt::Write as _;
use std::time::Duration;

use super::burst::{Burst, BurstRun, PARALLEL_RUNS};
use super::synthetic::{Fleet, WORKERS};
use super::{Scale, median};
use crate::bench::report::{mib, ms};
use crate::bench::stats::{self, Sample};

/// RSS target with 10,000 containers indexed.
const RSS_TARGET_MIB: u64 = 64;

/// The `p`th percentile of millisecond values.
fn pct(values: &[f64], p: f64) -> f64 {
    let mut us: Vec<u32> = values
        .iter()
        .map(|v| {
            #[expect(
                clippy::cast_possible_truncation,
                clippy::cast_sign_loss,
                reason = "milliseconds to microseconds, small and positive"
            )]
            let us = (v * 1000.0).max(0.0) as u32;
            us
        })
        .collect();
    us.sort_unstable();
    stats::percentile(&us, p) / 1000.0
}

impl Scale {
    /// The whole section (a `##` heading and its tables).
    pub fn markdown(&self) -> String {
        let mut t = format!(
            "## Scale (issue 15)\n\nLoad average at the start of these scenarios {}, at their end {} \
             (1, 5, 15 min; 2 cores).\n\n",
            self.load_at_start, self.load_at_end
        );
        t.push_str(&self.synthetic_section());
        t.push('\n');
        t.push_str(&self.burst_section());
        t
    }

    fn synthetic_section(&self) -> String {
        let s = &self.size;
        let mut t = format!(
            "### {} synthetic containers behind a fake Docker Engine API\n\n\
             One daemon per container count, each following its own fake dockerd (the bench's \
             HTTP server on a unix socket answering `/_ping`, `/version`, `/containers/json`, \
             `/containers/{{id}}/json` and an `/events` stream, through the daemon's real bollard \
             client: `DOCKER_URL=unix://…`, `EBPF=off`, identification by source address). \
             Container *i* has the address 127.1.x.y on `lo` and `IAM_ROLE` one of {} roles. Load: \
             {WORKERS} closed-loop workers, a new connection per request (identification runs once \
             per connection), each from a random container's address (the client socket bound to \
             it) asking for that container's role's credentials, the client closing with a reset \
             (`SO_LINGER` 0: with its source address bound, the kernel picks the client's port \
             at `bind()` past that address's `TIME_WAIT`s, which would slow 10 addresses more \
             than 10,000 and bias the ratio); {} round(s) of {} s, the daemons \
             interleaved in each round (order rotating). \"× fewest\" is the median of same-round \
             ratios to the daemon with the fewest containers. Start → synchronised: daemon spawn \
             to its log line `container index synchronised containers=N` (every container \
             listed and inspected). Resync: the fake ends the event stream (as a dockerd restart \
             does) → the same line again; it includes the daemon's fixed 250 ms first reconnect \
             delay.\n\n\
             | containers | start → synchronised | resync after a lost event stream (median) | RSS synchronised | RSS after load | CPU to start + sync | req/s | p50 | p99 | × fewest (req/s) | p99 × fewest | waited for STS | AssumeRole at start / during load |\n\
             |---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
            s.synthetic.iter().copied().max().unwrap_or(0),
            s.roles,
            s.rounds,
            s.duration.as_secs(),
        );
        let Some(fewest) = self.fleets.first() else {
            return t;
        };
        for f in &self.fleets {
            let (rps, p50, p99) = medians(&f.rounds);
            let took: Vec<Duration> = f.resyncs.iter().map(|r| r.took).collect();
            let resync = if took.is_empty() {
                "—".to_owned()
            } else {
                format!(
                    "{} ({})",
                    ms(median(&took)),
                    took.iter().map(|d| ms(*d)).collect::<Vec<_>>().join(", ")
                )
            };
            let _ = writeln!(
                t,
                "| {} | {} | {resync} | {} | {} | {:.2} s | {rps:.0} | {:.2} ms | {:.2} ms | {:.2}× | {:.2}× | {} | {} / {} |",
                f.containers,
                ms(f.start_to_synced),
                mib(f.rss_synced_kib),
                mib(f.rss_after_load_kib),
                f.cpu_start_s,
                p50 / 1000.0,
                p99 / 1000.0,
                ratio(f, fewest, |s| s.rps),
                ratio(f, fewest, |s| s.p99_us),
                f.cache_misses,
                f.sts_at_start,
                f.sts_during_load,
            );
        }
        if let Some(largest) = self.fleets.last() {
            for r in &largest.resyncs {
                let _ = writeln!(
                    t,
                    "\nResync with {} containers: {} — {} container inspections, {:.2} s of the \
                     daemon's CPU, {} log lines.",
                    largest.containers,
                    ms(r.took),
                    r.inspects,
                    r.cpu_s,
                    r.log_lines
                );
            }
            let _ = writeln!(
                t,
                "\nLog lines from start to the end of the load runs: {}.",
                self.fleets
                    .iter()
                    .map(|f| format!("{} ({} containers)", f.log_lines_at_start, f.containers))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            t.push_str(&targets(&self.fleets, self.size.settle));
            t.push_str(&self.control_line());
        }
        t
    }

    /// The control: how the bare server's throughput changes between the same address pools.
    fn control_line(&self) -> String {
        let c = &self.control;
        if c.rounds.is_empty() {
            return String::new();
        }
        let small: Vec<Sample> = c.rounds.iter().map(|(s, _)| s.clone()).collect();
        let large: Vec<Sample> = c.rounds.iter().map(|(_, l)| l.clone()).collect();
        let r = stats::median(c.rounds.iter().map(|(s, l)| l.rps / s.rps));
        format!(
            "\nControl, in the same rounds: the bench's bare hyper server (no identification) \
             under the same load from {} addresses {:.0} req/s, from {} addresses {:.0} req/s: \
             {r:.2}× (median of same-round ratios), the part of the change above that is the \
             kernel's and the client's, not the daemon's.\n",
            c.small,
            medians(&small).0,
            c.large,
            medians(&large).0,
        )
    }

    fn burst_section(&self) -> String {
        let s = &self.size;
        let mut t = format!("### {} real containers started in a burst\n\n", s.burst);
        let b = match &self.burst {
            Burst::NotMeasured(why) => {
                let _ = writeln!(t, "Not measured on this machine: {why}.");
                return t;
            }
            Burst::Measured(b) => b,
        };
        let _ = write!(
            t,
            "A private dockerd (its own socket, data root and bridge, as the integration tests \
             start one), moto as STS with the roles created, our daemon following that dockerd \
             (`DOCKER_URL`), listening on the bridge's gateway and identifying callers by address \
             (`EBPF=off`). {} containers (busybox) over {} roles (`IAM_ROLE`), started by \
             {PARALLEL_RUNS} `docker run -d` at a time. Each container waits for a file in a \
             shared folder; once every container is ready, the bench creates it and each makes \
             its first credentials request (busybox `wget` to the gateway). *run → cached*: from \
             invoking `docker run -d` to the later of the daemon's log lines `container indexed` \
             (for that container) and `credentials obtained` (for its role), i.e. to the moment \
             the daemon could answer that container from its cache. RSS sampled every 20 ms from \
             `/proc`; CPU is the daemon's user + system time from the first `docker run` to the \
             last container ready. AssumeRole calls are moto's record from the daemon's start to \
             the end of the first requests.\n\n\
             | measure | value |\n|---|---:|\n",
            b.containers, b.roles
        );
        rows(&mut t, b);
        t
    }
}

/// The item's targets: RSS with the most containers, and identification flat as they grow.
fn targets(fleets: &[Fleet], settle: Duration) -> String {
    let (Some(fewest), Some(largest)) = (fleets.first(), fleets.last()) else {
        return String::new();
    };
    let rss = largest
        .rss_after_load_kib
        .max(largest.rss_synced_kib)
        .max(largest.rss_settled_kib.unwrap_or(0));
    let steps: Vec<String> = fleets
        .windows(2)
        .map(|w| {
            format!(
                "{} → {}: {:.2}×",
                w[0].containers,
                w[1].containers,
                ratio(&w[1], &w[0], |s| s.rps)
            )
        })
        .collect();
    let flat = ratio(largest, fewest, |s| s.rps);
    format!(
        "\nTargets: RSS with {} containers indexed, the highest of the readings {} (goal ≤ \
         {RSS_TARGET_MIB} MiB at 10,000: {}){}; identification flat from {} to {} containers: \
         {flat:.2}× the throughput (goal ≈ 1×, met at ≥ 0.9×: {}; step by step, medians of \
         same-round ratios: {}).\n",
        largest.containers,
        mib(rss),
        if rss <= RSS_TARGET_MIB * 1024 {
            "met"
        } else {
            "**not met**"
        },
        largest
            .rss_settled_kib
            .map_or_else(String::new, |kib| format!(
                " — {} after the resyncs and {} s idle (the liveness check lists every container \
             every 10 s)",
                mib(kib),
                settle.as_secs()
            )),
        fewest.containers,
        largest.containers,
        if flat >= 0.9 { "met" } else { "**not met**" },
        steps.join(", "),
    )
}

fn rows(t: &mut String, b: &BurstRun) {
    let mut row = |what: &str, value: String| {
        let _ = writeln!(t, "| {what} | {value} |");
    };
    row(
        "`docker run -d` duration, p50 / p99",
        format!(
            "{:.0} ms / {:.0} ms",
            pct(&b.docker_run_ms, 50.0),
            pct(&b.docker_run_ms, 99.0)
        ),
    );
    row(
        "run → cached, p50 / p99 (max)",
        format!(
            "{:.0} ms / {:.0} ms ({:.0} ms)",
            pct(&b.ready_ms, 50.0),
            pct(&b.ready_ms, 99.0),
            b.ready_ms.iter().copied().fold(0.0, f64::max)
        ),
    );
    row(
        "burst: first `docker run` → every container ready",
        ms(b.window),
    );
    row(
        "daemon RSS before / peak during / after the first requests",
        format!(
            "{} / {} / {}",
            mib(b.rss_before_kib),
            mib(b.rss_peak_kib),
            mib(b.rss_after_kib)
        ),
    );
    row(
        "daemon CPU during the burst (share of one core)",
        format!(
            "{:.2} s ({:.0} %)",
            b.cpu_s,
            100.0 * b.cpu_s / b.window.as_secs_f64().max(1e-9)
        ),
    );
    row(
        "first requests answered with credentials",
        format!("{} of {}", b.first_ok, b.containers),
    );
    row(
        "first requests that waited for STS (`credential_cache_misses`; 0 expected)",
        b.misses.to_string(),
    );
    row(
        "AssumeRole calls / distinct (role, external id, session name) / most for one",
        format!(
            "{} / {} / {} (exactly 1 each expected)",
            b.sts_calls, b.distinct, b.max_per_key
        ),
    );
    if let Some(first) = b.first_failed.first() {
        row("first failed request", first.clone());
    }
}

/// Median over rounds of (req/s, p50, p99).
fn medians(rounds: &[Sample]) -> (f64, f64, f64) {
    (
        stats::median(rounds.iter().map(|s| s.rps)),
        stats::median(rounds.iter().map(|s| s.p50_us)),
        stats::median(rounds.iter().map(|s| s.p99_us)),
    )
}

/// Median of same-round ratios `f(a) / f(b)`.
fn ratio(a: &Fleet, b: &Fleet, f: fn(&Sample) -> f64) -> f64 {
    stats::median(a.rounds.iter().zip(&b.rounds).map(|(x, y)| f(x) / f(y)))
}
