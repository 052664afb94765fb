//! Unit tests of the credential cache against a fake STS and a hand-driven clock.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};

use super::*;
use crate::clock::ManualClock;
use crate::creds::StsErrorKind;
use crate::creds::fake::FakeSts;

fn setup(delay: Duration) -> (ManualClock, Arc<FakeSts>, Arc<CredentialCache>) {
    setup_with(delay, 3)
}

fn setup_with(
    delay: Duration,
    capacity: usize,
) -> (ManualClock, Arc<FakeSts>, Arc<CredentialCache>) {
    setup_capped(delay, capacity, 10_000)
}

/// A cache of `capacity` slots over a fake STS answering after `delay`, making at most
/// `per_second` STS calls a second.
pub(super) fn setup_capped(
    delay: Duration,
    capacity: usize,
    per_second: u32,
) -> (ManualClock, Arc<FakeSts>, Arc<CredentialCache>) {
    let clock = ManualClock::new(SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000));
    let sts = FakeSts::new(&clock, delay);
    let cache = CredentialCache::new(
        sts.clone(),
        Arc::new(clock.clone()),
        CredentialCacheConfig {
            capacity: NonZeroUsize::new(capacity).unwrap(),
            threshold: Duration::from_secs(15 * 60),
            session_duration: Duration::from_secs(3600),
            idle_after: Duration::from_secs(3600),
            max_calls_per_second: NonZeroU32::new(per_second).unwrap(),
        },
    );
    (clock, sts, cache)
}

pub(super) fn key(role: &str, ext: Option<&str>, session: &str) -> CacheKey {
    CacheKey::new(
        format!("arn:aws:iam::123456789012:role/{role}").into(),
        ext.map(Into::into),
        session.into(),
        None,
    )
}

