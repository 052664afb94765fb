//! The results: the tables printed at the end and the issue's targets (`markdown` writes the file).

mod markdown;

use std::fmt::Write as _;
use std::time::Duration;

use super::baseline::Baseline;
use super::ebpf_path::{BaselineLeg, EbpfPath};
use super::machine::Machine;
use super::many::ManyCallers;
use super::scenarios::{Measured, Plan};
use super::servers::Kind;
use super::stats::{Sample, median, percentile};

/// Everything one run measured.
#[derive(Debug)]
pub struct Results {
    pub machine: Machine,
    pub load_at_end: String,
    pub command: String,
    pub plan: Plan,
    pub measured: Vec<Measured>,
    /// RSS right after start (and one verified credentials request) and its anonymous part, KiB,
    /// and the process count.
    pub rss_idle: Vec<(Kind, u64, u64, usize)>,
    /// RSS after the whole load matrix, KiB.
    pub rss_loaded: Vec<(Kind, u64)>,
    pub cold: Vec<(Kind, Vec<Duration>)>,
    pub many: ManyCallers,
    pub ebpf: EbpfPath,
    /// With `--baseline`: the earlier build measured beside ours.
    pub baseline: Option<BaselineRun>,
    /// Issue 15's scale scenarios.
    pub scale: super::scale::Scale,
    /// Instructions per request under callgrind (issue 15, item 2).
    pub instructions: super::instructions::Instructions,
    /// STS throttling (issue 15, item 5).
    pub throttle: super::throttle::Throttle,
}

/// The earlier build measured beside ours, and the settings of ours it ran without in the load
/// matrix (those it does not know).
#[derive(Debug)]
pub struct BaselineRun {
    pub baseline: Baseline,
    pub left_out: Vec<String>,
}

/// One of the issue's targets.
#[derive(Debug)]
struct Target {
    what: String,
    goal: String,
    measured: String,
    met: Option<bool>,
}

/// Median over rounds of `f(a) / f(b)`, each pair from the same round.
fn ratio(m: &Measured, a: Kind, b: Kind, f: fn(&Sample) -> f64) -> f64 {
    let (xs, ys) = (m.of(a), m.of(b));
    median(xs.iter().zip(&ys).map(|(x, y)| f(x) / f(y)))
}

fn rps(s: &Sample) -> f64 {
    s.rps
}

fn p99(s: &Sample) -> f64 {
    s.p99_us
}

fn cpu(s: &Sample) -> f64 {
    s.cpu_us_per_op
}

/// The host's steal over every load run: median and largest share, in percent.
fn steal_summary(measured: &[Measured]) -> (f64, f64) {
    let all: Vec<f64> = measured
        .iter()
        .flat_map(|m| m.rounds.iter().flatten())
        .map(|s| s.stolen * 100.0)
        .collect();
    (
        median(all.iter().copied()),
        all.iter().copied().fold(0.0, f64::max),
    )
}

/// `kind`'s CPU time per request (median over rounds) and, beside the bare server's, the median
/// of the same-round ratios to it.
fn cpu_cell(m: &Measured, kind: Kind) -> String {
    let mut cell = format!("{:.1} µs", median(m.of(kind).into_iter().map(cpu)));
    if kind != Kind::Bare && m.kinds.contains(&Kind::Bare) {
        let _ = write!(cell, " ({:.2}×)", ratio(m, kind, Kind::Bare, cpu));
    }
    cell
}

/// `kib` as MiB with one decimal.
pub(in crate::bench) fn mib(kib: u64) -> String {
    #[expect(clippy::cast_precision_loss, reason = "memory sizes")]
    let m = kib as f64 / 1024.0;
    format!("{m:.1} MiB")
}

/// `d` in whole milliseconds.
pub(in crate::bench) fn ms(d: Duration) -> String {
    format!("{:.0} ms", d.as_secs_f64() * 1000.0)
}

fn median_duration(ds: &[Duration]) -> Duration {
    Duration::from_secs_f64(median(ds.iter().map(Duration::as_secs_f64)))
}

