//! The credential cache: one slot per (role ARN, external id, session name), single flight,
//! refreshed ahead of expiry, still-valid credentials kept when STS fails, failures backed off.

use std::fmt;
use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use futures_util::FutureExt;
use futures_util::future::Shared;
use lru::LruCache;

use super::{Credentials, Sts, StsError};
use crate::clock::Clock;
use crate::role::SessionContext;
use futures_util::future::BoxFuture;

/// What a credential set is for. Two callers share credentials only when all of it is equal.
/// Hashed once, when made: a cached-credentials request hashes one `u64`, not the strings.
#[derive(Clone, PartialEq, Eq)]
pub struct CacheKey {
    /// The hash of the fields below (compared first: unequal keys differ there at once).
    hash: u64,
    /// The role's ARN.
    pub role_arn: Arc<str>,
    /// `ExternalId` passed to `sts:AssumeRole`.
    pub external_id: Option<Arc<str>>,
    /// `RoleSessionName`.
    pub session_name: Arc<str>,
    /// `Tags`, `TransitiveTagKeys` and `SourceIdentity` (`SESSION_TAGS`, `SOURCE_IDENTITY`).
    pub context: Option<Arc<SessionContext>>,
}

impl CacheKey {
    /// The key of a set of credentials for these `sts:AssumeRole` parameters.
    pub fn new(
        role_arn: Arc<str>,
        external_id: Option<Arc<str>>,
        session_name: Arc<str>,
        context: Option<Arc<SessionContext>>,
    ) -> Self {
        use std::hash::BuildHasher as _;
        // One seed for the process: equal keys must hash equal (each builder is seeded anew).
        static HASHER: std::sync::LazyLock<hashbrown::DefaultHashBuilder> =
            std::sync::LazyLock::new(hashbrown::DefaultHashBuilder::default);
        let hash = HASHER.hash_one((
            &role_arn,
            &external_id,
            &session_name,
            &context,
        ));
        Self {
            hash,
            role_arn,
            external_id,
            session_name,
            context,
        }
    }
}

impl std::hash::Hash for CacheKey {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        state.write_u64(self.hash);
    }
}

impl fmt::Debug for CacheKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CacheKey")
            .field("role_arn", &self.role_arn)
            .field(
                "external_id",
                &self.external_id.as_ref().map(|_| "** redacted **"),
            )
            .field("session_name", &self.session_name)
            .field("context", &self.context)
            .finish_non_exhaustive()
    }
}

/// Tuning of the cache.
#[derive(Debug, Clone, Copy)]
pub struct CredentialCacheConfig {
    /// Most slots kept; the least recently used is dropped beyond this.
    pub capacity: NonZeroUsize,
    /// Callers are always given credentials with more than this left (`ROLE_EXPIRATION_THRESHOLD`).
    pub threshold: Duration,
    /// Validity requested from STS.
    pub session_duration: Duration,
    /// Slots not used for this long are no longer refreshed in the background.
    pub idle_after: Duration,
}

type Flight = Shared<BoxFuture<'static, Result<Arc<Credentials>, StsError>>>;

#[derive(Default)]
struct SlotState {
    current: Option<Arc<Credentials>>,
    flight: Option<Flight>,
    last_used: Option<Instant>,
    /// How many running containers hold this slot: held slots are always kept refreshed.
    holders: u32,
    /// When the last holder let go: background refresh stops unless a request came after.
    released_at: Option<Instant>,
    failures: u32,
    retry_after: Option<Instant>,
    last_error: Option<StsError>,
}

#[derive(Default)]
struct Slot {
    state: Mutex<SlotState>,
}

impl Slot {
    fn lock(&self) -> std::sync::MutexGuard<'_, SlotState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Longest a caller holding still-valid (but due) credentials waits for their refresh before it is
/// given them: below the 1 s IMDS timeout of the AWS SDKs.
pub const STALE_WAIT: Duration = Duration::from_millis(500);

/// Most STS calls made at once for prefetches and background refreshes.
const BACKGROUND_STS_CALLS: usize = 16;

/// Whether a caller is waiting for an STS call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Urgency {
    /// A request waits on it: it never queues behind background work.
    Caller,
    /// Prefetch or refresh: bounded by [`BACKGROUND_STS_CALLS`].
    Background,
}

