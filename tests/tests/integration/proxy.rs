//! Non-IAM routes: proxy mode forwards them (and nothing that could reach the host's IAM routes);
//! mock mode answers them itself.

use metadataproxy_tests::{
    CREDS_PATH, Daemon, HOST_ACCESS_KEY_ID, HOST_ROLE, MappingFile, NOWHERE, SRC_2, SRC_4,
    Upstream, get, raw_http, token,
};
use serde_json::json;

/// Paths that must never reach the upstream's IAM routes, however they are spelled.
const TRICKS: &[&str] = &[
    "/latest/meta-data/iam/security-credentials/host-role",
    "/latest/meta-data/iam/../iam/security-credentials/host-role",
    "/latest/meta-data/./iam/security-credentials/host-role",
    "/latest/meta-data/iam/%2e%2e/iam/security-credentials/host-role",
    "/latest/meta-data/foo/%2E%2E/iam/security-credentials/host-role",
    "/latest/meta-data/iam%2Fsecurity-credentials%2Fhost-role",
    "/latest/meta-data/iam%2fsecurity-credentials/host-role",
    "/latest/meta-data//iam/security-credentials/host-role",
    "//latest/meta-data/iam/security-credentials/host-role",
    "/latest/Meta-Data/IAM/security-credentials/host-role",
    "/latest/meta-data/%69am/security-credentials/host-role",
    "/latest/meta-data/instance-id/../iam/security-credentials/host-role",
];

#[tokio::test]
async fn forwards_other_paths_with_their_query() {
    let upstream = Upstream::start();
    let daemon = Daemon::builder().upstream(&upstream).start().await;
    let path = "/latest/meta-data/instance-id?x=1&y=two";
    let response = get(SRC_4, daemon.addr(), path, &[]).await;
    assert_eq!(response.status, 200, "{response:?}");
    assert_eq!(
        response.body,
        format!("HOST-UPSTREAM {path}"),
        "not the upstream's answer"
    );
    let seen = upstream.requests();
    assert!(
        seen.iter().any(|r| r.method == "GET" && r.target == path),
        "upstream never saw GET {path}: {seen:?}"
    );
}

#[tokio::test]
async fn iam_paths_in_any_spelling_never_reach_the_upstream() {
    let upstream = Upstream::start();
    let mapping = MappingFile::new(&json!({"127.0.0.2": "role-a"}));
    let daemon = Daemon::builder()
        .upstream(&upstream)
        .mapping(&mapping)
        .default_account()
        .start()
        .await;
    for src in [SRC_2, SRC_4] {
        for path in TRICKS {
            let request = format!(
                "GET {path} HTTP/1.1\r\nHost: 169.254.169.254\r\nConnection: close\r\n\r\n"
            );
            let response = raw_http(src, daemon.addr(), request.as_bytes()).await;
            assert!(
                (400..500).contains(&response.status),
                "{src} GET {path} should be a 4xx: {response:?}"
            );
            assert!(
                !response.body.contains(HOST_ACCESS_KEY_ID)
                    && !response.body.contains("HOST-UPSTREAM"),
                "{src} GET {path} got the host's answer: {response:?}"
            );
        }
    }
    let forwarded: Vec<_> = upstream
        .requests()
        .into_iter()
        .filter(|r| !(r.method == "PUT" && r.target == "/latest/api/token"))
        .collect();
    assert!(
        forwarded.is_empty(),
        "these reached the host's IMDS (want none): {forwarded:?}"
    );
}

/// The host's secrets behind IMDS: bootstrap `user-data`, the signed identity documents (which
/// Vault's EC2 auth accepts as proof of being this host), instance tags.
const HOST_SECRETS: &[&str] = &[
    "/latest/user-data",
    "/latest/user-data/",
    "/2021-07-15/user-data",
    "/latest/dynamic/instance-identity/pkcs7",
    "/latest/dynamic/instance-identity/signature",
    "/latest/dynamic/instance-identity/rsa2048",
    "/latest/meta-data/tags/instance/Name",
];

#[tokio::test]
async fn by_default_host_secrets_are_refused_and_never_reach_the_upstream() {
    let upstream = Upstream::start();
    // Proxy mode as the README runs it: PROXY_ALLOWED_PATHS unset.
    let daemon = Daemon::builder().upstream(&upstream).start().await;
    for path in HOST_SECRETS {
        let response = get(SRC_4, daemon.addr(), path, &[]).await;
        assert_eq!(response.status, 403, "GET {path}: {response:?}");
        assert!(
            !response.body.contains("HOST-UPSTREAM"),
            "GET {path} got the host's answer: {response:?}"
        );
    }
    let forwarded: Vec<_> = upstream
        .requests()
        .into_iter()
        .filter(|r| r.method == "GET")
        .collect();
    assert!(
        forwarded.is_empty(),
        "these reached the host's IMDS (want none): {forwarded:?}"
    );
    // What SDKs and agents read still goes through, as do the listings.
    for path in [
        "/latest/meta-data/placement/region",
        "/latest/meta-data/placement/availability-zone/",
        "/latest/dynamic/instance-identity/document",
        "/latest/meta-data/",
        "/latest/",
        "/",
    ] {
        let response = get(SRC_4, daemon.addr(), path, &[]).await;
        assert_eq!(
            (response.status, response.body.as_str()),
            (200, format!("HOST-UPSTREAM {path}").as_str()),
            "GET {path}: {response:?}"
        );
    }
}

