//! The daemon's own upstream `IMDSv2` session: one token shared by all forwarded requests.
//!
//! Fetched lazily and single-flight (the lock is held across the PUT, so concurrent requests wait
//! for one PUT instead of each sending their own); refreshed a little before expiry; a refresh
//! that fails while the old token is still valid keeps the old token (static stability).

use std::sync::Arc;
use std::time::{Duration, Instant};

use http::HeaderValue;
use tokio::sync::Mutex;

use super::UpstreamError;
use crate::clock::Clock;

/// How long a v1-only answer (403/404/405 to the token PUT) is believed before asking again.
pub(super) const V1_ONLY_FOR: Duration = Duration::from_mins(5);
/// Refresh this long before the upstream token expires (at most half its lifetime).
pub(super) const REFRESH_BEFORE: Duration = Duration::from_mins(1);

/// The result of one token PUT.
#[derive(Debug)]
pub(super) enum Fetched {
    /// A token (marked sensitive) and the lifetime the upstream granted.
    Token(HeaderValue, Duration),
    /// The upstream does not do `IMDSv2`.
    V1Only,
}

#[derive(Debug)]
enum State {
    Unknown,
    Token {
        value: HeaderValue,
        refresh_at: Instant,
        expires: Instant,
    },
    V1Only {
        until: Instant,
    },
}

/// What to send upstream: `Some(token)`, or `None` for a v1 request.
pub(super) type Credential = Option<HeaderValue>;

/// The shared upstream session state.
#[derive(Debug)]
pub(super) struct Session {
    state: Mutex<State>,
    clock: Arc<dyn Clock>,
}

impl Session {
    pub(super) fn new(clock: Arc<dyn Clock>) -> Self {
        Self {
            state: Mutex::new(State::Unknown),
            clock,
        }
    }

    /// The credential to use now, running `fetch` (at most one at a time) when none is usable.
    pub(super) async fn current<F, Fut>(&self, fetch: F) -> Result<Credential, UpstreamError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Fetched, UpstreamError>>,
    {
        let mut state = self.state.lock().await;
        let now = self.clock.monotonic();
        match &*state {
            State::Token {
                value, refresh_at, ..
            } if now < *refresh_at => return Ok(Some(value.clone())),
            State::V1Only { until } if now < *until => return Ok(None),
            _ => {}
        }
        match fetch().await {
            Ok(Fetched::Token(value, ttl)) => {
                let buffer = REFRESH_BEFORE.min(ttl / 2);
                *state = State::Token {
                    value: value.clone(),
                    // Measured from before the PUT was sent, so we never believe it longer than
                    // the upstream does.
                    refresh_at: now + ttl.saturating_sub(buffer),
                    expires: now + ttl,
                };
                Ok(Some(value))
            }
            Ok(Fetched::V1Only) => {
                *state = State::V1Only {
                    until: now + V1_ONLY_FOR,
                };
                Ok(None)
            }
            Err(e) => match &*state {
                State::Token { value, expires, .. } if self.clock.monotonic() < *expires => {
                    tracing::warn!(error = %e, "upstream token refresh failed; keeping the current token");
                    Ok(Some(value.clone()))
                }
                _ => Err(e),
            },
        }
    }

    /// Forgets `rejected` after the upstream answered 401 to it, so the next `current` fetches
    /// anew. A no-op when another request already replaced it.
    pub(super) async fn invalidate(&self, rejected: Option<&HeaderValue>) {
        let mut state = self.state.lock().await;
        let matches = match (&*state, rejected) {
            (State::Token { value, .. }, Some(r)) => value == r,
            (State::V1Only { .. }, None) => true,
            _ => false,
        };
        if matches {
            *state = State::Unknown;
        }
    }
}
