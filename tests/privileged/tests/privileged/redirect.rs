//! The eBPF redirect end to end, as root: attribution by cgroup across namespaces, concurrency,
//! fail closed after SIGKILL, IPv6, and nothing left behind.
//!
//! Run with `cargo xtask test-privileged` (as root, one test thread, `--ignored`; it builds the eBPF
//! object and the daemon). They are `#[ignore]`d so `cargo test --workspace` never runs them by accident.

use metadataproxy_privileged_tests::{Cgroup, Daemon, HOST_MARKER, Netns, cgroup2, fetch};
use metadataproxy_tests::Moto;

use crate::common::{CREDS, IMDS, World, mapping_by_rel};

#[tokio::test(flavor = "multi_thread")]
#[ignore = "privileged: run by `cargo xtask test-privileged`"]
async fn two_cgroups_in_host_and_netns_get_their_own_roles_from_moto() {
    let moto = Moto::start().await;
    let arn_a = moto.create_role("role-a", "/").await;
    let arn_b = moto.create_role("role-b", "/").await;
    let world = World::new(&mapping_by_rel(&[("a", "role-a"), ("b", "role-b")]));
    let (a, b) = (world.root.child("a"), world.root.child("b"));
    let ns = Netns::new(&world.bridge, 2);
    let endpoint = moto.endpoint();
    let daemon = world.daemon(&[
        ("AWS_ENDPOINT_URL_STS", &endpoint),
        ("AWS_ENDPOINT_URL_IAM", &endpoint),
    ]);
    for (cg, netns, role, arn) in [
        (&a, None, "role-a", &arn_a),
        (&b, None, "role-b", &arn_b),
        (&a, Some(&ns), "role-a", &arn_a),
        (&b, Some(&ns), "role-b", &arn_b),
    ] {
        let listed = fetch(cg, netns, &format!("{IMDS}{CREDS}"));
        assert!(listed.ok, "{}: {}", cg.rel, listed.stderr);
        assert_eq!(listed.body, role, "{} (netns: {})", cg.rel, netns.is_some());
        let creds = fetch(cg, netns, &format!("{IMDS}{CREDS}{role}"));
        assert!(creds.body.contains("AccessKeyId"), "{}", creds.body);
        let assumed = moto.assumed_roles().await;
        assert!(assumed.iter().any(|r| &r.role_arn == arn), "{assumed:?}");
    }
    drop(daemon);
    assert_eq!(world.standin.seen(), 0, "a caller reached the real IMDS");
}

/// Where the redirect sends a caller in `cg` (and `netns`): the peer its socket is connected to.
fn sent_to(cg: &Cgroup, netns: Option<&Netns>) -> String {
    let ns = netns
        .map(|n| format!("ip netns exec {} ", n.name))
        .unwrap_or_default();
    let script = "import socket; s = socket.create_connection(('169.254.169.254', 80), timeout=5); \
                  print('%s:%d' % s.getpeername()[:2])";
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("{} {ns}python3 -c \"{script}\"", cg.enter()))
        .output()
        .expect("running python3");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// With the default target, callers in the daemon's own network namespace are sent to
/// 127.0.0.1 (a loopback destination: Linux reuses the ports of their closed connections at
/// once, where towards the link-local target each stays in `TIME_WAIT` for 60 s and a busy host ran
/// out of them), callers in other namespaces to 169.254.170.45 (their loopback is their own);
/// both are identified. With `EBPF_TARGET` set, everyone goes where it says.
#[test]
#[ignore = "privileged: run by `cargo xtask test-privileged`"]
fn host_callers_go_to_loopback_and_others_to_the_link_address() {
    let world = World::new(&mapping_by_rel(&[("a", "role-a")]));
    let a = world.root.child("a");
    let ns = Netns::new(&world.bridge, 2);
    let daemon = world.daemon(&[]);
    assert_eq!(sent_to(&a, None), format!("127.0.0.1:{}", world.port));
    assert_eq!(
        sent_to(&a, Some(&ns)),
        format!("169.254.170.45:{}", world.port)
    );
    for netns in [None, Some(&ns)] {
        let listed = fetch(&a, netns, &format!("{IMDS}{CREDS}"));
        assert_eq!(
            listed.body,
            "role-a",
            "netns: {}: {}",
            netns.is_some(),
            listed.stderr
        );
    }
    drop(daemon);
    let target = format!("169.254.170.45:{}", world.port);
    let daemon = world.daemon(&[("EBPF_TARGET", &target)]);
    assert_eq!(
        sent_to(&a, None),
        target,
        "EBPF_TARGET is followed as given"
    );
    drop(daemon);
    assert_eq!(world.standin.seen(), 0, "a caller reached the real IMDS");
}

