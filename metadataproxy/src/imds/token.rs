//! `IMDSv2` session tokens: issued by this daemon, bound to the caller's identity, bounded in number.
//!
//! The HTTP layer answers every [`TokenError`] with the same 401 and the same body, so a caller
//! cannot tell another caller's valid token from a made-up one.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use thiserror::Error;

use crate::caller::Identity;
use crate::clock::Clock;

/// Request header carrying the wanted token lifetime; echoed on the response.
pub const TTL_HEADER: &str = "x-aws-ec2-metadata-token-ttl-seconds";
/// Request header carrying a token on metadata requests.
pub const TOKEN_HEADER: &str = "x-aws-ec2-metadata-token";
/// [`TTL_HEADER`] as a header name (a lookup by name, not by text to parse on every request).
pub static TTL: http::HeaderName = http::HeaderName::from_static(TTL_HEADER);
/// [`TOKEN_HEADER`] as a header name.
pub static TOKEN: http::HeaderName = http::HeaderName::from_static(TOKEN_HEADER);
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
    /// Issue order (one counter for the whole store).
    seq: u64,
    /// Presented at least once. A caller losing a token loses a used one before an unused one:
    /// an unused token is most likely in flight between its `PUT` and first use.
    used: bool,
}

/// One caller's tokens by issue order, the unused apart from the used.
#[derive(Default)]
struct Held {
    unused: BTreeMap<u64, String>,
    used: BTreeMap<u64, String>,
}

impl Held {
    fn len(&self) -> usize {
        self.unused.len() + self.used.len()
    }

    /// The token this caller loses first: its oldest used one, else its oldest.
    fn victim(&self) -> Option<&String> {
        self.used
            .values()
            .next()
            .or_else(|| self.unused.values().next())
    }
}

// foldhash, not SipHash: hashing 43-character tokens twice per IMDSv2 request was the largest
// part of the token store's cost. What is stored is the daemon's own random tokens and the
// callers it identified; a caller chooses only what it looks up, which cannot make stored keys
// collide.
struct Inner {
    /// Every live token.
    tokens: hashbrown::HashMap<String, Entry>,
    /// Each caller's tokens.
    by_caller: hashbrown::HashMap<Identity, Held>,
    /// Callers by how many tokens they hold (the last holds the most), for max-min fair eviction.
    by_count: BTreeSet<(usize, Identity)>,
    /// The next issue number.
    next_seq: u64,
}

impl Inner {
    fn count(&self, caller: &Identity) -> usize {
        self.by_caller.get(caller).map_or(0, Held::len)
    }

    /// Moves `caller` from `before` to `after` tokens in `by_count`.
    fn recount(&mut self, caller: &Identity, before: usize, after: usize) {
        self.by_count.remove(&(before, caller.clone()));
        if after > 0 {
            self.by_count.insert((after, caller.clone()));
        }
    }

    fn insert(&mut self, caller: Identity, token: String, expires: Instant) {
        let seq = self.next_seq;
        self.next_seq += 1;
        let held = self.by_caller.entry(caller.clone()).or_default();
        let before = held.len();
        held.unused.insert(seq, token.clone());
        self.recount(&caller, before, before + 1);
        self.tokens.insert(
            token,
            Entry {
                caller,
                expires,
                seq,
                used: false,
            },
        );
    }

    /// Forgets `token` everywhere.
    fn remove(&mut self, token: &str) {
        let Some(entry) = self.tokens.remove(token) else {
            return;
        };
        let Some(held) = self.by_caller.get_mut(&entry.caller) else {
            return;
        };
        let before = held.len();
        let gone = if entry.used {
            held.used.remove(&entry.seq)
        } else {
            held.unused.remove(&entry.seq)
        };
        let after = held.len();
        if after == 0 {
            self.by_caller.remove(&entry.caller);
        }
        if gone.is_some() {
            self.recount(&entry.caller, before, after);
        }
    }

