//! The mapping file is reloaded while running (Lyft read it once); a broken file keeps the old one.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use metadataproxy_tests::{CREDS_PATH, Daemon, MappingFile, SRC_2, get};
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