#[test]
#[ignore = "privileged: run by `cargo xtask test-privileged`"]
fn three_hundred_concurrent_connections_from_several_cgroups_are_all_attributed() {
    let names = ["c0", "c1", "c2", "c3", "c4"];
    let pairs: Vec<(&str, String)> = names.iter().map(|n| (*n, format!("role-{n}"))).collect();
    let pairs_ref: Vec<(&str, &str)> = pairs.iter().map(|(n, r)| (*n, r.as_str())).collect();
    let world = World::new(&mapping_by_rel(&pairs_ref));
    let cgroups: Vec<Cgroup> = names.iter().map(|n| world.root.child(n)).collect();
    let _daemon = world.daemon(&[]);
    let url = format!("{IMDS}{CREDS}");
    let children: Vec<(usize, std::process::Child)> = (0..300)
        .map(|i| {
            let k = i % cgroups.len();
            let child = metadataproxy_privileged_tests::caller_cmd(&cgroups[k], None, &url)
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .expect("spawn caller");
            (k, child)
        })
        .collect();
    let mut wrong = Vec::new();
    for (k, child) in children {
        let out = child.wait_with_output().expect("caller output");
        let body = String::from_utf8_lossy(&out.stdout).into_owned();
        if body != format!("role-{}", names[k]) {
            wrong.push((
                names[k],
                body,
                String::from_utf8_lossy(&out.stderr).into_owned(),
            ));
        }
    }
    assert!(
        wrong.is_empty(),
        "{} of 300 misattributed: {:?}",
        wrong.len(),
        &wrong[..wrong.len().min(5)]
    );
    assert_eq!(world.standin.seen(), 0);
}

#[test]
#[ignore = "privileged: run by `cargo xtask test-privileged`"]
fn after_sigkill_callers_fail_closed_and_a_restart_takes_over() {
    let world = World::new(&mapping_by_rel(&[("a", "role-a")]));
    let a = world.root.child("a");
    let url = format!("{IMDS}{CREDS}");
    let daemon = world.daemon(&[]);
    assert_eq!(fetch(&a, None, &url).body, "role-a");
    daemon.kill();
    let down = fetch(&a, None, &url);
    assert!(
        !down.ok,
        "connection succeeded with no daemon: {:?}",
        down.body
    );
    assert_ne!(down.body, HOST_MARKER);
    assert_eq!(
        world.standin.seen(),
        0,
        "the stand-in IMDS saw a request while the daemon was down"
    );
    let again = world.daemon(&[]);
    assert_eq!(fetch(&a, None, &url).body, "role-a");
    // A clean shutdown with `detach` removes every pin; callers then reach the real IMDS again.
    let logs = again.terminate_detach_check(&world);
    assert!(logs.contains("detached"), "{logs}");
}