#[tokio::test]
async fn second_get_is_served_from_cache() {
    let (_, sts, cache) = setup(Duration::ZERO);
    let k = key("a", None, "s");
    let first = cache.get(&k).await.unwrap();
    let second = cache.get(&k).await.unwrap();
    assert_eq!(first.access_key_id, second.access_key_id);
    assert_eq!(sts.calls.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn external_id_and_session_name_are_part_of_the_key() {
    let (_, sts, cache) = setup(Duration::ZERO);
    let a = cache.get(&key("a", None, "s")).await.unwrap();
    let b = cache.get(&key("a", Some("ext"), "s")).await.unwrap();
    let c = cache.get(&key("a", None, "other")).await.unwrap();
    assert_eq!(sts.calls.load(Ordering::SeqCst), 3);
    assert_ne!(a.access_key_id, b.access_key_id);
    assert_ne!(a.access_key_id, c.access_key_id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_misses_make_one_sts_call() {
    let (_, sts, cache) = setup(Duration::from_millis(50));
    let k = key("a", None, "s");
    let tasks: Vec<_> = (0..100)
        .map(|_| {
            let cache = Arc::clone(&cache);
            let k = k.clone();
            tokio::spawn(async move { cache.get(&k).await.unwrap().access_key_id.clone() })
        })
        .collect();
    let mut ids = Vec::new();
    for t in tasks {
        ids.push(t.await.unwrap());
    }
    assert_eq!(sts.calls.load(Ordering::SeqCst), 1);
    assert!(ids.iter().all(|id| *id == ids[0]));
}

#[tokio::test]
async fn refreshed_once_past_the_threshold() {
    let (clock, sts, cache) = setup(Duration::ZERO);
    let k = key("a", None, "s");
    let first = cache.get(&k).await.unwrap();
    // 44 minutes later: 16 minutes left, still more than the 15-minute threshold.
    clock.advance(Duration::from_secs(44 * 60));
    assert_eq!(
        cache.get(&k).await.unwrap().access_key_id,
        first.access_key_id
    );
    // Exactly 15 minutes left is not "more than 15": refreshed.
    clock.advance(Duration::from_secs(60));
    let second = cache.get(&k).await.unwrap();
    assert_ne!(second.access_key_id, first.access_key_id);
    assert!(second.remaining(clock.now()) > Duration::from_secs(15 * 60));
    assert_eq!(sts.calls.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn still_valid_credentials_are_served_when_sts_fails() {
    let (clock, sts, cache) = setup(Duration::ZERO);
    let k = key("a", None, "s");
    let first = cache.get(&k).await.unwrap();
    sts.failing.store(true, Ordering::SeqCst);
    clock.advance(Duration::from_secs(50 * 60)); // 10 minutes left: due, but still valid
    assert_eq!(
        cache.get(&k).await.unwrap().access_key_id,
        first.access_key_id
    );
    clock.advance(Duration::from_secs(11 * 60)); // expired
    // Within the backoff after the failure, the error is returned without asking STS again.
    let calls = sts.calls.load(Ordering::SeqCst);
    let err = cache.get(&k).await.unwrap_err();
    assert_eq!(err.kind, StsErrorKind::Unavailable);
    assert!(sts.calls.load(Ordering::SeqCst) <= calls + 1);
}

#[tokio::test]
async fn slow_sts_does_not_hold_up_callers_with_still_valid_credentials() {
    // Regression: a caller whose credentials were due but still valid waited for the whole
    // refresh, so a slow or throttled STS made SDK callers (1 s IMDS timeout) fail.
    let (clock, sts, cache) = setup(Duration::from_millis(1500));
    let k = key("a", None, "s");
    let first = cache.get(&k).await.unwrap();
    clock.advance(Duration::from_secs(50 * 60)); // 10 minutes left: due, still valid
    let started = std::time::Instant::now();
    let stale = cache.get(&k).await.unwrap();
    let waited = started.elapsed();
    assert_eq!(stale.access_key_id, first.access_key_id);
    assert!(
        waited >= STALE_WAIT && waited < STALE_WAIT + Duration::from_millis(400),
        "waited {waited:?}"
    );
    // The refresh went on without the caller and is served once it lands.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let fresh = cache.get(&k).await.unwrap();
    assert_ne!(fresh.access_key_id, first.access_key_id);
    assert_eq!(sts.calls.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn failures_back_off_then_retry() {
    let (clock, sts, cache) = setup(Duration::ZERO);
    sts.failing.store(true, Ordering::SeqCst);
    let k = key("a", None, "s");
    assert!(cache.get(&k).await.is_err());
    assert!(cache.get(&k).await.is_err());
    assert_eq!(
        sts.calls.load(Ordering::SeqCst),
        1,
        "second request within the backoff must not call STS"
    );
    clock.advance(Duration::from_secs(2));
    sts.failing.store(false, Ordering::SeqCst);
    assert!(cache.get(&k).await.is_ok());
    assert_eq!(sts.calls.load(Ordering::SeqCst), 2);
}

#[test]
fn backoff_grows_with_jitter_and_is_capped() {
    assert_eq!(backoff(1, 0), Duration::from_millis(500));
    assert_eq!(backoff(1, u32::MAX), Duration::from_secs(1));
    assert_eq!(backoff(3, 0), Duration::from_secs(2));
    assert!(backoff(30, u32::MAX) <= Duration::from_secs(60));
    assert!(backoff(30, 0) >= Duration::from_secs(30));
}

#[tokio::test]
async fn background_refresh_renews_used_credentials_before_the_threshold() {
    let (clock, sts, cache) = setup(Duration::ZERO);
    let k = key("a", None, "s");
    let first = cache.get(&k).await.unwrap();
    assert_eq!(
        cache.refresh_due(Duration::from_secs(300)),
        0,
        "fresh credentials are not refreshed"
    );
    clock.advance(Duration::from_secs(41 * 60)); // 19 minutes left < 15 + 5
    assert_eq!(cache.refresh_due(Duration::from_secs(300)), 1);
    tokio::time::sleep(Duration::from_millis(20)).await;
    let second = cache.get(&k).await.unwrap();
    assert_ne!(second.access_key_id, first.access_key_id);
    assert_eq!(sts.calls.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn idle_slots_are_not_refreshed() {
    let (clock, sts, cache) = setup(Duration::ZERO);
    cache.get(&key("a", None, "s")).await.unwrap();
    clock.advance(Duration::from_secs(3601));
    assert_eq!(cache.refresh_due(Duration::from_secs(300)), 0);
    assert_eq!(sts.calls.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn prefetch_fills_the_cache_without_a_caller() {
    let (_, sts, cache) = setup(Duration::ZERO);
    let k = key("a", None, "s");
    cache.prefetch(&k);
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert_eq!(sts.calls.load(Ordering::SeqCst), 1);
    cache.get(&k).await.unwrap();
    assert_eq!(sts.calls.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn held_slots_are_refreshed_until_the_last_holder_releases() {
    let (clock, sts, cache) = setup(Duration::ZERO);
    let k = key("a", None, "s");
    let margin = Duration::from_secs(300);
    let settle = || tokio::time::sleep(Duration::from_millis(20));
    cache.retain(&k);
    cache.retain(&k);
    settle().await;
    assert_eq!(sts.calls.load(Ordering::SeqCst), 1, "retain prefetches");
    clock.advance(Duration::from_secs(41 * 60));
    assert_eq!(cache.refresh_due(margin), 1);
    settle().await;
    // Held slots are refreshed even when no request used them for longer than `idle_after`.
    clock.advance(Duration::from_secs(2 * 3600));
    assert_eq!(cache.refresh_due(margin), 1, "held slot past idle_after");
    settle().await;
    cache.release(&k);
    clock.advance(Duration::from_secs(46 * 60));
    assert_eq!(cache.refresh_due(margin), 1, "one holder is left");
    settle().await;
    cache.release(&k);
    clock.advance(Duration::from_secs(46 * 60));
    assert_eq!(cache.refresh_due(margin), 0, "released: left to expire");
    assert_eq!(sts.calls.load(Ordering::SeqCst), 4);
    // A request after the release makes it a used slot again.
    cache.get(&k).await.unwrap();
    assert_eq!(sts.calls.load(Ordering::SeqCst), 5);
    clock.advance(Duration::from_secs(41 * 60));
    assert_eq!(cache.refresh_due(margin), 1, "used again after release");
}

#[tokio::test]
async fn release_of_an_unknown_key_is_harmless() {
    let (_, sts, cache) = setup(Duration::ZERO);
    cache.release(&key("never", None, "s"));
    assert!(cache.is_empty());
    assert_eq!(sts.calls.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn cache_is_bounded() {
    let (_, _, cache) = setup(Duration::ZERO);
    for r in ["a", "b", "c", "d", "e"] {
        cache.get(&key(r, None, "s")).await.unwrap();
    }
    assert_eq!(cache.len(), 3);
}

#[test]
fn equal_keys_made_apart_are_one_key() {
    use std::hash::BuildHasher as _;
    let (a, b) = (key("a", Some("x"), "s"), key("a", Some("x"), "s"));
    assert_eq!(a, b);
    let state = std::hash::RandomState::new();
    assert_eq!(state.hash_one(&a), state.hash_one(&b));
    assert_ne!(a, key("a", Some("x"), "t"));
    assert_ne!(a, key("a", None, "s"));
}

#[test]
fn cache_key_debug_hides_external_id() {
    let text = format!("{:?}", key("a", Some("sekrit-ext"), "s"));
    assert!(!text.contains("sekrit-ext"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn background_sts_calls_are_bounded_and_callers_never_wait_behind_them() {
    let (_, sts, cache) = setup_with(Duration::from_millis(30), 100);
    // STS holds every call until released, so what is in flight at once does not depend on how
    // fast this machine runs the tasks.
    sts.hold();
    for i in 0..40 {
        cache.prefetch(&key(&format!("r{i}"), None, "s"));
    }
    let until = |n: u64| {
        let sts = Arc::clone(&sts);
        async move {
            tokio::time::timeout(Duration::from_secs(10), async {
                while sts.in_flight() < n {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            })
            .await
            .unwrap_or_else(|_| panic!("never {n} STS calls in flight: {}", sts.in_flight()));
        }
    };
    until(16).await;
    // A caller's own miss is not queued behind the other 24 prefetches: it runs beside the 16.
    let asking = Arc::clone(&cache);
    let caller = tokio::spawn(async move { asking.get(&key("caller", None, "s")).await });
    until(17).await;
    sts.release();
    caller.await.unwrap().unwrap();
    while sts.calls.load(Ordering::SeqCst) < 41 || cache.get(&key("r39", None, "s")).await.is_err()
    {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let max = sts.max_in_flight.load(Ordering::SeqCst);
    assert_eq!(
        max,
        16 + 1,
        "16 background calls at once, plus the caller's own"
    );
    assert_eq!(sts.calls.load(Ordering::SeqCst), 41, "one call per role");
}
