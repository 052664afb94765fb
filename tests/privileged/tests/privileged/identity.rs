//! Identity against the real redirect, as root: one host process posing as many loopback callers
//! cannot take a redirected caller's connections or tokens, and caller-driven work — records
//! never consumed, records naming unknown cgroups, `/metrics` scrapes — does not slow a
//! redirected caller down.
//!
//! Records are written to the daemon's pinned `MP_CONN4` by the test itself (root), as the
//! kernel would write them, keyed by connections to the daemon's bridge address.
//!
//! Run with `cargo xtask test-privileged` (as root, one test thread, `--ignored`).

use std::io::Write as _;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aya::maps::{HashMap, Map, MapData};
use metadataproxy_common::{Conn4, Record, maps};
use metadataproxy_privileged_tests::{Cgroup, GATEWAY};
use metadataproxy_tests::free_port;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpSocket;

use crate::common::{CREDS, IMDS, World, mapping_by_rel};

type Conn4Map = HashMap<MapData, Conn4, Record>;

/// The world's pinned `MP_CONN4`, opened through its pin.
fn conn4(world: &World) -> Conn4Map {
    let pin = world.bpffs.pin_dir().join(maps::CONN4);
    let data = MapData::from_pin(&pin).unwrap_or_else(|e| panic!("{}: {e}", pin.display()));
    let map = Map::from_map_data(data).expect("MP_CONN4 is a map");
    HashMap::try_from(map).expect("MP_CONN4 is a hash map of Conn4 → Record")
}

/// `CLOCK_MONOTONIC` in nanoseconds, the clock of the records.
fn now_ns() -> u64 {
    let now = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).expect("clock");
    u64::try_from(Duration::from(now).as_nanos()).unwrap_or(u64::MAX)
}

/// The map key of the connection `peer` → `local`, as the kernel writes it.
fn key(peer: SocketAddrV4, local: SocketAddrV4) -> Conn4 {
    Conn4 {
        peer_addr: u32::from_ne_bytes(peer.ip().octets()),
        local_addr: u32::from_ne_bytes(local.ip().octets()),
        peer_port: peer.port(),
        local_port: local.port(),
    }
}

/// A fresh record naming cgroup `cgroup_id`.
fn record(cgroup_id: u64) -> Record {
    Record {
        cgroup_id,
        pid_tgid: u64::from(std::process::id()) << 32,
        netns_cookie: 0,
        connected_ns: now_ns(),
        orig_port: 80,
        pad: [0; 6],
    }
}

fn gateway() -> Ipv4Addr {
    GATEWAY.parse().expect("gateway address")
}

/// The status line's code of a raw HTTP answer (0 if none).
fn status(answer: &str) -> u16 {
    answer
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

/// A caller in `cg` runs curl through the redirect with `args`: (status, body).
fn curl_in(cg: &Cgroup, args: &str) -> (u16, String) {
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "{} curl -sS -g -m 5 -w '\\n%{{http_code}}' {args}",
            cg.enter()
        ))
        .output()
        .expect("running curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        !text.contains(metadataproxy_privileged_tests::HOST_MARKER),
        "the real IMDS answered: {text}"
    );
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    (code.trim().parse().unwrap_or(0), body.to_owned())
}

