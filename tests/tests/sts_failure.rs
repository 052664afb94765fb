//! When STS is down, credentials already held are still served; new roles fail as JSON, not HTML.

use std::time::{Duration, Instant};

use metadataproxy_tests::{
    CREDS_PATH, Daemon, MappingFile, Moto, SRC_2, SRC_3, fetch_credentials, get,
};
use serde_json::json;

#[tokio::test]
async fn cached_credentials_survive_sts_outage_and_new_roles_fail_cleanly() {
    let mut moto = Moto::start().await;
    moto.create_role("role-a", "/").await;
    moto.create_role("role-b", "/").await;
    // role-b is mapped only once STS is down, so neither a request nor a prefetch can have got it.
    let mapping = MappingFile::new(&json!({"127.0.0.2": "role-a"}));
    let daemon = Daemon::builder()
        .moto(&moto)
        .mapping(&mapping)
        .default_account()
        .start()
        .await;
    let first = fetch_credentials(SRC_2, daemon.addr(), "role-a").await;

    moto.stop();
    let again = fetch_credentials(SRC_2, daemon.addr(), "role-a").await;
    assert_eq!(
        again.access_key_id, first.access_key_id,
        "held credentials were replaced"
    );

    mapping.write(&json!({"127.0.0.2": "role-a", "127.0.0.3": "role-b"}));
    let deadline = Instant::now() + Duration::from_secs(6);
    loop {
        let list = get(SRC_3, daemon.addr(), CREDS_PATH, &[]).await;
        if list.status == 200 && list.body == "role-b" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "mapping for 127.0.0.3 never loaded: {list:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let response = get(SRC_3, daemon.addr(), &format!("{CREDS_PATH}role-b"), &[]).await;
    assert!(
        (500..600).contains(&response.status),
        "a role never fetched while STS is down should be a 5xx: {response:?}"
    );
    assert!(
        !response.body.trim_start().starts_with('<'),
        "error body is HTML: {response:?}"
    );
    let body = response.json();
    assert_ne!(body["Code"], "Success", "{body}");
    assert!(body["Code"].is_string(), "no Code: {body}");
    assert!(
        body["Message"].as_str().is_some_and(|m| !m.is_empty()),
        "no Message: {body}"
    );
    let still = fetch_credentials(SRC_2, daemon.addr(), "role-a").await;
    assert_eq!(
        still.access_key_id, first.access_key_id,
        "role-a lost during the outage"
    );
}