/// What to do on a request, decided under the slot's lock.
enum Plan {
    Serve(Arc<Credentials>),
    Fail(StsError),
    Wait(Flight, Option<Arc<Credentials>>),
}

/// The credential cache.
pub struct CredentialCache {
    slots: Mutex<LruCache<CacheKey, Arc<Slot>>>,
    sts: Arc<dyn Sts>,
    clock: Arc<dyn Clock>,
    config: CredentialCacheConfig,
    sts_calls: AtomicU64,
    background: Arc<tokio::sync::Semaphore>,
}

impl fmt::Debug for CredentialCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CredentialCache")
            .field("config", &self.config)
            .field("len", &self.len())
            .finish_non_exhaustive()
    }
}

/// Is `creds` good enough to hand out at `now`: strictly more than `threshold` left.
pub fn is_fresh(creds: &Credentials, now: std::time::SystemTime, threshold: Duration) -> bool {
    creds.remaining(now) > threshold
}

/// Delay before retrying after `failures` consecutive failures: 1 s doubling to 60 s, with
/// "equal jitter" (half fixed, half random) so many slots do not retry in step.
pub fn backoff(failures: u32, random: u32) -> Duration {
    let base =
        Duration::from_secs(1u64 << failures.saturating_sub(1).min(6)).min(Duration::from_secs(60));
    let half = base / 2;
    half + half.mul_f64(f64::from(random) / f64::from(u32::MAX))
}

fn random_u32() -> u32 {
    let mut b = [0u8; 4];
    // On failure the jitter is simply zero: the backoff is still correct, only less spread.
    let _ = getrandom::fill(&mut b);
    u32::from_ne_bytes(b)
}

impl CredentialCache {
    /// A cache calling `sts`.
    pub fn new(
        sts: Arc<dyn Sts>,
        clock: Arc<dyn Clock>,
        config: CredentialCacheConfig,
    ) -> Arc<Self> {
        Arc::new(Self {
            slots: Mutex::new(LruCache::new(config.capacity)),
            sts,
            clock,
            config,
            sts_calls: AtomicU64::new(0),
            background: Arc::new(tokio::sync::Semaphore::new(BACKGROUND_STS_CALLS)),
        })
    }

