//! From a caller's role assignment to the cache key of its credentials: static resolution, then
//! `iam:GetRole` for bare role names when no default account is configured (results cached).

use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use lru::LruCache;

use crate::clock::Clock;
use crate::creds::{CacheKey, Sts, StsError};
use crate::role::{
    AccountMap, Partition, ResolveError, Resolved, RoleArn, RoleAssignment, SessionName, resolve,
};

/// How long an `iam:GetRole` answer is trusted.
const LOOKUP_TTL: Duration = Duration::from_secs(3600);
/// How long an `iam:GetRole` failure is remembered, so a bad role cannot flood IAM.
const LOOKUP_FAILURE_TTL: Duration = Duration::from_secs(10);

/// A cached `iam:GetRole` answer and when it was obtained.
type Lookup = (Result<RoleArn, ResolveFailure>, Instant);

/// Why a caller's role could not be turned into an ARN.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ResolveFailure {
    /// The role string cannot be resolved (e.g. an unknown account alias).
    #[error(transparent)]
    Invalid(#[from] ResolveError),
    /// `iam:GetRole` failed.
    #[error(transparent)]
    Lookup(#[from] StsError),
    /// `iam:GetRole` returned something that is not a role ARN.
    #[error("iam:GetRole returned an ARN that does not parse: {0}")]
    BadLookupArn(String),
}

/// Resolves assignments to [`CacheKey`]s.
#[derive(Debug)]
pub struct Resolver {
    accounts: AccountMap,
    default_account: Option<String>,
    partition: Partition,
    sts: Arc<dyn Sts>,
    clock: Arc<dyn Clock>,
    lookups: Mutex<LruCache<(String, String), Lookup>>,
}

impl Resolver {
    /// A resolver; `region` decides the partition of ARNs built from bare names.
    pub fn new(
        accounts: AccountMap,
        default_account: Option<String>,
        region: Option<&str>,
        sts: Arc<dyn Sts>,
        clock: Arc<dyn Clock>,
    ) -> Self {
        Self {
            accounts,
            default_account,
            partition: region.map_or(Partition::Aws, Partition::for_region),
            sts,
            clock,
            lookups: Mutex::new(LruCache::new(
                NonZeroUsize::new(1024).unwrap_or(NonZeroUsize::MIN),
            )),
        }
    }

    /// The role ARN for an assignment.
    pub async fn role_arn(&self, a: &RoleAssignment) -> Result<RoleArn, ResolveFailure> {
        match resolve(
            &a.role,
            &self.accounts,
            self.default_account.as_deref(),
            self.partition,
        )? {
            Resolved::Arn(arn) => Ok(arn),
            Resolved::NeedsLookup { path, name } => self.lookup(path, name).await,
        }
    }

    async fn lookup(&self, path: String, name: String) -> Result<RoleArn, ResolveFailure> {
        let key = (path, name);
        let now = self.clock.monotonic();
        if let Some((answer, at)) = self
            .lookups
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&key)
        {
            let ttl = if answer.is_ok() {
                LOOKUP_TTL
            } else {
                LOOKUP_FAILURE_TTL
            };
            if now.saturating_duration_since(*at) < ttl {
                return answer.clone();
            }
        }
        let answer = match self.sts.role_arn(&key.0, &key.1).await {
            Ok(arn) => RoleArn::parse(&arn).map_err(|_| ResolveFailure::BadLookupArn(arn)),
            Err(e) => Err(e.into()),
        };
        let mut lookups = self.lookups.lock().unwrap_or_else(PoisonError::into_inner);
        lookups.put(key, (answer.clone(), self.clock.monotonic()));
        answer
    }

    /// The cache key for an assignment.
    pub async fn cache_key(
        &self,
        a: &RoleAssignment,
    ) -> Result<(CacheKey, RoleArn), ResolveFailure> {
        let arn = self.role_arn(a).await?;
        let session = a
            .session_name
            .clone()
            .unwrap_or_else(SessionName::default_name);
        let key = CacheKey {
            role_arn: arn.to_string().into(),
            external_id: a.external_id.as_deref().map(Into::into),
            session_name: session.as_str().into(),
        };
        Ok((key, arn))
    }
}