/// Regression (issue 11, item 8): a host process sourcing connections from many 127.x.y.z
/// addresses counted as that many callers: it could exhaust `HTTP_MAX_CONNECTIONS`, and its
/// tokens flushed everyone's out of the store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "privileged: run by `cargo xtask test-privileged`"]
async fn many_loopback_sources_cannot_take_a_redirected_callers_connections_or_tokens() {
    let world = World::new(&mapping_by_rel(&[("victim", "role-v")]));
    let victim = world.root.child("victim");
    let port = world.port;
    let _daemon = world.daemon(&[
        // The attacker connects straight to the daemon: opted in, or it would get no token.
        ("EBPF_DIRECT_CALLERS", "127.0.0.0/8"),
        ("HTTP_MAX_CONNECTIONS", "24"),
        ("HTTP_MAX_CONNECTIONS_PER_CALLER", "8"),
    ]);
    let put =
        format!("-X PUT -H 'X-aws-ec2-metadata-token-ttl-seconds: 300' {IMDS}/latest/api/token");
    let mut tokens = Vec::new();
    for _ in 0..2 {
        let (code, token) = curl_in(&victim, &put);
        assert_eq!(code, 200, "{token}");
        let (code, role) = curl_in(
            &victim,
            &format!("-H 'X-aws-ec2-metadata-token: {token}' {IMDS}{CREDS}"),
        );
        assert_eq!((code, role.as_str()), (200, "role-v"));
        tokens.push(token);
    }

    // 100 tokens, each asked for from another loopback address.
    let daemon = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    for i in 0..100_u8 {
        let answer = raw(
            Ipv4Addr::new(127, 0, 1, i + 1),
            daemon,
            "PUT /latest/api/token HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\
             X-aws-ec2-metadata-token-ttl-seconds: 300\r\n\r\n",
        )
        .await;
        assert_eq!(status(&answer), 200, "{answer}");
    }
    for token in &tokens {
        let (code, role) = curl_in(
            &victim,
            &format!("-H 'X-aws-ec2-metadata-token: {token}' {IMDS}{CREDS}"),
        );
        assert_eq!(
            (code, role.as_str()),
            (200, "role-v"),
            "the redirected caller's token was flushed by the loopback flood"
        );
    }

    // 24 connections held open, each from another loopback address: one caller's 8.
    let mut held = Vec::new();
    for i in 0..24_u8 {
        let socket = TcpSocket::new_v4().expect("socket");
        socket
            .bind(SocketAddr::from((Ipv4Addr::new(127, 0, 2, i + 1), 0)))
            .expect("bind");
        held.push(socket.connect(daemon).await.expect("connect"));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (code, role) = curl_in(&victim, &format!("{IMDS}{CREDS}"));
    assert_eq!(
        (code, role.as_str()),
        (200, "role-v"),
        "the loopback flood took every connection"
    );
    drop(held);
    assert_eq!(world.standin.seen(), 0, "a caller reached the real IMDS");
}

/// A record made while no daemon ran belongs to a connection nobody accepted: the next daemon
/// drops it when it starts, so a later connection reusing its addresses and ports — here one
/// straight to the daemon — is not identified as the record's cgroup.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "privileged: run by `cargo xtask test-privileged`"]
async fn a_record_left_while_no_daemon_ran_is_dropped_when_the_next_one_starts() {
    use std::os::unix::fs::MetadataExt as _;
    let world = World::new(&mapping_by_rel(&[("victim", "role-v")]));
    let victim = world.root.child("victim");
    let victim_id = std::fs::metadata(&victim.dir).expect("victim cgroup").ino();
    // The first daemon leaves its maps pinned (EBPF_ON_EXIT=keep-blocking, the default).
    world.daemon(&[]).terminate();
    let direct = SocketAddrV4::new(gateway(), world.port);
    let socket = TcpSocket::new_v4().expect("socket");
    socket
        .bind(SocketAddr::from((*direct.ip(), 0)))
        .expect("bind");
    let SocketAddr::V4(local) = socket.local_addr().expect("local address") else {
        unreachable!("an IPv4 socket");
    };
    conn4(&world)
        .insert(key(local, direct), record(victim_id), 0)
        .expect("insert a record");
    let daemon = world.daemon(&[]);
    let mut stream = socket
        .connect(SocketAddr::V4(direct))
        .await
        .expect("connect");
    let request = format!("GET {CREDS} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut answer = String::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_string(&mut answer)).await;
    assert_eq!(
        status(&answer),
        403,
        "a leftover record was believed:\n{answer}\n{}",
        daemon.logs()
    );
    // The victim itself, through the redirect, is identified as ever.
    assert_eq!(
        curl_in(&victim, &format!("{IMDS}{CREDS}")),
        (200, "role-v".to_owned())
    );
    drop(daemon);
    assert_eq!(world.standin.seen(), 0, "a caller reached the real IMDS");
}

/// Sends `request` from `src` to `dst` and reads the answer until the daemon closes.
async fn raw(src: Ipv4Addr, dst: SocketAddr, request: &str) -> String {
    let socket = TcpSocket::new_v4().expect("socket");
    socket.bind(SocketAddr::from((src, 0))).expect("bind");
    let mut stream = socket.connect(dst).await.expect("connect");
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut answer = String::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_string(&mut answer)).await;
    answer
}

/// One connection straight to the daemon at `daemon`, carrying a record (written just before it
/// connects) that names cgroup `cgroup_id`, asking for the credentials listing: its status.
async fn with_record(map: &Mutex<Conn4Map>, daemon: SocketAddrV4, cgroup_id: u64) -> u16 {
    let socket = TcpSocket::new_v4().expect("socket");
    socket
        .bind(SocketAddr::from((*daemon.ip(), 0)))
        .expect("bind");
    let SocketAddr::V4(local) = socket.local_addr().expect("local address") else {
        unreachable!("an IPv4 socket");
    };
    map.lock()
        .expect("map lock")
        .insert(key(local, daemon), record(cgroup_id), 0)
        .expect("insert a record");
    let Ok(mut stream) = socket.connect(SocketAddr::V4(daemon)).await else {
        return 0;
    };
    let request = format!("GET {CREDS} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    if stream.write_all(request.as_bytes()).await.is_err() {
        return 0;
    }
    let mut answer = String::new();
    let _ = tokio::time::timeout(Duration::from_secs(30), stream.read_to_string(&mut answer)).await;
    status(&answer)
}

/// The normal caller: a python process in `cg` making `n` requests through the redirect, each on
/// a new connection, printing `<status> <microseconds>` per request.
const CALLER: &str = r#"
import http.client, sys, time
for _ in range(int(sys.argv[1])):
    t = time.perf_counter()
    c = http.client.HTTPConnection("169.254.169.254", 80, timeout=10)
    c.request("GET", "/latest/meta-data/iam/security-credentials/")
    r = c.getresponse()
    body = r.read().decode()
    c.close()
    print(r.status if body == "role-c" else 0, int((time.perf_counter() - t) * 1e6))
"#;

/// `n` latencies (µs) of the normal caller in the cgroup at `dir`, each checked to be its own
/// role.
fn measure(dir: &Path, script: &Path, n: usize) -> Vec<u64> {
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "echo $$ > {}/cgroup.procs && exec python3 {} {n}",
            dir.display(),
            script.display()
        ))
        .output()
        .expect("running the caller");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let samples: Vec<u64> = text
        .lines()
        .map(|l| {
            let (code, micros) = l.split_once(' ').unwrap_or(("0", "0"));
            assert_eq!(
                code, "200",
                "the normal caller was not served its role: {l}"
            );
            micros.parse().unwrap_or(u64::MAX)
        })
        .collect();
    assert_eq!(
        samples.len(),
        n,
        "the caller failed: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    samples
}

