//! From a caller's role assignment to the cache key of its credentials: static resolution, then
//! `iam:GetRole` for bare role names when no default account is configured (results cached).
//!
//! Static resolutions never change while the daemon runs (the account map and default account are
//! fixed at start), so each assignment's is computed once and shared by every later request: the
//! cached-credentials path then builds no ARN string and allocates nothing here.

use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex, PoisonError, RwLock, Weak};
use std::time::{Duration, Instant};

use hashbrown::HashMap;
use lru::LruCache;

use super::{CacheKey, Sts, StsError};
use crate::clock::Clock;
use crate::role::{
    AccountMap, Partition, ResolveError, Resolved, RoleArn, RoleAssignment, SessionName, resolve,
};

/// How long an `iam:GetRole` answer is trusted.
const LOOKUP_TTL: Duration = Duration::from_secs(3600);
/// How long an `iam:GetRole` failure is remembered, so a bad role cannot flood IAM.
const LOOKUP_FAILURE_TTL: Duration = Duration::from_secs(10);

/// Most static resolutions remembered; beyond it the memo starts over (only a host with more
/// distinct assignments than this recomputes some of them).
const MEMO_CAPACITY: usize = 4096;

/// A cached `iam:GetRole` answer and when it was obtained.
type Lookup = (Result<RoleArn, ResolveFailure>, Instant);

/// A shared assignment (held weakly, so its address stays its own) and its resolution.
type Remembered = (Weak<RoleAssignment>, Arc<Resolution>);

/// An assignment resolved: the cache key of its credentials and its role ARN.
#[derive(Debug)]
pub struct Resolution {
    /// Where its credentials are cached.
    pub key: CacheKey,
    /// The role's ARN.
    pub arn: RoleArn,
}

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
    /// Static resolutions (no `iam:GetRole` involved), by assignment; foldhash, because an
    /// assignment is hashed on every request and `SipHash` cost more than the rest of the lookup.
    memo: RwLock<HashMap<RoleAssignment, Arc<Resolution>>>,
    /// The same, by the address of a shared assignment (a container's or a mapping entry's,
    /// asked for on every request): one `usize` hashed instead of the assignment. Each entry
    /// holds a `Weak` of its assignment, so its address cannot be reused by another while the
    /// entry exists.
    by_address: RwLock<HashMap<usize, Remembered>>,
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
            memo: RwLock::new(HashMap::new()),
            by_address: RwLock::new(HashMap::new()),
        }
    }

    /// The role ARN for an assignment, and whether it was resolved statically (no lookup).
    async fn role_arn(&self, a: &RoleAssignment) -> Result<(RoleArn, bool), ResolveFailure> {
        match resolve(
            &a.role,
            &self.accounts,
            self.default_account.as_deref(),
            self.partition,
        )? {
            Resolved::Arn(arn) => Ok((arn, true)),
            Resolved::NeedsLookup { path, name } => Ok((self.lookup(path, name).await?, false)),
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

    /// The resolution of an assignment: remembered when static, else through `iam:GetRole`
    /// (whose answers are cached for [`LOOKUP_TTL`]).
    pub async fn resolve(&self, a: &RoleAssignment) -> Result<Arc<Resolution>, ResolveFailure> {
        if let Some(found) = self
            .memo
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(a)
        {
            return Ok(Arc::clone(found));
        }
        let (arn, fixed) = self.role_arn(a).await?;
        let resolution = Arc::new(Resolution {
            key: key_for(a, &arn),
            arn,
        });
        if fixed {
            let mut memo = self.memo.write().unwrap_or_else(PoisonError::into_inner);
            if memo.len() >= MEMO_CAPACITY {
                memo.clear();
            }
            memo.insert(a.clone(), Arc::clone(&resolution));
        }
        Ok(resolution)
    }

    /// [`Resolver::resolve`] for a shared assignment, remembered by its address as well.
    pub async fn resolve_shared(
        &self,
        a: &Arc<RoleAssignment>,
    ) -> Result<Arc<Resolution>, ResolveFailure> {
        let address = Arc::as_ptr(a) as usize;
        if let Some((_, found)) = self
            .by_address
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&address)
        {
            return Ok(Arc::clone(found));
        }
        let resolution = self.resolve(a).await?;
        // Only static resolutions, and only assignments held elsewhere too (not one made for
        // this request alone, which would only churn the map).
        let remembered = self
            .memo
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&**a)
            .is_some_and(|m| Arc::ptr_eq(m, &resolution));
        if remembered && Arc::strong_count(a) > 1 {
            let mut by_address = self
                .by_address
                .write()
                .unwrap_or_else(PoisonError::into_inner);
            if by_address.len() >= MEMO_CAPACITY {
                by_address.clear();
            }
            by_address.insert(address, (Arc::downgrade(a), Arc::clone(&resolution)));
        }
        Ok(resolution)
    }

    /// The cache key for an assignment, and its role ARN.
    pub async fn cache_key(
        &self,
        a: &RoleAssignment,
    ) -> Result<(CacheKey, RoleArn), ResolveFailure> {
        let r = self.resolve(a).await?;
        Ok((r.key.clone(), r.arn.clone()))
    }
}

