//! Issue 11, kernel side, end to end as root: the IPv4-mapped spelling is redirected like the IPv4
//! address (item 1); ping, UDP and raw TCP to the metadata address get nothing while redirected
//! TCP works, exempt host cgroups still pass and `/metrics` counts the drops (item 3); the
//! daemon's cgroup mates are redirected while its own upstream calls are not, whether it runs in
//! the host's pid namespace or in one of its own (each loads its variant of the connect
//! programs); records never outlive their connection nor serve a connection of another network
//! namespace (item 5); the pins are closed to other users.
//!
//! Run with `cargo xtask test-privileged` (root, one test thread, `--ignored`).

use std::net::UdpSocket;
use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::process::{Command, Stdio};
use std::time::Duration;

use aya::maps::{HashMap, MapData};
use metadataproxy_common::{Conn6, Record};
use metadataproxy_privileged_tests::{Cgroup, HOST_MARKER, Netns, fetch, sh};
use metadataproxy_tests::free_port;

use crate::common::{CREDS, IMDS, World, mapping_by_rel};

/// Runs `cmd` (a shell command line) in `cgroup` (and `netns`): (success, stdout + stderr).
fn run_in(cgroup: &Cgroup, netns: Option<&Netns>, cmd: &str) -> (bool, String) {
    let ns = netns
        .map(|n| format!("ip netns exec {} ", n.name))
        .unwrap_or_default();
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!("{} {ns}{cmd}", cgroup.enter()))
        .stdin(Stdio::null())
        .output()
        .expect("running a caller");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// A TCP SYN crafted on a raw socket (no `connect()`, so no connect hook) from 127.0.0.1 to
