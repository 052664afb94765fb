//! `IMDSv2` session tokens: issued by this daemon, bound to the caller's identity, bounded in number.
//!
//! The HTTP layer answers every [`TokenError`] with the same 401 and the same body, so a caller
//! cannot tell another caller's valid token from a made-up one.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use lru::LruCache;
use thiserror::Error;

use crate::clock::Clock;
use crate::identity::Identity;

/// Request header carrying the wanted token lifetime; echoed on the response.
pub const TTL_HEADER: &str = "x-aws-ec2-metadata-token-ttl-seconds";
/// Request header carrying a token on metadata requests.
pub const TOKEN_HEADER: &str = "x-aws-ec2-metadata-token";
/// Longest token lifetime IMDS grants, in seconds (6 hours).
pub const MAX_TTL_SECS: u32 = 21_600;
/// Tokens longer than this are refused without looking them up (ours are 43 characters).
pub const MAX_TOKEN_LEN: usize = 128;

/// Random bytes per token.
const TOKEN_BYTES: usize = 32;

/// Why a TTL header was refused. The HTTP layer answers all of them with 400.
#[derive(Debug, Error, Clone, Copy, PartialEq, Eq)]
pub enum TtlError {
    /// The header is absent.
    #[error("missing {TTL_HEADER} header")]
    Missing,
    /// The value is not a plain decimal integer.
    #[error("{TTL_HEADER} is not a decimal integer")]
    NotANumber,
    /// The value is outside `1..=MAX_TTL_SECS`; values beyond `u64` saturate to `u64::MAX`.
    #[error("{TTL_HEADER} {0} is outside 1..={MAX_TTL_SECS}")]
    OutOfRange(u64),
}

/// Why a presented token was refused. The HTTP layer maps every variant to the same 401.
#[derive(Debug, Error, Clone, Copy, PartialEq, Eq)]
pub enum TokenError {
    /// No such token: never issued, malformed, evicted, or too long.
    #[error("unknown token")]
    Unknown,
    /// The token was issued but its lifetime has passed.
    #[error("expired token")]
    Expired,
    /// The token belongs to another caller; must look exactly like `Unknown` from outside.
    #[error("token issued to another caller")]
    WrongCaller,
}

/// Why a token could not be issued. The HTTP layer answers 500.
#[derive(Debug, Error)]
pub enum IssueError {
    /// The operating system's random number generator failed.
    #[error("random number generator failed")]
    Random(#[source] getrandom::Error),
}

/// Parses `X-aws-ec2-metadata-token-ttl-seconds`: a decimal integer in `1..=21600`, surrounding
/// whitespace allowed, no sign, no fraction, no hex.
pub fn parse_ttl(value: Option<&http::HeaderValue>) -> Result<u32, TtlError> {
    let value = value.ok_or(TtlError::Missing)?;
    let text = value.to_str().map_err(|_| TtlError::NotANumber)?.trim();
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(TtlError::NotANumber);
    }
    // Only digits remain, so the one possible parse failure is overflow.
    let n: u64 = text.parse().unwrap_or(u64::MAX);
    match u32::try_from(n) {
        Ok(secs @ 1..=MAX_TTL_SECS) => Ok(secs),
        _ => Err(TtlError::OutOfRange(n)),
    }
}

struct Entry {
    caller: Identity,
    expires: Instant,
    /// Presented at least once. A caller at its cap loses a used token before an unused one: an
    /// unused token is most likely in flight between its `PUT` and first use.
    used: bool,
}

struct Inner {
    /// Every live token; least recently used goes first when full.
    tokens: LruCache<String, Entry>,
    /// Each caller's tokens in issue order, so its own oldest goes first when it is at its cap.
    by_caller: HashMap<Identity, VecDeque<String>>,
}

impl Inner {
    fn forget(&mut self, caller: &Identity, token: &str) {
        if let Some(q) = self.by_caller.get_mut(caller) {
            q.retain(|t| t != token);
            if q.is_empty() {
                self.by_caller.remove(caller);
            }
        }
    }
}

