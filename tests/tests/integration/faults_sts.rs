//! STS failing under load, through a fault-injecting proxy in front of moto: throttled, slow,
//! resetting connections, answering 503, or gone. Credentials still valid keep being served (past
//! their refresh point too), retries back off with jitter instead of looping, and callers with
//! nothing cached get IMDS-style JSON errors within the STS timeout, never HTML or a hang.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use metadataproxy_tests::{
    ACCOUNT, CREDS_PATH, Daemon, Fault, FaultySts, ImdsCredentials, MappingFile, Moto, Response,
    SRC_2, get, parse_time,
};
use serde_json::json;

/// The daemon gives up on one AssumeRole after this (aws-sdk operation timeout), plus slack.
const STS_DEADLINE: Duration = Duration::from_secs(17);
/// `ROLE_SESSION_DURATION=900` with `ROLE_EXPIRATION_THRESHOLD=14` (minutes): credentials are
/// due for refresh 60 s after they were issued, and valid for 900 s.
const SESSION: &str = "900";
const THRESHOLD_MINUTES: &str = "14";
const STALE_AFTER: Duration = Duration::from_secs(60);

fn arn(role: &str) -> String {
    format!("arn:aws:iam::{ACCOUNT}:role/{role}")
}

/// Caller `n` (127.0.0.`n`).
fn caller(n: u8) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, 0, n)
}

/// Asserts `response` is an IMDS-style JSON error (503, `Code` one of `codes`, a `Message`).
fn assert_imds_error(response: &Response, codes: &[&str], what: &str) {
    assert_eq!(response.status, 503, "{what}: {response:?}");
    assert!(
        !response.body.trim_start().starts_with('<'),
        "{what}: HTML/XML body: {response:?}"
    );
    let body = response.json();
    let code = body["Code"].as_str().unwrap_or_default();
    assert!(codes.contains(&code), "{what}: Code {code:?}: {body}");
    assert!(
        body["Message"].as_str().is_some_and(|m| !m.is_empty()),
        "{what}: no Message: {body}"
    );
    assert!(
        !response.body.contains("ASIA"),
        "{what}: credentials in an error: {body}"
    );
}

