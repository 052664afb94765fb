//! What the daemon said about the throttling: its `/metrics` counters and its log lines.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{Result, ensure};

use crate::bench::client;
use crate::bench::servers::Server;

/// The daemon's default `STS_MAX_CALLS_PER_SECOND` (`metadataproxy/src/config/settings.rs`):
/// the bench leaves the setting unset.
pub const DEFAULT_CAP: u32 = 10;
/// The daemon's `WARN` line when STS starts throttling (`metadataproxy/src/creds/throttling.rs`).
pub const STARTED: &str = "STS is throttling sts:AssumeRole";
/// Its reminder, at most once a minute while the throttling lasts.
pub const REMINDER: &str = "STS still throttles sts:AssumeRole";
/// The daemon's line per failed call, as its message (`<target>: sts:AssumeRole failed …`): at
/// the default level only for failures other than throttling. A refusal line quotes the same
/// words as its `error=` field, without the colon.
pub const PER_CALL: &str = ": sts:AssumeRole failed";
/// A request refused for want of credentials (rate-limited per caller).
pub const REFUSED: &str = "cannot obtain the caller's credentials";
/// Counted throttled calls.
pub const THROTTLED: &str = "metadataproxy_sts_throttled_total";
/// Calls the cap delayed while a caller waited for them.
pub const DELAYED_CALLER: &str = r#"metadataproxy_sts_calls_delayed_total{priority="caller"}"#;
/// Calls the cap delayed with no caller waiting (prefetches, refreshes).
pub const DELAYED_BACKGROUND: &str =
    r#"metadataproxy_sts_calls_delayed_total{priority="background"}"#;
/// Longest wait for `/metrics` to count every throttled call the relay answered.
const METRICS_CATCH_UP: Duration = Duration::from_secs(3);

/// The daemon's counters and log lines after the throttled phase.
#[derive(Debug, Clone, Default)]
pub struct DaemonSaid {
    /// `metadataproxy_sts_throttled_total` (`None`: not in `/metrics`).
    pub throttled: Option<u64>,
    /// `metadataproxy_sts_calls_delayed_total{priority="caller"}`.
    pub delayed_caller: Option<u64>,
    /// `metadataproxy_sts_calls_delayed_total{priority="background"}`.
    pub delayed_background: Option<u64>,
    /// Log lines: throttling started ([`STARTED`]).
    pub started_lines: usize,
    /// Log lines: reminders ([`REMINDER`]).
    pub reminder_lines: usize,
    /// Log lines: one per failed call ([`PER_CALL`]).
    pub per_call_lines: usize,
    /// Log lines: requests refused for want of credentials ([`REFUSED`]).
    pub refusal_lines: usize,
    /// The cap the daemon's `WARN` line names (`max_calls_per_second=`), if it wrote one.
    pub cap_logged: Option<u32>,
}

/// The value of the sample `name` (labels included) in a Prometheus text exposition.
pub fn sample(exposition: &str, name: &str) -> Option<u64> {
    exposition.lines().find_map(|line| {
        let value = line.strip_prefix(name)?.strip_prefix(' ')?;
        value.trim().parse().ok()
    })
}

async fn metrics(admin: SocketAddr) -> Result<String> {
    let resp = client::once(None, admin, "GET", "/metrics", &[], b"").await?;
    ensure!(resp.status == 200, "GET /metrics: {}", resp.status);
    Ok(resp.text())
}

/// Reads `/metrics` on `admin` (waiting a moment for its throttled count to reach the relay's
/// `relay_throttled`: the last answer may still be on its way) and `server`'s log.
pub async fn read(
    server: &Server,
    admin: SocketAddr,
    relay_throttled: usize,
) -> Result<DaemonSaid> {
    let deadline = Instant::now() + METRICS_CATCH_UP;
    let text = loop {
        let text = metrics(admin).await?;
        let caught_up = sample(&text, THROTTLED)
            .is_some_and(|n| usize::try_from(n).is_ok_and(|n| n >= relay_throttled));
        if caught_up || Instant::now() > deadline {
            break text;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let log = &server.proc;
    Ok(DaemonSaid {
        throttled: sample(&text, THROTTLED),
        delayed_caller: sample(&text, DELAYED_CALLER),
        delayed_background: sample(&text, DELAYED_BACKGROUND),
        started_lines: log.log_lines_containing(STARTED),
        reminder_lines: log.log_lines_containing(REMINDER),
        per_call_lines: log.log_lines_containing(PER_CALL),
        refusal_lines: log.log_lines_containing(REFUSED),
        cap_logged: log
            .log_field("max_calls_per_second")
            .and_then(|v| v.parse().ok()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refusal_quoting_the_error_is_not_a_per_call_line() {
        let per_call = "2026-12-06T14:19:56.880124Z ERROR metadataproxy::creds::cache: \
                        sts:AssumeRole failed role=arn:aws:iam::123456789012:role/r error=x";
        let refusal = "2026-12-06T14:19:56.994765Z  WARN metadataproxy::imds::iam: cannot \
                       obtain the caller's credentials caller=ip:loopback role_arn=arn:aws:iam::\
                       123456789012:role/r error=sts:AssumeRole failed (Throttled): Rate exceeded";
        assert!(per_call.contains(PER_CALL));
        assert!(!refusal.contains(PER_CALL));
        assert!(refusal.contains(REFUSED));
        let started = "2026-12-06T14:19:56.880124Z  WARN metadataproxy::creds::throttling: STS \
                       is throttling sts:AssumeRole: still-valid credentials keep being served";
        assert!(started.contains(STARTED) && !started.contains(REMINDER));
    }

    #[test]
    fn samples_are_read_by_their_whole_name() {
        let text = "# HELP metadataproxy_sts_throttled_total calls\n\
                    metadataproxy_sts_throttled_total_extra 9\n\
                    metadataproxy_sts_throttled_total 37\n\
                    metadataproxy_sts_calls_delayed_total{priority=\"caller\"} 12\n\
                    metadataproxy_sts_calls_delayed_total{priority=\"background\"} 40\n";
        assert_eq!(sample(text, THROTTLED), Some(37));
        assert_eq!(sample(text, DELAYED_CALLER), Some(12));
        assert_eq!(sample(text, DELAYED_BACKGROUND), Some(40));
        assert_eq!(sample(text, "metadataproxy_sts_calls_queued"), None);
    }
}
