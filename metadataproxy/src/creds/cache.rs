//! The credential cache: one slot per (role ARN, external id, session name), single flight,
//! refreshed ahead of expiry at a point drawn at random for each credential set, still-valid
//! credentials kept when STS fails, failures backed off, every STS call within the budget
//! (`STS_MAX_CALLS_PER_SECOND`, callers first).

use std::fmt;
use std::num::{NonZeroU32, NonZeroUsize};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use futures_util::FutureExt;
use futures_util::future::Shared;
use lru::LruCache;

use super::budget::{StsBudget, Ticket};
use super::throttling::ThrottleLog;
use super::{Credentials, Sts, StsError, StsErrorKind};
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
        let hash = HASHER.hash_one((&role_arn, &external_id, &session_name, &context));
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
    /// Most `sts:AssumeRole` calls started per second (`STS_MAX_CALLS_PER_SECOND`).
    pub max_calls_per_second: NonZeroU32,
}

type Flight = Shared<BoxFuture<'static, Result<Arc<Credentials>, StsError>>>;

#[derive(Default)]
struct SlotState {
    current: Option<Arc<Credentials>>,
    flight: Option<Flight>,
    /// The priority of the flight, raised when a caller starts waiting for it.
    ticket: Option<Arc<Ticket>>,
    /// When the background refresher renews `current`: drawn for each credential set.
    refresh_at: Option<SystemTime>,
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
    /// A request waits on it: it never queues behind background work, and takes the budget's
    /// next token before any background call.
    Caller,
    /// Prefetch or refresh: bounded by [`BACKGROUND_STS_CALLS`], and served by the budget after
    /// every caller.
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
    budget: Arc<StsBudget>,
    /// Flights waiting for their turn (the budget, or a background permit).
    queued: AtomicUsize,
    throttling: ThrottleLog,
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
            budget: StsBudget::new(config.max_calls_per_second),
            queued: AtomicUsize::new(0),
            throttling: ThrottleLog::default(),
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

