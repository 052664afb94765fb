//! The IMDS API without a socket: the service built from a configuration, a fake STS, and
//! connections from made-up addresses.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use http::{Method, Request, StatusCode};
use http_body_util::BodyExt;

use super::Imds;
use crate::clock::ManualClock;
use crate::config::Config;
use crate::creds::fake::FakeSts;
use crate::identity::ConnInfo;

pub(in crate::imds) struct Fixture {
    pub(in crate::imds) imds: Arc<Imds>,
    pub(in crate::imds) sts: Arc<FakeSts>,
    clock: ManualClock,
    _dir: Option<TempDir>,
}

struct TempDir(std::path::PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub(in crate::imds) fn fixture(env: &[(&str, &str)], mapping: Option<&str>) -> Fixture {
    fixture_with(env, mapping, false)
}

/// [`fixture`], as built when the eBPF redirect is attached (cgroup ids resolved below an empty
/// folder standing in for the cgroup2 mount).
pub(in crate::imds) fn redirected_fixture(env: &[(&str, &str)], mapping: Option<&str>) -> Fixture {
    fixture_with(env, mapping, true)
}

fn fixture_with(env: &[(&str, &str)], mapping: Option<&str>, redirected: bool) -> Fixture {
    let mut env: HashMap<String, String> = env
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    env.entry("DEFAULT_ACCOUNT_ID".into())
        .or_insert_with(|| "123456789012".into());
    // A closed loopback port: anything forwarded fails with 502, never a 200.
    env.entry("METADATA_URL".into())
        .or_insert_with(|| "http://127.0.0.1:9".into());
    let dir = mapping.map(|json| {
        let dir = std::env::temp_dir().join(format!(
            "mp-service-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("map.json"), json).unwrap();
        env.insert(
            "ROLE_MAPPING_FILE".into(),
            dir.join("map.json").display().to_string(),
        );
        TempDir(dir)
    });
    let config = Config::load(["metadataproxy"], &env).unwrap();
    let clock = ManualClock::new(SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000));
    let sts = FakeSts::new(&clock, Duration::ZERO);
    let cgroups = redirected.then(|| {
        Arc::new(crate::cgroup::CgroupPaths::new(
            std::env::temp_dir().join("mp-no-cgroups"),
        ))
    });
    let peers = crate::app::Peers {
        sts: sts.clone(),
        clock: Arc::new(clock.clone()),
        cgroups,
        docker: None,
        containerd: None,
    };
    let imds = crate::app::build(&config, peers).unwrap().imds;
    Fixture {
        imds,
        sts,
        clock,
        _dir: dir,
    }
}

pub(in crate::imds) fn conn(ip: &str) -> ConnInfo {
    ConnInfo::new(
        SocketAddr::new(ip.parse().unwrap(), 40000),
        "127.0.0.1:45001".parse().unwrap(),
        None,
    )
}

pub(in crate::imds) async fn call(
    f: &Fixture,
    ip: &str,
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
) -> (StatusCode, String) {
    call_on(f, &conn(ip), method, path, headers).await
}

/// [`call`] on the connection `conn`.
pub(in crate::imds) async fn call_on(
    f: &Fixture,
    conn: &ConnInfo,
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
) -> (StatusCode, String) {
    let mut req = Request::builder().method(method).uri(path);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = f.imds.handle(&req.body(()).unwrap(), conn).await;
    let status = resp.status();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

const CREDS: &str = "/latest/meta-data/iam/security-credentials/";

#[tokio::test]
async fn each_caller_gets_its_own_role_or_404() {
    let f = fixture(
        &[],
        Some(r#"{"10.0.0.2": "role-a", "10.0.0.3": {"name": "role-b", "session_name": "b sess"}}"#),
    );
    assert_eq!(
        call(&f, "10.0.0.2", Method::GET, CREDS, &[]).await,
        (StatusCode::OK, "role-a".into())
    );
    assert_eq!(
        call(&f, "10.0.0.3", Method::GET, CREDS, &[]).await,
        (StatusCode::OK, "role-b".into())
    );
    for path in [
        CREDS,
        "/latest/meta-data/iam/info",
        "/latest/meta-data/iam/security-credentials/role-a",
    ] {
        assert_eq!(
            call(&f, "10.0.0.4", Method::GET, path, &[]).await.0,
            StatusCode::NOT_FOUND,
            "{path}"
        );
    }
    let (status, body) = call(&f, "10.0.0.3", Method::GET, &format!("{CREDS}role-b"), &[]).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        body.contains("-b_sess\""),
        "session name of role-b is in its token: {body}"
    );
    // Asking for another caller's role is a 404, not that role's credentials.
    assert_eq!(
        call(&f, "10.0.0.3", Method::GET, &format!("{CREDS}role-a"), &[])
            .await
            .0,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn credentials_document_is_exact() {
    let f = fixture(&[("DEFAULT_ROLE", "role-a")], None);
    let (status, body) = call(&f, "10.0.0.9", Method::GET, &format!("{CREDS}role-a"), &[]).await;
    assert_eq!(status, StatusCode::OK);
    let keys: Vec<&str> = body
        .lines()
        .filter_map(|l| l.trim().split('"').nth(1))
        .collect();
    assert_eq!(
        keys,
        [
            "Code",
            "LastUpdated",
            "Type",
            "AccessKeyId",
            "SecretAccessKey",
            "Token",
            "Expiration"
        ]
    );
    let doc: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(doc["Code"], "Success");
    assert_eq!(doc["Type"], "AWS-HMAC");
    assert_eq!(doc["LastUpdated"], "2027-01-15T08:00:00Z");
    assert_eq!(doc["Expiration"], "2027-01-15T09:00:00Z");
}

#[tokio::test]
async fn tokens_are_bound_to_the_caller() {
    let f = fixture(&[("DEFAULT_ROLE", "role-a")], None);
    let ttl = [("x-aws-ec2-metadata-token-ttl-seconds", "60")];
    let (status, token) = call(&f, "10.0.0.2", Method::PUT, "/latest/api/token", &ttl).await;
    assert_eq!(status, StatusCode::OK);
    let with = [("x-aws-ec2-metadata-token", token.as_str())];
    assert_eq!(
        call(&f, "10.0.0.2", Method::GET, CREDS, &with).await.0,
        StatusCode::OK
    );
    assert_eq!(
        call(&f, "10.0.0.3", Method::GET, CREDS, &with).await.0,
        StatusCode::UNAUTHORIZED
    );
    f.clock.advance(Duration::from_secs(60));
    assert_eq!(
        call(&f, "10.0.0.2", Method::GET, CREDS, &with).await.0,
        StatusCode::UNAUTHORIZED,
        "expired"
    );
}

/// Two callers behind one address (host-network containers, say) are told apart by the cgroup the
/// kernel recorded: a token of one is refused for the other.
#[tokio::test]
async fn tokens_are_bound_to_the_cgroup_not_the_shared_address() {
    let f = fixture(&[("DEFAULT_ROLE", "role-a")], None);
    let in_cgroup = |id: u64| {
        let c = conn("127.0.0.1");
        let kernel = Some(crate::caller::KernelRecord {
            cgroup_id: id,
            pid: 1000,
            netns_cookie: 1,
        });
        ConnInfo::new(c.peer, c.local, kernel)
    };
    let ttl = http::HeaderValue::from_static("60");
    let mut put = Request::builder()
        .method(Method::PUT)
        .uri("/latest/api/token")
        .body(())
        .unwrap();
    put.headers_mut()
        .insert("x-aws-ec2-metadata-token-ttl-seconds", ttl);
    let resp = f.imds.handle(&put, &in_cgroup(7)).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let token =
        String::from_utf8_lossy(&resp.into_body().collect().await.unwrap().to_bytes()).into_owned();
    let get = |token: &str| {
        Request::builder()
            .uri("/latest/meta-data/instance-id")
            .header("x-aws-ec2-metadata-token", token)
            .body(())
            .unwrap()
    };
    let mine = f.imds.handle(&get(&token), &in_cgroup(7)).await.status();
    let other = f.imds.handle(&get(&token), &in_cgroup(8)).await.status();
    let by_ip = f
        .imds
        .handle(&get(&token), &conn("127.0.0.1"))
        .await
        .status();
    assert_ne!(mine, StatusCode::UNAUTHORIZED, "its own cgroup");
    assert_eq!(
        other,
        StatusCode::UNAUTHORIZED,
        "another cgroup, same address"
    );
    assert_eq!(by_ip, StatusCode::UNAUTHORIZED, "same address, no cgroup");
}

#[tokio::test]
async fn token_requests_are_validated() {
    let f = fixture(&[], None);
    let ttl = "x-aws-ec2-metadata-token-ttl-seconds";
    for bad in ["0", "21601", "abc", "", "-1"] {
        let status = call(
            &f,
            "10.0.0.2",
            Method::PUT,
            "/latest/api/token",
            &[(ttl, bad)],
        )
        .await
        .0;
        assert_eq!(status, StatusCode::BAD_REQUEST, "ttl {bad:?}");
    }
    let status = call(
        &f,
        "10.0.0.2",
        Method::PUT,
        "/latest/api/token",
        &[(ttl, "21600")],
    )
    .await
    .0;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        call(&f, "10.0.0.2", Method::PUT, "/latest/api/token", &[])
            .await
            .0,
        StatusCode::BAD_REQUEST
    );
    let proxied = [
        ("x-aws-ec2-metadata-token-ttl-seconds", "60"),
        ("x-forwarded-for", "1.2.3.4"),
    ];
    assert_eq!(
        call(&f, "10.0.0.2", Method::PUT, "/latest/api/token", &proxied)
            .await
            .0,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        call(&f, "10.0.0.2", Method::GET, "/latest/api/token", &[])
            .await
            .0,
        StatusCode::METHOD_NOT_ALLOWED
    );
}

#[tokio::test]
async fn imdsv2_required_refuses_requests_without_a_token() {
    let f = fixture(
        &[("DEFAULT_ROLE", "role-a"), ("IMDSV2_REQUIRED", "true")],
        None,
    );
    assert_eq!(
        call(&f, "10.0.0.2", Method::GET, CREDS, &[]).await.0,
        StatusCode::UNAUTHORIZED
    );
    let (_, token) = call(
        &f,
        "10.0.0.2",
        Method::PUT,
        "/latest/api/token",
        &[("x-aws-ec2-metadata-token-ttl-seconds", "60")],
    )
    .await;
    assert_eq!(
        call(
            &f,
            "10.0.0.2",
            Method::GET,
            CREDS,
            &[("x-aws-ec2-metadata-token", &token)]
        )
        .await
        .0,
        StatusCode::OK
    );
}

#[tokio::test]
async fn path_tricks_are_refused_before_routing() {
    let f = fixture(&[("DEFAULT_ROLE", "role-a")], None);
    for (path, expected) in [
        (
            "/latest/meta-data/iam/../iam/security-credentials/host-role",
            StatusCode::BAD_REQUEST,
        ),
        (
            "/latest/meta-data/./iam/security-credentials/",
            StatusCode::BAD_REQUEST,
        ),
        ("/latest/meta-data/%2e%2e/iam/info", StatusCode::BAD_REQUEST),
        (
            "/latest/meta-data/iam%2Fsecurity-credentials/",
            StatusCode::BAD_REQUEST,
        ),
        ("/latest//meta-data/iam/info", StatusCode::BAD_REQUEST),
        (
            "/latest/Meta-Data/IAM/security-credentials/host-role",
            StatusCode::NOT_FOUND,
        ),
        (
            "/latest/meta-data/identity-credentials/ec2/security-credentials/ec2-instance",
            StatusCode::NOT_FOUND,
        ),
    ] {
        assert_eq!(
            call(&f, "10.0.0.2", Method::GET, path, &[]).await.0,
            expected,
            "{path}"
        );
    }
    let long = format!("/latest/meta-data/{}", "a".repeat(2000));
    assert_eq!(
        call(&f, "10.0.0.2", Method::GET, &long, &[]).await.0,
        StatusCode::URI_TOO_LONG
    );
}

#[tokio::test]
async fn unreachable_upstream_is_a_clear_502() {
    let f = fixture(&[], None);
    let (status, body) = call(
        &f,
        "10.0.0.2",
        Method::GET,
        "/latest/meta-data/instance-id",
        &[],
    )
    .await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert!(body.contains("upstream metadata service"), "{body}");
}

#[tokio::test]
async fn mock_mode_serves_the_tree() {
    let f = fixture(&[("MOCK_API", "true"), ("MOCKED_INSTANCE_ID", "abc")], None);
    assert_eq!(
        call(
            &f,
            "10.0.0.2",
            Method::GET,
            "/latest/meta-data/instance-id",
            &[]
        )
        .await,
        (StatusCode::OK, "i-abc".into())
    );
    assert_eq!(
        call(
            &f,
            "10.0.0.2",
            Method::GET,
            "/latest/meta-data/placement/region",
            &[]
        )
        .await
        .0,
        StatusCode::OK
    );
    assert_eq!(
        call(&f, "10.0.0.2", Method::GET, "/latest/meta-data/nope", &[])
            .await
            .0,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn sts_failure_is_imds_style_json() {
    let f = fixture(&[("DEFAULT_ROLE", "role-a")], None);
    f.sts
        .failing
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let (status, body) = call(&f, "10.0.0.2", Method::GET, &format!("{CREDS}role-a"), &[]).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    let doc: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(doc["Code"], "ServiceUnavailable");
    let message = doc["Message"].as_str().unwrap();
    assert!(message.contains("request id "), "{body}");
    assert!(
        !message.contains("sts:AssumeRole") && !message.contains("down"),
        "AWS's text reached the caller: {body}"
    );
}

#[tokio::test]
async fn an_unresolvable_role_is_a_generic_invalid_role() {
    let f = fixture(&[("DEFAULT_ROLE", "role-a@no-such-alias")], None);
    let (status, body) = call(&f, "10.0.0.2", Method::GET, &format!("{CREDS}role-a"), &[]).await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    let doc: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(doc["Code"], "InvalidRole");
    let message = doc["Message"].as_str().unwrap();
    assert!(message.contains("request id "), "{body}");
    assert!(!message.contains("no-such-alias"), "{body}");
}

#[tokio::test]
async fn bare_names_are_looked_up_with_iam_get_role() {
    let f = fixture(
        &[("DEFAULT_ROLE", "team/role-a"), ("DEFAULT_ACCOUNT_ID", "")],
        None,
    );
    let (status, body) = call(
        &f,
        "10.0.0.2",
        Method::GET,
        "/latest/meta-data/iam/info",
        &[],
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(
        body.contains("arn:aws:iam::999999999999:instance-profile/team/role-a"),
        "{body}"
    );
}

/// `Debug` of the whole service, once it holds credentials (with an external id) and session
/// tokens, shows none of them: every secret-bearing part redacts itself.
#[tokio::test]
async fn debug_of_the_service_holding_secrets_is_redacted() {
    let f = fixture(
        &[],
        Some(r#"{"10.0.0.2": {"name": "role-a", "external_id": "ext-id-sekrit"}}"#),
    );
    let ttl = [("x-aws-ec2-metadata-token-ttl-seconds", "60")];
    let (_, token) = call(&f, "10.0.0.2", Method::PUT, "/latest/api/token", &ttl).await;
    let with = [("x-aws-ec2-metadata-token", token.as_str())];
    let (status, body) = call(
        &f,
        "10.0.0.2",
        Method::GET,
        &format!("{CREDS}role-a"),
        &with,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let doc: serde_json::Value = serde_json::from_str(&body).unwrap();
    let shown = format!("{:?} {:#?}", f.imds, f.imds);
    for (what, secret) in [
        (
            "secret access key",
            doc["SecretAccessKey"].as_str().unwrap(),
        ),
        ("session token", doc["Token"].as_str().unwrap()),
        ("IMDSv2 token", token.as_str()),
        ("external id", "ext-id-sekrit"),
    ] {
        assert!(!secret.is_empty());
        assert!(!shown.contains(secret), "{what} in Debug: {shown}");
    }
}

#[test]
fn debug_of_secret_bearing_values_is_redacted() {
    use crate::creds::{CacheKey, Secret};
    let secret = Secret::new("s3cr3t-value".into());
    let key = CacheKey::new(
        "arn:aws:iam::123456789012:role/a".into(),
        Some("ext-id-sekrit".into()),
        "devproxyauth".into(),
        None,
    );
    for shown in [
        format!("{secret:?}"),
        format!("{:?}", Some(&secret)),
        format!("{key:?}"),
        format!("{key:#?}"),
    ] {
        assert!(!shown.contains("s3cr3t-value"), "{shown}");
        assert!(!shown.contains("ext-id-sekrit"), "{shown}");
        assert!(shown.contains("redacted"), "{shown}");
    }
}

#[path = "record_less_tests.rs"]
mod record_less;

#[path = "policy_tests.rs"]
mod policy;

#[test]
fn the_headers_pass_finds_what_the_hashed_lookups_found() {
    use http::HeaderMap;

    use crate::imds::token;
    use http::header::HeaderValue;

    let map = |pairs: &[(&'static str, &'static str)]| {
        let mut m = HeaderMap::new();
        for (k, v) in pairs {
            m.append(*k, HeaderValue::from_static(v));
        }
        m
    };
    let cases: &[&[(&str, &str)]] = &[
        &[],
        &[("content-length", "0")],
        &[("content-length", "000")],
        &[("content-length", "1")],
        &[("content-length", "0"), ("content-length", "5")],
        &[("transfer-encoding", "chunked")],
        &[("Transfer-Encoding", "")],
        &[
            ("x-aws-ec2-metadata-token", "a"),
            ("X-AWS-EC2-Metadata-Token", "b"),
        ],
        &[
            ("x-aws-ec2-metadata-token-ttl-seconds", "60"),
            ("x-aws-ec2-metadata-token-ttl-seconds", "1"),
        ],
        &[("x-forwarded-for", "1.2.3.4"), ("host", "x")],
        &[("x-aws-ec2-metadata-token-ttl", "60"), ("x-forwarded", "y")],
    ];
    for pairs in cases {
        let m = map(pairs);
        let heads = super::Heads::of(&m);
        let body = m.contains_key(http::header::TRANSFER_ENCODING)
            || m.get_all(http::header::CONTENT_LENGTH)
                .iter()
                .any(|v| v.as_bytes().iter().any(|&b| b != b'0'));
        assert_eq!(heads.body, body, "{pairs:?}");
        assert_eq!(heads.token, m.get(&token::TOKEN), "{pairs:?}");
        assert_eq!(heads.ttl, m.get(&token::TTL), "{pairs:?}");
        assert_eq!(
            heads.forwarded,
            m.contains_key("x-forwarded-for"),
            "{pairs:?}"
        );
    }
}

#[tokio::test]
async fn the_ttl_is_echoed_as_its_plain_number() {
    let f = fixture(&[], None);
    for (sent, echoed) in [
        ("21600", "21600"),
        ("0060", "60"),
        ("1", "1"),
        (" 300 ", "300"),
    ] {
        let req = Request::builder()
            .method(Method::PUT)
            .uri("/latest/api/token")
            .header("x-aws-ec2-metadata-token-ttl-seconds", sent)
            .body(())
            .unwrap();
        let resp = f.imds.handle(&req, &conn("10.0.0.2")).await;
        assert_eq!(resp.status(), StatusCode::OK, "{sent:?}");
        assert_eq!(
            resp.headers()
                .get("x-aws-ec2-metadata-token-ttl-seconds")
                .map(http::HeaderValue::as_bytes),
            Some(echoed.as_bytes()),
            "{sent:?}"
        );
    }
}