#[test]
#[ignore = "privileged: run by `cargo xtask test-privileged`"]
fn an_upgrade_with_other_map_shapes_replaces_the_pins_and_never_opens_the_redirect() {
    let world = World::new(&mapping_by_rel(&[("a", "role-a")]));
    let a = world.root.child("a");
    let url = format!("{IMDS}{CREDS}");
    let first = world.daemon(&[]);
    assert_eq!(fetch(&a, None, &url).body, "role-a");
    let logs = first.terminate();
    assert!(logs.contains("stays pinned"), "{logs}");
    assert!(!fetch(&a, None, &url).ok, "served with no daemon");
    // The successor's maps have another shape (as after an upgrade that changed a record).
    let second = world.daemon(&[("EBPF_MAP_SIZE", "1024")]);
    assert_eq!(fetch(&a, None, &url).body, "role-a");
    let logs = second.terminate();
    for map in ["MP_CONN4", "MP_CONN6", "MP_EXEMPT"] {
        assert!(
            logs.lines()
                .any(|l| l.contains("replacing a pinned map") && l.contains(map)),
            "{map} not replaced:\n{logs}"
        );
    }
    assert!(logs.contains("want 1024"), "{logs}");
    // The same shape again: the pins are reused, nothing replaced.
    let third = world.daemon(&[("EBPF_MAP_SIZE", "1024")]);
    assert_eq!(fetch(&a, None, &url).body, "role-a");
    let logs = third.terminate();
    assert!(!logs.contains("replacing a pinned map"), "{logs}");
    assert_eq!(
        world.standin.seen(),
        0,
        "a caller reached the real IMDS during the upgrade"
    );
}

trait DetachCheck {
    fn terminate_detach_check(self, world: &World) -> String;
}

impl DetachCheck for Daemon {
    /// Keep-blocking is the default: after SIGTERM the pins stay and callers still fail.
    fn terminate_detach_check(self, world: &World) -> String {
        let logs = self.terminate();
        assert!(logs.contains("stays pinned"), "{logs}");
        let a = world.root.child("a");
        assert!(!fetch(&a, None, &format!("{IMDS}{CREDS}")).ok);
        let d = world.daemon(&[("EBPF_ON_EXIT", "detach")]);
        let logs = d.terminate();
        let left: Vec<_> = std::fs::read_dir(world.bpffs.pin_dir())
            .map(|r| r.flatten().map(|e| e.file_name()).collect())
            .unwrap_or_default();
        assert!(left.is_empty(), "pins left after detach: {left:?}");
        assert_eq!(fetch(&a, None, &format!("{IMDS}{CREDS}")).body, HOST_MARKER);
        logs
    }
}

#[test]
#[ignore = "privileged: run by `cargo xtask test-privileged`"]
fn ipv6_callers_are_redirected_by_connect6() {
    let world = World::new(&mapping_by_rel(&[("v6", "role-v6")]));
    let v6 = world.root.child("v6");
    let _daemon = world.daemon(&[]);
    let got = fetch(&v6, None, &format!("http://[fd00:ec2::254]{CREDS}"));
    assert!(got.ok, "{}", got.stderr);
    assert_eq!(got.body, "role-v6");
    assert_eq!(world.standin.seen(), 0);
}

/// A container id for cgroups named like Docker's.
const CONTAINER_ID: &str = "0c1d2e3f4a5b6c7d8e9f0a1b2c3d4e5f6a7b8c9d0e1f2a3b4c5d6e7f8a9b0c1d";

/// Asserts that a caller in `cg` reached the daemon, not the stand-in IMDS.
fn assert_redirected(world: &World, cg: &Cgroup, what: &str) {
    let before = world.standin.seen();
    let got = fetch(cg, None, &format!("{IMDS}{CREDS}"));
    assert!(got.ok, "{what} ({}): {}", cg.rel, got.stderr);
    assert_ne!(
        got.body, HOST_MARKER,
        "{what} ({}) reached the real IMDS",
        cg.rel
    );
    assert_eq!(
        world.standin.seen(),
        before,
        "{what} ({}) reached the real IMDS",
        cg.rel
    );
}

/// Asserts that a caller in `cg` reached the stand-in IMDS directly.
fn assert_not_redirected(world: &World, cg: &Cgroup, what: &str) {
    let before = world.standin.seen();
    let got = fetch(cg, None, &format!("{IMDS}{CREDS}"));
    assert_eq!(got.body, HOST_MARKER, "{what} ({}): {}", cg.rel, got.stderr);
    assert_eq!(world.standin.seen(), before + 1, "{what} ({})", cg.rel);
}

