//! The eBPF redirect end to end, as root: attribution by cgroup across namespaces, concurrency,
//! the daemon's own cgroup, fail closed after SIGKILL, IPv6, and nothing left behind.
//!
//! Run with `cargo xtask test-privileged` (as root, one test thread, `--ignored`; it builds the eBPF
//! object and the daemon). They are `#[ignore]`d so `cargo test --workspace` never runs them by accident.

use metadataproxy_privileged_tests::{Cgroup, Daemon, HOST_MARKER, Netns, cgroup2, fetch};
use metadataproxy_tests::Moto;

mod common;
use common::{CREDS, IMDS, World, mapping_by_rel};

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
fn the_daemons_own_cgroup_is_not_redirected() {
    let world = World::new(&mapping_by_rel(&[("daemon", "never")]));
    let _daemon = world.daemon(&[]);
    let got = fetch(&world.daemon_cg, None, &format!("{IMDS}{CREDS}"));
    assert_eq!(
        got.body, HOST_MARKER,
        "the daemon's cgroup must reach the real IMDS directly"
    );
    assert_eq!(world.standin.seen(), 1);
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
