//! Callers are told apart by source address and never get another caller's role or credentials.

use metadataproxy_tests::{
    ACCOUNT, CREDS_PATH, Daemon, INFO_PATH, MappingFile, Moto, SRC_2, SRC_3, SRC_4,
    fetch_credentials, get, other_local_ipv4, token,
};
use serde_json::json;

fn mapping() -> MappingFile {
    MappingFile::new(&json!({
        "127.0.0.2": "role-a",
        "127.0.0.3": {"name": "role-b", "account_id": ACCOUNT, "external_id": "x-1", "session_name": "sess"},
    }))
}

#[tokio::test]
async fn each_caller_gets_only_its_own_role() {
    let moto = Moto::start().await;
    moto.create_role("role-a", "/").await;
    moto.create_role("role-b", "/").await;
    let mapping = mapping();
    let daemon = Daemon::builder()
        .moto(&moto)
        .mapping(&mapping)
        .default_account()
        .start()
        .await;
    let addr = daemon.addr();

    for path in [
        CREDS_PATH.to_owned(),
        INFO_PATH.to_owned(),
        format!("{CREDS_PATH}role-a"),
    ] {
        let response = get(SRC_4, addr, &path, &[]).await;
        assert_eq!(
            response.status, 404,
            "unmapped 127.0.0.4 GET {path}: {response:?}"
        );
        assert!(
            !response.body.contains("ASIA"),
            "credentials for nobody: {response:?}"
        );
    }
    let wrong = get(SRC_2, addr, &format!("{CREDS_PATH}role-b"), &[]).await;
    assert_eq!(wrong.status, 404, "127.0.0.2 asking for role-b: {wrong:?}");
    let wrong = get(SRC_3, addr, &format!("{CREDS_PATH}role-a"), &[]).await;
    assert_eq!(wrong.status, 404, "127.0.0.3 asking for role-a: {wrong:?}");

    let list_b = get(SRC_3, addr, CREDS_PATH, &[]).await;
    assert_eq!(
        (list_b.status, list_b.body.as_str()),
        (200, "role-b"),
        "{list_b:?}"
    );
    let a = fetch_credentials(SRC_2, addr, "role-a").await;
    let b = fetch_credentials(SRC_3, addr, "role-b").await;
    assert_ne!(a.access_key_id, b.access_key_id, "two roles, one key");
    let arn_a = moto
        .caller_identity_arn(&a.access_key_id, &a.secret_access_key, &a.token)
        .await;
    let arn_b = moto
        .caller_identity_arn(&b.access_key_id, &b.secret_access_key, &b.token)
        .await;
    assert!(
        arn_a.contains("assumed-role/role-a/"),
        "127.0.0.2 runs as {arn_a}"
    );
    assert!(
        arn_b.ends_with("assumed-role/role-b/sess"),
        "127.0.0.3 runs as {arn_b}"
    );

    let calls = moto.assumed_roles().await;
    let call_b = calls
        .iter()
        .find(|c| c.access_key_id == b.access_key_id)
        .unwrap_or_else(|| panic!("moto has no AssumeRole for role-b's key: {calls:?}"));
    assert_eq!(
        call_b.role_arn,
        format!("arn:aws:iam::{ACCOUNT}:role/role-b")
    );
    assert_eq!(call_b.session_name, "sess");
    assert_eq!(
        call_b.external_id.as_deref(),
        Some("x-1"),
        "external id not sent"
    );
}

#[tokio::test]
async fn a_token_is_bound_to_the_caller_it_was_issued_to() {
    // Every loopback address is one caller: the other one is at this machine's other address.
    let Some(other) = other_local_ipv4() else {
        return;
    };
    let mapping = mapping();
    let daemon = Daemon::builder()
        .mapping(&mapping)
        .default_account()
        .start()
        .await;
    let token_a = token(SRC_2, daemon.addr()).await;
    let header = [("X-aws-ec2-metadata-token", token_a.as_str())];
    let stolen = get(other, daemon.addr(), CREDS_PATH, &header).await;
    assert_eq!(
        stolen.status, 401,
        "127.0.0.2's token used by {other}: {stolen:?}"
    );
    let own = get(SRC_2, daemon.addr(), CREDS_PATH, &header).await;
    assert_eq!((own.status, own.body.as_str()), (200, "role-a"), "{own:?}");
}

#[tokio::test]
async fn default_role_covers_unmapped_callers_only() {
    let moto = Moto::start().await;
    moto.create_role("role-a", "/").await;
    moto.create_role("role-default", "/").await;
    let mapping = mapping();
    let daemon = Daemon::builder()
        .moto(&moto)
        .mapping(&mapping)
        .default_account()
        .env("DEFAULT_ROLE", "role-default")
        .start()
        .await;
    let list = get(SRC_4, daemon.addr(), CREDS_PATH, &[]).await;
    assert_eq!(
        (list.status, list.body.as_str()),
        (200, "role-default"),
        "{list:?}"
    );
    let creds = fetch_credentials(SRC_4, daemon.addr(), "role-default").await;
    let arn = moto
        .caller_identity_arn(&creds.access_key_id, &creds.secret_access_key, &creds.token)
        .await;
    assert!(
        arn.contains("assumed-role/role-default/"),
        "127.0.0.4 runs as {arn}"
    );
    let mapped = get(SRC_2, daemon.addr(), CREDS_PATH, &[]).await;
    assert_eq!(
        mapped.body, "role-a",
        "the mapping wins over DEFAULT_ROLE: {mapped:?}"
    );
}
