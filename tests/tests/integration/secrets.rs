//! No secret ever reaches the logs: secret access keys, session tokens and IMDSv2 tokens are absent
//! from everything the daemon writes, even with `DEBUG` and at the most verbose log level.

use metadataproxy_tests::{
    CREDS_PATH, Daemon, ImdsCredentials, MappingFile, Moto, SRC_2, SRC_3, SRC_4, Upstream,
    fetch_credentials, get, other_local_ipv4, raw_http, token,
};
use serde_json::json;

async fn assert_no_secrets_logged(extra: &[(&str, &str)]) {
    let moto = Moto::start().await;
    moto.create_role("role-a", "/").await;
    let mapping =
        MappingFile::new(&json!({"127.0.0.2": {"name": "role-a", "external_id": "ext-id-sekrit"}}));
    let mut builder = Daemon::builder()
        .moto(&moto)
        .mapping(&mapping)
        .default_account();
    for (k, v) in extra {
        builder = builder.env(k, *v);
    }
    let daemon = builder.start().await;
    let addr = daemon.addr();
    let imds_token = token(SRC_2, addr).await;
    let creds = fetch_credentials(SRC_2, addr, "role-a").await;
    let v2 = get(
        SRC_2,
        addr,
        "/latest/meta-data/iam/security-credentials/role-a",
        &[("X-aws-ec2-metadata-token", &imds_token)],
    )
    .await;
    assert_eq!(v2.status, 200, "{v2:?}");
    let hint = &creds.access_key_id[creds.access_key_id.len() - 4..];
    let logs = daemon.wait_for_logs(&["credentials served", hint]).await;
    for (what, secret) in [
        ("secret access key", creds.secret_access_key.as_str()),
        ("session token", creds.token.as_str()),
        ("IMDSv2 token", imds_token.as_str()),
        ("external id", "ext-id-sekrit"),
        ("full access key id", creds.access_key_id.as_str()),
        ("daemon's own secret key", "testing-secret-of-the-daemon"),
    ] {
        assert!(
            !logs.contains(secret),
            "{what} appears in the logs ({extra:?})"
        );
    }
}

#[tokio::test]
async fn debug_logs_hold_no_secrets() {
    assert_no_secrets_logged(&[
        ("DEBUG", "true"),
        ("AWS_SECRET_ACCESS_KEY", "testing-secret-of-the-daemon"),
    ])
    .await;
}

#[tokio::test]
async fn trace_logs_hold_no_secrets() {
    assert_no_secrets_logged(&[
        ("LOG_LEVEL", "trace"),
        ("AWS_SECRET_ACCESS_KEY", "testing-secret-of-the-daemon"),
    ])
    .await;
}

#[tokio::test]
async fn json_logs_hold_no_secrets() {
    assert_no_secrets_logged(&[
        ("LOG_FORMAT", "json"),
        ("DEBUG", "1"),
        ("AWS_SECRET_ACCESS_KEY", "testing-secret-of-the-daemon"),
    ])
    .await;
}