    /// `caller` loses one token (see [`Held::victim`]).
    fn evict_from(&mut self, caller: &Identity) {
        let victim = self.by_caller.get(caller).and_then(Held::victim).cloned();
        if let Some(token) = victim {
            self.remove(&token);
        }
    }

    /// Who loses a token when the store is full and `issuer` asks for one: the caller holding
    /// the most (the issuer itself when it is among them), so that no caller can flush another's
    /// tokens by issuing its own: max-min fair.
    fn fullest(&self, issuer: &Identity) -> Option<Identity> {
        let (most, caller) = self.by_count.last()?;
        Some(if self.count(issuer) == *most {
            issuer.clone()
        } else {
            caller.clone()
        })
    }

    /// Marks a token used (it moves to its caller's used ones).
    /// Moves the token `seq` of `caller` (just presented for the first time) to its used ones.
    fn mark_used(&mut self, caller: &Identity, seq: u64) {
        if let Some(held) = self.by_caller.get_mut(caller)
            && let Some(t) = held.unused.remove(&seq)
        {
            held.used.insert(seq, t);
        }
    }
}

/// Issued `IMDSv2` tokens: at most `max_per_caller` per identity (at its limit a caller loses
/// its oldest used token, else its oldest) and `max_total` overall (when full, the caller
/// holding the most tokens loses one the same way). Every operation is O(log n).
pub struct TokenStore {
    inner: Mutex<Inner>,
    max_total: usize,
    max_per_caller: usize,
    clock: Arc<dyn Clock>,
}

impl fmt::Debug for TokenStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print the tokens themselves.
        f.debug_struct("TokenStore")
            .field("len", &self.len())
            .field("max_total", &self.max_total)
            .field("max_per_caller", &self.max_per_caller)
            .field("tokens", &"** redacted **")
            .finish_non_exhaustive()
    }
}

impl TokenStore {
    /// An empty store. Capacities of 0 are treated as 1.
    pub fn new(max_total: usize, max_per_caller: usize, clock: Arc<dyn Clock>) -> Self {
        Self {
            inner: Mutex::new(Inner {
                tokens: hashbrown::HashMap::new(),
                by_caller: hashbrown::HashMap::new(),
                by_count: BTreeSet::new(),
                next_seq: 0,
            }),
            max_total: max_total.max(1),
            max_per_caller: max_per_caller.max(1),
            clock,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // Every change leaves the maps consistent before the next can panic.
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
        if inner.count(caller) >= self.max_per_caller {
            // A caller issuing tokens in parallel (16 workers each `PUT` then `GET`) must not lose
            // one between its `PUT` and `GET`: its used ones go first.
            inner.evict_from(caller);
        }
        if inner.tokens.len() >= self.max_total
            && let Some(victim) = inner.fullest(caller)
        {
            inner.evict_from(&victim);
        }
        inner.insert(caller.clone(), token.clone(), expires);
        Ok(token)
    }

    /// Checks that `token` is live and was issued to `caller`.
    pub fn validate(&self, token: &str, caller: &Identity) -> Result<(), TokenError> {
        // Refuse without taking the lock what we could never have issued. Any other string is
        // only looked up (never stored), so its bytes need no check of their own.
        if token.is_empty() || token.len() > MAX_TOKEN_LEN {
            return Err(TokenError::Unknown);
        }
        let now = self.clock.monotonic();
        let mut inner = self.lock();
        // One lookup for the check and the mark.
        let Some(entry) = inner.tokens.get_mut(token) else {
            return Err(TokenError::Unknown);
        };
        if entry.caller != *caller {
            // Another caller's guesses change nothing about the token.
            return Err(TokenError::WrongCaller);
        }
        if now >= entry.expires {
            inner.remove(token);
            return Err(TokenError::Expired);
        }
        if !entry.used {
            entry.used = true;
            let seq = entry.seq;
            inner.mark_used(caller, seq);
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
