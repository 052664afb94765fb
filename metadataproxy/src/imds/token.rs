//! `IMDSv2` session tokens, sealed rather than stored: a token carries its own expiry and a
//! keyed tag (SipHash-2-4, 128 bits) binding that expiry to the caller's identity. The daemon
//! keeps no state per token, so no number of tokens costs memory, and no caller can flush
//! another's.
//!
//! The HTTP layer answers every [`TokenError`] with the same 401 and the same body, so a caller
//! cannot tell another caller's valid token from a made-up one.

use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use siphasher::sip128::{Hasher128 as _, SipHasher24};
use subtle::ConstantTimeEq as _;
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
/// Characters of every token: [`SEALED`] bytes in hex.
pub const TOKEN_LEN: usize = 2 * SEALED;

/// The expiry field's bytes.
const FIELD: usize = 8;
/// The tag's bytes (128 bits).
const TAG: usize = 16;
/// A token's bytes before encoding: the expiry field, then the tag.
const SEALED: usize = FIELD + TAG;

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
    /// Not a token this daemon sealed for this caller: made up, altered, another caller's, or
    /// sealed by an earlier run of the daemon (its key is gone).
    #[error("unknown token, or another caller's")]
    Unknown,
    /// The token was issued to this caller but its lifetime has passed.
    #[error("expired token")]
    Expired,
}

/// Why the sealing key could not be made. The daemon does not start.
#[derive(Debug, Error)]
#[error("cannot make the IMDSv2 token key: the operating system's random number generator failed")]
pub struct KeyError(#[source] getrandom::Error);

/// Parses `X-aws-ec2-metadata-token-ttl-seconds`: a decimal integer in `1..=21600`, surrounding
/// whitespace allowed, no sign, no fraction, no hex.
pub fn parse_ttl(value: Option<&http::HeaderValue>) -> Result<u32, TtlError> {
    // A header value holds no whitespace but spaces and tabs.
    let digits = value.ok_or(TtlError::Missing)?.as_bytes().trim_ascii();
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return Err(TtlError::NotANumber);
    }
    let n = digits.iter().fold(0_u64, |n, &d| {
        n.saturating_mul(10).saturating_add(u64::from(d - b'0'))
    });
    match u32::try_from(n) {
        Ok(secs @ 1..=MAX_TTL_SECS) => Ok(secs),
        _ => Err(TtlError::OutOfRange(n)),
    }
}

/// Issues and checks `IMDSv2` tokens.
///
/// A token is `field ‖ tag`, in hex: `field` is the expiry, in nanoseconds of the monotonic
/// clock from a secret random origin (so a token tells nothing of the daemon's uptime), and
/// `tag` is `SipHash-2-4-128(key, caller ‖ field)`. The 128-bit key is drawn at start and never
/// leaves memory: a token is valid only for the identity it was issued to, until its expiry, and
/// only in this run of the daemon. Nothing is stored per token, so issuing costs no memory and
/// one caller's tokens cannot crowd out another's.
///
/// `SipHash` is a keyed pseudorandom function built for short inputs, the MAC the Linux kernel
/// seals its stateless TCP SYN cookies with, which is this design: a server-issued value the
/// server must recognise later without having kept it. A forgery is an online guess at a 128-bit
/// tag for the forger's own identity; it gains nothing against another caller. (BLAKE3 keyed,
/// measured first, cost about 300 instructions more per token, issued or checked.)
pub struct Tokens {
    key: [u8; 16],
    /// The monotonic instant the expiry fields count from.
    epoch: Instant,
    /// Added (wrapping) to every expiry field.
    origin: u64,
    clock: Arc<dyn Clock>,
}

impl fmt::Debug for Tokens {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print the key.
        f.debug_struct("Tokens")
            .field("key", &"** redacted **")
            .finish_non_exhaustive()
    }
}

