//! What a caller sees on the IMDS API: IMDSv1 and IMDSv2 flows, token rules, timestamps, iam/info.

use std::time::{Duration, SystemTime};

use metadataproxy_tests::{
    ACCOUNT, CREDS_PATH, Daemon, INFO_PATH, ImdsCredentials, MappingFile, Moto, SRC_2, get,
    moto_and_daemon, parse_time, put_token, request, token,
};
use serde_json::json;

const TOKEN_HEADER: &str = "X-aws-ec2-metadata-token";
const TTL_HEADER: &str = "X-aws-ec2-metadata-token-ttl-seconds";

/// moto with `role-a`, and a daemon mapping 127.0.0.2 to it.
async fn role_a() -> (Moto, MappingFile, Daemon) {
    moto_and_daemon(&["role-a"], &json!({"127.0.0.2": "role-a"})).await
}

#[tokio::test]
async fn imdsv1_lists_the_role_and_serves_credentials_moto_accepts() {
    let (moto, _mapping, daemon) = role_a().await;
    let list = get(SRC_2, daemon.addr(), CREDS_PATH, &[]).await;
    assert_eq!(
        (list.status, list.body.as_str()),
        (200, "role-a"),
        "{list:?}"
    );
    let dated = get(
        SRC_2,
        daemon.addr(),
        "/2016-09-02/meta-data/iam/security-credentials/",
        &[],
    )
    .await;
    assert_eq!(
        (dated.status, dated.body.as_str()),
        (200, "role-a"),
        "{dated:?}"
    );

    let before = SystemTime::now();
    let response = get(SRC_2, daemon.addr(), &format!("{CREDS_PATH}role-a"), &[]).await;
    let creds = ImdsCredentials::from_response(&response);
    let arn = moto
        .caller_identity_arn(&creds.access_key_id, &creds.secret_access_key, &creds.token)
        .await;
    assert!(
        arn.contains("assumed-role/role-a/"),
        "moto sees {arn}, not role-a"
    );
    assert!(
        arn.starts_with(&format!("arn:aws:sts::{ACCOUNT}:")),
        "wrong account: {arn}"
    );

    let updated = parse_time(&creds.last_updated);
    let expires = parse_time(&creds.expiration);
    let skew = Duration::from_secs(60);
    assert!(
        updated + skew >= before && updated <= SystemTime::now() + skew,
        "LastUpdated {} is not within a minute of now",
        creds.last_updated
    );
    assert!(
        expires > updated,
        "Expiration {} not after LastUpdated",
        creds.expiration
    );
    assert!(
        expires > SystemTime::now() + Duration::from_secs(15 * 60),
        "Expiration {} leaves under 15 minutes: botocore would refresh on every call",
        creds.expiration
    );
}

#[tokio::test]
async fn imdsv2_token_echoes_its_ttl_and_opens_every_route() {
    let (_moto, _mapping, daemon) = role_a().await;
    for ttl in ["21600", "1"] {
        let response = put_token(SRC_2, daemon.addr(), Some(ttl)).await;
        assert_eq!(response.status, 200, "PUT token ttl {ttl}: {response:?}");
        assert_eq!(
            response.header(TTL_HEADER),
            Some(ttl),
            "TTL not echoed: {response:?}"
        );
        assert!(
            !response.body.trim().is_empty(),
            "empty token: {response:?}"
        );
    }
    let token = token(SRC_2, daemon.addr()).await;
    let with = [(TOKEN_HEADER, token.as_str())];
    let list = get(SRC_2, daemon.addr(), CREDS_PATH, &with).await;
    assert_eq!(
        (list.status, list.body.as_str()),
        (200, "role-a"),
        "{list:?}"
    );
    let creds = get(SRC_2, daemon.addr(), &format!("{CREDS_PATH}role-a"), &with).await;
    ImdsCredentials::from_response(&creds);
    let info = get(SRC_2, daemon.addr(), INFO_PATH, &with).await;
    assert_eq!(info.status, 200, "{info:?}");
}