    /// Credentials are handed out only with more than this left.
    pub fn threshold(&self) -> Duration {
        self.config.threshold
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
            if urgency == Urgency::Caller
                && let Some(ticket) = &st.ticket
            {
                ticket.promote();
            }
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
        let ticket = Ticket::new(urgency == Urgency::Caller);
        st.ticket = Some(Arc::clone(&ticket));
        crate::metrics::sts_queued(self.queued.fetch_add(1, Ordering::Relaxed) + 1);
        let this = Arc::clone(self);
        let key = key.clone();
        let slot_ref = Arc::clone(slot);
        let task = tokio::spawn(async move {
            // Background calls (prefetch, refresh) share a few permits, so a start-up with
            // thousands of roles does not open thousands of STS connections at once; one a
            // caller starts waiting for needs none.
            let _permit = if ticket.is_urgent() {
                None
            } else {
                let permits = Arc::clone(&this.background);
                tokio::select! {
                    permit = permits.acquire_owned() => permit.ok(),
                    () = ticket.promoted() => None,
                }
            };
            let delayed = this.budget.acquire(&ticket).await;
            crate::metrics::sts_queued(this.queued.fetch_sub(1, Ordering::Relaxed) - 1);
            if delayed {
                crate::metrics::sts_delayed(ticket.is_urgent());
            }
            let result = this
                .sts
                .assume_role(&key, this.config.session_duration)
                .await
                .map(Arc::new);
            let wait = {
                let mut st = slot_ref.lock();
                st.flight = None;
                st.ticket = None;
                match &result {
                    Ok(c) => {
                        st.current = Some(Arc::clone(c));
                        st.refresh_at = Some(this.refresh_point(c, random_u32()));
                        st.failures = 0;
                        st.retry_after = None;
                        st.last_error = None;
                        None
                    }
                    Err(e) => {
                        st.failures = st.failures.saturating_add(1);
                        let wait = backoff(st.failures, random_u32());
                        st.retry_after = Some(this.clock.monotonic() + wait);
                        st.last_error = Some(e.clone());
                        Some(wait)
                    }
                }
            };
            this.log_outcome(&key, &result, wait);
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

    /// The log lines of one flight's outcome: throttling is one line per episode, not per call.
    fn log_outcome(
        &self,
        key: &CacheKey,
        result: &Result<Arc<Credentials>, StsError>,
        wait: Option<Duration>,
    ) {
        let tags = key.context.as_deref().map(tracing::field::display);
        match result {
            Ok(c) => {
                tracing::debug!(role = %key.role_arn, session = %key.session_name, tags, key_hint = c.key_hint(), "credentials obtained");
                self.throttling.succeeded();
            }
            Err(e) if e.kind == StsErrorKind::Throttled => {
                tracing::debug!(role = %key.role_arn, session = %key.session_name, tags, error = %e, retry_in = ?wait.unwrap_or_default(), "sts:AssumeRole failed");
                self.throttling.throttled(
                    &key.role_arn,
                    self.budget.per_second().get(),
                    self.queued.load(Ordering::Relaxed),
                );
            }
            Err(e) => {
                tracing::error!(role = %key.role_arn, session = %key.session_name, tags, error = %e, retry_in = ?wait.unwrap_or_default(), "sts:AssumeRole failed");
            }
        }
    }

    /// How far ahead of the threshold credential sets are refreshed: between one and two times
    /// this (5 minutes, less for short sessions), plus the refresher's tick.
    fn refresh_spread(&self) -> Duration {
        let room = self
            .config
            .session_duration
            .saturating_sub(self.config.threshold);
        Duration::from_secs(300).min(room / 3)
    }

    /// When the background refresher renews `c`: at a point drawn (`random`) between one and two
    /// spreads before the threshold, so sets obtained together are not renewed together.
    fn refresh_point(&self, c: &Credentials, random: u32) -> SystemTime {
        let spread = self.refresh_spread();
        let ahead = spread + spread.mul_f64(f64::from(random) / f64::from(u32::MAX));
        c.expiration
            .checked_sub(self.config.threshold + ahead)
            .unwrap_or(c.last_updated)
    }

    /// Most refreshes one tick of `every` starts: half the budget of a tick, so callers keep
    /// the other half.
    fn refreshes_per_tick(&self, every: Duration) -> usize {
        let budget = f64::from(self.config.max_calls_per_second.get()) * every.as_secs_f64();
        // Truncation is intended: a whole number of calls, at least one.
        #[expect(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            reason = "a small positive count"
        )]
        let half = (budget / 2.0).ceil() as usize;
        half.max(1)
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

    /// One pass of the background refresher, which runs every `every`: every slot held, or
    /// used within `idle_after` (and since its last release), whose refresh point falls before
    /// the next pass starts a refresh — the most overdue first, at most
    /// [`Self::refreshes_per_tick`]; the rest wait for the next pass. Returns how many started.
    pub fn refresh_due(self: &Arc<Self>, every: Duration) -> usize {
        let entries: Vec<(CacheKey, Arc<Slot>)> = {
            let slots = self.slots.lock().unwrap_or_else(PoisonError::into_inner);
            slots
                .iter()
                .map(|(k, s)| (k.clone(), Arc::clone(s)))
                .collect()
        };
        let horizon = self.clock.now() + every;
        let mono = self.clock.monotonic();
        let mut due: Vec<(SystemTime, CacheKey, Arc<Slot>)> = Vec::new();
        for (key, slot) in entries {
            let st = slot.lock();
            let recently_used = st.last_used.is_some_and(|t| {
                mono.saturating_duration_since(t) < self.config.idle_after
                    && st.released_at.is_none_or(|r| t > r)
            });
            let wanted = st.holders > 0 || recently_used;
            let idle = st.flight.is_none() && st.retry_after.is_none_or(|t| mono >= t);
            let at = st.current.as_ref().map(|c| {
                st.refresh_at
                    .unwrap_or_else(|| c.expiration - self.config.threshold)
            });
            if let Some(at) = at.filter(|at| *at <= horizon)
                && wanted
                && idle
            {
                drop(st);
                due.push((at, key, slot));
            }
        }
        due.sort_by_key(|(at, _, _)| *at);
        let most = self.refreshes_per_tick(every);
        let mut started = 0;
        for (_, key, slot) in &due {
            if started == most {
                break;
            }
            let mut st = slot.lock();
            if st.flight.is_none() {
                drop(self.start_flight(key, slot, &mut st, Urgency::Background));
                started += 1;
            }
        }
        if due.len() > started {
            tracing::debug!(
                started,
                deferred = due.len() - started,
                "background refreshes beyond this tick's share wait for the next"
            );
        }
        crate::metrics::cache_refreshes(started);
        started
    }

    /// Runs [`Self::refresh_due`] forever, every `every`. Each credential set is renewed at its
    /// own point, drawn between 5 and 10 minutes (a third and two thirds of the room between
    /// the session and the threshold, for short sessions) before the threshold.
    pub fn spawn_refresher(self: &Arc<Self>, every: Duration) -> tokio::task::JoinHandle<()> {
        let this = Arc::clone(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let n = this.refresh_due(every);
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

#[cfg(test)]
#[path = "cache_budget_tests.rs"]
mod budget_tests;