/// Polls caller `src`'s role listing until it is `role` (the mapping file was reloaded).
async fn wait_mapped(daemon: &Daemon, src: Ipv4Addr, role: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let list = get(src, daemon.addr(), CREDS_PATH, &[]).await;
        if list.status == 200 && list.body == role {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "mapping for {src} never loaded: {list:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Most cache-level AssumeRole flights one slot can start within `window` when every one fails at
/// once: the first, then one after each backoff at its shortest (half of 1, 2, 4 … 60 s).
fn most_flights(window: Duration) -> usize {
    let mut t = Duration::ZERO;
    let mut flights = 1;
    loop {
        let base = Duration::from_secs(1 << (flights - 1).min(6)).min(Duration::from_secs(60));
        t += base / 2;
        if t > window {
            return flights;
        }
        flights += 1;
    }
}

/// How long the AWS SDKs wait for an IMDS answer by default (aws-sdk-rust, botocore).
const SDK_IMDS_TIMEOUT: Duration = Duration::from_secs(1);

/// aws-sdk's standard retry mode makes up to this many HTTP attempts per AssumeRole flight
/// (a throttled one is never retried by the SDK: the cache backs off instead).
const SDK_ATTEMPTS: usize = 3;

/// The `retry_in` durations the daemon logged for failed AssumeRole calls of `role`, in order.
fn logged_backoffs(logs: &str, role: &str) -> Vec<Duration> {
    let arn = arn(role);
    logs.lines()
        .filter(|l| l.contains("sts:AssumeRole failed") && l.contains(&format!("role={arn} ")))
        .filter_map(|l| {
            let value = l.split("retry_in=").nth(1)?.split_whitespace().next()?;
            parse_debug_duration(value)
        })
        .collect()
}

/// Parses a `Duration`'s `Debug` text (`742.1ms`, `1.5s`, `800µs`).
fn parse_debug_duration(text: &str) -> Option<Duration> {
    let (number, unit) = text
        .find(|c: char| c.is_ascii_alphabetic() || c == 'µ')
        .map(|i| text.split_at(i))?;
    let value: f64 = number.parse().ok()?;
    let secs = match unit {
        "s" => value,
        "ms" => value / 1e3,
        "µs" | "us" => value / 1e6,
        "ns" => value / 1e9,
        _ => return None,
    };
    Some(Duration::from_secs_f64(secs))
}

/// Caller `src` asks for `role`'s credentials every 100 ms until `until`: (latency, response)s.
async fn hammer(
    src: Ipv4Addr,
    addr: SocketAddr,
    role: String,
    until: Instant,
) -> Vec<(Duration, Response)> {
    let path = format!("{CREDS_PATH}{role}");
    let mut seen = Vec::new();
    while Instant::now() < until {
        let started = Instant::now();
        let response = get(src, addr, &path, &[]).await;
        seen.push((started.elapsed(), response));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    seen
}

/// Checks that `role`'s AssumeRole attempts through `proxy` during `window` were retried, yet
/// spaced by the backoff rather than one per request; returns (attempts, logged backoffs).
fn check_backoff(
    proxy: &FaultySts,
    logs: &str,
    role: &str,
    window: Duration,
    requests: usize,
) -> (usize, Vec<Duration>) {
    let flights = most_flights(window);
    let attempts = proxy.assume_role_attempts(&arn(role));
    assert!(
        attempts.len() >= 2,
        "{role}: STS was not retried at all in {window:?}: {attempts:?}"
    );
    assert!(
        attempts.len() <= SDK_ATTEMPTS * flights,
        "{role}: {} AssumeRole attempts in {window:?} for {} requests: a hot loop \
             (at most {flights} flights × {SDK_ATTEMPTS} SDK attempts with backoff)",
        attempts.len(),
        requests
    );
    // Each failure backs off 1 s doubling to 60 s, half of it random.
    let backoffs = logged_backoffs(logs, role);
    assert!(
        !backoffs.is_empty() && backoffs.len() <= flights,
        "{role}: {} failed flights logged (at most {flights}):\n{logs}",
        backoffs.len()
    );
    for (n, wait) in (0u32..).zip(&backoffs) {
        let base = Duration::from_secs(1 << n.min(6)).min(Duration::from_secs(60));
        assert!(
            *wait >= base / 2 && *wait <= base,
            "{role}: failure {} backed off {wait:?}, not within [{:?}, {base:?}]",
            n + 1,
            base / 2
        );
    }
    (attempts.len(), backoffs)
}

/// `cached` for 127.0.0.2 and each new role for 127.0.0.10 onwards.
fn with_new_callers(new_roles: &[String]) -> serde_json::Value {
    let mut all = serde_json::Map::new();
    all.insert("127.0.0.2".into(), json!("cached"));
    for (i, role) in (0u8..).zip(new_roles) {
        all.insert(format!("127.0.0.{}", 10 + i), json!(role));
    }
    serde_json::Value::Object(all)
}

/// Every response is credentials with key `key`, not expired; returns the slowest latency.
fn check_still_valid(seen: &[(Duration, Response)], key: &str) -> Duration {
    let mut slowest = Duration::ZERO;
    for (elapsed, response) in seen {
        let creds = ImdsCredentials::from_response(response);
        assert_eq!(
            creds.access_key_id, key,
            "STS only throttles, yet the key changed"
        );
        assert!(
            parse_time(&creds.expiration) > std::time::SystemTime::now(),
            "expired credentials served: {creds:?}"
        );
        slowest = slowest.max(*elapsed);
    }
    slowest
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn throttled_sts_serves_still_valid_credentials_and_backs_off_with_jitter() {
    const NEW: u8 = 5;
    let moto = Moto::start().await;
    moto.create_role("cached", "/").await;
    let new_roles: Vec<String> = (0..NEW).map(|i| format!("new-{i}")).collect();
    for role in &new_roles {
        moto.create_role(role, "/").await;
    }
    let proxy = FaultySts::start(moto.addr());
    let mapping = MappingFile::new(&json!({"127.0.0.2": "cached"}));
    let daemon = Daemon::builder()
        .moto(&moto)
        .env("AWS_ENDPOINT_URL_STS", proxy.url())
        .env("ROLE_SESSION_DURATION", SESSION)
        .env("ROLE_EXPIRATION_THRESHOLD", THRESHOLD_MINUTES)
        // A throttled call is a DEBUG line (the episode is one WARN line): the backoffs are
        // read from them.
        .env("LOG_LEVEL", "info,metadataproxy::creds=debug")
        .mapping(&mapping)
        .default_account()
        .start()
        .await;
    let addr = daemon.addr();
    let first = ImdsCredentials::from_response(
        &get(SRC_2, addr, &format!("{CREDS_PATH}cached"), &[]).await,
    );
    let issued = Instant::now();
    let expires = parse_time(&first.expiration);

    // From now on STS only throttles. New callers appear only now, so nothing is cached for them.
    proxy.set(Fault::Throttle, 1.0);
    let throttled_at = Instant::now();
    mapping.write(&with_new_callers(&new_roles));
    for (i, role) in (0u8..).zip(&new_roles) {
        wait_mapped(&daemon, caller(10 + i), role).await;
    }

    // Load until well past the cached credentials' refresh point.
    let load_until = issued + STALE_AFTER + Duration::from_secs(20);
    let cached_load = tokio::spawn(hammer(SRC_2, addr, "cached".to_owned(), load_until));
    let new_load: Vec<_> = (0u8..)
        .zip(new_roles.clone())
        .map(|(i, role)| tokio::spawn(hammer(caller(10 + i), addr, role, load_until)))
        .collect();

    let cached = cached_load.await.expect("cached caller task");
    let slowest_cached = check_still_valid(&cached, &first.access_key_id);
    // Regression: callers holding due-but-valid credentials waited for the whole throttled
    // refresh (1.5 s seen), longer than the AWS SDKs' 1 s IMDS timeout.
    assert!(
        slowest_cached < SDK_IMDS_TIMEOUT,
        "a caller with still-valid credentials waited {slowest_cached:?} for a throttled STS"
    );
    assert!(
        issued.elapsed() > STALE_AFTER,
        "the load did not outlast the refresh point"
    );
    assert_eq!(expires, parse_time(&first.expiration));

    let window = throttled_at.elapsed();
    let flights = most_flights(window);
    let logs = daemon.logs();
    let mut requests_per_new_role = Vec::new();
    let mut attempts_per_new_role = Vec::new();
    let mut slowest_error = Duration::ZERO;
    let mut first_backoffs = Vec::new();
    for (task, role) in new_load.into_iter().zip(&new_roles) {
        let seen = task.await.expect("new caller task");
        for (elapsed, response) in &seen {
            assert_imds_error(response, &["Throttling"], role);
            slowest_error = slowest_error.max(*elapsed);
        }
        let (attempts, backoffs) = check_backoff(&proxy, &logs, role, window, seen.len());
        first_backoffs.push(backoffs[0]);
        requests_per_new_role.push(seen.len());
        attempts_per_new_role.push(attempts);
    }
    assert!(
        slowest_error < STS_DEADLINE,
        "a caller with nothing cached waited {slowest_error:?}"
    );
    // Jitter: slots that failed together do not retry in step.
    let mut distinct = first_backoffs.clone();
    distinct.sort_unstable();
    distinct.dedup();
    assert!(
        distinct.len() > 1,
        "{NEW} roles that failed together all backed off exactly {:?}",
        first_backoffs[0]
    );
    let cached_attempts = proxy.assume_role_attempts(&arn("cached"));
    let cached_after = cached_attempts
        .iter()
        .filter(|a| a.at >= throttled_at)
        .count();
    assert!(
        cached_after <= SDK_ATTEMPTS * flights,
        "cached role: {cached_after} AssumeRole attempts in {window:?} under throttling"
    );
    eprintln!(
        "throttled for {window:?}: cached caller served {} times with the same still-valid key \
         (slowest {slowest_cached:?}; {cached_after} refresh attempts); new callers made {:?} \
         requests, every one a JSON Throttling error (slowest {slowest_error:?}), costing {:?} \
         AssumeRole attempts (bound {}); first backoffs {first_backoffs:?}",
        cached.len(),
        requests_per_new_role,
        attempts_per_new_role,
        SDK_ATTEMPTS * flights
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn slow_or_unreachable_sts_answers_within_the_sts_timeout_and_cached_callers_are_not_held_up()
{
    let mut moto = Moto::start().await;
    for role in ["cached", "slow", "late", "down"] {
        moto.create_role(role, "/").await;
    }
    let proxy = FaultySts::start(moto.addr());
    let mapping = MappingFile::new(&json!({"127.0.0.2": "cached"}));
    let daemon = Daemon::builder()
        .moto(&moto)
        .env("AWS_ENDPOINT_URL_STS", proxy.url())
        .mapping(&mapping)
        .default_account()
        .start()
        .await;
    let addr = daemon.addr();
    let cached_path = format!("{CREDS_PATH}cached");
    let first = ImdsCredentials::from_response(&get(SRC_2, addr, &cached_path, &[]).await);

    // STS holds every request for 20 s: longer than the daemon waits for it.
    proxy.set(Fault::Delay(Duration::from_secs(20)), 1.0);
    mapping.write(&json!({"127.0.0.2": "cached", "127.0.0.3": "slow"}));
    wait_mapped(&daemon, caller(3), "slow").await;
    let started = Instant::now();
    let slow =
        tokio::spawn(async move { get(caller(3), addr, &format!("{CREDS_PATH}slow"), &[]).await });
    let mut cached_latencies = Vec::new();
    while !slow.is_finished() {
        let t = Instant::now();
        let again = ImdsCredentials::from_response(&get(SRC_2, addr, &cached_path, &[]).await);
        cached_latencies.push(t.elapsed());
        assert_eq!(again.access_key_id, first.access_key_id);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let slow = slow.await.expect("slow caller");
    let waited = started.elapsed();
    assert_imds_error(
        &slow,
        &["ServiceUnavailable"],
        "STS slower than its timeout",
    );
    assert!(
        waited < STS_DEADLINE,
        "a caller waited {waited:?} on a slow STS"
    );
    let slowest_cached = cached_latencies.iter().max().copied().unwrap_or_default();
    assert!(
        slowest_cached < Duration::from_millis(500),
        "a cached caller was held up {slowest_cached:?} by another role's slow STS call"
    );

    // Slow but within the timeout: the caller waits, then gets its own role.
    proxy.set(Fault::Delay(Duration::from_millis(1500)), 1.0);
    mapping.write(&json!({"127.0.0.2": "cached", "127.0.0.3": "slow", "127.0.0.4": "late"}));
    wait_mapped(&daemon, caller(4), "late").await;
    let late = ImdsCredentials::from_response(
        &get(caller(4), addr, &format!("{CREDS_PATH}late"), &[]).await,
    );
    let identity = moto
        .caller_identity_arn(&late.access_key_id, &late.secret_access_key, &late.token)
        .await;
    assert!(identity.contains("assumed-role/late/"), "{identity}");

    // STS gone: connections refused.
    proxy.heal();
    moto.stop();
    mapping.write(&json!({
        "127.0.0.2": "cached", "127.0.0.3": "slow", "127.0.0.4": "late", "127.0.0.5": "down"
    }));
    wait_mapped(&daemon, caller(5), "down").await;
    let started = Instant::now();
    let down = get(caller(5), addr, &format!("{CREDS_PATH}down"), &[]).await;
    let waited_down = started.elapsed();
    assert_imds_error(&down, &["ServiceUnavailable"], "STS unreachable");
    assert!(
        waited_down < STS_DEADLINE,
        "a caller waited {waited_down:?} on an unreachable STS"
    );
    let still = ImdsCredentials::from_response(&get(SRC_2, addr, &cached_path, &[]).await);
    assert_eq!(still.access_key_id, first.access_key_id, "cached role lost");
    eprintln!(
        "STS delayed 20 s: error after {waited:?}, cached caller served {} times meanwhile \
         (slowest {slowest_cached:?}); STS down: error after {waited_down:?}",
        cached_latencies.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn resets_and_503s_on_some_requests_are_absorbed_and_nobody_gets_another_role() {
    let moto = Moto::start().await;
    let roles: Vec<String> = (0..8).map(|i| format!("flaky-{i}")).collect();
    for role in &roles {
        moto.create_role(role, "/").await;
    }
    let proxy = FaultySts::start(moto.addr());
    // Faults before the daemon starts, so its start-up prefetches meet them too.
    proxy.set(Fault::Reset, 0.5);
    let mapping: serde_json::Map<String, serde_json::Value> = (0u8..)
        .zip(&roles)
        .map(|(i, r)| (format!("127.0.0.{}", 20 + i), json!(r)))
        .collect();
    let mapping = MappingFile::new(&serde_json::Value::Object(mapping));
    let daemon = Daemon::builder()
        .moto(&moto)
        .env("AWS_ENDPOINT_URL_STS", proxy.url())
        .mapping(&mapping)
        .default_account()
        .start()
        .await;
    let addr = daemon.addr();
    let mut served = 0;
    for (i, role) in (0u8..).zip(&roles) {
        if i == 4 {
            proxy.set(Fault::Unavailable, 0.5);
        }
        let path = format!("{CREDS_PATH}{role}");
        // A failed flight may leave a short backoff; a caller (like an SDK) tries again.
        let deadline = Instant::now() + Duration::from_secs(20);
        let creds = loop {
            let response = get(caller(20 + i), addr, &path, &[]).await;
            if response.status == 200 {
                break ImdsCredentials::from_response(&response);
            }
            assert_imds_error(&response, &["ServiceUnavailable"], role);
            assert!(
                Instant::now() < deadline,
                "{role}: never served: {response:?}"
            );
            tokio::time::sleep(Duration::from_millis(300)).await;
        };
        let identity = moto
            .caller_identity_arn(&creds.access_key_id, &creds.secret_access_key, &creds.token)
            .await;
        assert!(
            identity.contains(&format!("assumed-role/{role}/")),
            "{role} got {identity}"
        );
        served += 1;
    }
    let faulted = proxy
        .attempts()
        .iter()
        .filter(|a| matches!(a.outcome, metadataproxy_tests::Outcome::Faulted(_)))
        .count();
    assert!(faulted > 0, "no fault was injected");
    eprintln!(
        "{served} roles served correctly through {} STS requests, {faulted} of them reset or 503",
        proxy.attempts().len()
    );
}
