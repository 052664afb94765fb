//! The container-credentials route without a socket: the service built from a configuration and
//! a fake STS, with callers' containers and tokens from a fake.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use http::{Method, StatusCode};

use super::{CallerToken, CallerTokens, Ecs, Expected, PATH};
use crate::creds::Secret;
use crate::identity::ConnInfo;
use crate::imds::service::tests::{Fixture, call, fixture};
use futures_util::future::BoxFuture;

/// Containers by caller address, and how many times one was looked up.
#[derive(Debug, Default)]
struct FakeTokens(HashMap<String, CallerToken>, Arc<AtomicUsize>);

impl CallerTokens for FakeTokens {
    fn token<'a>(&'a self, conn: &'a ConnInfo) -> BoxFuture<'a, Option<CallerToken>> {
        self.1.fetch_add(1, Ordering::SeqCst);
        let found = self
            .0
            .get(&conn.peer.ip().to_canonical().to_string())
            .cloned();
        Box::pin(std::future::ready(found))
    }
}

const TOKEN_A: &str = "token-of-a-0123456789";

/// 10.0.0.2: container `a` with role-a and a token; 10.0.0.3: container `b` with role-b and its
/// own token; 10.0.0.4: container `c` with role-c and no token; 10.0.0.5: container `d` with a
/// token and no role; 10.0.0.6: no container, role-a by the mapping file; 10.0.0.7: container `e`
/// with role-a and a token file that cannot be read.
fn ecs_fixture() -> Fixture {
    ecs_fixture_counting().0
}

/// [`ecs_fixture`], and the number of token lookups it makes.
fn ecs_fixture_counting() -> (Fixture, Arc<AtomicUsize>) {
    let lookups = Arc::new(AtomicUsize::new(0));
    let mut f = fixture(
        &[("ECS_ENDPOINT", "true")],
        Some(
            r#"{"10.0.0.2": "role-a", "10.0.0.3": "role-b", "10.0.0.4": "role-c", "10.0.0.6": "role-a", "10.0.0.7": "role-a"}"#,
        ),
    );
    let container = |name: &str, token: Option<&str>| CallerToken {
        container: name.into(),
        token: token.map_or(Expected::Unset, |t| Expected::Token(Secret::new(t.into()))),
    };
    let tokens = FakeTokens(
        HashMap::from([
            ("10.0.0.2".into(), container("a", Some(TOKEN_A))),
            ("10.0.0.3".into(), container("b", Some("token-of-b"))),
            ("10.0.0.4".into(), container("c", None)),
            ("10.0.0.5".into(), container("d", Some("token-of-d"))),
            (
                "10.0.0.7".into(),
                CallerToken {
                    container: "e".into(),
                    token: Expected::Unreadable {
                        path: "/var/run/token".into(),
                        reason: "it is empty".into(),
                    },
                },
            ),
        ]),
        Arc::clone(&lookups),
    );
    Arc::get_mut(&mut f.imds)
        .expect("the service is not shared yet")
        .ecs = Some(Ecs::new(Arc::new(tokens)));
    (f, lookups)
}

async fn get(f: &Fixture, ip: &str, auth: Option<&str>) -> (StatusCode, serde_json::Value) {
    let headers: Vec<(&str, &str)> = auth.map(|a| ("authorization", a)).into_iter().collect();
    let (status, body) = call(f, ip, Method::GET, PATH, &headers).await;
    let json = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"));
    (status, json)
}

#[tokio::test]
async fn the_right_token_gets_the_callers_own_role() {
    let f = ecs_fixture();
    let (status, doc) = get(&f, "10.0.0.2", Some(TOKEN_A)).await;
    assert_eq!(status, StatusCode::OK, "{doc}");
    assert_eq!(doc["RoleArn"], "arn:aws:iam::123456789012:role/role-a");
    for field in ["AccessKeyId", "SecretAccessKey", "Token"] {
        assert!(
            doc[field].as_str().is_some_and(|v| !v.is_empty()),
            "{field}: {doc}"
        );
    }
    let expiration = doc["Expiration"].as_str().unwrap();
    humantime::parse_rfc3339(expiration).unwrap_or_else(|e| panic!("{e}: {expiration}"));
    // The same credential set IMDS serves this caller.
    let (_, imds) = call(
        &f,
        "10.0.0.2",
        Method::GET,
        "/latest/meta-data/iam/security-credentials/role-a",
        &[],
    )
    .await;
    let imds: serde_json::Value = serde_json::from_str(&imds).unwrap();
    assert_eq!(doc["AccessKeyId"], imds["AccessKeyId"]);
    assert_eq!(doc["Expiration"], imds["Expiration"]);
}

