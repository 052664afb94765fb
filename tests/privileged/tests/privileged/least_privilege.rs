//! The daemon runs as the systemd unit runs it: an unprivileged user holding only the capabilities
//! `deploy/systemd/metadataproxy.service` grants. With them, the redirect loads, attaches and
//! serves a cgroup its own role; without one of them, the daemon refuses to start and names it.
//!
//! Run with `cargo xtask test-privileged` (root). `#[ignore]`d so `cargo test --workspace` never
//! runs them by accident.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use metadataproxy_privileged_tests::{Daemon, fetch, sh};
use metadataproxy_tests::Moto;

use crate::common::{CREDS, IMDS, World, mapping_by_rel};

/// The unit's `AmbientCapabilities=` as setpriv's `+bpf,+perfmon,…` list.
fn unit_capabilities() -> String {
    let unit =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/systemd/metadataproxy.service");
    let text = std::fs::read_to_string(&unit).expect("reading the systemd unit");
    let line = text
        .lines()
        .find_map(|l| l.strip_prefix("AmbientCapabilities="))
        .expect("AmbientCapabilities= in the unit");
    line.split_whitespace()
        .map(|c| format!("+{}", c.trim_start_matches("CAP_").to_lowercase()))
        .collect::<Vec<_>>()
        .join(",")
}

/// `setpriv` as `nobody` with exactly `caps` (inheritable, ambient and bounding), as systemd's
/// `User=` + `AmbientCapabilities=` + `CapabilityBoundingSet=` would.
fn as_nobody_with(caps: &str) -> String {
    format!(
        "setpriv --reuid=nobody --regid=nogroup --clear-groups --inh-caps=-all,{caps} \
         --ambient-caps={caps} --bounding-set=-all,{caps}"
    )
}

/// What the unit's `ExecStartPre=+install -d -o metadataproxy …` does: the pin directory, owned by
/// the daemon's user; and a mapping file that user can read.
fn prepare_for_nobody(world: &World) {
    let pins = world.bpffs.pin_dir();
    sh(&format!(
        "install -d -o nobody -g nogroup -m 0700 {}",
        pins.display()
    ));
    sh(&format!("chmod 0644 {}", world.mapping.path().display()));
}

fn status_field(pid: u32, field: &str) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .expect("field")
        .trim()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "privileged: run by `cargo xtask test-privileged`"]
async fn as_nobody_with_the_units_capabilities_the_redirect_serves_its_role() {
    let moto = Moto::start().await;
    let arn = moto.create_role("role-a", "/").await;
    let world = World::new(&mapping_by_rel(&[("a", "role-a")]));
    let a = world.root.child("a");
    prepare_for_nobody(&world);
    let caps = unit_capabilities();
    assert_eq!(
        caps, "+bpf,+perfmon,+net_admin",
        "the unit's capabilities changed"
    );
    let endpoint = moto.endpoint();
    let mut vars = world.vars();
    vars.insert("AWS_ENDPOINT_URL_STS".into(), endpoint.clone());
    vars.insert("AWS_ENDPOINT_URL_IAM".into(), endpoint);
    let daemon = Daemon::start_via(&world.daemon_cg, &vars, world.port, &as_nobody_with(&caps));
    // It really is unprivileged: uid nobody, and exactly CAP_BPF (39), CAP_PERFMON (38) and
    // CAP_NET_ADMIN (12) effective.
    let uid = status_field(daemon.pid(), "Uid:");
    assert!(uid.starts_with("65534"), "daemon uid: {uid}");
    let eff = u64::from_str_radix(&status_field(daemon.pid(), "CapEff:"), 16).expect("hex");
    assert_eq!(eff, (1 << 39) | (1 << 38) | (1 << 12), "CapEff {eff:#x}");
    assert!(daemon.logs().contains("attached"), "{}", daemon.logs());

    let listed = fetch(&a, None, &format!("{IMDS}{CREDS}"));
    assert!(listed.ok, "{}", listed.stderr);
    assert_eq!(listed.body, "role-a");
    let creds = fetch(&a, None, &format!("{IMDS}{CREDS}role-a"));
    assert!(creds.body.contains("AccessKeyId"), "{}", creds.body);
    let assumed = moto.assumed_roles().await;
    assert!(assumed.iter().any(|r| r.role_arn == arn), "{assumed:?}");
    drop(daemon);
    assert_eq!(world.standin.seen(), 0, "a caller reached the real IMDS");
}

#[test]
#[ignore = "privileged: run by `cargo xtask test-privileged`"]
fn without_cap_perfmon_the_daemon_refuses_to_start_and_names_it() {
    let world = World::new(&mapping_by_rel(&[("a", "role-a")]));
    prepare_for_nobody(&world);
    let bin = metadataproxy_tests::required_path("METADATAPROXY_BIN");
    let log = tempfile::NamedTempFile::new().expect("log");
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "{} {} {}",
            world.daemon_cg.enter(),
            as_nobody_with("+bpf,+net_admin"),
            bin.display()
        ))
        .env_clear()
        .env("PATH", metadataproxy_tests::path_var())
        .envs(world.vars())
        .stdin(Stdio::null())
        .stderr(log.reopen().expect("log"))
        .spawn()
        .expect("start");
    let deadline = Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "still running without CAP_PERFMON"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let stderr = std::fs::read_to_string(log.path()).expect("log");
    assert!(!status.success(), "{stderr}");
    assert!(
        stderr.contains("missing CAP_PERFMON"),
        "the refusal does not name CAP_PERFMON:\n{stderr}"
    );
    assert_eq!(world.standin.seen(), 0);
}
