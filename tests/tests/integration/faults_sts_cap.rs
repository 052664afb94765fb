//! STS throttling above a rate, through the fault-injecting proxy in front of moto, with 40
//! callers: the daemon keeps its AssumeRole calls under `STS_MAX_CALLS_PER_SECOND` (measured at
//! the proxy, per second), callers that hold valid credentials are never failed, callers with
//! nothing cached get theirs as the budget allows, and one log line and `/metrics` say so.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use metadataproxy_tests::{
    ACCOUNT, CREDS_PATH, Daemon, FaultySts, ImdsCredentials, MappingFile, Moto, Outcome, SRC_1,
    free_port, get, loopback,
};
use serde_json::json;

/// The daemon's cap, and the rate above which the proxy answers `Throttling` (below the cap, so
/// that the daemon meets throttling at all).
const CAP: usize = 4;
const STS_RATE: u8 = 3;
/// Roles held before STS starts throttling, and roles first asked for while it throttles.
const OLD: u8 = 20;
const NEW: u8 = 20;
/// One more call than the cap in a 1 s window at the proxy: the daemon spaces calls by exactly
/// `1/CAP`, and the loopback hop can bring two of them a little closer.
const WINDOW_SLACK: usize = 1;
/// A role is throttled at most this many times in a row before it is served (at 4 calls a second
/// against 3 allowed, each call is throttled with chance about 1/4: seven in a row for one of 20
/// roles has odds below 1 in 800).
const MOST_THROTTLES_IN_A_ROW: u32 = 6;

fn arn(role: &str) -> String {
    format!("arn:aws:iam::{ACCOUNT}:role/{role}")
}

/// Caller `n` (127.0.0.`n`) has role `cap-<n - 10>`.
fn caller(n: u8) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, 0, n)
}

fn role_of(n: u8) -> String {
    format!("cap-{}", n - 10)
}

fn mapping(callers: std::ops::Range<u8>) -> serde_json::Value {
    let all: serde_json::Map<String, serde_json::Value> = callers
        .map(|n| (caller(n).to_string(), json!(role_of(n))))
        .collect();
    serde_json::Value::Object(all)
}

/// Longest a new caller may wait: every new role needs one call the proxy lets through, at most
/// `STS_RATE` a second; on top, the backoff of a role throttled `MOST_THROTTLES_IN_A_ROW` times
/// (1 s doubling: 1 + 2 + 4 + …), and the mapping reload (1 s).
fn new_caller_bound() -> Duration {
    let passes = Duration::from_secs_f64(f64::from(NEW) / f64::from(STS_RATE));
    let backoffs: u64 = (0..MOST_THROTTLES_IN_A_ROW).map(|k| 1u64 << k).sum();
    passes + Duration::from_secs(backoffs + 1)
}

