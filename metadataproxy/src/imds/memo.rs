//! A connection's memory of the credentials it was last given: a keep-alive caller asking again
//! for the same role, within [`TTL`] and with nothing changed since, is answered without being
//! identified, resolved and looked up in the cache again.
//!
//! What the answer depends on and may change is covered by [`crate::generation`]: the container
//! index (Docker and containerd, every event and resynchronisation), the mapping and policy files.
//! What a connection's caller is cannot change (its kernel record and address are the
//! connection's own). Reverse DNS, which can change without the daemon noticing, is never
//! remembered. The remembered credentials are served only while fresh, as the cache would, and
//! [`TTL`] bounds everything else: the full path runs at least once a second per connection
//! (keeping the cache's use times and its LRU order current).

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use crate::creds::Credentials;
use crate::identity::Source;

/// Longest an answer is remembered.
pub const TTL: Duration = Duration::from_secs(1);

/// The last credentials a connection was given, if any.
#[derive(Debug, Default)]
pub struct Memo(Mutex<Option<Remembered>>);

/// A request's use of its connection's memory: the memory, and when the request began (the one
/// clock read that also times the request, so a recall reads no clock of its own).
#[derive(Debug, Clone, Copy)]
pub struct Recall<'a> {
    /// The connection's memory.
    pub memo: &'a Memo,
    /// When the request began.
    pub began: Instant,
}

/// The count of changes, read before the lookups whose result is to be remembered, and when the
/// request that looks them up began.
#[derive(Debug, Clone, Copy)]
pub struct Noted {
    count: u64,
    began: Instant,
}

impl Noted {
    /// Notes the count now, for a request that began at `began`: call before identifying the
    /// caller.
    pub fn now(began: Instant) -> Self {
        Self {
            count: crate::generation::current(),
            began,
        }
    }
}

#[derive(Debug)]
struct Remembered {
    noted: u64,
    /// Recalled only before this: within [`TTL`], and while the credentials are fresh.
    until: Instant,
    role: Box<str>,
    source: Source,
    creds: Arc<Credentials>,
}

impl Memo {
    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Remembered>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Answers with `answer` from what was remembered, if it still holds for a request that
    /// began at `now`: the same role `asked`, no change since it was noted, before its end
    /// (within [`TTL`] and the credentials' freshness).
    pub fn recall<R>(
        &self,
        asked: &str,
        now: Instant,
        answer: impl FnOnce(&Credentials, Source) -> R,
    ) -> Option<R> {
        let mut memo = self.lock();
        let holds = memo.as_ref().is_some_and(|r| {
            r.noted == crate::generation::current() && now < r.until && *r.role == *asked
        });
        if !holds {
            // Stale: forget it at once (its credentials are not kept alive by the connection).
            *memo = None;
            return None;
        }
        memo.as_ref().map(|r| answer(&r.creds, r.source))
    }

    /// Remembers that the caller, identified by `source` after `noted`, was given `creds` for
    /// `role`, the wall clock reading `wall` since: recalled for [`TTL`] from when the request
    /// began, and no longer than the credentials keep more than `threshold` left (as the cache
    /// serves them; both counted from when the request began, so never too late).
    pub fn remember(
        &self,
        noted: Noted,
        wall: SystemTime,
        threshold: Duration,
        role: &str,
        source: Source,
        creds: &Arc<Credentials>,
    ) {
        if matches!(source, Source::ReverseDns) {
            return;
        }
        let fresh = creds.remaining(wall).saturating_sub(threshold);
        if fresh.is_zero() {
            return;
        }
        *self.lock() = Some(Remembered {
            noted: noted.count,
            until: noted.began + fresh.min(TTL),
            role: role.into(),
            source,
            creds: Arc::clone(creds),
        });
    }
}

#[cfg(test)]
#[path = "memo_tests.rs"]
mod tests;