fn p99(samples: &mut [u64]) -> u64 {
    samples.sort_unstable();
    let i = (samples.len() * 99).div_ceil(100).saturating_sub(1);
    samples.get(i).copied().unwrap_or(0)
}

/// The cgroups that make a walk of the cgroup2 tree cost what it costs on a busy host.
struct Bulk(Vec<Cgroup>);

impl Bulk {
    fn new(parent: &Cgroup, n: usize) -> Self {
        let top = parent.child("bulk");
        let mut all: Vec<Cgroup> = (0..n).map(|i| top.child(&format!("c{i}"))).collect();
        all.insert(0, top);
        Self(all)
    }
}

impl Drop for Bulk {
    fn drop(&mut self) {
        // Children before their parent.
        while self.0.pop().is_some() {}
    }
}

/// Fills `MP_CONN4` (its default size) with records of connections to `direct` that never come.
fn fill(map: &Mutex<Conn4Map>, direct: SocketAddrV4) {
    let mut m = map.lock().expect("map lock");
    for i in 0..65_536_u32 {
        let [_, _, hi, lo] = i.to_be_bytes();
        let peer = SocketAddrV4::new(Ipv4Addr::new(10, 99, hi, lo), 40_000);
        let _ = m.insert(key(peer, direct), record(u64::MAX - u64::from(i)), 0);
    }
}

