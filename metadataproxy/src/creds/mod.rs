//! Credentials: the secret-bearing types, the STS client behind a trait (metered for readiness and
//! metrics), role assignments resolved to cache keys, and the single-flight cache.

pub mod aws;
mod budget;
mod cache;
mod delivery;
pub mod ecs_patch;
#[cfg(test)]
pub mod fake;
mod metered;
mod no_throttle_retry;
mod resolve;
mod secret;
pub mod sts;
mod throttling;

pub use cache::{CacheKey, CredentialCache, CredentialCacheConfig};
pub use delivery::Delivery;
pub use metered::{MeteredSts, StsHealth, StsOutcome};
pub use resolve::{Resolution, ResolveFailure, Resolver};
pub use secret::Secret;
pub use sts::{Sts, StsError, StsErrorKind};

use std::time::{Duration, SystemTime};

/// One set of temporary credentials obtained from `sts:AssumeRole`.
#[derive(Debug, Clone)]
pub struct Credentials {
    /// The access key id (not secret; logs show only its last four characters).
    pub access_key_id: String,
    /// The secret access key.
    pub secret_access_key: Secret,
    /// The session token.
    pub session_token: Secret,
    /// When STS says they expire.
    pub expiration: SystemTime,
    /// When we obtained them (IMDS `LastUpdated`).
    pub last_updated: SystemTime,
    /// `AssumedRoleUser.Arn`: `arn:…:sts::<acct>:assumed-role/<name>/<session>`.
    pub assumed_role_arn: String,
    /// `AssumedRoleUser.AssumedRoleId`: `AROA…:<session>`.
    pub assumed_role_id: String,
    /// The rendered document and its recipients.
    pub delivery: Delivery,
}

impl Credentials {
    /// Time left before expiry at `now` (zero when expired).
    pub fn remaining(&self, now: SystemTime) -> Duration {
        self.expiration
            .duration_since(now)
            .unwrap_or(Duration::ZERO)
    }

    /// The last four characters of the access key id, for logs.
    pub fn key_hint(&self) -> &str {
        let id = self.access_key_id.as_str();
        id.char_indices().rev().nth(3).map_or(id, |(i, _)| &id[i..])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn creds(key: &str) -> Credentials {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        Credentials {
            access_key_id: key.into(),
            secret_access_key: Secret::new("very-secret-key".into()),
            session_token: Secret::new("very-secret-token".into()),
            expiration: now + Duration::from_secs(3600),
            last_updated: now,
            assumed_role_arn: "arn:aws:sts::123456789012:assumed-role/r/s".into(),
            assumed_role_id: "AROAEXAMPLE:s".into(),
            delivery: Delivery::default(),
        }
    }

    #[test]
    fn debug_never_shows_secrets() {
        let text = format!("{:?}", creds("ASIAEXAMPLE1234"));
        assert!(!text.contains("very-secret"), "{text}");
        assert!(text.contains("ASIAEXAMPLE1234"));
    }

    #[test]
    fn key_hint_is_last_four() {
        assert_eq!(creds("ASIAEXAMPLE1234").key_hint(), "1234");
        assert_eq!(creds("AB").key_hint(), "AB");
    }

    #[test]
    fn remaining_is_zero_after_expiry() {
        let c = creds("A");
        assert_eq!(
            c.remaining(c.expiration + Duration::from_secs(5)),
            Duration::ZERO
        );
        assert_eq!(c.remaining(c.last_updated), Duration::from_secs(3600));
    }
}