#[tokio::test]
async fn token_rules_reject_bad_ttls_proxied_puts_and_bad_tokens() {
    // No STS needed: the role listing comes from the mapping file alone.
    let mapping = MappingFile::new(&json!({"127.0.0.2": "role-a"}));
    let daemon = Daemon::builder()
        .mapping(&mapping)
        .default_account()
        .start()
        .await;
    let addr = daemon.addr();

    for ttl in [Some("0"), Some("21601"), Some("abc"), Some("-1"), None] {
        let response = put_token(SRC_2, addr, ttl).await;
        assert_eq!(
            response.status, 400,
            "PUT token with TTL {ttl:?}: {response:?}"
        );
    }
    let proxied = request(
        "PUT",
        SRC_2,
        addr,
        "/latest/api/token",
        &[(TTL_HEADER, "60"), ("X-Forwarded-For", "10.0.0.9")],
    )
    .await;
    assert_eq!(proxied.status, 403, "PUT with X-Forwarded-For: {proxied:?}");
    let got = get(SRC_2, addr, "/latest/api/token", &[(TTL_HEADER, "60")]).await;
    assert_ne!(got.status, 200, "GET must not issue tokens: {got:?}");

    for bad in ["not-a-token", "AQAEAbogus==", ""] {
        let response = get(SRC_2, addr, CREDS_PATH, &[(TOKEN_HEADER, bad)]).await;
        assert_eq!(response.status, 401, "token {bad:?}: {response:?}");
    }
    let good = token(SRC_2, addr).await;
    let response = get(SRC_2, addr, CREDS_PATH, &[(TOKEN_HEADER, &good)]).await;
    assert_eq!(
        (response.status, response.body.as_str()),
        (200, "role-a"),
        "{response:?}"
    );
    let v1 = get(SRC_2, addr, CREDS_PATH, &[]).await;
    assert_eq!(v1.status, 200, "IMDSv1 is allowed by default: {v1:?}");
}

#[tokio::test]
async fn imdsv2_required_refuses_tokenless_gets() {
    let mapping = MappingFile::new(&json!({"127.0.0.2": "role-a"}));
    let daemon = Daemon::builder()
        .mapping(&mapping)
        .default_account()
        .env("IMDSV2_REQUIRED", "true")
        .start()
        .await;
    let without = get(SRC_2, daemon.addr(), CREDS_PATH, &[]).await;
    assert_eq!(
        without.status, 401,
        "IMDSv1 GET with IMDSV2_REQUIRED: {without:?}"
    );
    let mocked = get(SRC_2, daemon.addr(), "/latest/meta-data/instance-id", &[]).await;
    assert_eq!(
        mocked.status, 401,
        "every route needs the token: {mocked:?}"
    );
    let token = token(SRC_2, daemon.addr()).await;
    let with = get(SRC_2, daemon.addr(), CREDS_PATH, &[(TOKEN_HEADER, &token)]).await;
    assert_eq!(
        (with.status, with.body.as_str()),
        (200, "role-a"),
        "{with:?}"
    );
}

#[tokio::test]
async fn iam_info_has_the_instance_profile_shape() {
    let (_moto, _mapping, daemon) = role_a().await;
    let response = get(SRC_2, daemon.addr(), INFO_PATH, &[]).await;
    assert_eq!(response.status, 200, "{response:?}");
    let info = response.json();
    let mut keys: Vec<&str> = info
        .as_object()
        .unwrap_or_else(|| panic!("iam/info is not an object: {info}"))
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        [
            "Code",
            "InstanceProfileArn",
            "InstanceProfileId",
            "LastUpdated"
        ],
        "{info}"
    );
    assert_eq!(info["Code"], "Success", "{info}");
    parse_time(info["LastUpdated"].as_str().unwrap_or_default());
    let arn = info["InstanceProfileArn"].as_str().unwrap_or_default();
    assert!(
        arn.starts_with(&format!("arn:aws:iam::{ACCOUNT}:instance-profile/")),
        "InstanceProfileArn {arn:?}"
    );
    let id = info["InstanceProfileId"].as_str().unwrap_or_default();
    assert!(
        id.starts_with("AIPA") && id.len() > 4,
        "InstanceProfileId {id:?}"
    );
}