impl Results {
    /// The throughput and latency table (Markdown), ratios as medians of same-round ratios. With
    /// a baseline, ours also gets its throughput and p99 over the baseline's.
    pub fn table(&self) -> String {
        let mut t = String::from(if self.baseline.is_some() {
            "| scenario | server | req/s | p50 | p99 | CPU per request (× bare) | × Lyft | × bare hyper | × baseline | p99 × baseline |\n|---|---|---:|---:|---:|---:|---:|---:|---:|---:|\n"
        } else {
            "| scenario | server | req/s | p50 | p99 | CPU per request (× bare) | × Lyft | × bare hyper |\n|---|---|---:|---:|---:|---:|---:|---:|\n"
        });
        for m in &self.measured {
            for &kind in &m.kinds {
                let samples = m.of(kind);
                let cell = |other: Kind| {
                    if other == kind || !m.kinds.contains(&other) {
                        String::new()
                    } else {
                        format!("{:.2}×", ratio(m, kind, other, rps))
                    }
                };
                let errors: u64 = samples.iter().map(|s| s.errors).sum();
                let refused: u64 = samples.iter().map(|s| s.token_refused).sum();
                let mut name = kind.name().to_owned();
                if errors > 0 {
                    let _ = write!(name, " ({errors} errors)");
                }
                if refused > 0 {
                    name.push_str(" (no IMDSv2: token PUT refused, GET without token)");
                }
                let cpu_cell = cpu_cell(m, kind);
                let (kept, all) = (m.kept().len(), m.rounds.len());
                let mut title = m.scenario.title.to_owned();
                if kept < all {
                    let _ = write!(title, " ({kept} of {all} rounds)");
                }
                let _ = write!(
                    t,
                    "| {title} | {name} | {:.0} | {:.2} ms | {:.2} ms | {cpu_cell} | {} | {} |",
                    median(samples.iter().map(|s| s.rps)),
                    median(samples.iter().map(|s| s.p50_us)) / 1000.0,
                    median(samples.iter().map(|s| s.p99_us)) / 1000.0,
                    cell(Kind::Lyft),
                    cell(Kind::Bare),
                );
                if self.baseline.is_some() {
                    if kind == Kind::Ours && m.kinds.contains(&Kind::Baseline) {
                        let _ = write!(
                            t,
                            " {:.2}× | {:.2}× |",
                            ratio(m, kind, Kind::Baseline, rps),
                            ratio(m, kind, Kind::Baseline, p99)
                        );
                    } else {
                        t.push_str("  |  |");
                    }
                }
                t.push('\n');
            }
        }
        t
    }

    /// Memory, cold start and STS calls (Markdown).
    pub fn other_table(&self) -> String {
        let mut t = String::from("| measure | server | value |\n|---|---|---:|\n");
        for (kind, kib, anon, procs) in &self.rss_idle {
            let _ = writeln!(
                t,
                "| RSS idle after start ({procs} process{}) | {} | {} ({} anonymous) |",
                if *procs == 1 { "" } else { "es" },
                kind.name(),
                mib(*kib),
                mib(*anon)
            );
        }
        for (kind, kib) in &self.rss_loaded {
            let _ = writeln!(
                t,
                "| RSS after the load runs | {} | {} |",
                kind.name(),
                mib(*kib)
            );
        }
        let m = &self.many;
        let ours = Kind::Ours.name();
        let _ = writeln!(
            t,
            "| RSS with {} callers/roles prefetched, before any request | {ours} | {} |",
            m.callers,
            mib(m.rss_prefetched_kib)
        );
        let _ = writeln!(
            t,
            "| RSS with {} callers/roles, each fetched once | {ours} | {} |",
            m.callers,
            mib(m.rss_after_fetch_kib)
        );
        for (kind, times) in &self.cold {
            let all: Vec<String> = times.iter().map(|d| ms(*d)).collect();
            let _ = writeln!(
                t,
                "| cold start → first credentials, median of {} ({}) | {} | {} |",
                times.len(),
                all.join(", "),
                kind.name(),
                ms(median_duration(times))
            );
        }
        let _ = writeln!(
            t,
            "| first request of a caller added to the mapping, p99 of {} (p50) | {ours} | {:.2} ms ({:.2} ms) |",
            m.new_caller_first_us.len(),
            self.new_caller_p99_ms(),
            self.new_caller_p50_ms()
        );
        let _ = writeln!(
            t,
            "| AssumeRole calls: start with {} roles | {ours} | {} |",
            m.callers, m.sts_at_start
        );
        let _ = writeln!(
            t,
            "| AssumeRole calls: 2 passes over {} callers after prefetch | {ours} | {} |",
            m.callers, m.sts_during_fetch
        );
        let _ = writeln!(
            t,
            "| AssumeRole calls: per caller added while running | {ours} | {:?} |",
            m.sts_per_new_caller
        );
        let _ = writeln!(
            t,
            "| first requests of added callers that waited for STS (cache misses; 0 expected) | {ours} | {} of {} |",
            m.new_caller_sts_waits,
            m.new_caller_first_us.len()
        );
        let _ = writeln!(
            t,
            "| failed STS calls the daemon logged during the many-callers run (each retried) | {ours} | {} |",
            m.sts_failures_logged
        );
        let baseline = self.baseline.as_ref().map(|_| Kind::Baseline);
        for kind in [Some(Kind::Ours), baseline, Some(Kind::Lyft)]
            .into_iter()
            .flatten()
        {
            let _ = writeln!(
                t,
                "| AssumeRole calls: the whole load matrix (after its first credentials) | {} | {} |",
                kind.name(),
                self.sts_during_load(kind)
            );
        }
        t
    }

