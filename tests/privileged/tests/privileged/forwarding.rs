//! Issue 11, what no cgroup hook sees: Ethernet frames a container writes on an `AF_PACKET` socket
//! (Docker grants `CAP_NET_RAW`), and packets from namespaces whose cgroup is not redirected, are
//! forwarded by the host to the real IMDS unless the daemon's policy-routing rules refuse them,
//! while the host's own calls (the daemon's proxy mode) still get there. The rules outlive the
//! daemon, restarts do not duplicate them (nor keep those of a dropped `ECS_ENDPOINT`), and the
//! README's commands remove them. The default redirect target's address is put back on `lo` when
//! it is removed while the daemon runs.
//!
//! Everything happens in a [`Site`]: the daemon in a "host" network namespace, the stand-in
//! "real IMDS" behind a route in an "uplink" one (not local to the host, as on EC2), the
//! container in a third. Run with `cargo xtask test-privileged` (root, one test thread).

use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::time::Duration;

use metadataproxy_privileged_tests::{
    Bpffs, Cgroup, Daemon, HOST_MAC, HOST_MARKER, Site, UDP_PORT, sh,
};

const CREDS: &str = "/latest/meta-data/iam/security-credentials/";

/// Sends one UDP datagram to the metadata address (`4`: 169.254.169.254, `6`: `fd00:ec2::254`),
/// port `argv[3]`, as a raw Ethernet frame on interface `ch` to the gateway's MAC: no socket of
/// the IP stack, so no cgroup hook (connect, egress) ever sees it.
const FRAME: &str = r"
import socket, struct, sys
family, payload, port, gw_mac = sys.argv[1], sys.argv[2].encode(), int(sys.argv[3]), sys.argv[4]
def csum(b):
    if len(b) % 2:
        b += b'\0'
    t = sum(struct.unpack('!%dH' % (len(b) // 2), b))
    while t >> 16:
        t = (t & 0xffff) + (t >> 16)
    return ~t & 0xffff
src_mac = bytes.fromhex(open('/sys/class/net/ch/address').read().strip().replace(':', ''))
dst_mac = bytes.fromhex(gw_mac.replace(':', ''))
udp_len = 8 + len(payload)
if family == '4':
    src, dst = socket.inet_aton('10.99.2.2'), socket.inet_aton('169.254.169.254')
    udp = struct.pack('!HHHH', 40000, port, udp_len, 0) + payload
    ip = struct.pack('!BBHHHBBH4s4s', 0x45, 0, 20 + udp_len, 1, 0, 64, 17, 0, src, dst)
    ip = ip[:10] + struct.pack('!H', csum(ip)) + ip[12:]
    frame = dst_mac + src_mac + b'\x08\x00' + ip + udp
else:
    src, dst = socket.inet_pton(socket.AF_INET6, 'fd99:2::2'), socket.inet_pton(socket.AF_INET6, 'fd00:ec2::254')
    udp = struct.pack('!HHHH', 40000, port, udp_len, 0) + payload
    pseudo = src + dst + struct.pack('!I3xB', udp_len, 17)
    udp = udp[:6] + struct.pack('!H', csum(pseudo + udp)) + udp[8:]
    ip = struct.pack('!IHBB16s16s', 6 << 28, udp_len, 17, 64, src, dst)
    frame = dst_mac + src_mac + b'\x86\xdd' + ip + udp
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
s.bind(('ch', 0))
s.send(frame)
";

/// Runs `cmd` in `cgroup` (if any) and network namespace `netns`: (success, stdout + stderr).
fn run_in(cgroup: Option<&Cgroup>, netns: &str, cmd: &str) -> (bool, String) {
    let enter = cgroup.map(Cgroup::enter).unwrap_or_default();
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!("{enter} ip netns exec {netns} {cmd}"))
        .stdin(Stdio::null())
        .output()
        .expect("running a command");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// A site with the daemon's cgroups, pins, mapping (the container's cgroup `c` has `role-c`)
/// and the frame script.
struct World {
    site: Site,
    // Field order is drop order: children before their parent.
    caller: Cgroup,
    daemon_cg: Cgroup,
    root: Cgroup,
    bpffs: Bpffs,
    mapping: tempfile::NamedTempFile,
    script: tempfile::NamedTempFile,
}

impl World {
    fn new() -> Self {
        let site = Site::new();
        let root = Cgroup::new(&format!("/mp-fwd-{}", std::process::id()));
        let (daemon_cg, caller) = (root.child("daemon"), root.child("c"));
        let mapping = tempfile::NamedTempFile::new().expect("mapping file");
        std::fs::write(
            mapping.path(),
            serde_json::json!({ format!("cgroup:{}", caller.rel): "role-c" }).to_string(),
        )
        .expect("mapping");
        let script = tempfile::NamedTempFile::new().expect("script");
        std::fs::write(script.path(), FRAME).expect("script");
        Self {
            site,
            caller,
            daemon_cg,
            root,
            bpffs: Bpffs::new(),
            mapping,
            script,
        }
    }

    /// The daemon as the README runs it (and `extra`), in the site's host namespace,
    /// redirecting the test's cgroups.
    fn daemon(&self, extra: &[(&str, &str)]) -> Daemon {
        let mut vars: BTreeMap<String, String> = [
            (
                "DEFAULT_ACCOUNT_ID",
                metadataproxy_tests::ACCOUNT.to_owned(),
            ),
            ("AWS_ACCESS_KEY_ID", "testing".to_owned()),
            ("AWS_SECRET_ACCESS_KEY", "testing".to_owned()),
            ("AWS_REGION", "us-east-1".to_owned()),
            ("AWS_ENDPOINT_URL_STS", "http://127.0.0.1:9".to_owned()),
            ("AWS_ENDPOINT_URL_IAM", "http://127.0.0.1:9".to_owned()),
            ("AWS_EC2_METADATA_DISABLED", "true".to_owned()),
            (
                "ROLE_MAPPING_FILE",
                self.mapping.path().display().to_string(),
            ),
            ("EBPF_CGROUPS", self.root.rel.clone()),
            ("EBPF_PIN_DIR", self.bpffs.pin_dir().display().to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        vars.extend(
            extra
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
        );
        Daemon::start_in_netns(&self.daemon_cg, &vars, &self.site.host)
    }

    /// What gets around the cgroup hooks, each carrying `tag`: a frame to each metadata address
    /// from a process in the redirected cgroup, and a UDP datagram from a process of the
    /// container's namespace whose cgroup is not redirected (the test's own). The payloads sent.
    fn send_around_the_hooks(&self, tag: &str) -> [String; 3] {
        let sent = [
            format!("frame4-{tag}"),
            format!("frame6-{tag}"),
            format!("dgram4-{tag}"),
        ];
        for (family, payload) in [("4", &sent[0]), ("6", &sent[1])] {
            let (ok, out) = run_in(
                Some(&self.caller),
                &self.site.container,
                &format!(
                    "python3 {} {family} {payload} {UDP_PORT} {HOST_MAC}",
                    self.script.path().display()
                ),
            );
            assert!(ok, "sending a frame: {out}");
        }
        let _ = run_in(
            None,
            &self.site.container,
            &format!(
                "python3 -c \"import socket; socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b'{}', ('169.254.169.254', {UDP_PORT}))\"",
                sent[2]
            ),
        );
        sent
    }

    /// Sends [`World::send_around_the_hooks`] and checks whether each arrives at the stand-in:
    /// `expected` within 3 s, or not within 1 s (arrivals take milliseconds: the first check of
    /// every test shows them arriving).
    fn around_the_hooks_arrive(&self, tag: &str, expected: bool, context: &str) {
        let wait = Duration::from_secs(if expected { 3 } else { 1 });
        for payload in self.send_around_the_hooks(tag) {
            let got = self
                .site
                .wait_for(|l| l.ends_with(&format!(" {payload}")), wait);
            assert_eq!(got, expected, "{payload} arrived: {got} ({context})");
        }
    }

    /// A redirected caller's request from the container: (success, body).
    fn fetch(&self, path: &str) -> (bool, String) {
        run_in(
            Some(&self.caller),
            &self.site.container,
            &format!("curl -sS -m 5 http://169.254.169.254{path}"),
        )
    }
}

/// The number of rules for `addr` in `rules` (an `ip rule show` text).
fn count(rules: &str, addr: &str) -> usize {
    rules
        .lines()
        .filter(|l| l.contains(&format!("to {addr} ")))
        .count()
}

#[test]
#[ignore = "privileged: run by `cargo xtask test-privileged`"]
fn frames_and_forwarded_packets_to_the_metadata_addresses_are_refused_while_the_hosts_own_pass() {
    let world = World::new();
    let site = &world.site;
    // Without the rules the host forwards all of it to the real IMDS: what this test is about.
    world.around_the_hooks_arrive("before", true, "no daemon yet");

    let _daemon = world.daemon(&[]);
    let (v4, v6) = (site.rules(false), site.rules(true));
    assert_eq!(count(&v4, "169.254.169.254"), 3, "{v4}");
    assert_eq!(count(&v6, "fd00:ec2::254"), 3, "{v6}");
    world.around_the_hooks_arrive("with-rules", false, "the daemon's rules in place");

    // The container's connections are redirected (the rules do not touch them), and the host's
    // own calls pass: the daemon's proxied path, and any host process.
    let (ok, body) = world.fetch(CREDS);
    assert!(ok && body == "role-c", "redirected caller: {body}");
    let (ok, body) = world.fetch("/latest/meta-data/instance-id");
    assert!(
        ok && body == HOST_MARKER,
        "the daemon's own upstream call: {body}"
    );
    let (ok, body) = run_in(
        None,
        &site.host,
        "curl -sS -m 5 -g 'http://[fd00:ec2::254]/'",
    );
    assert!(
        ok && body == HOST_MARKER,
        "a host process over IPv6: {body}"
    );
}

#[test]
#[ignore = "privileged: run by `cargo xtask test-privileged`"]
fn the_rules_outlive_the_daemon_are_never_duplicated_and_go_as_the_readme_says() {
    let world = World::new();
    let site = &world.site;
    let first = world.daemon(&[]);
    let (v4, v6) = (site.rules(false), site.rules(true));
    assert_eq!(count(&v4, "169.254.169.254"), 3, "{v4}");

    // Fail closed: the rules outlive the daemon; a restart does not add them twice.
    let logs = first.terminate();
    world.around_the_hooks_arrive("stopped", false, &logs);
    let again = world.daemon(&[]);
    assert_eq!(site.rules(false), v4, "a restart changed the IPv4 rules");
    assert_eq!(site.rules(true), v6, "a restart changed the IPv6 rules");
    let _ = again.terminate();

    // The README's way to remove them (with the daemon stopped) opens the path again.
    let h = &site.host;
    sh(&format!(
        "for ip in 'ip -4' 'ip -6'; do for pref in 91 90 92; do \
           while $ip -n {h} rule del pref $pref 2>/dev/null; do :; done; done; done"
    ));
    world.around_the_hooks_arrive("removed", true, "rules removed");

    // `EBPF_ON_EXIT=detach` takes them away with the redirect.
    let detaching = world.daemon(&[("EBPF_ON_EXIT", "detach")]);
    assert_eq!(site.rules(false), v4);
    let logs = detaching.terminate();
    let (v4, v6) = (site.rules(false), site.rules(true));
    assert_eq!(
        (count(&v4, "169.254.169.254"), count(&v6, "fd00:ec2::254")),
        (0, 0),
        "{v4}{v6}{logs}"
    );
}

#[test]
#[ignore = "privileged: run by `cargo xtask test-privileged`"]
fn the_default_targets_address_is_put_back_when_removed_while_the_daemon_runs() {
    let world = World::new();
    let site = &world.site;
    let daemon = world.daemon(&[]);
    assert_eq!(world.fetch(CREDS).1, "role-c");
    sh(&format!(
        "ip -n {} addr del 169.254.170.45/32 dev lo",
        site.host
    ));
    let back = (0..100).any(|_| {
        std::thread::sleep(Duration::from_millis(50));
        sh(&format!("ip -n {} -4 addr show dev lo", site.host)).contains("169.254.170.45/32")
    });
    assert!(
        back,
        "169.254.170.45 was not put back on lo:\n{}",
        daemon.logs()
    );
    let (ok, body) = world.fetch(CREDS);
    assert!(
        ok && body == "role-c",
        "redirected caller after the re-add: {body}"
    );
    assert!(
        daemon
            .logs()
            .lines()
            .any(|l| l.contains("WARN") && l.contains("169.254.170.45")),
        "no warn line about the address:\n{}",
        daemon.logs()
    );
}

#[test]
#[ignore = "privileged: run by `cargo xtask test-privileged`"]
fn the_container_credentials_endpoints_rules_follow_ecs_endpoint() {
    let world = World::new();
    let site = &world.site;
    let with = world.daemon(&[("ECS_ENDPOINT", "true")]);
    let (v4, v6) = (site.rules(false), site.rules(true));
    assert_eq!(
        (count(&v4, "169.254.170.23"), count(&v6, "fd00:ec2::23")),
        (3, 3),
        "{v4}{v6}"
    );
    let _ = with.terminate();
    // A restart without the setting leaves no rule for an address it no longer guards.
    let without = world.daemon(&[]);
    let (v4, v6) = (site.rules(false), site.rules(true));
    assert_eq!(
        (count(&v4, "169.254.170.23"), count(&v6, "fd00:ec2::23")),
        (0, 0),
        "{v4}{v6}\n{}",
        without.logs()
    );
    assert_eq!(count(&v4, "169.254.169.254"), 3, "{v4}");
}
