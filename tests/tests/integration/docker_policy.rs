//! The role policy and session tags on a real dockerd with the eBPF redirect: a container may
//! assume only what the rule for its Compose project (a label) allows; one outside every rule,
//! or asking for a denied role, gets 403 from inside the container with an audit line and no
//! AssumeRole; the policy file swapped by rename while the daemon runs takes effect, a broken
//! version keeps the last good one; each AssumeRole carries the container's name, image, label
//! and variable as tags and its name as `SourceIdentity`, checked on the wire by a recording relay
//! in front of moto. 169.254.169.254 is made local with a stand-in that must see nothing.
//!
//! Needs root, a real dockerd, and the daemon built with the eBPF object.

use std::time::{Duration, Instant};

use crate::docker_ebpf::v1;
use metadataproxy_tests::{
    ACCOUNT, BpfFs, CREDS_PATH, Daemon, DockerD, FaultySts, IMAGE, MetadataAddress, Moto,
};

fn arn(role: &str) -> String {
    format!("arn:aws:iam::{ACCOUNT}:role/{role}")
}

const POLICY: &str = r#"{"version": 1, "rules": [
    {"name": "shop", "match": {"labels": {"com.docker.compose.project": "shop"}}, "allow": ["shop-*"]},
    {"name": "no-admin", "match": {}, "deny": ["*-admin"]}
]}"#;

/// Replaces the policy file by rename (as a `ConfigMap` swap or an editor does).
fn swap(path: &std::path::Path, text: &str) {
    let tmp = path.with_extension("new");
    std::fs::write(&tmp, text).expect("write the new policy");
    std::fs::rename(&tmp, path).expect("rename it over the policy file");
}

/// Waits until container `id`'s listing answers `ok` (the reloaded policy is in force).
fn wait_listing(docker: &DockerD, id: &str, ok: bool, daemon: &Daemon) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (got, body) = v1(docker, id, CREDS_PATH);
        if got == ok {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "policy reload not seen ({body})\n{}",
            daemon.logs()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compose_projects_get_only_the_roles_their_rule_allows_with_their_tags() {
    let Some(docker) = DockerD::start() else {
        return;
    };
    let metadata = MetadataAddress::start();
    let bpffs = BpfFs::mount();
    let moto = Moto::start().await;
    for role in ["shop-api", "shop-admin", "batch"] {
        moto.create_role(role, "/").await;
    }
    let relay = FaultySts::start(moto.addr());
    let dir = tempfile::tempdir().expect("temp dir");
    let policy = dir.path().join("policy.json");
    std::fs::write(&policy, POLICY).expect("write the policy");
    let daemon = Daemon::builder()
        .moto(&moto)
        .default_account()
        .redirecting_docker(&docker, &bpffs)
        .env("AWS_ENDPOINT_URL_STS", relay.url())
        .env("ROLE_POLICY_FILE", policy.display().to_string())
        .env(
            "SESSION_TAGS",
            "container=Name,image=Image,project=Labels:com.docker.compose.project,team=Env:TEAM",
        )
        .env("SOURCE_IDENTITY", "Name")
        .start()
        .await;

    let project = ["--label", "com.docker.compose.project=shop"];
    let api = docker.run_detached(
        &[
            &project[..],
            &[
                "--name",
                "shop-api-1",
                "-e",
                "IAM_ROLE=shop-api",
                "-e",
                "TEAM=web shop;x",
            ],
        ]
        .concat(),
    );
    let admin = docker.run_detached(&[&project[..], &["-e", "IAM_ROLE=shop-admin"]].concat());
    let batch = docker.run_detached(&["-e", "IAM_ROLE=batch"]);

    let (ok, body) = v1(&docker, &api, &format!("{CREDS_PATH}shop-api"));
    assert!(ok, "shop's api: {body}\n{}", daemon.logs());
    for (id, role, what) in [
        (&admin, "shop-admin", "a denied role"),
        (&batch, "batch", "a container no rule is about"),
    ] {
        let (ok, err) = v1(&docker, id, &format!("{CREDS_PATH}{role}"));
        assert!(!ok && err.contains("403"), "{what}: {err}");
    }
    let logs = daemon
        .wait_for_logs(&[
            "role refused by the role policy",
            "rule=no-admin",
            "rule=(none)",
        ])
        .await;
    assert!(
        logs.lines()
            .any(|l| l.contains("role refused by the role policy")
                && l.contains(&format!("role_arn={}", arn("batch")))
                && l.contains("assigned_by=\"workload\"")
                && l.contains("reason=1 rule applies to this caller, none allows the role")),
        "{logs}"
    );
    check_wire(&relay);
    check_reload(&docker, &daemon, &policy, (&batch, &admin)).await;
    let seen = metadata.standin.requests();
    assert!(
        seen.is_empty(),
        "the real IMDS stand-in was reached: {seen:?}"
    );
}

/// What the relay saw: no AssumeRole for the refused roles; shop's with its exact tags.
fn check_wire(relay: &FaultySts) {
    assert!(relay.assume_role_attempts(&arn("shop-admin")).is_empty());
    assert!(relay.assume_role_attempts(&arn("batch")).is_empty());
    let calls = relay.assume_role_attempts(&arn("shop-api"));
    assert!(!calls.is_empty());
    for call in &calls {
        assert_eq!(
            call.params_starting("Tags.member."),
            [
                ("Tags.member.1.Key", "container"),
                ("Tags.member.1.Value", "shop-api-1"),
                ("Tags.member.2.Key", "image"),
                ("Tags.member.2.Value", IMAGE),
                ("Tags.member.3.Key", "project"),
                ("Tags.member.3.Value", "shop"),
                ("Tags.member.4.Key", "team"),
                // `;` is not a tag character: made `_`.
                ("Tags.member.4.Value", "web shop_x"),
            ]
            .map(|(k, v)| (k.to_owned(), v.to_owned())),
        );
        assert!(call.params_starting("TransitiveTagKeys").is_empty());
        assert_eq!(call.param("SourceIdentity"), Some("shop-api-1"));
    }
}

/// A broken policy keeps the last good one; a new one allowing `batch` takes effect, and the
/// deny still refuses `admin`.
async fn check_reload(
    docker: &DockerD,
    daemon: &Daemon,
    policy: &std::path::Path,
    (batch, admin): (&str, &str),
) {
    // A broken policy keeps the last good one; a new one allowing batch takes effect.
    swap(policy, "{\"version\": 1, \"rules\": [{\"match\": {}}]}");
    daemon
        .wait_for_log("role policy file reload failed; keeping the previous version")
        .await;
    let (ok, err) = v1(docker, batch, CREDS_PATH);
    assert!(!ok && err.contains("403"), "after a broken version: {err}");
    swap(
        policy,
        &POLICY.replace(r#""allow": ["shop-*"]}"#, r#""allow": ["shop-*"]}, {"name": "batch", "match": {"image": "*"}, "allow": ["batch"]}"#),
    );
    wait_listing(docker, batch, true, daemon);
    let (ok, body) = v1(docker, batch, &format!("{CREDS_PATH}batch"));
    assert!(ok, "batch after the reload: {body}");
    let (ok, err) = v1(docker, admin, CREDS_PATH);
    assert!(!ok && err.contains("403"), "the deny still wins: {err}");
}