impl Tokens {
    /// Tokens sealed with a new random key.
    pub fn new(clock: Arc<dyn Clock>) -> Result<Self, KeyError> {
        let mut key = [0_u8; 16];
        let mut origin = [0_u8; FIELD];
        getrandom::fill(&mut key).map_err(KeyError)?;
        getrandom::fill(&mut origin).map_err(KeyError)?;
        Ok(Self::with_key(key, u64::from_le_bytes(origin), clock))
    }

    /// Tokens sealed with `key`, their expiry fields counted from `origin` (tests).
    pub fn with_key(key: [u8; 16], origin: u64, clock: Arc<dyn Clock>) -> Self {
        Self {
            key,
            epoch: clock.monotonic(),
            origin,
            clock,
        }
    }

    /// A token for `caller`, valid for `ttl_secs` (capped at [`MAX_TTL_SECS`]).
    pub fn issue(&self, caller: &Identity, ttl_secs: u32) -> String {
        let ttl = Duration::from_secs(u64::from(ttl_secs.min(MAX_TTL_SECS)));
        let expires = self.since_epoch(self.clock.monotonic()) + ttl;
        let field = self.origin.wrapping_add(nanos(expires)).to_le_bytes();
        let mut sealed = [0_u8; SEALED];
        sealed[..FIELD].copy_from_slice(&field);
        sealed[FIELD..].copy_from_slice(&self.tag(caller, field));
        const_hex::encode(sealed)
    }

    /// Checks that `token` (the header's bytes) was issued to `caller` by this daemon and has
    /// not expired.
    pub fn validate(&self, token: impl AsRef<[u8]>, caller: &Identity) -> Result<(), TokenError> {
        let token = token.as_ref();
        let mut sealed = [0_u8; SEALED];
        // Hex digits of either case: another spelling of a caller's own token is that token.
        if token.len() != TOKEN_LEN || const_hex::decode_to_slice(token, &mut sealed).is_err() {
            return Err(TokenError::Unknown);
        }
        let (field, tag) = sealed.split_at(FIELD);
        let field: [u8; FIELD] = field.try_into().map_err(|_| TokenError::Unknown)?;
        // Compared in constant time: a caller learns nothing of the tag from how long a refusal took.
        if !bool::from(self.tag(caller, field).ct_eq(tag)) {
            return Err(TokenError::Unknown);
        }
        let expires = u64::from_le_bytes(field).wrapping_sub(self.origin);
        if nanos(self.since_epoch(self.clock.monotonic())) >= expires {
            return Err(TokenError::Expired);
        }
        Ok(())
    }

    fn since_epoch(&self, now: Instant) -> Duration {
        now.saturating_duration_since(self.epoch)
    }

    /// The tag of `field` for `caller`.
    fn tag(&self, caller: &Identity, field: [u8; FIELD]) -> [u8; TAG] {
        let mut input = [0_u8; IDENTITY + FIELD];
        input[..IDENTITY].copy_from_slice(&identity_bytes(caller));
        input[IDENTITY..].copy_from_slice(&field);
        let mut mac = SipHasher24::new_with_key(&self.key);
        std::hash::Hasher::write(&mut mac, &input);
        mac.finish128().as_bytes()
    }
}

/// Nanoseconds of `d` (a daemon would have to run 584 years to overflow them).
fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// Bytes of an identity's encoding.
const IDENTITY: usize = 17;

/// One fixed-size encoding per identity: its kind, then its value, zero-padded. Distinct
/// identities never share an encoding.
fn identity_bytes(caller: &Identity) -> [u8; IDENTITY] {
    let mut out = [0_u8; IDENTITY];
    match caller {
        Identity::Ip(IpAddr::V4(ip)) => {
            out[0] = 1;
            out[1..5].copy_from_slice(&ip.octets());
        }
        Identity::Ip(IpAddr::V6(ip)) => {
            out[0] = 2;
            out[1..].copy_from_slice(&ip.octets());
        }
        Identity::Loopback => out[0] = 3,
        Identity::Cgroup(id) => {
            out[0] = 4;
            out[1..9].copy_from_slice(&id.to_le_bytes());
        }
    }
    out
}

#[cfg(test)]
#[path = "token_tests.rs"]
mod tests;
