//! The audit line, one per credential set handed to a caller: what it names (container id and
//! name, role ARN, session, the access key's last four characters, identification source, IMDS
//! version) in JSON and plain logs, and that it never holds a secret.

use metadataproxy_tests::{
    ACCOUNT, CREDS_PATH, Daemon, DockerD, ImdsCredentials, MappingFile, Moto, SRC_2, get, token,
};
use serde_json::{Value, json};

/// The JSON audit lines (target `audit`) of a daemon's log.
fn audit_lines(logs: &str) -> Vec<Value> {
    logs.lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["target"] == "audit")
        .collect()
}

fn assert_no_secret(logs: &str, creds: &ImdsCredentials) {
    for (what, secret) in [
        ("secret access key", creds.secret_access_key.as_str()),
        ("session token", creds.token.as_str()),
        ("full access key id", creds.access_key_id.as_str()),
    ] {
        assert!(!logs.contains(secret), "the {what} is in the log:\n{logs}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_container_is_named_in_its_audit_line() {
    let Some(docker) = DockerD::start() else {
        return;
    };
    let moto = Moto::start().await;
    moto.create_role("role-a", "/").await;
    let daemon = Daemon::builder()
        .moto(&moto)
        .default_account()
        .env("HOST", "0.0.0.0")
        .env("DOCKER_URL", docker.url())
        .env("LOG_FORMAT", "json")
        .start()
        .await;
    let id = docker.run_detached(&["--name", "audited-web", "-e", "IAM_ROLE=role-a"]);
    let url = format!(
        "http://{}:{}{CREDS_PATH}role-a",
        docker.gateway(),
        daemon.addr().port()
    );
    let fetch = || docker.exec(&id, &format!("wget -q -O - {url}"));
    let (ok, body, err) = fetch();
    assert!(ok, "wget from the container failed: {err}");
    let (again, _, err) = fetch();
    assert!(again, "second fetch: {err}");
    let creds: ImdsCredentials =
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("not credentials ({e}): {body}"));
    let logs = daemon.wait_for_log("credentials served").await;
    let lines = audit_lines(&logs);
    assert_eq!(
        lines.len(),
        1,
        "one audit line for two fetches of one set:\n{logs}"
    );
    let line = &lines[0];
    let key = &creds.access_key_id;
    let ip = docker.ip(&id, "bridge");
    for (field, want) in [
        ("message", "credentials served".to_owned()),
        ("level", "INFO".to_owned()),
        ("container_id", id.clone()),
        ("container_name", "audited-web".to_owned()),
        ("role_arn", format!("arn:aws:iam::{ACCOUNT}:role/role-a")),
        ("session", "devproxyauth".to_owned()),
        ("access_key", format!("…{}", &key[key.len() - 4..])),
        ("source", "docker_ip".to_owned()),
        ("imds", "v1".to_owned()),
        ("caller", format!("ip:{ip}")),
    ] {
        assert_eq!(
            line[field].as_str(),
            Some(want.as_str()),
            "{field} in {line}"
        );
    }
    assert_no_secret(&logs, &creds);
}

#[tokio::test]
async fn a_mapped_caller_over_imdsv2_in_plain_logs() {
    let moto = Moto::start().await;
    moto.create_role("role-a", "/").await;
    let mapping =
        MappingFile::new(&json!({"127.0.0.2": {"name": "role-a", "session_name": "batch-7"}}));
    let daemon = Daemon::builder()
        .moto(&moto)
        .mapping(&mapping)
        .default_account()
        .start()
        .await;
    let t = token(SRC_2, daemon.addr()).await;
    let resp = get(
        SRC_2,
        daemon.addr(),
        &format!("{CREDS_PATH}role-a"),
        &[("X-aws-ec2-metadata-token", &t)],
    )
    .await;
    assert_eq!(resp.status, 200, "{resp:?}");
    let creds = ImdsCredentials::from_response(&resp);
    let logs = daemon.wait_for_log("credentials served").await;
    let line = logs
        .lines()
        .find(|l| l.contains(" audit: credentials served"))
        .unwrap_or_else(|| panic!("no audit line:\n{logs}"));
    let key = &creds.access_key_id;
    for part in [
        // Every loopback address is one caller; the peer says which one it used.
        "caller=ip:loopback peer=127.0.0.2:",
        &format!("role_arn=arn:aws:iam::{ACCOUNT}:role/role-a "),
        "session=batch-7 ",
        &format!("access_key=…{} ", &key[key.len() - 4..]),
        "source=\"mapping_file\" ",
        "imds=\"v2\"",
    ] {
        assert!(line.contains(part), "{part:?} not in {line}");
    }
    assert!(
        !line.contains("container_"),
        "no container for a mapped caller: {line}"
    );
    assert_no_secret(&logs, &creds);
    assert!(!logs.contains(&t), "the IMDSv2 token is in the log");
}
