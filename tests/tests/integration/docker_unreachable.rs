//! An unreachable `DOCKER_URL` is reported precisely and retried, and never stops the daemon from
//! serving callers identified otherwise (mapping file, `DEFAULT_ROLE`). No dockerd needed.

use std::time::Duration;

use metadataproxy_tests::{
    CREDS_PATH, Daemon, ImdsCredentials, MappingFile, Moto, NOWHERE, SRC_2, SRC_3, get,
};
use serde_json::json;

/// Waits (up to 5 s) for `needle` in the daemon's log.
async fn log_shows(daemon: &Daemon, needle: &str) -> String {
    for _ in 0..100 {
        let logs = daemon.logs();
        if logs.contains(needle) {
            return logs;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("daemon log never showed {needle:?}:\n{}", daemon.logs());
}

#[tokio::test]
async fn missing_socket_is_reported_and_mapping_file_callers_are_served() {
    let moto = Moto::start().await;
    moto.create_role("role-m", "/").await;
    let mapping = MappingFile::new(&json!({"127.0.0.2": "role-m"}));
    let socket = "/nonexistent-metadataproxy-test/docker.sock";
    let daemon = Daemon::builder()
        .moto(&moto)
        .mapping(&mapping)
        .default_account()
        .env("DOCKER_URL", format!("unix://{socket}"))
        .start()
        .await;
    let logs = log_shows(&daemon, "Docker is unreachable").await;
    assert!(logs.contains(socket), "the log names the socket:\n{logs}");
    let response = get(SRC_2, daemon.addr(), &format!("{CREDS_PATH}role-m"), &[]).await;
    assert_eq!(response.status, 200, "{response:?}");
    ImdsCredentials::from_response(&response);
}

#[tokio::test]
async fn refused_tcp_docker_is_retried_and_default_role_callers_are_served() {
    let moto = Moto::start().await;
    moto.create_role("role-d", "/").await;
    let mut daemon = Daemon::builder()
        .moto(&moto)
        .default_account()
        .env("DEFAULT_ROLE", "role-d")
        .env("DOCKER_URL", NOWHERE.replace("http://", "tcp://"))
        .start()
        .await;
    let logs = log_shows(&daemon, "Docker is unreachable").await;
    assert!(logs.contains("tcp://127.0.0.1:9"), "{logs}");
    // No container is known, so no caller waits for one: the default role at once.
    let started = std::time::Instant::now();
    let response = get(SRC_3, daemon.addr(), &format!("{CREDS_PATH}role-d"), &[]).await;
    assert_eq!(response.status, 200, "{response:?}");
    assert!(
        started.elapsed() < Duration::from_millis(400),
        "{:?}",
        started.elapsed()
    );
    // Still retrying, with backoff (not one attempt per millisecond, not given up).
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        daemon.is_running(),
        "the daemon must keep running without Docker"
    );
}

#[tokio::test]
async fn https_docker_url_is_a_configuration_error() {
    let exited = Daemon::builder()
        .env("DOCKER_URL", "https://127.0.0.1:2376")
        .run_expecting_exit(Duration::from_secs(10))
        .await;
    assert!(exited.status.is_some_and(|s| !s.success()), "{exited:?}");
    assert!(exited.stderr.contains("DOCKER_URL"), "{}", exited.stderr);
    assert!(exited.stderr.contains("https://"), "{}", exited.stderr);
}
