//! Unit tests of the cache's STS budget on a paused tokio clock: the cap on calls per second,
//! callers before background work, refresh points spread out, throttling backed off.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use super::tests::{key, setup_capped};
use super::*;

/// The fake's call starts, checked: never closer than `1/cap`, so no 1 s window holds more.
fn assert_within_cap(starts: &[tokio::time::Instant], cap: u32) {
    let spacing = Duration::from_secs(1) / cap;
    for pair in starts.windows(2) {
        assert!(
            pair[1] - pair[0] >= spacing,
            "calls {pair:?} closer than {spacing:?}"
        );
    }
    for (i, &t) in starts.iter().enumerate() {
        let n = starts[i..]
            .iter()
            .take_while(|&&u| u < t + Duration::from_secs(1))
            .count();
        assert!(n <= cap as usize, "{n} calls in the second after {t:?}");
    }
}

#[tokio::test(start_paused = true)]
async fn sts_calls_never_exceed_the_cap_prefetches_and_callers_together() {
    let (_, sts, cache) = setup_capped(Duration::from_millis(30), 100, 5);
    let t0 = tokio::time::Instant::now();
    for i in 0..40 {
        cache.prefetch(&key(&format!("bg{i}"), None, "s"));
    }
    let callers: Vec<_> = (0..10)
        .map(|i| {
            let cache = Arc::clone(&cache);
            tokio::spawn(async move { cache.get(&key(&format!("c{i}"), None, "s")).await })
        })
        .collect();
    for c in callers {
        c.await.unwrap().unwrap();
    }
    while sts.calls.load(Ordering::SeqCst) < 50 {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let starts = sts.started.lock().unwrap().clone();
    assert_eq!(starts.len(), 50, "one call per key");
    assert_within_cap(&starts, 5);
    // 50 calls at 5 a second, back to back: the last starts 49 × 200 ms after the first.
    assert_eq!(starts[49] - t0, Duration::from_millis(9800));
    assert_eq!(cache.queued.load(Ordering::SeqCst), 0);
}

#[tokio::test(start_paused = true)]
async fn waiting_callers_take_the_next_tokens_before_queued_background_work() {
    let (_, sts, cache) = setup_capped(Duration::ZERO, 100, 2);
    for i in 0..20 {
        cache.prefetch(&key(&format!("bg{i}"), None, "s"));
    }
    // Two prefetches went; 18 wait (16 for the budget, 2 for a background permit).
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(sts.calls.load(Ordering::SeqCst), 2);
    let started = tokio::time::Instant::now();
    // Three callers with nothing cached, and one waiting for the last queued prefetch.
    let roles = ["new-a", "new-b", "new-c", "bg19"];
    let callers: Vec<_> = roles
        .iter()
        .map(|r| {
            let cache = Arc::clone(&cache);
            let k = key(r, None, "s");
            tokio::spawn(async move {
                cache.get(&k).await.unwrap();
                tokio::time::Instant::now()
            })
        })
        .collect();
    let mut slowest = Duration::ZERO;
    for c in callers {
        slowest = slowest.max(c.await.unwrap() - started);
    }
    // At 2 a second, four callers are served by the next four tokens: within 2 s, not after the
    // 18 queued prefetches (9 s).
    assert!(
        slowest <= Duration::from_secs(2),
        "slowest caller {slowest:?}"
    );
    let order = sts.assumed.lock().unwrap().clone();
    let next_four: Vec<String> = order[2..6]
        .iter()
        .map(|a| a.rsplit('/').next().unwrap().to_owned())
        .collect();
    let mut got = next_four.clone();
    got.sort();
    assert_eq!(got, ["bg19", "new-a", "new-b", "new-c"], "order {order:?}");
    while sts.calls.load(Ordering::SeqCst) < 23 {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_within_cap(&sts.started.lock().unwrap(), 2);
    assert_eq!(
        sts.calls.load(Ordering::SeqCst),
        23,
        "bg19 was assumed once"
    );
}

/// The least time left on any cached credential set.
fn least_left(cache: &CredentialCache, now: SystemTime) -> Duration {
    let slots = cache.slots.lock().unwrap();
    slots
        .iter()
        .filter_map(|(_, s)| s.lock().current.as_ref().map(|c| c.remaining(now)))
        .min()
        .unwrap_or(Duration::MAX)
}

#[tokio::test(start_paused = true)]
async fn refreshes_of_sets_obtained_together_are_spread_and_bounded_per_tick() {
    const SETS: usize = 1000;
    const TICK: Duration = Duration::from_secs(15);
    let (clock, sts, cache) = setup_capped(Duration::ZERO, SETS, 10);
    let keys: Vec<CacheKey> = (0..SETS)
        .map(|i| key(&format!("r{i}"), None, "s"))
        .collect();
    for k in &keys {
        cache.retain(k);
    }
    while sts.calls.load(Ordering::SeqCst) < SETS as u64 {
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    // Every set was obtained at the same instant of the cache's clock: without a spread they
    // would all fall due at the same tick.
    let most = cache.refreshes_per_tick(TICK);
    assert_eq!(most, 75, "half of 10 a second over 15 s");
    let mut per_tick = Vec::new();
    let mut ticks = 0;
    while sts.calls.load(Ordering::SeqCst) < 2 * SETS as u64 {
        ticks += 1;
        assert!(ticks < 240, "not all refreshed in an hour");
        clock.advance(TICK);
        let started = cache.refresh_due(TICK);
        assert!(started <= most, "{started} refreshes in one tick");
        if started > 0 {
            per_tick.push(started);
        }
        tokio::time::sleep(TICK).await; // the budget lets them through meanwhile
        let left = least_left(&cache, clock.now());
        assert!(
            left > cache.config.threshold,
            "tick {ticks}: a set has only {left:?} left"
        );
    }
    // Refresh points lie 5 to 10 minutes before the threshold: 20 ticks of 15 s.
    assert!(
        per_tick.len() >= 15,
        "refreshes bunched into {} ticks: {per_tick:?}",
        per_tick.len()
    );
    assert_eq!(sts.calls.load(Ordering::SeqCst), 2 * SETS as u64);
}

#[test]
fn refresh_points_lie_between_one_and_two_spreads_before_the_threshold() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let _guard = rt.enter();
    let (clock, _, cache) = setup_capped(Duration::ZERO, 3, 10);
    let now = clock.now();
    let creds = Credentials {
        access_key_id: "ASIAX".into(),
        secret_access_key: super::super::Secret::new(String::new()),
        session_token: super::super::Secret::new(String::new()),
        expiration: now + Duration::from_secs(3600),
        last_updated: now,
        assumed_role_arn: String::new(),
        assumed_role_id: String::new(),
        delivery: super::super::Delivery::default(),
    };
    let ahead = |r| {
        creds
            .expiration
            .duration_since(cache.refresh_point(&creds, r))
            .unwrap()
    };
    // 15 minutes threshold, then 5 to 10 minutes.
    assert_eq!(ahead(0), Duration::from_secs(20 * 60));
    assert_eq!(ahead(u32::MAX), Duration::from_secs(25 * 60));
    let mid = ahead(u32::MAX / 2);
    assert!(mid > Duration::from_secs(22 * 60) && mid < Duration::from_secs(23 * 60));
}

#[tokio::test(start_paused = true)]
async fn throttled_calls_back_off_and_valid_credentials_keep_being_served() {
    let (clock, sts, cache) = setup_capped(Duration::ZERO, 10, 5);
    let k = key("a", None, "s");
    let first = cache.get(&k).await.unwrap();
    sts.throttling.store(true, Ordering::SeqCst);
    clock.advance(Duration::from_secs(50 * 60)); // due, still valid
    for _ in 0..20 {
        let served = cache.get(&k).await.unwrap();
        assert_eq!(served.access_key_id, first.access_key_id);
    }
    // One throttled refresh, then the backoff: the 20 requests did not make 20 calls.
    assert_eq!(sts.calls.load(Ordering::SeqCst), 2);
    // A caller with nothing cached gets the throttling error, and is not retried in a loop.
    let other = key("b", None, "s");
    let err = cache.get(&other).await.unwrap_err();
    assert_eq!(err.kind, StsErrorKind::Throttled);
    assert_eq!(
        cache.get(&other).await.unwrap_err().kind,
        StsErrorKind::Throttled
    );
    assert_eq!(sts.calls.load(Ordering::SeqCst), 3);
    // STS recovers: after the backoff, both are served fresh.
    sts.throttling.store(false, Ordering::SeqCst);
    clock.advance(Duration::from_secs(2));
    assert_ne!(
        cache.get(&k).await.unwrap().access_key_id,
        first.access_key_id
    );
    cache.get(&other).await.unwrap();
}
