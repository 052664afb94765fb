//! The mapping file is reloaded while running (Lyft read it once); a broken file keeps the old one.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use metadataproxy_tests::{
    CREDS_PATH, Daemon, KeepAlive, MappingFile, SRC_2, get, moto_and_daemon,
};
use serde_json::json;

/// How long a change may take to show.
const RELOAD_WITHIN: Duration = Duration::from_secs(6);

/// Polls 127.0.0.2's role listing until it is `role` or the deadline passes.
async fn wait_for_role(addr: SocketAddr, role: &str, after: &str) {
    let deadline = Instant::now() + RELOAD_WITHIN;
    loop {
        let response = get(SRC_2, addr, CREDS_PATH, &[]).await;
        if response.status == 200 && response.body == role {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "after {after}, 127.0.0.2 still sees {response:?} instead of {role} after {RELOAD_WITHIN:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn rewrites_and_renames_take_effect_and_broken_json_is_ignored() {
    let mapping = MappingFile::new(&json!({"127.0.0.2": "role-a"}));
    let daemon = Daemon::builder()
        .mapping(&mapping)
        .default_account()
        .start()
        .await;
    let addr = daemon.addr();
    wait_for_role(addr, "role-a", "start").await;

    mapping.write(&json!({"127.0.0.2": "role-b"}));
    wait_for_role(addr, "role-b", "an in-place rewrite").await;

    mapping.replace(&json!({"127.0.0.2": {"name": "role-c"}}));
    wait_for_role(addr, "role-c", "a rename over the file").await;

    mapping.write_raw("{\"127.0.0.2\": \"role-d\",");
    let path = mapping.path().display().to_string();
    let deadline = Instant::now() + RELOAD_WITHIN;
    while !daemon.logs().contains(&path) {
        assert!(
            Instant::now() < deadline,
            "broken mapping file not reported by name ({path}); stderr:\n{}",
            daemon.logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let response = get(SRC_2, addr, CREDS_PATH, &[]).await;
    assert_eq!(
        (response.status, response.body.as_str()),
        (200, "role-c"),
        "a broken file must not replace the last good mapping: {response:?}"
    );
}

/// A keep-alive connection (the AWS SDKs keep theirs) may be answered from the credentials it was
/// last given, but only while nothing changed: once the new mapping is in force, its very next
/// request sees it, even though it asked a moment ago.
#[tokio::test]
async fn a_keep_alive_connection_sees_a_change_at_its_next_request() {
    let (_moto, mapping, daemon) =
        moto_and_daemon(&["role-a", "role-b"], &json!({"127.0.0.2": "role-a"})).await;
    let addr = daemon.addr();
    wait_for_role(addr, "role-a", "start").await;
    let role_a = format!("{CREDS_PATH}role-a");
    let mut conn = KeepAlive::connect(SRC_2, addr).await;
    for _ in 0..3 {
        let response = conn.get(&role_a).await;
        assert_eq!(
            response.status, 200,
            "role-a on the keep-alive connection: {response:?}"
        );
    }

    mapping.write(&json!({"127.0.0.2": "role-b"}));
    // The connection keeps asking, so what it remembers is never more than a moment old, until a
    // new connection sees the new mapping.
    let deadline = Instant::now() + RELOAD_WITHIN;
    loop {
        let on_conn = conn.get(&role_a).await;
        let fresh = get(SRC_2, addr, CREDS_PATH, &[]).await;
        if fresh.status == 200 && fresh.body == "role-b" {
            break;
        }
        assert_eq!(
            on_conn.status, 200,
            "role-a refused on the keep-alive connection before the new mapping showed: {on_conn:?}"
        );
        assert!(
            Instant::now() < deadline,
            "the new mapping did not show within {RELOAD_WITHIN:?}: {fresh:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let after = conn.get(&role_a).await;
    assert_eq!(
        after.status,
        404,
        "the keep-alive connection was still given role-a's credentials after the mapping changed (status {}, {} body bytes)",
        after.status,
        after.body.len()
    );
    let role_b = conn.get(&format!("{CREDS_PATH}role-b")).await;
    assert_eq!(
        role_b.status, 200,
        "role-b on the same connection: {role_b:?}"
    );
    assert!(
        role_b.json()["AccessKeyId"].is_string(),
        "role-b's credentials: {role_b:?}"
    );
}
