//! No secret ever reaches the logs: secret access keys, session tokens and IMDSv2 tokens are absent
//! from everything the daemon writes, even with `DEBUG` and at the most verbose log level.

use metadataproxy_tests::{Daemon, MappingFile, Moto, SRC_2, fetch_credentials, get, token};
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
    let logs = daemon.wait_for_log("credentials served").await;
    assert!(
        logs.contains(&creds.access_key_id[creds.access_key_id.len() - 4..]),
        "the key hint is logged"
    );
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