    /// With a baseline: the redirected throughput of ours over the baseline's, or why not measured.
    pub fn baseline_ebpf_line(&self) -> Option<String> {
        self.baseline.as_ref()?;
        let what = "eBPF redirect, new connection per request, ours / baseline throughput";
        Some(match &self.ebpf {
            EbpfPath::NotMeasured(why) => format!("{what}: not measured: {why}"),
            EbpfPath::Measured(m) => match (&m.baseline, m.baseline_ratio()) {
                (Some(BaselineLeg::NotMeasured(why)), _) => format!("{what}: not measured: {why}"),
                (_, Some(r)) => format!(
                    "{what}: {r:.2}× (median of {} same-round ratios)",
                    m.rounds.len()
                ),
                (_, None) => format!("{what}: not measured"),
            },
        })
    }

    /// AssumeRole calls while `kind` was under load.
    fn sts_during_load(&self, kind: Kind) -> usize {
        self.measured.iter().map(|m| m.sts_calls_of(kind)).sum()
    }

    fn new_caller_sorted(&self) -> Vec<u32> {
        let mut v = self.many.new_caller_first_us.clone();
        v.sort_unstable();
        v
    }

    fn new_caller_p99_ms(&self) -> f64 {
        percentile(&self.new_caller_sorted(), 99.0) / 1000.0
    }

    fn new_caller_p50_ms(&self) -> f64 {
        percentile(&self.new_caller_sorted(), 50.0) / 1000.0
    }

