//! The throttle section of `BENCHMARKS.md` (method, what was measured, what it means) and its
//! targets, as (what, goal, measured, met).

use std::fmt::Write as _;
use std::time::Duration;

use super::Throttle;
use super::callers::{ASK_EVERY, HOLDER_PAUSE, HOLDER_WORKERS, SDK_TIMEOUT};
use super::said::{REFUSED, STARTED, THROTTLED};
use crate::bench::stats::percentile;

/// Calls a 1 s window at the relay may hold beyond the cap: the daemon spaces its calls by
/// exactly `1/cap`, and the loopback hop can bring two of them a little closer (as
/// `tests/tests/integration/faults_sts_cap.rs` allows).
pub const WINDOW_SLACK: usize = 1;

/// `d` in seconds, two decimals.
fn secs(d: Duration) -> String {
    format!("{:.2} s", d.as_secs_f64())
}

/// Microseconds as milliseconds, two decimals.
fn ms_of_us(us: f64) -> String {
    format!("{:.2} ms", us / 1000.0)
}

/// `text` fit for a table cell: no line break, no column separator.
fn cell(text: &str) -> String {
    text.replace('\n', " ").replace('|', "\\|")
}

impl Throttle {
    /// The new callers' waits, first request → served, in milliseconds, sorted.
    fn served_ms(&self) -> Vec<u32> {
        let mut ms: Vec<u32> = self
            .new_callers
            .iter()
            .filter_map(|c| c.served_after)
            .map(|d| u32::try_from(d.as_millis()).unwrap_or(u32::MAX))
            .collect();
        ms.sort_unstable();
        ms
    }

    fn served(&self) -> usize {
        self.new_callers
            .iter()
            .filter(|c| c.served_after.is_some())
            .count()
    }

    /// p50 / p99 / max of the new callers' waits.
    fn served_spread(&self) -> String {
        let ms = self.served_ms();
        let at = |p| secs(Duration::from_secs_f64(percentile(&ms, p) / 1000.0));
        format!("{} / {} / {}", at(50.0), at(99.0), at(100.0))
    }

    /// p50 / p99 / max of the holders' answer times.
    fn holder_spread(&self) -> String {
        let us = &self.holders.latencies_us;
        format!(
            "{} / {} / {}",
            ms_of_us(percentile(us, 50.0)),
            ms_of_us(percentile(us, 99.0)),
            ms_of_us(percentile(us, 100.0))
        )
    }

    /// The most AssumeRole calls a 1 s window at the relay may hold.
    fn window_most(&self) -> usize {
        usize::try_from(self.cap).unwrap_or(usize::MAX) + WINDOW_SLACK
    }

    /// The targets: (what, goal, measured, met).
    pub fn targets(&self) -> Vec<(String, String, String, Option<bool>)> {
        let h = &self.holders;
        let s = &self.said;
        let first = h
            .first_failure
            .as_ref()
            .map_or_else(String::new, |f| format!("; first: {f}"));
        let metric = s
            .throttled
            .map_or_else(|| "not in `/metrics`".to_owned(), |n| n.to_string());
        vec![
            (
                "STS throttling: failures to callers holding valid credentials".to_owned(),
                format!(
                    "0 (a 200 with the key held, within the SDKs' {} s)",
                    SDK_TIMEOUT.as_secs()
                ),
                format!(
                    "{} of {} answers to {} callers (p99 {}){first}",
                    h.failures,
                    h.answers,
                    self.size.holders,
                    ms_of_us(percentile(&h.latencies_us, 99.0))
                ),
                Some(h.failures == 0 && h.answers > 0),
            ),
            (
                "STS throttling: new callers served, first request → served (p50 / p99 / max)"
                    .to_owned(),
                format!("all {}, within {}", self.size.new_callers, secs(self.bound)),
                format!(
                    "{} of {}; {}",
                    self.served(),
                    self.size.new_callers,
                    self.served_spread()
                ),
                Some(self.served() == self.size.new_callers && self.size.new_callers > 0),
            ),
            (
                "STS throttling: AssumeRole calls within any 1 s window at the relay".to_owned(),
                format!(
                    "≤ {} (`STS_MAX_CALLS_PER_SECOND` {} + {WINDOW_SLACK} for the loopback hop)",
                    self.window_most(),
                    self.cap
                ),
                self.relay.busiest_second.to_string(),
                Some(self.relay.busiest_second <= self.window_most()),
            ),
            (
                "STS throttling: counted in `/metrics`, said once in the log".to_owned(),
                format!(
                    "`{THROTTLED}` = the relay's `Throttling` answers (> 0); 1 `WARN` line, none \
                     per call"
                ),
                format!(
                    "{metric} = {}; {} `WARN` line(s), {} per call",
                    self.relay.throttled, s.started_lines, s.per_call_lines
                ),
                Some(
                    self.relay.throttled > 0
                        && s.throttled
                            .is_some_and(|n| usize::try_from(n).ok() == Some(self.relay.throttled))
                        && s.started_lines == 1
                        && s.per_call_lines == 0,
                ),
            ),
        ]
    }

