//! `/metrics` of the real daemon after known traffic: exact counts of requests by route and
//! status, cache hits, identification sources and STS calls (checked against moto's own record).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use metadataproxy_tests::{
    CREDS_PATH, Daemon, MappingFile, Moto, SRC_1, SRC_2, SRC_3, free_port, get, loopback, request,
    token,
};
use serde_json::json;

/// `/metrics` once every line of `wait_for` is in it (the start-up prefetch and STS probe run
/// in the background); panics with the exposition after 10 s.
async fn scrape_when(admin: SocketAddr, wait_for: &[&str]) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let resp = get(SRC_1, admin, "/metrics", &[]).await;
        assert_eq!(resp.status, 200, "{resp:?}");
        if wait_for.iter().all(|w| resp.body.lines().any(|l| l == *w)) {
            return resp.body;
        }
        assert!(
            Instant::now() < deadline,
            "never saw {wait_for:?} in:\n{}",
            resp.body
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn counters_after_known_traffic() {
    let moto = Moto::start().await;
    moto.create_role("role-a", "/").await;
    let mapping = MappingFile::new(&json!({"127.0.0.2": "role-a"}));
    let admin = loopback(free_port());
    let daemon = Daemon::builder()
        .moto(&moto)
        .mapping(&mapping)
        .default_account()
        .env("ADMIN_LISTEN", admin.to_string())
        .start()
        .await;
    let imds = daemon.addr();
    // The start-up prefetch of role-a and the readiness probe, before any request.
    scrape_when(
        admin,
        &[
            r#"metadataproxy_sts_calls_total{operation="sts:AssumeRole"} 1"#,
            r#"metadataproxy_sts_calls_total{operation="sts:GetCallerIdentity"} 1"#,
        ],
    )
    .await;
    // The call is counted as it returns; the cache stores its result a moment later.
    tokio::time::sleep(Duration::from_millis(200)).await;

    let path = format!("{CREDS_PATH}role-a");
    for _ in 0..3 {
        assert_eq!(get(SRC_2, imds, &path, &[]).await.status, 200);
    }
    let t = token(SRC_2, imds).await;
    let v2 = get(SRC_2, imds, &path, &[("X-aws-ec2-metadata-token", &t)]).await;
    assert_eq!(v2.status, 200);
    assert_eq!(get(SRC_3, imds, CREDS_PATH, &[]).await.status, 404);
    assert_eq!(
        request("GET", SRC_2, imds, "/latest/api/token", &[])
            .await
            .status,
        405
    );
    assert_eq!(
        get(SRC_2, imds, "/latest/meta-data/instance-id", &[])
            .await
            .status,
        200
    );
    assert_eq!(
        get(SRC_2, imds, "/latest/meta-data/iam/../iam/info", &[])
            .await
            .status,
        400
    );

    let text = scrape_when(admin, &[]).await;
    for want in [
        r#"metadataproxy_requests_total{route="iam_credentials",status="200"} 4"#,
        r#"metadataproxy_requests_total{route="token",status="200"} 1"#,
        r#"metadataproxy_requests_total{route="token",status="405"} 1"#,
        r#"metadataproxy_requests_total{route="iam_listing",status="404"} 1"#,
        r#"metadataproxy_requests_total{route="metadata",status="200"} 1"#,
        r#"metadataproxy_requests_total{route="bad_path",status="400"} 1"#,
        r#"metadataproxy_request_duration_seconds_count{route="iam_credentials"} 4"#,
        "metadataproxy_credential_cache_hits_total 4",
        "metadataproxy_credential_cache_misses_total 0",
        "metadataproxy_credential_cache_entries 1",
        r#"metadataproxy_identifications_total{source="mapping_file"} 4"#,
        r#"metadataproxy_identifications_total{source="none"} 1"#,
        r#"metadataproxy_sts_calls_total{operation="sts:AssumeRole"} 1"#,
        r#"metadataproxy_sts_call_duration_seconds_count{operation="sts:AssumeRole"} 1"#,
        "metadataproxy_docker_synchronised 0",
    ] {
        assert!(
            text.lines().any(|l| l == want),
            "no line {want:?} in:\n{text}"
        );
    }
    assert!(
        !text.contains("metadataproxy_sts_errors_total"),
        "no STS call failed:\n{text}"
    );
    assert_eq!(
        moto.assume_role_count().await,
        1,
        "moto agrees: one AssumeRole"
    );
}

#[tokio::test]
async fn sts_failures_are_counted_by_kind() {
    // STS is a closed loopback port: every AssumeRole fails as unreachable.
    let mapping = MappingFile::new(&json!({"127.0.0.2": "role-a"}));
    let admin = loopback(free_port());
    let daemon = Daemon::builder()
        .mapping(&mapping)
        .default_account()
        .env("ADMIN_LISTEN", admin.to_string())
        .start()
        .await;
    scrape_when(
        admin,
        &[r#"metadataproxy_sts_errors_total{operation="sts:AssumeRole",kind="unavailable"} 1"#],
    )
    .await;
    let failed = get(SRC_2, daemon.addr(), &format!("{CREDS_PATH}role-a"), &[]).await;
    assert_eq!(failed.status, 503, "{failed:?}");
    let text = scrape_when(
        admin,
        &[
            r#"metadataproxy_requests_total{route="iam_credentials",status="503"} 1"#,
            // The readiness probe at start-up failed the same way.
            r#"metadataproxy_sts_errors_total{operation="sts:GetCallerIdentity",kind="unavailable"} 1"#,
        ],
    )
    .await;
    for want in [
        "metadataproxy_credential_cache_hits_total 0",
        "metadataproxy_credential_cache_misses_total 1",
    ] {
        assert!(
            text.lines().any(|l| l == want),
            "no line {want:?} in:\n{text}"
        );
    }
}
