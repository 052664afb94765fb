//! Invalid configuration: every bad variable named at once, non-zero exit, nothing bound.

use std::time::Duration;

use metadataproxy_tests::{Daemon, free_port};

/// A config error is found before any network work; give a loaded machine some slack.
const EXIT_WITHIN: Duration = Duration::from_secs(10);

#[tokio::test]
async fn every_bad_variable_is_named_and_the_process_exits() {
    let exited = Daemon::builder()
        .env("PORT", "abc")
        .env("ROLE_EXPIRATION_THRESHOLD", "-1")
        .env("AWS_ACCOUNT_MAP", "{")
        .run_expecting_exit(EXIT_WITHIN)
        .await;
    let Some(status) = exited.status else {
        panic!("still running after {EXIT_WITHIN:?} with a bad config: {exited:?}");
    };
    assert!(!status.success(), "exit status {status} for a bad config");
    for name in ["PORT", "ROLE_EXPIRATION_THRESHOLD", "AWS_ACCOUNT_MAP"] {
        assert!(
            exited.stderr.contains(name),
            "stderr does not name {name}:\n{}",
            exited.stderr
        );
    }
}

#[tokio::test]
async fn a_bad_config_never_binds_its_port() {
    let port = free_port();
    let exited = Daemon::builder()
        .env("PORT", port.to_string())
        .env("ROLE_EXPIRATION_THRESHOLD", "soon")
        .env("AWS_ACCOUNT_MAP", "[1, 2]")
        .run_expecting_exit(EXIT_WITHIN)
        .await;
    let Some(status) = exited.status else {
        panic!("still running after {EXIT_WITHIN:?} with a bad config: {exited:?}");
    };
    assert!(!status.success(), "exit status {status} for a bad config");
    assert!(
        !exited.was_listening,
        "port {port} accepted connections before the exit"
    );
    for name in ["ROLE_EXPIRATION_THRESHOLD", "AWS_ACCOUNT_MAP"] {
        assert!(
            exited.stderr.contains(name),
            "stderr does not name {name}:\n{}",
            exited.stderr
        );
    }
    assert!(
        !exited.stderr.contains("PORT="),
        "a valid PORT blamed:\n{}",
        exited.stderr
    );
}

#[tokio::test]
async fn a_broken_role_policy_stops_the_daemon_saying_where() {
    let dir = tempfile::tempdir().expect("temp dir");
    let policy = dir.path().join("policy.json");
    std::fs::write(
        &policy,
        "{\"version\": 1,\n \"rules\": [{\"match\": {\"namespce\": \"a\"}, \"allow\": [\"*\"]}]}",
    )
    .expect("write the policy");
    let port = free_port();
    let exited = Daemon::builder()
        .env("PORT", port.to_string())
        .env("ROLE_POLICY_FILE", policy.display().to_string())
        .run_expecting_exit(EXIT_WITHIN)
        .await;
    let Some(status) = exited.status else {
        panic!("still running after {EXIT_WITHIN:?} with a broken policy: {exited:?}");
    };
    assert!(
        !status.success(),
        "exit status {status} for a broken policy"
    );
    assert!(!exited.was_listening, "port {port} accepted connections");
    let want = format!(
        "role policy file `{}` is invalid at line 2, column 32: unknown field `namespce`",
        policy.display()
    );
    assert!(exited.stderr.contains(&want), "{}", exited.stderr);
}

#[tokio::test]
async fn session_tag_settings_sts_would_refuse_are_named() {
    let exited = Daemon::builder()
        .env("SESSION_TAGS", "aws:ns=Namespace,team=Env:GITHUB_TOKEN")
        .env("SOURCE_IDENTITY", "Podname")
        .run_expecting_exit(EXIT_WITHIN)
        .await;
    let Some(status) = exited.status else {
        panic!("still running after {EXIT_WITHIN:?}: {exited:?}");
    };
    assert!(!status.success());
    for want in [
        "SESSION_TAGS",
        "the prefix aws: is reserved",
        "SOURCE_IDENTITY",
        "`Podname` is not Name, Image, Namespace, PodName, PodUid, Labels:KEY or Env:KEY",
    ] {
        assert!(
            exited.stderr.contains(want),
            "no {want:?} in:\n{}",
            exited.stderr
        );
    }
    let exited = Daemon::builder()
        .env("SESSION_TAGS", "team=Env:GITHUB_TOKEN")
        .run_expecting_exit(EXIT_WITHIN)
        .await;
    assert!(
        exited
            .stderr
            .contains("`Env:GITHUB_TOKEN` looks like a secret"),
        "{}",
        exited.stderr
    );
}