/// `dst`:80; prints `SYN-ACK` if one comes back within 1.5 s, else `no answer`.
const RAW_SYN: &str = r"
import random, socket, struct, sys, time
dst, src, dport = sys.argv[1], '127.0.0.1', 80
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_TCP)
s.bind((src, 0))
sport = random.randint(20000, 60000)
def csum(b):
    t = sum(struct.unpack('!%dH' % (len(b) // 2), b))
    while t >> 16:
        t = (t & 0xffff) + (t >> 16)
    return ~t & 0xffff
hdr = struct.pack('!HHIIBBHHH', sport, dport, random.getrandbits(32), 0, 5 << 4, 0x02, 65535, 0, 0)
pseudo = socket.inet_aton(src) + socket.inet_aton(dst) + struct.pack('!BBH', 0, 6, len(hdr))
hdr = hdr[:16] + struct.pack('!H', csum(pseudo + hdr)) + hdr[18:]
try:
    s.sendto(hdr, (dst, 0))
except OSError as e:
    print('send refused:', e)
s.settimeout(0.2)
end = time.time() + 1.5
while time.time() < end:
    try:
        pkt, addr = s.recvfrom(65535)
    except socket.timeout:
        continue
    ihl = (pkt[0] & 0xf) * 4
    sp, dp = struct.unpack('!HH', pkt[ihl:ihl + 4])
    if addr[0] == dst and sp == dport and dp == sport and pkt[ihl + 13] & 0x12 == 0x12:
        print('SYN-ACK')
        sys.exit(0)
print('no answer')
";

/// What a caller in `cg` gets from ping, a UDP datagram and a raw TCP SYN to the metadata
/// address, against a UDP receiver `udp` on it: (ping answered, datagram received, SYN-ACK).
fn bypasses(cg: &Cgroup, udp: &UdpSocket) -> (bool, bool, bool) {
    let port = udp.local_addr().expect("udp").port();
    let (ping, _) = run_in(cg, None, "busybox ping -c1 -W1 169.254.169.254");
    let _ = run_in(
        cg,
        None,
        &format!(
            "python3 -c \"import socket; socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b'x', ('169.254.169.254', {port}))\""
        ),
    );
    let mut buf = [0u8; 16];
    let datagram = udp.recv_from(&mut buf).is_ok();
    let script = tempfile::NamedTempFile::new().expect("script");
    std::fs::write(script.path(), RAW_SYN).expect("script");
    let (_, syn) = run_in(
        cg,
        None,
        &format!("python3 {} 169.254.169.254", script.path().display()),
    );
    (ping, datagram, syn.contains("SYN-ACK"))
}

fn metrics(admin: u16) -> String {
    sh(&format!("curl -s http://127.0.0.1:{admin}/metrics"))
}

/// The value of the sample `name` in a metrics text (0 when absent).
fn sample(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
        .unwrap_or(0)
}

#[test]
#[ignore = "privileged: run by `cargo xtask test-privileged`"]
fn ipv4_mapped_ipv6_callers_are_redirected_like_ipv4_ones() {
    let world = World::new(&mapping_by_rel(&[("m", "role-m")]));
    let m = world.root.child("m");
    let ns = Netns::new(&world.bridge, 3);
    let _daemon = world.daemon(&[]);
    for (netns, what) in [(None, "host netns"), (Some(&ns), "own netns")] {
        for url in [
            format!("http://[::ffff:169.254.169.254]{CREDS}"),
            format!("{IMDS}{CREDS}"),
            format!("http://[fd00:ec2::254]{CREDS}"),
        ] {
            let got = fetch(&m, netns, &url);
            assert!(got.ok, "{what}, {url}: {}", got.stderr);
            assert_eq!(got.body, "role-m", "{what}, {url}");
        }
    }
    // Other spellings of the address are refused at connect(), never let through.
    for url in [
        "http://[::169.254.169.254]/",
        "http://[64:ff9b::a9fe:a9fe]/",
    ] {
        let got = fetch(&m, None, url);
        assert!(!got.ok && !got.body.contains(HOST_MARKER), "{url}: {got:?}");
    }
    let port = fetch(&m, None, "http://169.254.169.254:8080/");
    assert!(!port.ok, "another port of the metadata address: {port:?}");
    assert_eq!(world.standin.seen(), 0, "a caller reached the real IMDS");
}

#[test]
#[ignore = "privileged: run by `cargo xtask test-privileged`"]
fn ping_udp_and_raw_tcp_get_nothing_while_redirected_tcp_works_and_host_cgroups_pass() {
    let world = World::new(&mapping_by_rel(&[("c", "role-c")]));
    let redirected = world.root.child("c");
    let host = world.root.child("plain");
    let admin = free_port();
    let admin_listen = format!("127.0.0.1:{admin}");
    let daemon = world.daemon(&[("ADMIN_LISTEN", &admin_listen)]);
    let udp = UdpSocket::bind("169.254.169.254:0").expect("udp receiver");
    udp.set_read_timeout(Some(Duration::from_secs(1)))
        .expect("timeout");

    let (ping, datagram, syn) = bypasses(&redirected, &udp);
    assert!(!ping, "ICMP echo from a redirected cgroup was answered");
    assert!(!datagram, "a UDP datagram from a redirected cgroup arrived");
    assert!(!syn, "a raw TCP SYN from a redirected cgroup was answered");
    let (ping6, out) = run_in(&redirected, None, "busybox ping -6 -c1 -W1 fd00:ec2::254");
    assert!(!ping6, "ICMPv6 echo to fd00:ec2::254 was answered: {out}");
    let got = fetch(&redirected, None, &format!("{IMDS}{CREDS}"));
    assert_eq!(
        got.body, "role-c",
        "the redirect still works: {}",
        got.stderr
    );
    assert_eq!(world.standin.seen(), 0, "a caller reached the real IMDS");

    // A host cgroup (exempt, EBPF_REDIRECT_HOST=false) still reaches the real IMDS every way;
    // this also shows each probe above would have seen an answer.
    let (ping, datagram, syn) = bypasses(&host, &udp);
    assert!(
        ping && datagram && syn,
        "exempt host cgroup: ping {ping}, UDP {datagram}, SYN-ACK {syn}"
    );

    // Counted per family, and the cgroup named in a warn line.
    let mut text = String::new();
    for _ in 0..50 {
        text = metrics(admin);
        if sample(
            &text,
            "metadataproxy_ebpf_egress_drops_total{family=\"ipv6\"}",
        ) >= 1
        {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let v4 = sample(
        &text,
        "metadataproxy_ebpf_egress_drops_total{family=\"ipv4\"}",
    );
    let v6 = sample(
        &text,
        "metadataproxy_ebpf_egress_drops_total{family=\"ipv6\"}",
    );
    assert!(v4 >= 3 && v6 >= 1, "drops ipv4 {v4}, ipv6 {v6}:\n{text}");
    let logs = daemon.logs();
    assert!(
        logs.lines()
            .any(|l| l.contains("went around the redirect") && l.contains(&redirected.rel)),
        "no warn line naming {}:\n{logs}",
        redirected.rel
    );
}

/// Proxy mode against the stand-in, as the defaults have it (the harness mocks otherwise).
const PROXY_MODE: [(&str, &str); 2] = [
    ("MOCK_API", "false"),
    ("METADATA_URL", "http://169.254.169.254"),
];

/// The log line that says how the connect programs recognise the daemon.
const RECOGNISED: &str = "the connect programs recognise this daemon's own connections";

#[test]
#[ignore = "privileged: run by `cargo xtask test-privileged`"]
fn the_daemons_cgroup_mates_are_redirected_but_its_own_upstream_calls_are_not() {
    let world = World::new(&mapping_by_rel(&[("daemon", "role-mate")]));
    let daemon = world.daemon(&PROXY_MODE);
    cgroup_mates_are_redirected_but_not_the_daemon(&world);
    let logs = daemon.logs();
    assert!(
        logs.lines()
            .any(|l| l.contains(RECOGNISED) && l.contains("by its host pid")),
        "{logs}"
    );
}

#[test]
#[ignore = "privileged: run by `cargo xtask test-privileged`"]
fn in_a_pid_namespace_of_its_own_the_daemon_is_still_recognised() {
    // A container without `--pid host`: the daemon is pid 1 of its own pid namespace, and a host
    // pid 1 (init) exists too. The pid-namespace variant of the connect programs (Linux 6.10+)
    // must be the one loaded, or the daemon's upstream calls are redirected to itself.
    let world = World::new(&mapping_by_rel(&[("daemon", "role-mate")]));
    let daemon = world.daemon_via("unshare --pid --fork --kill-child", &PROXY_MODE);
    cgroup_mates_are_redirected_but_not_the_daemon(&world);
    let logs = daemon.logs();
    assert!(
        logs.lines()
            .any(|l| l.contains(RECOGNISED) && l.contains("by its pid in its own pid namespace")),
        "{logs}"
    );
}

/// The daemon's cgroup is mapped, so it is redirected (not a host cgroup left alone): only the
/// daemon's own process may pass, not whoever shares its cgroup. The daemon runs in
/// [`PROXY_MODE`].
fn cgroup_mates_are_redirected_but_not_the_daemon(world: &World) {
    let got = fetch(&world.daemon_cg, None, &format!("{IMDS}{CREDS}"));
    assert_eq!(
        got.body, "role-mate",
        "a process in the daemon's cgroup reached the real IMDS: {}",
        got.stderr
    );
    assert_eq!(world.standin.seen(), 0);
    // A proxied path: the daemon's own connection to 169.254.169.254 is neither redirected to
    // itself nor dropped by the guard.
    let proxied = fetch(
        &world.daemon_cg,
        None,
        &format!("{IMDS}/latest/meta-data/instance-id"),
    );
    assert_eq!(proxied.body, HOST_MARKER, "{}", proxied.stderr);
    // Its IMDSv2 token PUT, then the GET.
    assert!(world.standin.seen() >= 1);
}

/// The `MP_CONN6` map pinned by the daemon.
fn conn6(world: &World) -> HashMap<MapData, Conn6, Record> {
    let data = MapData::from_pin(world.bpffs.pin_dir().join("MP_CONN6")).expect("MP_CONN6 pin");
    HashMap::try_from(aya::maps::Map::LruHashMap(data)).expect("MP_CONN6")
}

fn loopback6_words() -> [u32; 4] {
    let o = std::net::Ipv6Addr::LOCALHOST.octets();
    std::array::from_fn(|i| {
        u32::from_ne_bytes([o[4 * i], o[4 * i + 1], o[4 * i + 2], o[4 * i + 3]])
    })
}

#[test]
#[ignore = "privileged: run by `cargo xtask test-privileged`"]
fn records_never_outlive_their_connection_nor_cross_network_namespaces() {
    let world = World::new(&mapping_by_rel(&[("caller", "role-x")]));
    let caller = world.root.child("caller");
    let ns = Netns::new(&world.bridge, 4);
    // The override this is about: a loopback target exists in every network namespace.
    let target6 = format!("[::1]:{}", world.port);
    let daemon = world.daemon(&[("EBPF_TARGET6", &target6)]);
    let creds = format!("http://[::1]:{}{CREDS}", world.port);

    // In its own netns, the caller is sent to its own [::1]:PORT, where nothing listens.
    let local_port = free_port();
    let (ok, out) = run_in(
        &caller,
        Some(&ns),
        &format!("curl -sS -g -m 5 --local-port {local_port} 'http://[fd00:ec2::254]{CREDS}'"),
    );
    assert!(!ok, "served in its own netns: {out}");
    // The refused connection left no record behind.
    let left: Vec<Conn6> = conn6(&world)
        .keys()
        .flatten()
        .filter(|k| k.peer_port == local_port)
        .collect();
    assert!(
        left.is_empty(),
        "records outlived their connection: {left:?}"
    );
    // A host process then using the same ports reaches the daemon's [::1]:PORT: not the caller.
    let host = sh(&format!(
        "curl -sS -g -m 5 --local-port {local_port} '{creds}' || true"
    ));
    assert_ne!(host, "role-x", "a host process got the caller's role");

    // A record from another network namespace for a loopback 4-tuple (what a caller redirected
    // to its own loopback leaves if it lingers) is refused, and says why.
    let spoofed_port = free_port();
    let now = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).expect("clock");
    let now = Duration::from(now);
    let record = Record {
        cgroup_id: std::fs::metadata(&caller.dir).expect("cgroup").ino(),
        pid_tgid: 1 << 32,
        netns_cookie: 1,
        connected_ns: u64::try_from(now.as_nanos()).expect("ns"),
        orig_port: 80,
        pad: [0; 6],
    };
    let key = Conn6 {
        peer_addr: loopback6_words(),
        local_addr: loopback6_words(),
        peer_port: spoofed_port,
        local_port: world.port,
    };
    conn6(&world).insert(key, record, 0).expect("inject");
    let host = sh(&format!(
        "curl -sS -g -m 5 --local-port {spoofed_port} '{creds}' || true"
    ));
    assert_ne!(host, "role-x", "a foreign netns record was believed");
    let logs = daemon.logs();
    assert!(logs.contains("another network namespace"), "{logs}");
    assert_eq!(world.standin.seen(), 0);
}

#[test]
#[ignore = "privileged: run by `cargo xtask test-privileged`"]
fn the_pins_are_closed_to_other_users() {
    let world = World::new(&mapping_by_rel(&[("a", "role-a")]));
    let _daemon = world.daemon(&[]);
    let dir = world.bpffs.pin_dir();
    let mode = std::fs::metadata(&dir)
        .expect("pin dir")
        .permissions()
        .mode()
        & 0o7777;
    assert_eq!(mode, 0o700, "pin directory mode {mode:o}");
    let pins: Vec<_> = std::fs::read_dir(&dir)
        .expect("pins")
        .flatten()
        .map(|e| e.path())
        .collect();
    assert!(pins.len() >= 8, "{pins:?}");
    for pin in &pins {
        let mode = std::fs::metadata(pin).expect("pin").permissions().mode() & 0o777;
        assert_eq!(mode & 0o077, 0, "{} is mode {mode:o}", pin.display());
    }
    let nobody = "setpriv --reuid=nobody --regid=nogroup --clear-groups";
    for cmd in [
        format!("ls {}", dir.display()),
        format!("cat {}/MP_SETTINGS", dir.display()),
        format!("cat {}/MP_CONN4", dir.display()),
    ] {
        let status = Command::new("sh")
            .arg("-c")
            .arg(format!("{nobody} {cmd}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("setpriv");
        assert!(!status.success(), "as nobody, `{cmd}` worked");
    }
}