/// Every flow at once at trace level (every crate's most verbose output, hyper and the AWS SDK
/// included): v1 and v2 for two callers, proxy mode with the daemon's own upstream token, and
/// errors (another caller's token, a made-up token, refused paths, a body, a wrong role name, a
/// caller without a role). No secret of any kind may appear in anything the daemon wrote.
#[tokio::test]
async fn full_run_at_trace_level_logs_no_secret() {
    let moto = Moto::start().await;
    moto.create_role("role-a", "/").await;
    moto.create_role("role-b", "/").await;
    let upstream = Upstream::start();
    let mapping = MappingFile::new(&json!({
        "127.0.0.2": {"name": "role-a", "external_id": "ext-id-sekrit"},
        "127.0.0.3": "role-b",
    }));
    let daemon = Daemon::builder()
        .moto(&moto)
        .mapping(&mapping)
        .default_account()
        .upstream(&upstream)
        .env("LOG_LEVEL", "trace")
        .env("AWS_SECRET_ACCESS_KEY", "testing-secret-of-the-daemon")
        .start()
        .await;
    let addr = daemon.addr();
    let creds_a = fetch_credentials(SRC_2, addr, "role-a").await;
    let token_a = token(SRC_2, addr).await;
    let token_b = token(SRC_3, addr).await;
    let with = |t: &str| [("X-aws-ec2-metadata-token", t.to_owned())];
    let creds_b_path = "/latest/meta-data/iam/security-credentials/role-b";
    let b = get(SRC_3, addr, creds_b_path, &header(&with(&token_b))).await;
    assert_eq!(b.status, 200, "{b:?}");
    let creds_b = ImdsCredentials::from_response(&b);
    let proxied = get(
        SRC_2,
        addr,
        "/latest/meta-data/placement/region",
        &header(&with(&token_a)),
    )
    .await;
    assert_eq!(proxied.status, 200, "proxy mode: {proxied:?}");
    assert!(
        upstream
            .requests()
            .iter()
            .any(|r| r.header("x-aws-ec2-metadata-token") == Some(UPSTREAM_TOKEN)),
        "the daemon used its own upstream token, so it could have logged it"
    );
    // Another caller presenting A's token (every loopback address is one caller: the other
    // one is at this machine's other address, when it has one).
    if let Some(other) = other_local_ipv4() {
        let r = get(other, addr, creds_b_path, &header(&with(&token_a))).await;
        assert_eq!(r.status, 401, "{other} with A's token: {r:?}");
    }
    for (src, path, headers, want) in [
        (
            SRC_2,
            "/latest/meta-data/iam/security-credentials/role-a",
            with(&"B".repeat(43)).to_vec(),
            401,
        ),
        (SRC_2, "/latest/meta-data/iam/../iam/info", Vec::new(), 400),
        (
            SRC_2,
            "/latest/meta-data/iam/security-credentials/role-b",
            with(&token_a).to_vec(),
            404,
        ),
        (SRC_4, CREDS_PATH, Vec::new(), 404),
        (
            SRC_2,
            "/latest/meta-data/identity-credentials/ec2/info",
            Vec::new(),
            404,
        ),
    ] {
        let r = get(src, addr, path, &header(&headers)).await;
        assert_eq!(r.status, want, "{src} {path}: {r:?}");
    }
    let body = format!(
        "PUT /latest/api/token HTTP/1.1\r\nHost: x\r\nX-aws-ec2-metadata-token: {token_a}\r\n\
         X-aws-ec2-metadata-token-ttl-seconds: 60\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello"
    );
    assert_eq!(raw_http(SRC_2, addr, body.as_bytes()).await.status, 413);

    // Waiting for each: the audit and the error lines come through different writers.
    let logs = daemon
        .wait_for_logs(&["credentials served", "refused session token"])
        .await;
    assert!(logs.contains("TRACE"), "trace level was not in force");
    for (what, secret) in [
        (
            "caller A's secret access key",
            creds_a.secret_access_key.as_str(),
        ),
        ("caller A's session token", creds_a.token.as_str()),
        (
            "caller B's secret access key",
            creds_b.secret_access_key.as_str(),
        ),
        ("caller B's session token", creds_b.token.as_str()),
        ("caller A's IMDSv2 token", token_a.as_str()),
        ("caller B's IMDSv2 token", token_b.as_str()),
        ("the daemon's upstream IMDSv2 token", UPSTREAM_TOKEN),
        ("external id", "ext-id-sekrit"),
        ("daemon's own secret key", "testing-secret-of-the-daemon"),
    ] {
        assert!(!logs.contains(secret), "{what} appears in the trace logs");
    }
}

/// What the upstream stand-in hands out as its session token.
const UPSTREAM_TOKEN: &str = "HOST-UPSTREAM-TOKEN";

fn header<'a>(pairs: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    pairs.iter().map(|(k, v)| (*k, v.as_str())).collect()
}
