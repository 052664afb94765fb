//! Tests for the passthrough against stand-in upstreams on 127.0.0.1.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use http::{Method, StatusCode};
use http_body_util::BodyExt as _;

use super::stub::{Reply, Seen, Stub};
use super::*;
use crate::clock::ManualClock;
use crate::imds::path::parse;

const TOKEN_PATH: &str = "/latest/api/token";

fn path(raw: &str) -> ImdsPath<'_> {
    parse(raw).unwrap_or_else(|e| panic!("{raw:?}: {e}"))
}

fn upstream(stub: &Stub) -> Upstream {
    Upstream::new(stub.uri(), Duration::from_secs(2), AllowList::everything())
}

async fn get(up: &Upstream, raw: &str) -> Result<(StatusCode, String), UpstreamError> {
    let response = up.forward(&Method::GET, &path(raw), None).await?;
    let status = response.status();
    let body = response
        .into_body()
        .collect()
        .await
        .unwrap_or_else(|e| match e {})
        .to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

/// An `IMDSv2` upstream that issues `tok-<n>` for the n-th PUT and accepts only the newest token.
fn v2_upstream(seen: &Seen, before: &[Seen]) -> Reply {
    let puts = before.iter().filter(|s| s.method == Method::PUT).count();
    if seen.method == Method::PUT {
        assert_eq!(seen.target, TOKEN_PATH);
        assert_eq!(seen.headers[TTL_HEADER], "21600");
        return Reply::new(StatusCode::OK, format!("tok-{}", puts + 1)).header(TTL_HEADER, "21600");
    }
    let newest = format!("tok-{puts}");
    if seen
        .headers
        .get(TOKEN_HEADER)
        .is_some_and(|t| *t == *newest)
    {
        Reply::new(StatusCode::OK, "us-east-1")
            .header("content-type", "text/plain")
            .header("x-upstream-secret", "do-not-relay")
            .header("set-cookie", "a=b")
    } else {
        Reply::new(StatusCode::UNAUTHORIZED, "")
    }
}

#[tokio::test]
async fn one_token_serves_many_concurrent_requests() {
    let stub = Stub::start(v2_upstream).await;
    let up = Arc::new(upstream(&stub));
    let tasks: Vec<_> = (0..20)
        .map(|_| {
            let up = Arc::clone(&up);
            tokio::spawn(async move { get(&up, "/latest/meta-data/placement/region").await })
        })
        .collect();
    for t in tasks {
        let result = t.await.unwrap_or_else(|e| panic!("task: {e}"));
        assert_eq!(result.ok(), Some((StatusCode::OK, "us-east-1".to_owned())));
    }
    assert_eq!(
        stub.count(&Method::PUT),
        1,
        "single flight: one PUT for all"
    );
    assert_eq!(stub.count(&Method::GET), 20);
}

#[tokio::test]
async fn only_status_body_and_content_type_are_relayed() {
    let stub = Stub::start(v2_upstream).await;
    let response = upstream(&stub)
        .forward(
            &Method::GET,
            &path("/latest/meta-data/placement/region"),
            None,
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let names: Vec<&str> = response
        .headers()
        .keys()
        .map(http::HeaderName::as_str)
        .collect();
    assert_eq!(names, ["content-type"]);
}

#[tokio::test]
async fn nothing_but_host_and_our_token_reaches_upstream() {
    let stub = Stub::start(v2_upstream).await;
    let result = get(&upstream(&stub), "/latest/meta-data/placement/").await;
    assert!(result.is_ok(), "{result:?}");
    let got = stub
        .seen()
        .into_iter()
        .find(|s| s.method == Method::GET)
        .unwrap_or_else(|| panic!("no GET seen"));
    assert_eq!(
        got.target, "/latest/meta-data/placement/",
        "canonical path, slash kept"
    );
    let mut names: Vec<&str> = got.headers.keys().map(http::HeaderName::as_str).collect();
    names.sort_unstable();
    assert_eq!(names, ["host", TOKEN_HEADER]);
    assert_eq!(got.headers[TOKEN_HEADER], "tok-1");
}

#[tokio::test]
async fn token_is_refreshed_a_minute_before_expiry() {
    let stub = Stub::start(v2_upstream).await;
    let clock = ManualClock::new(SystemTime::UNIX_EPOCH);
    let up = upstream(&stub).with_clock(Arc::new(clock.clone()));
    for _ in 0..2 {
        assert!(get(&up, "/latest/meta-data/mac").await.is_ok());
    }
    clock.advance(Duration::from_secs(21_600 - 61));
    assert!(get(&up, "/latest/meta-data/mac").await.is_ok());
    assert_eq!(stub.count(&Method::PUT), 1);
    clock.advance(Duration::from_secs(1));
    assert!(get(&up, "/latest/meta-data/mac").await.is_ok());
    assert_eq!(stub.count(&Method::PUT), 2, "refreshed 60 s before expiry");
}

#[tokio::test]
async fn v1_only_upstream_is_remembered_for_five_minutes() {
    let stub = Stub::start(|seen, _| match seen.method {
        Method::PUT => Reply::new(StatusCode::METHOD_NOT_ALLOWED, ""),
        _ if seen.headers.contains_key(TOKEN_HEADER) => Reply::new(StatusCode::BAD_REQUEST, ""),
        _ => Reply::new(StatusCode::OK, "i-host"),
    })
    .await;
    let clock = ManualClock::new(SystemTime::UNIX_EPOCH);
    let up = upstream(&stub).with_clock(Arc::new(clock.clone()));
    for _ in 0..3 {
        let result = get(&up, "/latest/meta-data/instance-id").await;
        assert_eq!(result.ok(), Some((StatusCode::OK, "i-host".to_owned())));
    }
    assert_eq!(stub.count(&Method::PUT), 1);
    clock.advance(Duration::from_mins(5));
    assert!(get(&up, "/latest/meta-data/instance-id").await.is_ok());
    assert_eq!(stub.count(&Method::PUT), 2, "asks again after five minutes");
}

#[tokio::test]
async fn a_401_fetches_a_new_token_and_retries_once() {
    // The upstream forgets tokens after the first GET (as after an upstream restart).
    let stub = Stub::start(|seen, before| {
        let gets = before.iter().filter(|s| s.method == Method::GET).count();
        if seen.method == Method::GET && gets == 0 {
            Reply::new(StatusCode::UNAUTHORIZED, "")
        } else {
            v2_upstream(seen, before)
        }
    })
    .await;
    let result = get(&upstream(&stub), "/latest/meta-data/mac").await;
    assert_eq!(result.ok(), Some((StatusCode::OK, "us-east-1".to_owned())));
    assert_eq!(stub.count(&Method::PUT), 2);
    let tokens: Vec<_> = stub
        .seen()
        .iter()
        .filter_map(|s| s.headers.get(TOKEN_HEADER).cloned())
        .collect();
    assert_eq!(tokens, ["tok-1", "tok-2"]);
}

#[tokio::test]
async fn a_second_401_is_an_error_not_a_loop() {
    let stub = Stub::start(|seen, before| match seen.method {
        Method::PUT => v2_upstream(seen, before),
        _ => Reply::new(StatusCode::UNAUTHORIZED, ""),
    })
    .await;
    let result = get(&upstream(&stub), "/latest/meta-data/mac").await;
    assert!(
        matches!(result, Err(UpstreamError::Unauthorized)),
        "{result:?}"
    );
    assert_eq!(stub.count(&Method::GET), 2);
}

#[tokio::test]
async fn safe_query_is_forwarded_and_unsafe_query_is_refused() {
    let stub = Stub::start(v2_upstream).await;
    let up = upstream(&stub);
    let p = path("/latest/meta-data/mac");
    let ok = up.forward(&Method::GET, &p, Some("a=b&c=d/e?f")).await;
    assert!(ok.is_ok(), "{ok:?}");
    let targets: Vec<String> = stub.seen().into_iter().map(|s| s.target).collect();
    assert!(
        targets.contains(&"/latest/meta-data/mac?a=b&c=d/e?f".to_owned()),
        "{targets:?}"
    );
    for bad in ["a b", "x=%2e", "x#y", "x=\u{e9}", "x=<y>", "x\"y"] {
        let r = up.forward(&Method::GET, &p, Some(bad)).await;
        assert!(matches!(r, Err(UpstreamError::BadQuery)), "{bad:?}: {r:?}");
    }
    assert_eq!(
        stub.seen().len(),
        2,
        "refused queries never reached the upstream"
    );
}

#[tokio::test]
async fn only_get_and_head_and_never_iam_paths() {
    let stub = Stub::start(v2_upstream).await;
    let up = upstream(&stub);
    let p = path("/latest/meta-data/mac");
    for m in [Method::POST, Method::PUT, Method::DELETE, Method::OPTIONS] {
        let r = up.forward(&m, &p, None).await;
        assert!(
            matches!(r, Err(UpstreamError::MethodNotAllowed)),
            "{m}: {r:?}"
        );
    }
    for raw in [
        "/latest/meta-data/iam/security-credentials/host-role",
        "/latest/Meta-Data/IAM/info",
        "/meta-data/iam/",
        "/latest/meta-data/identity-credentials/ec2/security-credentials/ec2-instance",
        "/latest/api/token",
    ] {
        let r = up.forward(&Method::GET, &path(raw), None).await;
        assert!(matches!(r, Err(UpstreamError::Forbidden)), "{raw}: {r:?}");
    }
    assert!(stub.seen().is_empty());
    let head = up.forward(&Method::HEAD, &p, None).await;
    assert_eq!(head.map(|r| r.status()).ok(), Some(StatusCode::OK));
}

#[tokio::test]
async fn closed_port_fails_fast_as_unreachable() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("{e}"));
        l.local_addr().unwrap_or_else(|e| panic!("{e}")).port()
    };
    let base = format!("http://127.0.0.1:{port}")
        .parse()
        .unwrap_or_else(|e| panic!("{e}"));
    let up = Upstream::new(base, Duration::from_secs(5), AllowList::everything());
    let started = Instant::now();
    let r = get(&up, "/latest/meta-data/mac").await;
    assert!(matches!(r, Err(UpstreamError::Unreachable(_))), "{r:?}");
    assert!(started.elapsed() < Duration::from_secs(1));
}