    fn targets(&self) -> Vec<Target> {
        let mut out = Vec::new();
        for m in self.measured.iter().filter(|m| {
            m.scenario.title.starts_with("cached credentials")
                && m.scenario.title.contains("keep-alive")
        }) {
            let conns = m.scenario.title.split(", ").nth(1).unwrap_or_default();
            let vs_lyft = ratio(m, Kind::Ours, Kind::Lyft, rps);
            out.push(Target {
                what: format!("cached credentials throughput vs Lyft ({conns})"),
                goal: "≥ 20×".into(),
                measured: format!(
                    "{vs_lyft:.1}× (bare hyper itself: {:.1}×)",
                    ratio(m, Kind::Bare, Kind::Lyft, rps)
                ),
                met: Some(vs_lyft >= 20.0),
            });
            let vs_bare = ratio(m, Kind::Ours, Kind::Bare, rps);
            out.push(Target {
                what: format!("cached credentials throughput vs bare hyper ({conns})"),
                goal: "≥ 0.8×".into(),
                measured: format!("{vs_bare:.2}×"),
                met: Some(vs_bare >= 0.8),
            });
            let p = ratio(m, Kind::Ours, Kind::Bare, p99);
            out.push(Target {
                what: format!("cached credentials p99 vs bare hyper p99 ({conns})"),
                goal: "≤ 1.5×".into(),
                measured: format!("{p:.2}×"),
                met: Some(p <= 1.5),
            });
        }
        let ebpf = match &self.ebpf {
            EbpfPath::NotMeasured(why) => (format!("not measured: {why}"), None),
            EbpfPath::Measured(m) => {
                let r = m.ratio();
                (
                    format!("{r:.2}× (median of {} same-round ratios)", m.rounds.len()),
                    Some(r >= 0.7),
                )
            }
        };
        out.push(Target {
            what: "new connection per request through the eBPF redirect vs direct".into(),
            goal: "≥ 0.7×".into(),
            measured: ebpf.0,
            met: ebpf.1,
        });
        if let Some((_, kib, anon, _)) = self.rss_idle.iter().find(|(k, ..)| *k == Kind::Ours) {
            out.push(Target {
                what: "RSS idle".into(),
                goal: "≤ 15 MiB".into(),
                measured: format!("{} ({} anonymous)", mib(*kib), mib(*anon)),
                met: Some(*kib <= 15 * 1024),
            });
        }
        let m = &self.many;
        out.push(Target {
            what: format!("RSS with {} callers/roles", m.callers),
            goal: format!(
                "≤ 50 MiB{}",
                if m.callers < 1000 {
                    " (at 1,000; this run used fewer)"
                } else {
                    ""
                }
            ),
            measured: mib(m.rss_after_fetch_kib),
            met: Some(m.rss_after_fetch_kib <= 50 * 1024),
        });
        if let Some((_, times)) = self.cold.iter().find(|(k, _)| *k == Kind::Ours) {
            let d = median_duration(times);
            out.push(Target {
                what: "cold start to first credentials (median)".into(),
                goal: "≤ 150 ms".into(),
                measured: ms(d),
                met: Some(d <= Duration::from_millis(150)),
            });
        }
        let p = self.new_caller_p99_ms();
        out.push(Target {
            what: "first request of a newly added caller, p99 (mapping file; prefetch)".into(),
            goal: "≤ 5 ms".into(),
            measured: format!(
                "{p:.2} ms ({} of {} waited for STS)",
                m.new_caller_sts_waits,
                m.new_caller_first_us.len()
            ),
            met: Some(!m.new_caller_first_us.is_empty() && p <= 5.0 && m.new_caller_sts_waits == 0),
        });
        let sts_ok = m.sts_at_start == m.callers
            && m.sts_during_fetch == 0
            && m.sts_per_new_caller.iter().all(|n| *n == 1)
            && self.sts_during_load(Kind::Ours) == 0;
        out.push(Target {
            what: "STS: one AssumeRole per role per refresh, whatever the load".into(),
            goal: "exactly 1 per role; 0 when cached".into(),
            measured: format!("{} for {} roles at start; 0 expected, {} seen over 2 passes and {} in the load matrix; {:?} per added caller", m.sts_at_start, m.callers, m.sts_during_fetch, self.sts_during_load(Kind::Ours), m.sts_per_new_caller),
            met: Some(sts_ok),
        });
        out
    }

    /// Issue 15's goals: 64 keep-alive connections at the limit (item 1), instructions per
    /// request (item 2), calm when STS throttles (item 5); items 3 and 4 are in the scale section.
    fn issue15_targets(&self) -> Vec<Target> {
        let mut out = Vec::new();
        let title = "cached credentials, 64 keep-alive connections (wrk)";
        if let Some(m) = self.measured.iter().find(|m| m.scenario.title == title) {
            out.extend(at_the_limit(m));
        }
        let item5 = self.throttle.targets();
        for (what, goal, measured, met) in self.instructions.targets().into_iter().chain(item5) {
            out.push(Target {
                what,
                goal,
                measured,
                met,
            });
        }
        out
    }

    /// The targets of issue 5 as a Markdown table.
    pub fn targets_table(&self) -> String {
        render(self.targets())
    }

    /// The targets of issue 15 as a Markdown table.
    pub fn issue15_targets_table(&self) -> String {
        render(self.issue15_targets())
    }
}