#[test]
#[ignore = "privileged: run by `cargo xtask test-privileged`"]
fn host_processes_are_redirected_only_with_ebpf_redirect_host() {
    let world = World::new(&mapping_by_rel(&[("mapped", "role-mapped")]));
    let plain = world.root.child("plain");
    let mapped = world.root.child("mapped");
    let below_mapped = mapped.child("worker");
    let docker = world.root.child("docker");
    let cgroupfs = docker.child(CONTAINER_ID);
    let slice = world.root.child("system.slice");
    let scope = slice.child(&format!("docker-{CONTAINER_ID}.scope"));

    // The default, EBPF_REDIRECT_HOST=false.
    let daemon = world.daemon(&[]);
    assert_not_redirected(&world, &plain, "a plain host cgroup");
    assert_redirected(&world, &cgroupfs, "a cgroupfs docker container");
    assert_redirected(&world, &scope, "a systemd docker container");
    assert_redirected(&world, &below_mapped, "a cgroup below a mapped one");
    let got = fetch(&mapped, None, &format!("{IMDS}{CREDS}"));
    assert_eq!(got.body, "role-mapped", "{}", got.stderr);

    // A container that appears after the scan is redirected at once (fail closed); a new host
    // cgroup is redirected only until inotify reports it and the scan exempts it: promptly, with
    // no poll tick to wait for (it was one second).
    let late_container = docker.child(&"f".repeat(64));
    assert_redirected(&world, &late_container, "a brand-new container");
    let mut took = Vec::new();
    let mut lates = Vec::new();
    for n in 0..3 {
        let made = std::time::Instant::now();
        let late = world.root.child(&format!("late{n}"));
        while fetch(&late, None, &format!("{IMDS}{CREDS}")).body != HOST_MARKER {
            assert!(
                made.elapsed() < std::time::Duration::from_secs(10),
                "a new host cgroup was never exempted"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        took.push(made.elapsed());
        lates.push(late);
    }
    eprintln!("new host cgroups reached the real IMDS after {took:?}");
    assert!(
        took.iter()
            .all(|t| *t < std::time::Duration::from_millis(300)),
        "new host cgroups exempted only after {took:?}"
    );
    let late = &lates[0];
    assert_redirected(&world, &late_container, "a container after a rescan");
    drop(daemon);

    // EBPF_REDIRECT_HOST=true: the pinned exemptions are dropped, host processes redirected too.
    let daemon = world.daemon(&[("EBPF_REDIRECT_HOST", "true")]);
    assert_redirected(
        &world,
        &plain,
        "a plain host cgroup with EBPF_REDIRECT_HOST=true",
    );
    assert_redirected(
        &world,
        late,
        "a later host cgroup with EBPF_REDIRECT_HOST=true",
    );
    assert_redirected(
        &world,
        &cgroupfs,
        "a container with EBPF_REDIRECT_HOST=true",
    );
    drop(daemon);

    // Back to the default: the plain host cgroup is exempt again from the first scan.
    let _daemon = world.daemon(&[]);
    assert_not_redirected(&world, &plain, "a plain host cgroup after a restart");
    assert_redirected(&world, &scope, "a systemd docker container after a restart");
}

#[test]
#[ignore = "privileged: run by `cargo xtask test-privileged`"]
fn zz_nothing_is_left_behind() {
    let id = std::process::id();
    let cg = cgroup2().join(format!("mp-test-{id}"));
    assert!(!cg.exists(), "{} left behind", cg.display());
    let netns = metadataproxy_privileged_tests::sh("ip netns list");
    assert!(!netns.contains(&format!("mp-{id}-")), "netns left: {netns}");
    let links = metadataproxy_privileged_tests::sh("ip -o link show");
    assert!(
        !links.contains(&format!("mpbr{}", id % 100_000)),
        "bridge left"
    );
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    assert!(!mounts.contains("mp-bpffs-"), "bpffs mount left");
    let addrs = metadataproxy_privileged_tests::sh("ip addr show dev lo");
    assert!(
        !addrs.contains("169.254.169.254") && !addrs.contains("fd00:ec2::254"),
        "{addrs}"
    );
}
