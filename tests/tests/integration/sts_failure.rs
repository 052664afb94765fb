//! When STS is down, credentials already held are still served; new roles fail as JSON, not HTML;
//! and what AWS says about the daemon's own identity in an error never reaches a caller.

use std::time::{Duration, Instant};

use metadataproxy_tests::{
    ACCOUNT, CREDS_PATH, DENIED_CALLER_ACCOUNT, DENIED_CALLER_ARN, DENIED_CALLER_INSTANCE, Daemon,
    Fault, FaultySts, INFO_PATH, MappingFile, Moto, SRC_2, SRC_3, fetch_credentials, get,
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

#[tokio::test]
async fn sts_error_text_naming_the_daemon_stays_in_the_log() {
    let moto = Moto::start().await;
    moto.create_role("role-a", "/").await;
    // STS answers every AssumeRole with AccessDenied naming the daemon's own session, account and
    // instance, as AWS does when the daemon's role may not assume the caller's.
    let sts = FaultySts::start(moto.addr());
    sts.set(Fault::Deny, 1.0);
    let mapping = MappingFile::new(&json!({"127.0.0.2": "role-a"}));
    let daemon = Daemon::builder()
        .moto(&moto)
        .env("AWS_ENDPOINT_URL_STS", sts.url())
        .mapping(&mapping)
        .default_account()
        .start()
        .await;
    for path in [format!("{CREDS_PATH}role-a"), INFO_PATH.to_owned()] {
        let response = get(SRC_2, daemon.addr(), &path, &[]).await;
        assert_eq!(response.status, 502, "GET {path}: {response:?}");
        for secret in [
            DENIED_CALLER_ARN,
            DENIED_CALLER_ACCOUNT,
            DENIED_CALLER_INSTANCE,
            "metadataproxy-node",
            "not authorized",
        ] {
            assert!(
                !response.body.contains(secret),
                "GET {path}: the caller sees {secret:?}: {response:?}"
            );
        }
        let body = response.json();
        assert_eq!(body["Code"], "AssumeRoleUnauthorizedAccess", "{body}");
        let message = body["Message"].as_str().unwrap_or_default();
        let id = message
            .split("request id ")
            .nth(1)
            .and_then(|rest| rest.get(..16))
            .unwrap_or_else(|| panic!("GET {path}: no request id in {message:?}"));
        // The log line with that id holds AWS's whole message.
        let logs = daemon.wait_for_log(&format!("request_id={id}")).await;
        let line = logs
            .lines()
            .find(|l| l.contains(&format!("request_id={id}")))
            .unwrap_or_default();
        assert!(
            line.contains(DENIED_CALLER_ARN) && line.contains("role/role-a"),
            "the log line of request {id} lacks AWS's text: {line}"
        );
    }
    assert!(
        ACCOUNT != DENIED_CALLER_ACCOUNT,
        "the daemon's account must differ from the roles' for this test to mean anything"
    );
}