    /// Number of slots.
    pub fn len(&self) -> usize {
        self.slots
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    /// Whether the cache holds nothing.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// How many `sts:AssumeRole` calls were started.
    pub fn sts_calls(&self) -> u64 {
        self.sts_calls.load(Ordering::Relaxed)
    }

    fn slot(&self, key: &CacheKey) -> Arc<Slot> {
        let mut slots = self.slots.lock().unwrap_or_else(PoisonError::into_inner);
        // A hit (every request for cached credentials) does not clone the key.
        if let Some(slot) = slots.get(key) {
            return Arc::clone(slot);
        }
        Arc::clone(slots.get_or_insert(key.clone(), || Arc::new(Slot::default())))
    }

    /// Credentials for `key` with more than the threshold left, from cache or from STS.
    ///
    /// Concurrent misses share one STS call. If STS fails, credentials that have not expired yet
    /// are still served; after a failure, STS is not asked again before the backoff has passed.
    pub async fn get(self: &Arc<Self>, key: &CacheKey) -> Result<Arc<Credentials>, StsError> {
        let slot = self.slot(key);
        let plan = {
            let mut st = slot.lock();
            st.last_used = Some(self.clock.monotonic());
            self.plan(key, &slot, &mut st, Urgency::Caller)
        };
        crate::metrics::cache_lookup(matches!(plan, Plan::Serve(_)));
        match plan {
            Plan::Serve(c) => Ok(c),
            Plan::Fail(e) => Err(e),
            Plan::Wait(flight, None) => flight.await,
            // Credentials still valid are held: a caller (an SDK with its 1 s IMDS timeout) waits
            // for their refresh only briefly, and gets them if STS is slow or fails.
            Plan::Wait(flight, Some(valid)) => {
                let outcome = tokio::time::timeout(STALE_WAIT, flight).await;
                let still_valid = valid.remaining(self.clock.now()) > Duration::ZERO;
                match outcome {
                    Ok(Ok(c)) => Ok(c),
                    Err(_) if still_valid => {
                        tracing::warn!(role = %key.role_arn, "STS slow; serving credentials that are still valid");
                        Ok(valid)
                    }
                    Ok(Err(e)) if still_valid => {
                        tracing::warn!(role = %key.role_arn, error = %e, "STS failed; serving credentials that are still valid");
                        Ok(valid)
                    }
                    Ok(Err(e)) => Err(e),
                    Err(_) => Err(StsError {
                        operation: "sts:AssumeRole",
                        kind: super::StsErrorKind::Unavailable,
                        code: None,
                        message: "STS did not answer before the credentials held expired"
                            .to_owned(),
                    }),
                }
            }
        }
    }

    fn plan(
        self: &Arc<Self>,
        key: &CacheKey,
        slot: &Arc<Slot>,
        st: &mut SlotState,
        urgency: Urgency,
    ) -> Plan {
        let now = self.clock.now();
        if let Some(c) = st
            .current
            .as_ref()
            .filter(|c| is_fresh(c, now, self.config.threshold))
        {
            return Plan::Serve(Arc::clone(c));
        }
        let valid = st
            .current
            .clone()
            .filter(|c| c.remaining(now) > Duration::ZERO);
        if let Some(flight) = &st.flight {
            return Plan::Wait(flight.clone(), valid);
        }
        if st.retry_after.is_some_and(|t| self.clock.monotonic() < t) {
            return match (valid, &st.last_error) {
                (Some(c), _) => Plan::Serve(c),
                (None, Some(e)) => Plan::Fail(e.clone()),
                (None, None) => Plan::Wait(self.start_flight(key, slot, st, urgency), None),
            };
        }
        Plan::Wait(self.start_flight(key, slot, st, urgency), valid)
    }

    /// Starts an STS call for the slot (the caller holds the slot's lock). The call runs on its
    /// own task, so it completes and fills the slot even if every waiting caller goes away.
    fn start_flight(
        self: &Arc<Self>,
        key: &CacheKey,
        slot: &Arc<Slot>,
        st: &mut SlotState,
        urgency: Urgency,
    ) -> Flight {
        self.sts_calls.fetch_add(1, Ordering::Relaxed);
        let this = Arc::clone(self);
        let key = key.clone();
        let slot_ref = Arc::clone(slot);
        let task = tokio::spawn(async move {
            // Background calls (prefetch, refresh) share a few permits, so a start-up with
            // thousands of roles does not open thousands of STS connections at once.
            let _permit = match urgency {
                Urgency::Background => Arc::clone(&this.background).acquire_owned().await.ok(),
                Urgency::Caller => None,
            };
            let result = this
                .sts
                .assume_role(&key, this.config.session_duration)
                .await
                .map(Arc::new);
            let mut st = slot_ref.lock();
            st.flight = None;
            match &result {
                Ok(c) => {
                    tracing::debug!(role = %key.role_arn, session = %key.session_name, tags = key.context.as_deref().map(tracing::field::display), key_hint = c.key_hint(), "credentials obtained");
                    st.current = Some(Arc::clone(c));
                    st.failures = 0;
                    st.retry_after = None;
                    st.last_error = None;
                }
                Err(e) => {
                    st.failures = st.failures.saturating_add(1);
                    let wait = backoff(st.failures, random_u32());
                    st.retry_after = Some(this.clock.monotonic() + wait);
                    st.last_error = Some(e.clone());
                    tracing::error!(role = %key.role_arn, session = %key.session_name, tags = key.context.as_deref().map(tracing::field::display), error = %e, retry_in = ?wait, "sts:AssumeRole failed");
                }
            }
            result
        });
        let flight: BoxFuture<'static, _> = Box::pin(async move {
            task.await.unwrap_or_else(|join| {
                Err(StsError {
                    operation: "sts:AssumeRole",
                    kind: super::StsErrorKind::Unavailable,
                    code: None,
                    message: format!("internal task failed: {join}"),
                })
            })
        });
        let flight = flight.shared();
        st.flight = Some(flight.clone());
        flight
    }

    /// Starts fetching credentials for `key` in the background unless fresh ones are cached.
    pub fn prefetch(self: &Arc<Self>, key: &CacheKey) {
        let slot = self.slot(key);
        let mut st = slot.lock();
        st.last_used = Some(self.clock.monotonic());
        let _ = self.plan(key, &slot, &mut st, Urgency::Background);
    }

    /// Holds the slot for `key` (a container that will use it is running) and prefetches it:
    /// a held slot is refreshed ahead of expiry for as long as it is held.
    pub fn retain(self: &Arc<Self>, key: &CacheKey) {
        let slot = self.slot(key);
        let mut st = slot.lock();
        st.holders = st.holders.saturating_add(1);
        st.last_used = Some(self.clock.monotonic());
        let _ = self.plan(key, &slot, &mut st, Urgency::Background);
    }

    /// Lets go of one hold taken by [`Self::retain`]. When the last holder lets go, the slot is
    /// no longer refreshed in the background (its credentials expire) unless requests use it.
    pub fn release(&self, key: &CacheKey) {
        let slot = {
            let slots = self.slots.lock().unwrap_or_else(PoisonError::into_inner);
            slots.peek(key).map(Arc::clone)
        };
        if let Some(slot) = slot {
            let mut st = slot.lock();
            st.holders = st.holders.saturating_sub(1);
            if st.holders == 0 {
                st.released_at = Some(self.clock.monotonic());
            }
        }
    }

    /// One pass of the background refresher: every slot held, or used within `idle_after` (and
    /// since its last release), whose credentials have less than `threshold + margin` left
    /// starts a refresh. Returns how many.
    pub fn refresh_due(self: &Arc<Self>, margin: Duration) -> usize {
        let entries: Vec<(CacheKey, Arc<Slot>)> = {
            let slots = self.slots.lock().unwrap_or_else(PoisonError::into_inner);
            slots
                .iter()
                .map(|(k, s)| (k.clone(), Arc::clone(s)))
                .collect()
        };
        let now = self.clock.now();
        let mono = self.clock.monotonic();
        let mut started = 0;
        for (key, slot) in entries {
            let mut st = slot.lock();
            let recently_used = st.last_used.is_some_and(|t| {
                mono.saturating_duration_since(t) < self.config.idle_after
                    && st.released_at.is_none_or(|r| t > r)
            });
            let wanted = st.holders > 0 || recently_used;
            let due = st
                .current
                .as_ref()
                .is_some_and(|c| !is_fresh(c, now, self.config.threshold + margin));
            let idle = st.flight.is_none() && st.retry_after.is_none_or(|t| mono >= t);
            if wanted && due && idle {
                drop(self.start_flight(&key, &slot, &mut st, Urgency::Background));
                started += 1;
            }
        }
        crate::metrics::cache_refreshes(started);
        started
    }

    /// Runs [`Self::refresh_due`] forever, every `every`, refreshing ahead of the threshold by a
    /// margin of up to 5 minutes (less for short sessions) plus jitter.
    pub fn spawn_refresher(self: &Arc<Self>, every: Duration) -> tokio::task::JoinHandle<()> {
        let this = Arc::clone(self);
        let room = this
            .config
            .session_duration
            .saturating_sub(this.config.threshold);
        let margin = Duration::from_secs(300).min(room / 3) + every;
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let n = this.refresh_due(margin);
                if n > 0 {
                    tracing::debug!(count = n, "background credential refresh started");
                }
            }
        })
    }
}

#[cfg(test)]
#[path = "cache_tests.rs"]
mod tests;