#[tokio::test]
async fn slow_upstream_times_out() {
    let stub = Stub::start(|seen, before| match seen.method {
        Method::PUT => v2_upstream(seen, before),
        _ => Reply::new(StatusCode::OK, "late").after(Duration::from_secs(5)),
    })
    .await;
    let up = Upstream::new(
        stub.uri(),
        Duration::from_millis(200),
        AllowList::everything(),
    );
    let started = Instant::now();
    let r = get(&up, "/latest/meta-data/mac").await;
    assert!(matches!(r, Err(UpstreamError::Timeout)), "{r:?}");
    assert!(started.elapsed() < Duration::from_secs(2));
}

#[tokio::test]
async fn oversized_body_is_refused() {
    let stub = Stub::start(|seen, before| match seen.method {
        Method::PUT => v2_upstream(seen, before),
        _ => Reply::new(StatusCode::OK, vec![b'x'; MAX_BODY + 1]),
    })
    .await;
    let r = get(&upstream(&stub), "/latest/user-data").await;
    assert!(matches!(r, Err(UpstreamError::BodyTooLarge)), "{r:?}");
}

#[test]
fn allow_list_matches_whole_segments() {
    let base: Uri = "http://127.0.0.1:9"
        .parse()
        .unwrap_or_else(|e| panic!("{e}"));
    let up = Upstream::new(
        base.clone(),
        Duration::from_secs(1),
        AllowList::only(&["meta-data/placement", "meta-data/instance-id/"]),
    );
    let table = [
        ("/latest/meta-data/placement/region", true),
        ("/latest/meta-data/placement/", true),
        ("/latest/meta-data/placement", true),
        ("/2021-03-23/meta-data/placement/availability-zone", true),
        ("/latest/meta-data/instance-id", true),
        ("/latest/", true),
        ("/", true),
        ("/latest/meta-data/placementx", false),
        ("/latest/meta-data/", false),
        ("/latest/meta-data/mac", false),
        ("/latest/user-data", false),
        ("/meta-data/placement/region", false),
        ("/latest/Meta-Data/placement/region", false),
    ];
    for (raw, want) in table {
        assert_eq!(up.allows(&path(raw)), want, "{raw}");
    }
    let partial = Upstream::new(
        base.clone(),
        Duration::from_secs(1),
        AllowList::only(&["meta-data/place"]),
    );
    assert!(!partial.allows(&path("/latest/meta-data/placement/region")));
    let open = Upstream::new(base, Duration::from_secs(1), AllowList::everything());
    assert!(open.allows(&path("/anything/at/all")));
}