    /// The `## When STS throttles (issue 15)` section: method, measurements, meaning.
    pub fn markdown(&self) -> String {
        let z = &self.size;
        let mut t = format!(
            "## When STS throttles (issue 15)\n\n\
             Our daemon (release build, mapping-file identification, `EBPF=off`, \
             `STS_MAX_CALLS_PER_SECOND` unset: its default, {cap}) with STS behind the bench's \
             relay on 127.0.0.1, which forwards to moto every request and, once switched on, \
             answers AWS's `Throttling` error (`400`, query-protocol XML) to every AssumeRole \
             that finds {rate} others passed within the last second, recording each AssumeRole \
             it receives. {holders} callers (source addresses 127.0.200.x, a role each) are \
             mapped and prefetched while the relay passes everything, and each is served once; \
             then the relay throttles and {new} new callers are added to the mapping file (the \
             daemon rereads it every second). Until every new caller is served (at most {bound}: \
             three times {new} calls at {rate} a second, plus 30 s), {HOLDER_WORKERS} workers \
             ask for the holders' credentials in turn, each pausing {pause} ms between requests, \
             on a new connection from the holder's address: an answer is a failure unless it is \
             a `200` with the key the holder was served before, within {sdk} s (the SDKs' IMDS \
             timeout). Each new caller asks every {every} ms (after each answer) from the moment \
             the mapping is rewritten, so its wait includes the reload. The relay's calls are \
             counted over the whole run, prefetch included; `/metrics` is read from the \
             daemon's admin listener at the end, and the log lines are counted in its log.\n\n\
             | measure | value |\n|---|---:|\n",
            cap = self.cap,
            rate = z.sts_rate,
            holders = z.holders,
            new = z.new_callers,
            bound = secs(self.bound),
            pause = HOLDER_PAUSE.as_millis(),
            sdk = SDK_TIMEOUT.as_secs(),
            every = ASK_EVERY.as_millis(),
        );
        for (what, value) in self.rows() {
            let _ = writeln!(t, "| {} | {} |", cell(&what), cell(&value));
        }
        let _ = write!(t, "\n{}\n", self.meaning());
        t
    }

    fn rows(&self) -> Vec<(String, String)> {
        let h = &self.holders;
        let s = &self.said;
        let opt = |v: Option<u64>| v.map_or_else(|| "—".to_owned(), |n| n.to_string());
        let mut rows = vec![
            (
                "holders' answers / failures".to_owned(),
                format!("{} / {}", h.answers, h.failures),
            ),
            (
                "holders' answer time, p50 / p99 / max".to_owned(),
                self.holder_spread(),
            ),
        ];
        if let Some(first) = &h.first_failure {
            rows.push(("first failure".to_owned(), first.clone()));
        }
        rows.push((
            "new callers served".to_owned(),
            format!(
                "{} of {}, the last {} after throttling began",
                self.served(),
                self.size.new_callers,
                secs(self.took)
            ),
        ));
        rows.push((
            "new callers: first request → served, p50 / p99 / max".to_owned(),
            self.served_spread(),
        ));
        rows.push((
            "new callers: answers before served".to_owned(),
            self.refusals(),
        ));
        let unserved: Vec<&str> = self
            .new_callers
            .iter()
            .filter(|c| c.served_after.is_none())
            .map(|c| c.role.as_str())
            .collect();
        if !unserved.is_empty() {
            rows.push(("not served".to_owned(), unserved.join(", ")));
        }
        rows.push((
            "relay: AssumeRole calls passed / throttled (most for one role)".to_owned(),
            format!(
                "{} / {} ({})",
                self.relay.passed, self.relay.throttled, self.relay.most_throttled_role
            ),
        ));
        rows.push((
            "relay: most AssumeRole calls within any 1 s window (the daemon's cap)".to_owned(),
            format!("{} ({})", self.relay.busiest_second, self.cap),
        ));
        if self.relay.forward_errors > 0 {
            rows.push((
                "relay: requests moto did not answer".to_owned(),
                self.relay.forward_errors.to_string(),
            ));
        }
        rows.push((format!("`{THROTTLED}`"), opt(s.throttled)));
        rows.push((
            "`metadataproxy_sts_calls_delayed_total`, caller / background".to_owned(),
            format!("{} / {}", opt(s.delayed_caller), opt(s.delayed_background)),
        ));
        rows.push((
            format!("log: `{STARTED} …` / reminders / a line per failed call"),
            format!(
                "{} / {} / {}",
                s.started_lines, s.reminder_lines, s.per_call_lines
            ),
        ));
        rows.push((
            format!("log: `{REFUSED}` (rate-limited per caller)"),
            s.refusal_lines.to_string(),
        ));
        rows
    }

