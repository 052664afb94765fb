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
use std::time::{Duration, SystemTime};

use crate::creds::{Credentials, is_fresh};
use crate::identity::Source;

/// Longest an answer is remembered.
pub const TTL: Duration = Duration::from_secs(1);

/// The last credentials a connection was given, if any.
#[derive(Debug, Default)]
pub struct Memo(Mutex<Option<Remembered>>);

/// The count of changes, read before the lookups whose result is to be remembered.
#[derive(Debug, Clone, Copy)]
pub struct Noted(u64);

impl Noted {
    /// Notes the count now: call before identifying the caller.
    pub fn now() -> Self {
        Self(crate::generation::current())
    }
}

#[derive(Debug)]
struct Remembered {
    noted: u64,
    at: SystemTime,
    role: Box<str>,
    source: Source,
    creds: Arc<Credentials>,
}

impl Memo {
    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Remembered>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Answers with `answer` from what was remembered, if it still holds at `now`: the same role
    /// `asked`, no change since it was noted, within [`TTL`], credentials with more than
    /// `threshold` left.
    pub fn recall<R>(
        &self,
        asked: &str,
        now: SystemTime,
        threshold: Duration,
        answer: impl FnOnce(&Credentials, Source) -> R,
    ) -> Option<R> {
        let mut memo = self.lock();
        let holds = memo.as_ref().is_some_and(|r| {
            r.noted == crate::generation::current()
                && now.duration_since(r.at).is_ok_and(|age| age < TTL)
                && *r.role == *asked
                && is_fresh(&r.creds, now, threshold)
        });
        if !holds {
            // Stale: forget it at once (its credentials are not kept alive by the connection).
            *memo = None;
            return None;
        }
        memo.as_ref().map(|r| answer(&r.creds, r.source))
    }

    /// Remembers that the caller, identified by `source` after `noted`, was given `creds` for
    /// `role` at `now`.
    pub fn remember(
        &self,
        noted: Noted,
        now: SystemTime,
        role: &str,
        source: Source,
        creds: &Arc<Credentials>,
    ) {
        if matches!(source, Source::ReverseDns) {
            return;
        }
        *self.lock() = Some(Remembered {
            noted: noted.0,
            at: now,
            role: role.into(),
            source,
            creds: Arc::clone(creds),
        });
    }
}

#[cfg(test)]
#[path = "memo_tests.rs"]
mod tests;