#[tokio::test]
async fn the_default_list_never_forwards_user_data_or_signatures() {
    let stub = Stub::start(v2_upstream).await;
    let up = Upstream::new(stub.uri(), Duration::from_secs(2), AllowList::default());
    for raw in [
        "/latest/user-data",
        "/latest/dynamic/instance-identity/pkcs7",
        "/latest/dynamic/instance-identity/signature",
        "/latest/dynamic/instance-identity/rsa2048",
        "/latest/meta-data/tags/instance/Name",
    ] {
        let r = get(&up, raw).await;
        assert!(matches!(r, Err(UpstreamError::Forbidden)), "{raw}: {r:?}");
    }
    assert!(stub.seen().is_empty(), "refused paths reached the upstream");
    assert!(get(&up, "/latest/meta-data/placement/region").await.is_ok());
}

#[tokio::test]
async fn failed_refresh_keeps_a_still_valid_token() {
    // Issues one token, then refuses every later PUT; GETs accept that one token.
    let stub = Stub::start(|seen, before| {
        let puts = before.iter().filter(|s| s.method == Method::PUT).count();
        match seen.method {
            Method::PUT if puts > 0 => Reply::new(StatusCode::INTERNAL_SERVER_ERROR, ""),
            Method::PUT => Reply::new(StatusCode::OK, "tok-1"),
            _ => v2_upstream(seen, &before[..1]),
        }
    })
    .await;
    let clock = ManualClock::new(SystemTime::UNIX_EPOCH);
    let up = upstream(&stub).with_clock(Arc::new(clock.clone()));
    assert!(get(&up, "/latest/meta-data/mac").await.is_ok());
    clock.advance(Duration::from_secs(21_600 - 30));
    let r = get(&up, "/latest/meta-data/mac").await;
    assert!(
        r.is_ok(),
        "inside the refresh window the old token still serves: {r:?}"
    );
    assert_eq!(stub.count(&Method::PUT), 2, "a refresh was attempted");
    clock.advance(Duration::from_secs(30));
    let r = get(&up, "/latest/meta-data/mac").await;
    assert!(
        matches!(
            r,
            Err(UpstreamError::TokenRefused(
                StatusCode::INTERNAL_SERVER_ERROR
            ))
        ),
        "{r:?}"
    );
}

#[tokio::test]
async fn debug_never_shows_the_upstream_token() {
    let stub = Stub::start(v2_upstream).await;
    let up = upstream(&stub);
    let r = get(&up, "/latest/meta-data/placement/region").await;
    assert_eq!(r.ok(), Some((StatusCode::OK, "us-east-1".to_owned())));
    assert_eq!(stub.count(&Method::PUT), 1, "a token is held now");
    let shown = format!("{up:?} {:?}", up.session);
    assert!(!shown.contains("tok-1"), "{shown}");
}