#[tokio::test]
async fn missing_wrong_or_borrowed_tokens_are_refused() {
    let f = ecs_fixture();
    let cases = [
        ("10.0.0.2", None, StatusCode::UNAUTHORIZED, "Unauthorized"),
        (
            "10.0.0.2",
            Some("token-of-b"),
            StatusCode::FORBIDDEN,
            "AccessDenied",
        ),
        (
            "10.0.0.2",
            Some("token-of-a"),
            StatusCode::FORBIDDEN,
            "AccessDenied",
        ),
        ("10.0.0.2", Some(""), StatusCode::FORBIDDEN, "AccessDenied"),
        // Container b presenting a's token.
        (
            "10.0.0.3",
            Some(TOKEN_A),
            StatusCode::FORBIDDEN,
            "AccessDenied",
        ),
        // A container without a token of its own accepts none.
        (
            "10.0.0.4",
            Some(TOKEN_A),
            StatusCode::FORBIDDEN,
            "AccessDenied",
        ),
        ("10.0.0.4", Some(""), StatusCode::FORBIDDEN, "AccessDenied"),
        // A container whose token file cannot be read accepts none (fail closed).
        (
            "10.0.0.7",
            Some(TOKEN_A),
            StatusCode::FORBIDDEN,
            "AccessDenied",
        ),
        ("10.0.0.7", Some(""), StatusCode::FORBIDDEN, "AccessDenied"),
        // A caller in no container has no token, even with a role.
        (
            "10.0.0.6",
            Some(TOKEN_A),
            StatusCode::FORBIDDEN,
            "AccessDenied",
        ),
    ];
    for (ip, auth, status, code) in cases {
        let (got, doc) = get(&f, ip, auth).await;
        assert_eq!(
            (got, doc["code"].as_str()),
            (status, Some(code)),
            "{ip} {auth:?}: {doc}"
        );
        assert!(doc["message"].is_string(), "{doc}");
        assert!(doc.get("SecretAccessKey").is_none(), "{doc}");
    }
}

#[tokio::test]
async fn a_caller_without_a_role_gets_404() {
    let f = ecs_fixture();
    let (status, doc) = get(&f, "10.0.0.5", Some("token-of-d")).await;
    assert_eq!(
        (status, doc["code"].as_str()),
        (StatusCode::NOT_FOUND, Some("NotFound"))
    );
}

#[tokio::test]
async fn other_methods_are_refused() {
    let f = ecs_fixture();
    let (status, _) = call(
        &f,
        "10.0.0.2",
        Method::POST,
        PATH,
        &[("authorization", TOKEN_A)],
    )
    .await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
}

#[tokio::test]
async fn without_the_setting_the_route_is_404() {
    let f = fixture(&[], Some(r#"{"10.0.0.2": "role-a"}"#));
    assert!(f.imds.ecs.is_none());
    let (status, _) = call(
        &f,
        "10.0.0.2",
        Method::GET,
        PATH,
        &[("authorization", TOKEN_A)],
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[test]
fn ecs_endpoint_setting_defaults_to_off() {
    let off = crate::config::Config::load(["metadataproxy"], &HashMap::<String, String>::new());
    assert!(!off.unwrap().ecs_endpoint);
    let on = crate::config::Config::load(
        ["metadataproxy"],
        &HashMap::from([("ECS_ENDPOINT".to_owned(), "true".to_owned())]),
    );
    assert!(on.unwrap().ecs_endpoint);
}

#[tokio::test]
async fn without_a_header_no_container_token_is_looked_up() {
    // A token file is read per lookup: a caller sending no header must not cause that work.
    let (f, lookups) = ecs_fixture_counting();
    for ip in ["10.0.0.2", "10.0.0.7", "10.0.0.9"] {
        let (status, body) = get(&f, ip, None).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{ip}: {body}");
    }
    assert_eq!(lookups.load(Ordering::SeqCst), 0);
    let (status, _) = get(&f, "10.0.0.2", Some(TOKEN_A)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(lookups.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn sts_failures_reach_the_caller_as_a_generic_message_with_a_request_id() {
    let f = ecs_fixture();
    f.sts.failing.store(true, Ordering::SeqCst);
    let (status, doc) = get(&f, "10.0.0.2", Some(TOKEN_A)).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{doc}");
    let message = doc["Message"].as_str().unwrap_or_default();
    assert!(message.contains("request id "), "{doc}");
    assert!(
        !message.contains("sts:AssumeRole") && !message.contains("down"),
        "AWS's text reached the caller: {doc}"
    );
}