    /// The new callers' answers before their credentials, by status.
    fn refusals(&self) -> String {
        let mut by_status = std::collections::BTreeMap::<u16, usize>::new();
        for c in &self.new_callers {
            for (status, n) in &c.refused {
                *by_status.entry(*status).or_default() += n;
            }
        }
        if by_status.is_empty() {
            return "none".to_owned();
        }
        by_status
            .iter()
            .map(|(status, n)| match status {
                0 => format!("no answer × {n}"),
                404 => format!("404 × {n} (not mapped yet)"),
                503 => format!("503 × {n} (`Throttling`)"),
                s => format!("{s} × {n}"),
            })
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// One line on what the figures mean.
    fn meaning(&self) -> String {
        let missed: Vec<String> = self
            .targets()
            .into_iter()
            .filter(|(_, _, _, met)| *met == Some(false))
            .map(|(what, ..)| what.trim_start_matches("STS throttling: ").to_owned())
            .collect();
        if !missed.is_empty() {
            return format!(
                "What it means: **not every goal was met** — {}.",
                missed.join("; ")
            );
        }
        let least = Duration::from_millis(
            u64::try_from(1000 * self.size.new_callers / self.size.sts_rate.max(1))
                .unwrap_or(u64::MAX),
        );
        format!(
            "What it means: with STS letting through {} AssumeRole calls a second, under the \
             daemon's cap of {}, the callers holding credentials never noticed ({} answers, no \
             failure); the {} new callers were all served, the last {} after throttling began \
             ({} calls at that rate take about {} on their own); the daemon stayed within its \
             cap, and said so once in its log and exactly in `/metrics`.",
            self.size.sts_rate,
            self.cap,
            self.holders.answers,
            self.size.new_callers,
            secs(self.took),
            self.size.new_callers,
            secs(least),
        )
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::super::{DaemonSaid, HolderAnswers, NewCaller, RelaySeen, Size};
    use super::*;

    fn caller(i: usize, served_ms: Option<u64>, refused: &[(u16, usize)]) -> NewCaller {
        NewCaller {
            role: format!("bench-throttle-{i:04}"),
            served_after: served_ms.map(Duration::from_millis),
            refused: refused.iter().copied().collect::<BTreeMap<_, _>>(),
        }
    }

    /// A run that met every goal.
    fn good() -> Throttle {
        Throttle {
            size: Size {
                holders: 3,
                new_callers: 4,
                sts_rate: 2,
            },
            cap: 10,
            bound: Duration::from_secs(36),
            took: Duration::from_millis(4200),
            holders: HolderAnswers {
                answers: 400,
                failures: 0,
                first_failure: None,
                latencies_us: (1..=400).collect(),
            },
            new_callers: vec![
                caller(3, Some(1200), &[(404, 4)]),
                caller(4, Some(2500), &[(404, 4), (503, 3)]),
                caller(5, Some(3000), &[(404, 5), (503, 4)]),
                caller(6, Some(4100), &[(503, 12), (0, 1)]),
            ],
            relay: RelaySeen {
                passed: 7,
                throttled: 6,
                busiest_second: 11,
                most_throttled_role: 3,
                forward_errors: 0,
            },
            said: DaemonSaid {
                throttled: Some(6),
                delayed_caller: Some(2),
                delayed_background: Some(5),
                started_lines: 1,
                reminder_lines: 0,
                per_call_lines: 0,
                refusal_lines: 5,
                cap_logged: Some(10),
            },
        }
    }

    fn met(t: &Throttle) -> Vec<Option<bool>> {
        t.targets().into_iter().map(|(.., met)| met).collect()
    }

    #[test]
    fn a_good_run_meets_every_target() {
        let t = good();
        assert_eq!(met(&t), [Some(true); 4]);
        let targets = t.targets();
        assert_eq!(targets[0].2, "0 of 400 answers to 3 callers (p99 0.40 ms)");
        assert_eq!(targets[1].1, "all 4, within 36.00 s");
        assert_eq!(targets[1].2, "4 of 4; 2.50 s / 4.10 s / 4.10 s");
        assert_eq!(targets[2].1.split(' ').nth(1), Some("11"));
        assert_eq!(targets[2].2, "11");
        assert_eq!(targets[3].2, "6 = 6; 1 `WARN` line(s), 0 per call");
    }

    #[test]
    fn the_section_has_its_heading_method_table_and_meaning() {
        let md = good().markdown();
        assert!(
            md.starts_with("## When STS throttles (issue 15)\n\n"),
            "{md}"
        );
        assert!(
            md.contains("every AssumeRole that finds 2 others passed"),
            "{md}"
        );
        assert!(
            md.contains("| holders' answers / failures | 400 / 0 |"),
            "{md}"
        );
        assert!(
            md.contains("| new callers: answers before served | no answer × 1, 404 × 13 (not mapped yet), 503 × 19 (`Throttling`) |"),
            "{md}"
        );
        assert!(md.contains(
            "| relay: AssumeRole calls passed / throttled (most for one role) | 7 / 6 (3) |"
        ));
        assert!(
            md.contains("| `metadataproxy_sts_calls_delayed_total`, caller / background | 2 / 5 |")
        );
        assert!(
            md.contains(
                "| log: `cannot obtain the caller's credentials` (rate-limited per caller) | 5 |"
            ),
            "{md}"
        );
        assert!(!md.contains("not served |"), "{md}");
        assert!(!md.contains("first failure"), "{md}");
        assert!(
            md.trim_end()
                .ends_with("said so once in its log and exactly in `/metrics`."),
            "{md}"
        );
        assert!(md.contains(
            "the last 4.20 s after throttling began (4 calls at that rate take about 2.00 s"
        ));
        // A row is `| what | value |`: as many cells in each.
        for line in md.lines().filter(|l| l.starts_with("| ")) {
            assert_eq!(line.matches(" | ").count(), 1, "{line}");
        }
    }

    #[test]
    fn cells_keep_to_their_column() {
        assert_eq!(cell("a | b\nc"), "a \\| b c");
    }

    #[test]
    fn a_bad_run_misses_its_targets_and_says_so() {
        let mut t = good();
        t.holders.failures = 2;
        t.holders.first_failure = Some("bench-throttle-0001 (127.0.200.2): 503 Throttling".into());
        t.new_callers[3].served_after = None;
        t.relay.busiest_second = 12;
        t.said.throttled = Some(5);
        assert_eq!(met(&t), [Some(false); 4]);
        let md = t.markdown();
        assert!(
            md.contains("| first failure | bench-throttle-0001 (127.0.200.2): 503 Throttling |"),
            "{md}"
        );
        assert!(md.contains("| not served | bench-throttle-0006 |"), "{md}");
        assert!(md.contains("| new callers served | 3 of 4,"), "{md}");
        assert!(md.contains("**not every goal was met** — failures to callers holding valid credentials; new callers served"), "{md}");
    }

    #[test]
    fn each_log_and_metric_condition_can_miss_alone() {
        let cases: [fn(&mut Throttle); 5] = [
            |t| t.said.started_lines = 2,
            |t| t.said.per_call_lines = 1,
            |t| t.said.throttled = None,
            |t| {
                t.relay.throttled = 0;
                t.said.throttled = Some(0);
            },
            |t| t.holders.answers = 0,
        ];
        for (n, spoil) in cases.into_iter().enumerate() {
            let mut t = good();
            spoil(&mut t);
            let misses = met(&t).iter().filter(|m| **m == Some(false)).count();
            assert_eq!(misses, 1, "case {n}: {:?}", met(&t));
        }
        let mut t = good();
        t.said.throttled = None;
        assert!(t.targets()[3].2.starts_with("not in `/metrics` = 6"));
    }
}