/// Issue 15, item 1, on the 64 keep-alive scenario `m`: throughput ≥ 0.9× and p99 ≤ 1.2× the
/// bare server's, both medians of at least 3 same-round ratios.
fn at_the_limit(m: &Measured) -> [Target; 2] {
    // Fewer rounds (a quick run) judge nothing.
    let enough = m.kept().len() >= 3;
    let rounds = if enough {
        format!("median of {} same-round ratios", m.kept().len())
    } else {
        format!("{} round(s): too few to judge", m.kept().len())
    };
    let vs_bare = ratio(m, Kind::Ours, Kind::Bare, rps);
    let p = ratio(m, Kind::Ours, Kind::Bare, p99);
    [
        Target {
            what: "cached credentials throughput vs bare hyper (64 keep-alive connections)".into(),
            goal: "≥ 0.9×".into(),
            measured: format!("{vs_bare:.2}× ({rounds})"),
            met: enough.then_some(vs_bare >= 0.9),
        },
        Target {
            what: "cached credentials p99 vs bare hyper p99 (64 keep-alive connections)".into(),
            goal: "≤ 1.2×".into(),
            measured: format!("{p:.2}× ({rounds})"),
            met: enough.then_some(p <= 1.2),
        },
    ]
}

/// Targets as a Markdown table.
fn render(targets: Vec<Target>) -> String {
    let mut t = String::from("| target | goal | measured | met |\n|---|---|---|---|\n");
    for target in targets {
        let met = match target.met {
            Some(true) => "yes",
            Some(false) => "**no**",
            None => "—",
        };
        let _ = writeln!(
            t,
            "| {} | {} | {} | {met} |",
            target.what, target.goal, target.measured
        );
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_per_request_is_a_median_and_a_same_round_ratio_to_bare() {
        let sample = |cpu_us_per_op| Sample {
            ops: 1,
            cpu_us_per_op,
            ..Sample::default()
        };
        // Round by round, ours over bare: 1.10, 1.20, 1.50 (median 1.20), though the medians of
        // each alone (8.8 and 8.0) would give 1.10.
        let m = Measured {
            scenario: super::super::scenarios::ALL[0],
            kinds: vec![Kind::Ours, Kind::Bare],
            rounds: vec![
                vec![sample(8.8), sample(8.0)],
                vec![sample(6.0), sample(5.0)],
                vec![sample(15.0), sample(10.0)],
            ],
            sts_calls: vec![0, 0],
        };
        assert_eq!(cpu_cell(&m, Kind::Ours), "8.8 µs (1.20×)");
        assert_eq!(cpu_cell(&m, Kind::Bare), "8.0 µs");
    }

    #[test]
    fn the_limit_at_64_connections_needs_three_rounds_and_both_ratios() {
        let sample = |rps: f64, p99_us: f64| Sample {
            ops: 1,
            rps,
            p99_us,
            ..Sample::default()
        };
        let measured = |rounds: Vec<(f64, f64)>| Measured {
            scenario: super::super::scenarios::ALL[1],
            kinds: vec![Kind::Ours, Kind::Bare],
            rounds: rounds
                .into_iter()
                .map(|(r, p)| vec![sample(r, p), sample(100.0, 1000.0)])
                .collect(),
            sts_calls: vec![0, 0],
        };
        let met = |t: [Target; 2]| [t[0].met, t[1].met];
        let good = at_the_limit(&measured(vec![
            (95.0, 1100.0),
            (89.0, 900.0),
            (97.0, 1000.0),
        ]));
        assert_eq!(good[0].measured, "0.95× (median of 3 same-round ratios)");
        assert_eq!(met(good), [Some(true), Some(true)]);
        let slow = measured(vec![(85.0, 1000.0), (89.0, 1000.0), (97.0, 1000.0)]);
        assert_eq!(met(at_the_limit(&slow)), [Some(false), Some(true)]);
        let late = measured(vec![(95.0, 1300.0), (95.0, 1250.0), (95.0, 1000.0)]);
        assert_eq!(met(at_the_limit(&late)), [Some(true), Some(false)]);
        let once = at_the_limit(&measured(vec![(99.0, 1000.0)]));
        assert_eq!(once[0].measured, "0.99× (1 round(s): too few to judge)");
        assert_eq!(met(once), [None, None]);
    }
}
