//! What the log says while STS throttles `sts:AssumeRole`: one `WARN` line when it starts, a
//! reminder at most once a minute while it lasts, one `INFO` line when it ends (a call succeeds
//! 30 s or more after the last throttled one) — however many calls are throttled in between
//! (each is a `DEBUG` line, and counted in the metrics).

use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// Longest time between two lines of one throttling episode.
const REMIND_EVERY: Duration = Duration::from_secs(60);
/// An episode ends with the first success this long after its last throttled call, so a rate
/// hovering at the limit (some calls throttled, some not) is one episode, not a line a second.
const QUIET: Duration = Duration::from_secs(30);

#[derive(Debug)]
struct Episode {
    since: Instant,
    last: Instant,
    throttled: u64,
    /// When the last line was written, and how many calls were throttled by then.
    said_at: Instant,
    said: u64,
}

/// The current throttling episode, if any.
#[derive(Debug, Default)]
pub struct ThrottleLog {
    episode: Mutex<Option<Episode>>,
}

impl ThrottleLog {
    /// A call for `role` was throttled; `cap` is `STS_MAX_CALLS_PER_SECOND`.
    pub fn throttled(&self, role: &str, cap: u32, queued: usize) {
        let now = Instant::now();
        let mut episode = self.episode.lock().unwrap_or_else(PoisonError::into_inner);
        match episode.as_mut() {
            None => {
                tracing::warn!(
                    role,
                    max_calls_per_second = cap,
                    queued,
                    "STS is throttling sts:AssumeRole: still-valid credentials keep being served, \
                     throttled calls back off (1 s doubling to 60 s), callers waiting for \
                     credentials go first"
                );
                *episode = Some(Episode {
                    since: now,
                    last: now,
                    throttled: 1,
                    said_at: now,
                    said: 1,
                });
            }
            Some(e) => {
                e.throttled += 1;
                e.last = now;
                if now.duration_since(e.said_at) >= REMIND_EVERY {
                    tracing::warn!(
                        throttled = e.throttled - e.said,
                        since = ?now.duration_since(e.said_at),
                        lasting = ?now.duration_since(e.since),
                        queued,
                        "STS still throttles sts:AssumeRole"
                    );
                    e.said_at = now;
                    e.said = e.throttled;
                }
            }
        }
    }

    /// A call succeeded: an episode in progress is over if nothing was throttled for a while.
    pub fn succeeded(&self) {
        let ended = {
            let mut episode = self.episode.lock().unwrap_or_else(PoisonError::into_inner);
            if episode.as_ref().is_some_and(|e| e.last.elapsed() >= QUIET) {
                episode.take()
            } else {
                None
            }
        };
        if let Some(e) = ended {
            tracing::info!(
                throttled = e.throttled,
                lasted = ?e.since.elapsed(),
                "STS no longer throttles sts:AssumeRole"
            );
        }
    }
}
