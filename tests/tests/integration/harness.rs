//! Self-tests of the harness, needing only moto: if these fail, fix the harness before the daemon.

use metadataproxy_tests::{ACCOUNT, HOST_ACCESS_KEY_ID, Moto, SRC_2, Upstream, get, required_path};

#[tokio::test]
async fn moto_records_each_assume_role_and_knows_the_session() {
    let moto = Moto::start().await;
    let arn = moto.create_role("harness-role", "/").await;
    assert_eq!(arn, format!("arn:aws:iam::{ACCOUNT}:role/harness-role"));
    let before = moto.assume_role_count().await;

    let out = moto
        .sts("testing", "testing", None)
        .assume_role()
        .role_arn(&arn)
        .role_session_name("harness-session")
        .external_id("ext-1")
        .send()
        .await
        .unwrap_or_else(|e| panic!("AssumeRole against moto: {e:?}"));
    let creds = out.credentials().expect("AssumeRole returned credentials");

    let after = moto.assumed_roles().await;
    assert_eq!(
        after.len(),
        before + 1,
        "moto should record exactly one call: {after:?}"
    );
    let last = after.last().expect("one record");
    assert_eq!(last.role_arn, arn);
    assert_eq!(last.session_name, "harness-session");
    assert_eq!(last.external_id.as_deref(), Some("ext-1"));
    assert_eq!(last.access_key_id, creds.access_key_id());

    let identity = moto
        .caller_identity_arn(
            creds.access_key_id(),
            creds.secret_access_key(),
            creds.session_token(),
        )
        .await;
    assert!(
        identity.contains("assumed-role/harness-role/harness-session"),
        "moto should know the assumed-role credentials: {identity}"
    );
    let stranger = moto
        .caller_identity_arn("AKIAUNKNOWN", "nope", "nope")
        .await;
    assert!(
        !stranger.contains("assumed-role"),
        "unknown keys must not look like an assumed role, or identity checks prove nothing: {stranger}"
    );
}

#[tokio::test]
async fn upstream_records_exact_targets_and_serves_host_credentials() {
    let upstream = Upstream::start();
    let addr = upstream.addr();
    let odd = "/latest/meta-data/iam/../%2e%2e//x?y=1";
    let response = get(SRC_2, addr, odd, &[("X-Probe", "1")]).await;
    assert_eq!(response.status, 200);
    assert_eq!(response.body, format!("HOST-UPSTREAM {odd}"));
    let creds = get(
        SRC_2,
        addr,
        "/latest/meta-data/iam/security-credentials/host-role",
        &[],
    )
    .await;
    assert!(creds.body.contains(HOST_ACCESS_KEY_ID), "{creds:?}");

    let seen = upstream.requests();
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert_eq!(seen[0].target, odd);
    assert_eq!(seen[0].method, "GET");
    assert_eq!(seen[0].header("x-probe"), Some("1"));
}

#[test]
#[should_panic(expected = "cargo xtask test")]
fn missing_environment_panics_with_instructions() {
    required_path("METADATAPROXY_TESTS_SURELY_UNSET");
}