/// Caller `src` asks for its role every 200 ms until `until` or, for a new caller
/// (`stop_when_served`), until it is served: (when, status, access key) of each answer.
async fn ask(
    src: u8,
    addr: SocketAddr,
    until: Instant,
    stop_when_served: bool,
) -> Vec<(Instant, u16, String)> {
    let path = format!("{CREDS_PATH}{}", role_of(src));
    let mut seen = Vec::new();
    while Instant::now() < until {
        let response = get(caller(src), addr, &path, &[]).await;
        let key = if response.status == 200 {
            ImdsCredentials::from_response(&response).access_key_id
        } else {
            String::new()
        };
        let served = response.status == 200;
        seen.push((Instant::now(), response.status, key));
        if served && stop_when_served {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    seen
}

/// The most of `times` within any 1 s window.
fn most_in_a_second(times: &[Instant]) -> usize {
    (0..times.len())
        .map(|i| {
            times[i..]
                .iter()
                .take_while(|t| t.duration_since(times[i]) < Duration::from_secs(1))
                .count()
        })
        .max()
        .unwrap_or(0)
}

/// The value of the sample `name` (with its labels) in an exposition.
fn sample(metrics: &str, name: &str) -> Option<f64> {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

/// One log line for the whole throttling episode, none per throttled call.
fn check_one_log_line(logs: &str) {
    let started = logs
        .lines()
        .filter(|l| l.contains("STS is throttling sts:AssumeRole"))
        .count();
    assert_eq!(started, 1, "throttling episode lines:\n{logs}");
    let per_call = logs
        .lines()
        .filter(|l| l.contains("sts:AssumeRole failed"))
        .count();
    assert_eq!(
        per_call, 0,
        "a line per throttled call at the default level:\n{logs}"
    );
}

/// `/metrics` counts the `throttled` calls (each one HTTP attempt: the SDK does not retry them)
/// and calls the cap delayed, and nothing is left queued; returns how many were delayed.
async fn check_metrics(admin: SocketAddr, throttled: usize) -> f64 {
    let metrics = get(SRC_1, admin, "/metrics", &[]).await;
    assert_eq!(metrics.status, 200, "{metrics:?}");
    let m = &metrics.body;
    let counted = sample(m, "metadataproxy_sts_throttled_total").unwrap_or_default();
    assert_eq!(
        counted.to_string(),
        throttled.to_string(),
        "metrics count {counted} throttled calls, the proxy throttled {throttled}:\n{m}"
    );
    let delayed = sample(
        m,
        r#"metadataproxy_sts_calls_delayed_total{priority="background"}"#,
    )
    .unwrap_or_default()
        + sample(
            m,
            r#"metadataproxy_sts_calls_delayed_total{priority="caller"}"#,
        )
        .unwrap_or_default();
    assert!(delayed >= 1.0, "no call was delayed by the cap:\n{m}");
    assert_eq!(
        sample(m, "metadataproxy_sts_calls_queued"),
        Some(0.0),
        "{m}"
    );
    delayed
}

/// At the proxy: never more than the cap in any second, throttling did happen, and every new
/// role reached STS. Returns (AssumeRole attempts, throttled, the busiest second's count).
fn check_proxy(proxy: &FaultySts) -> (usize, usize, usize) {
    let assume: Vec<_> = proxy
        .attempts()
        .into_iter()
        .filter(|a| a.action == "AssumeRole")
        .collect();
    let times: Vec<Instant> = assume.iter().map(|a| a.at).collect();
    let busiest = most_in_a_second(&times);
    assert!(
        busiest <= CAP + WINDOW_SLACK,
        "{busiest} AssumeRole calls within one second (cap {CAP})"
    );
    let throttled = assume
        .iter()
        .filter(|a| matches!(a.outcome, Outcome::Faulted(_)))
        .count();
    assert!(
        throttled > 0,
        "the proxy never throttled: the test proves nothing"
    );
    for n in 10 + OLD..10 + OLD + NEW {
        assert!(
            !proxy.assume_role_attempts(&arn(&role_of(n))).is_empty(),
            "{} never reached STS",
            role_of(n)
        );
    }

    (assume.len(), throttled, busiest)
}

/// Every answer to an old caller was its own still-valid key; returns how many there were.
async fn check_old_callers(
    old_load: Vec<tokio::task::JoinHandle<Vec<(Instant, u16, String)>>>,
    old_keys: &[String],
) -> usize {
    let mut old_answers = 0;
    for (task, (n, key)) in old_load.into_iter().zip((10u8..).zip(old_keys)) {
        for (_, status, got) in task.await.expect("old caller") {
            assert_eq!(
                status,
                200,
                "{} held valid credentials, yet failed",
                role_of(n)
            );
            assert_eq!(
                &got,
                key,
                "{}: STS only throttles, yet its key changed",
                role_of(n)
            );
            old_answers += 1;
        }
    }
    old_answers
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sts_throttling_above_a_rate_is_met_with_the_cap_priorities_and_one_log_line() {
    let moto = Moto::start().await;
    for n in 10..10 + OLD + NEW {
        moto.create_role(&role_of(n), "/").await;
    }
    let proxy = FaultySts::start(moto.addr());
    let old = 10..10 + OLD;
    let file = MappingFile::new(&mapping(old.clone()));
    let admin = loopback(free_port());
    let daemon = Daemon::builder()
        .moto(&moto)
        .env("AWS_ENDPOINT_URL_STS", proxy.url())
        .env("STS_MAX_CALLS_PER_SECOND", CAP.to_string())
        .env("ADMIN_LISTEN", admin.to_string())
        .mapping(&file)
        .default_account()
        .start()
        .await;
    let addr = daemon.addr();

    // The old callers' roles are prefetched at start, within the cap; each is then held.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut old_keys = Vec::new();
    for n in old.clone() {
        let key = loop {
            let seen = ask(n, addr, Instant::now() + Duration::from_secs(1), true).await;
            if let Some((_, 200, key)) = seen.last() {
                break key.clone();
            }
            assert!(Instant::now() < deadline, "{}: never served", role_of(n));
        };
        old_keys.push(key);
    }

    // From now on the proxy throttles AssumeRole above STS_RATE a second; 20 new callers appear.
    proxy.limit_rate(Some(usize::from(STS_RATE)));
    let throttled_from = Instant::now();
    let bound = new_caller_bound();
    file.write(&mapping(10..10 + OLD + NEW));
    let until = throttled_from + bound + Duration::from_secs(2);
    let old_load: Vec<_> = old
        .clone()
        .map(|n| {
            tokio::spawn(ask(
                n,
                addr,
                throttled_from + Duration::from_secs(15),
                false,
            ))
        })
        .collect();
    let new_load: Vec<_> = (10 + OLD..10 + OLD + NEW)
        .map(|n| tokio::spawn(ask(n, addr, until, true)))
        .collect();

    let old_answers = check_old_callers(old_load, &old_keys).await;
    let mut served_after = Vec::new();
    let mut refused = 0;
    for (task, n) in new_load.into_iter().zip(10 + OLD..) {
        let seen = task.await.expect("new caller");
        let (at, status, _) = seen.last().expect("asked at least once");
        assert_eq!(
            *status,
            200,
            "{} not served within {bound:?} ({} answers)",
            role_of(n),
            seen.len()
        );
        refused += seen.len() - 1;
        served_after.push(at.duration_since(throttled_from));
    }
    let slowest = served_after.iter().max().copied().unwrap_or_default();
    assert!(
        slowest <= bound,
        "a new caller waited {slowest:?} (bound {bound:?})"
    );

    let (attempts, throttled, busiest) = check_proxy(&proxy);
    let logs = daemon.logs();
    check_one_log_line(&logs);
    let delayed = check_metrics(admin, throttled).await;
    let caller_refusal_lines = logs
        .lines()
        .filter(|l| l.contains("cannot obtain the caller's credentials"))
        .count();
    eprintln!(
        "proxy: {attempts} AssumeRole attempts, {throttled} throttled, busiest second {busiest} (cap \
         {CAP}, proxy limit {STS_RATE}); {old_answers} answers to old callers, all their own \
         valid keys; {NEW} new callers served after {:?} (slowest {slowest:?}, bound {bound:?}) \
         with {refused} Throttling answers before; {delayed} calls delayed by the cap; \
         {caller_refusal_lines} rate-limited caller refusal lines",
        {
            let mut s = served_after.clone();
            s.sort();
            s
        }
    );
}