/// Pause of each load task between two of its requests: the load is caller-driven *work*
/// (walks, counts), at a rate that alone costs little CPU once that work is off the accept loop
/// and the runtime — the test is about stalls, not about sharing two cores.
const PACE: Duration = Duration::from_millis(50);

/// Starts the caller-driven load until `stop`: `/metrics` scrapes every [`PACE`], and
/// connections straight to `direct` carrying records that name cgroups that do not exist (three
/// ids again and again, every [`PACE`] each, and a new one every five), counted in `answers`.
fn start_load(
    stop: &Arc<AtomicBool>,
    map: &Arc<Mutex<Conn4Map>>,
    direct: SocketAddrV4,
    admin: SocketAddr,
    round: usize,
    answers: &Arc<AtomicUsize>,
) -> Vec<tokio::task::JoinHandle<()>> {
    let mut tasks = Vec::new();
    let scrapes = Arc::clone(stop);
    tasks.push(tokio::spawn(async move {
        while !scrapes.load(Ordering::Relaxed) {
            let answer = raw(
                Ipv4Addr::LOCALHOST,
                admin,
                "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
            )
            .await;
            assert_eq!(status(&answer), 200, "{answer}");
            tokio::time::sleep(PACE).await;
        }
    }));
    for flooder in 0..4_u64 {
        let (stop, map) = (Arc::clone(stop), Arc::clone(map));
        let answers = Arc::clone(answers);
        tasks.push(tokio::spawn(async move {
            let mut n = 0_u64;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let id = if flooder == 0 {
                    0x7000_0000_0000_0000 + (round as u64) * 1_000_000 + n
                } else {
                    0x6000_0000_0000_0000 + flooder
                };
                let code = with_record(&map, direct, id).await;
                assert_eq!(code, 404, "a caller in a cgroup that does not exist");
                answers.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(if flooder == 0 { 5 * PACE } else { PACE }).await;
            }
        }));
    }
    tasks
}

/// One measurement: `rounds` interleaved pairs of phases, idle and loaded (the order alternating),
/// `PER_PHASE` requests of the normal caller in each; the p99s of both and the flood's answers.
struct Flood<'a> {
    caller: &'a Path,
    script: &'a Path,
    map: &'a Arc<Mutex<Conn4Map>>,
    direct: SocketAddrV4,
    admin: SocketAddr,
}

impl Flood<'_> {
    async fn measure(&self, attempt: usize, rounds: usize) -> (u64, u64, usize) {
        const PER_PHASE: usize = 100;
        let mut idle = Vec::new();
        let mut loaded = Vec::new();
        let answers = Arc::new(AtomicUsize::new(0));
        for round in 0..rounds {
            for load in [round % 2 == 1, round % 2 == 0] {
                if !load {
                    idle.extend(measure(self.caller, self.script, PER_PHASE));
                    continue;
                }
                let stop = Arc::new(AtomicBool::new(false));
                let tag = attempt * rounds + round;
                let tasks = start_load(&stop, self.map, self.direct, self.admin, tag, &answers);
                tokio::time::sleep(Duration::from_millis(300)).await;
                let (path, dir) = (self.script.to_owned(), self.caller.to_owned());
                let samples = tokio::task::spawn_blocking(move || measure(&dir, &path, PER_PHASE))
                    .await
                    .expect("measuring");
                loaded.extend(samples);
                stop.store(true, Ordering::Relaxed);
                for task in tasks {
                    task.await.expect("a load task failed");
                }
            }
        }
        let answered = answers.load(Ordering::Relaxed);
        (p99(&mut idle), p99(&mut loaded), answered)
    }
}