#[tokio::test]
async fn proxy_allowed_paths_star_forwards_user_data_but_never_iam() {
    let upstream = Upstream::start();
    let daemon = Daemon::builder()
        .upstream(&upstream)
        .env("PROXY_ALLOWED_PATHS", "*")
        .start()
        .await;
    for path in [
        "/latest/user-data",
        "/latest/dynamic/instance-identity/pkcs7",
    ] {
        let response = get(SRC_4, daemon.addr(), path, &[]).await;
        assert_eq!(
            (response.status, response.body.as_str()),
            (200, format!("HOST-UPSTREAM {path}").as_str()),
            "GET {path}: {response:?}"
        );
    }
    for path in [
        "/latest/meta-data/iam/security-credentials/host-role",
        "/latest/meta-data/identity-credentials/ec2/security-credentials/ec2-instance",
    ] {
        let response = get(SRC_4, daemon.addr(), path, &[]).await;
        assert_eq!(response.status, 404, "GET {path}: {response:?}");
    }
    let iam: Vec<_> = upstream
        .requests()
        .into_iter()
        .filter(|r| r.target.contains("iam") || r.target.contains("identity-credentials"))
        .collect();
    assert!(iam.is_empty(), "IAM paths reached the host's IMDS: {iam:?}");
}

#[tokio::test]
async fn the_callers_token_is_not_forwarded() {
    let upstream = Upstream::start();
    let daemon = Daemon::builder().upstream(&upstream).start().await;
    let token = token(SRC_4, daemon.addr()).await;
    let response = get(
        SRC_4,
        daemon.addr(),
        "/latest/meta-data/instance-id",
        &[("X-aws-ec2-metadata-token", &token)],
    )
    .await;
    assert_eq!(response.status, 200, "{response:?}");
    assert_eq!(response.body, "HOST-UPSTREAM /latest/meta-data/instance-id");
    for seen in upstream.requests() {
        assert!(
            seen.headers
                .iter()
                .all(|(_, value)| !value.contains(&token)),
            "the caller's token reached the upstream: {seen:?}"
        );
    }
}

#[tokio::test]
async fn upstream_down_is_a_clear_gateway_error() {
    let daemon = Daemon::builder()
        .env("MOCK_API", "false")
        .env("METADATA_URL", NOWHERE)
        .start()
        .await;
    let response = get(SRC_4, daemon.addr(), "/latest/meta-data/instance-id", &[]).await;
    assert!(
        [502, 504].contains(&response.status),
        "upstream down should be 502 or 504: {response:?}"
    );
    assert!(
        !response.body.trim().is_empty(),
        "empty error body: {response:?}"
    );
    assert!(
        !response.body.to_ascii_lowercase().contains("<html"),
        "HTML error body: {response:?}"
    );
}

#[tokio::test]
async fn mock_mode_answers_locally() {
    let upstream = Upstream::start();
    // METADATA_URL points at the recorder to prove mock mode never uses it.
    let daemon = Daemon::builder()
        .env("METADATA_URL", upstream.url())
        .env("MOCK_API", "true")
        .start()
        .await;
    let addr = daemon.addr();
    let id = get(SRC_4, addr, "/latest/meta-data/instance-id", &[]).await;
    assert_eq!((id.status, id.body.as_str()), (200, "i-mockedid"), "{id:?}");

    let region = get(SRC_4, addr, "/latest/meta-data/placement/region", &[]).await;
    assert_eq!(region.status, 200, "{region:?}");
    let parts: Vec<&str> = region.body.split('-').collect();
    assert!(
        parts.len() >= 3 && parts.last().is_some_and(|n| n.parse::<u8>().is_ok()),
        "not a region: {region:?}"
    );
    let zone = get(
        SRC_4,
        addr,
        "/latest/meta-data/placement/availability-zone",
        &[],
    )
    .await;
    assert_eq!(zone.status, 200, "{zone:?}");
    assert!(
        zone.body.len() == region.body.len() + 1 && zone.body.starts_with(&region.body),
        "zone {:?} is not in region {:?}",
        zone.body,
        region.body
    );
    let creds = get(SRC_4, addr, &format!("{CREDS_PATH}{HOST_ROLE}"), &[]).await;
    assert_eq!(
        creds.status, 404,
        "no role, no credentials, even mocked: {creds:?}"
    );
    assert!(
        upstream.requests().is_empty(),
        "mock mode used the upstream: {:?}",
        upstream.requests()
    );

    let renamed = Daemon::builder()
        .env("MOCK_API", "true")
        .env("MOCKED_INSTANCE_ID", "abc123")
        .start()
        .await;
    let id = get(SRC_4, renamed.addr(), "/latest/meta-data/instance-id", &[]).await;
    assert_eq!(
        (id.status, id.body.as_str()),
        (200, "i-abc123"),
        "MOCKED_INSTANCE_ID ignored: {id:?}"
    );
}