/// The cache key of `a`'s credentials once its role is `arn`.
fn key_for(a: &RoleAssignment, arn: &RoleArn) -> CacheKey {
    let session = a
        .session_name
        .clone()
        .unwrap_or_else(SessionName::default_name);
    CacheKey::new(
        arn.to_string().into(),
        a.external_id.as_deref().map(Into::into),
        session.as_str().into(),
        a.context.clone(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;
    use crate::creds::fake::FakeSts;
    use crate::role::RoleSpec;

    fn resolver(default_account: Option<&str>) -> Resolver {
        let clock = ManualClock::new(std::time::SystemTime::UNIX_EPOCH);
        Resolver::new(
            AccountMap::default(),
            default_account.map(str::to_owned),
            None,
            FakeSts::new(&clock, Duration::ZERO),
            Arc::new(clock),
        )
    }

    fn assignment(role: &str) -> RoleAssignment {
        RoleAssignment::from_role(RoleSpec::parse(role).unwrap())
    }

    #[tokio::test]
    async fn static_resolutions_are_computed_once_per_assignment() {
        let r = resolver(Some("123456789012"));
        let first = r.resolve(&assignment("web")).await.unwrap();
        assert_eq!(&*first.key.role_arn, "arn:aws:iam::123456789012:role/web");
        assert_eq!(first.arn.to_string(), "arn:aws:iam::123456789012:role/web");
        // An equal assignment (e.g. from a reloaded mapping) shares the same resolution.
        let again = r.resolve(&assignment("web")).await.unwrap();
        assert!(Arc::ptr_eq(&first, &again));
        let other = r.resolve(&assignment("batch")).await.unwrap();
        assert_eq!(&*other.key.role_arn, "arn:aws:iam::123456789012:role/batch");
    }

    #[tokio::test]
    async fn shared_assignments_are_remembered_by_address_and_only_they() {
        let r = resolver(Some("123456789012"));
        let shared = Arc::new(assignment("web"));
        let _held_by_the_index = Arc::clone(&shared);
        let first = r.resolve_shared(&shared).await.unwrap();
        assert_eq!(r.by_address.read().unwrap().len(), 1);
        let again = r.resolve_shared(&shared).await.unwrap();
        assert!(Arc::ptr_eq(&first, &again));
        // An assignment made for one request only is resolved (by content) but not remembered
        // by its address.
        let once = Arc::new(assignment("batch"));
        let batch = r.resolve_shared(&once).await.unwrap();
        assert_eq!(&*batch.key.role_arn, "arn:aws:iam::123456789012:role/batch");
        assert_eq!(r.by_address.read().unwrap().len(), 1);
        // A resolution needing iam:GetRole is never remembered.
        let lookups = resolver(None);
        let shared = Arc::new(assignment("web"));
        let _held = Arc::clone(&shared);
        lookups.resolve_shared(&shared).await.unwrap();
        assert!(lookups.by_address.read().unwrap().is_empty());
    }

    #[tokio::test]
    async fn lookup_resolutions_are_not_memoised() {
        // Without a default account, bare names go through iam:GetRole, whose answers expire.
        let r = resolver(None);
        let first = r.resolve(&assignment("web")).await.unwrap();
        assert_eq!(&*first.key.role_arn, "arn:aws:iam::999999999999:role/web");
        let again = r.resolve(&assignment("web")).await.unwrap();
        assert!(!Arc::ptr_eq(&first, &again));
        assert!(r.memo.read().unwrap().is_empty());
    }
}