/// Issue 11, item 9: no caller-driven work may stall the accept loop or a runtime worker. While
/// `MP_CONN4` is full of records no connection consumes, connections carry records naming
/// cgroups that do not exist (each one a walk of the cgroup2 tree, on main three per request on a
/// runtime worker), and `/metrics` is scraped in a loop (on main: counting the full map under
/// the accept loop's lock), a normal redirected caller's p99 stays within twice its p99 on the
/// idle daemon, measured in the same test in interleaved rounds.
///
/// A stall is systematic (each walk or count under the lock held the caller for tens of
/// milliseconds, every round: p99s of 20x and more); two cores shared by the caller, the load
/// and the daemon are not, and once in a while push one measurement's p99 past 2x. So the
/// measurement is made up to [`ATTEMPTS`] times and the test fails only when none of them is
/// within 2x; every attempt's numbers are printed.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "privileged: run by `cargo xtask test-privileged`"]
async fn floods_of_records_unknown_cgroups_and_scrapes_leave_a_callers_p99_within_twice_idle() {
    const ROUNDS: usize = 10;
    const ATTEMPTS: usize = 3;
    let world = World::new(&mapping_by_rel(&[("caller", "role-c")]));
    let caller = world.root.child("caller");
    // Made before the daemon starts: its host-cgroup scan sees them once.
    let bulk = Bulk::new(&world.root, 2000);
    let admin = SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()));
    let admin_listen = admin.to_string();
    let daemon = world.daemon(&[("ADMIN_LISTEN", &admin_listen), ("LOG_LEVEL", "info")]);
    let script = tempfile::NamedTempFile::new().expect("script file");
    script
        .as_file()
        .write_all(CALLER.as_bytes())
        .expect("write the script");
    let direct = SocketAddrV4::new(gateway(), world.port);
    let map = Arc::new(Mutex::new(conn4(&world)));

    // Warm up: the caller's role is cached, its cgroup's path known.
    measure(&caller.dir, script.path(), 20);
    fill(&map, direct);
    let flood = Flood {
        caller: &caller.dir,
        script: script.path(),
        map: &map,
        direct,
        admin,
    };
    let mut attempts = Vec::new();
    for attempt in 0..ATTEMPTS {
        let (idle_p99, loaded_p99, answered) = flood.measure(attempt, ROUNDS).await;
        println!(
            "attempt {attempt}: normal caller p99: idle {idle_p99} µs, loaded {loaded_p99} µs ({} samples each); {answered} connections with records of unknown cgroups answered",
            ROUNDS * 100
        );
        assert!(answered > 40, "the load did not run: {answered} answers");
        attempts.push((idle_p99, loaded_p99));
        if loaded_p99 <= 2 * idle_p99 {
            break;
        }
    }
    // The scrapes counted the map the flood filled (through handles of their own), and no IPv6
    // connection was made: `/metrics` tells operators how full the maps are.
    let metrics = raw(
        Ipv4Addr::LOCALHOST,
        admin,
        "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    let entries = |map: &str| -> u64 {
        let series = format!("metadataproxy_ebpf_connection_entries{{map=\"{map}\"}} ");
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(&series))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {series} in /metrics:\n{metrics}"))
    };
    assert!(
        entries("conn4") >= 60_000,
        "MP_CONN4 holds the flood's records: {}",
        entries("conn4")
    );
    assert_eq!(entries("conn6"), 0);
    assert!(
        attempts.iter().any(|(idle, loaded)| loaded <= &(2 * idle)),
        "p99 under caller-driven load > 2 × idle in every attempt (idle, loaded µs): {attempts:?}\n{}",
        daemon
            .logs()
            .lines()
            .rev()
            .take(30)
            .collect::<Vec<_>>()
            .join("\n")
    );
    drop(daemon);
    drop(bulk);
    assert_eq!(world.standin.seen(), 0, "a caller reached the real IMDS");
}