/// Issued `IMDSv2` tokens: at most `max_total` overall (least recently used goes first) and
/// `max_per_caller` per identity (its oldest used token goes first, else its oldest).
pub struct TokenStore {
    inner: Mutex<Inner>,
    max_per_caller: usize,
    clock: Arc<dyn Clock>,
}

impl fmt::Debug for TokenStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print the tokens themselves.
        f.debug_struct("TokenStore")
            .field("len", &self.len())
            .field("max_per_caller", &self.max_per_caller)
            .field("tokens", &"** redacted **")
            .finish_non_exhaustive()
    }
}

impl TokenStore {
    /// An empty store. Capacities of 0 are treated as 1.
    pub fn new(max_total: usize, max_per_caller: usize, clock: Arc<dyn Clock>) -> Self {
        let cap = NonZeroUsize::new(max_total).unwrap_or(NonZeroUsize::MIN);
        Self {
            inner: Mutex::new(Inner {
                tokens: LruCache::new(cap),
                by_caller: HashMap::new(),
            }),
            max_per_caller: max_per_caller.max(1),
            clock,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic elsewhere cannot leave the maps inconsistent in a way that matters for safety:
        // at worst a token lingers in one map, and lookups go through `tokens` only.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Issues a new token for `caller`, valid for `ttl_secs` (capped at [`MAX_TTL_SECS`]).
    pub fn issue(&self, caller: &Identity, ttl_secs: u32) -> Result<String, IssueError> {
        let mut raw = [0_u8; TOKEN_BYTES];
        getrandom::fill(&mut raw).map_err(IssueError::Random)?;
        let token = URL_SAFE_NO_PAD.encode(raw);
        let expires =
            self.clock.monotonic() + Duration::from_secs(u64::from(ttl_secs.min(MAX_TTL_SECS)));

        let mut inner = self.lock();
        let Inner { tokens, by_caller } = &mut *inner;
        let queue = by_caller.entry(caller.clone()).or_default();
        if queue.len() >= self.max_per_caller {
            // The caller's oldest used token, else its oldest: a caller issuing tokens in parallel
            // (16 workers each `PUT` then `GET`) must not lose one between its `PUT` and `GET`,
            // and a caller that only issues still evicts nobody's tokens but its own.
            let victim = queue
                .iter()
                .position(|t| tokens.peek(t).is_some_and(|e| e.used))
                .unwrap_or(0);
            if let Some(old) = queue.remove(victim) {
                tokens.pop(&old);
            }
        }
        queue.push_back(token.clone());
        let entry = Entry {
            caller: caller.clone(),
            expires,
            used: false,
        };
        if let Some((evicted, e)) = inner.tokens.push(token.clone(), entry)
            && evicted != token
        {
            inner.forget(&e.caller, &evicted);
        }
        Ok(token)
    }

    /// Checks that `token` is live and was issued to `caller`.
    pub fn validate(&self, token: &str, caller: &Identity) -> Result<(), TokenError> {
        // Refuse without taking the lock what we could never have issued.
        if token.is_empty()
            || token.len() > MAX_TOKEN_LEN
            || !token
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(TokenError::Unknown);
        }
        let now = self.clock.monotonic();
        let mut inner = self.lock();
        let Some(entry) = inner.tokens.peek(token) else {
            return Err(TokenError::Unknown);
        };
        if entry.caller != *caller {
            // Peek, not get: another caller's guesses must not keep a token alive.
            return Err(TokenError::WrongCaller);
        }
        if now >= entry.expires {
            inner.tokens.pop(token);
            inner.forget(caller, token);
            return Err(TokenError::Expired);
        }
        if let Some(entry) = inner.tokens.get_mut(token) {
            entry.used = true;
        }
        Ok(())
    }

    /// Number of tokens held, including expired ones not yet evicted.
    pub fn len(&self) -> usize {
        self.lock().tokens.len()
    }

    /// Whether no token is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
#[path = "token_tests.rs"]
mod tests;
