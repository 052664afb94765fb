//! Benchmark (not a timed test): per-connection cost of the eBPF redirect + identification versus a
//! direct connection to the daemon. Run by `cargo xtask bench-redirect`; prints medians.

#[path = "privileged/common.rs"]
mod common;

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::{CREDS, World, mapping_by_rel};
use metadataproxy_privileged_tests::GATEWAY;

const ROUNDS: usize = 2000;

/// One HTTP request on a new connection, read to the end; the body must be `role-bench`.
fn one(addr: SocketAddr, request_only_connect: bool) -> Duration {
    let start = Instant::now();
    let mut s = TcpStream::connect(addr).expect("connect");
    if request_only_connect {
        return start.elapsed();
    }
    write!(
        s,
        "GET {CREDS} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .expect("write");
    let mut out = String::new();
    s.read_to_string(&mut out).expect("read");
    let took = start.elapsed();
    assert!(out.ends_with("role-bench"), "unexpected response: {out}");
    took
}

fn stats(mut v: Vec<Duration>) -> (Duration, Duration) {
    v.sort();
    (v[v.len() / 2], v[v.len() * 9 / 10])
}

fn measure(addr: SocketAddr, connect_only: bool) -> (Duration, Duration) {
    for _ in 0..100 {
        one(addr, connect_only);
    }
    stats((0..ROUNDS).map(|_| one(addr, connect_only)).collect())
}

#[test]
#[ignore = "benchmark: run by `cargo xtask bench-redirect`"]
fn bench_redirect_vs_direct() {
    let world = World::new(&mapping_by_rel(&[("bench", "role-bench")]));
    let bench = world.root.child("bench");
    let mut vars = world.vars();
    // The direct path is identified by its source address (the gateway) through the same file.
    let mapping = serde_json::json!({
        format!("cgroup:{}", bench.rel): "role-bench",
        GATEWAY: "role-bench",
    });
    std::fs::write(world.mapping.path(), mapping.to_string()).expect("mapping");
    vars.insert("LOG_LEVEL".into(), "warn,metadataproxy::app=info".into());
    // Straight to the daemon is not through the redirect: opted in to address identification.
    vars.insert("EBPF_DIRECT_CALLERS".into(), GATEWAY.to_string());
    let _daemon =
        metadataproxy_privileged_tests::Daemon::start(&world.daemon_cg, &vars, world.port);
    let direct: SocketAddr = format!("{GATEWAY}:{}", world.port).parse().expect("addr");
    let imds: SocketAddr = "169.254.169.254:80".parse().expect("addr");

    let own = std::fs::read_to_string("/proc/self/cgroup").expect("own cgroup");
    let own = own
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .unwrap_or("/")
        .to_owned();
    let direct_full = measure(direct, false);
    let direct_connect = measure(direct, true);
    // Move this process into the bench cgroup: from now on its connects are redirected.
    std::fs::write(
        bench.dir.join("cgroup.procs"),
        std::process::id().to_string(),
    )
    .expect("enter");
    let redirect_full = measure(imds, false);
    let redirect_connect = measure(imds, true);
    let back = metadataproxy_privileged_tests::cgroup2().join(own.trim_start_matches('/'));
    std::fs::write(back.join("cgroup.procs"), std::process::id().to_string()).expect("leave");
    assert_eq!(
        world.standin.seen(),
        0,
        "a benchmark connection reached the stand-in"
    );

    println!("per connection, {ROUNDS} rounds (median / p90):");
    for (name, (m, p)) in [
        ("direct   connect()             ", direct_connect),
        ("redirect connect()             ", redirect_connect),
        ("direct   request (IP mapping)  ", direct_full),
        ("redirect request (cgroup path) ", redirect_full),
    ] {
        println!(
            "  {name} {:>8.1} µs / {:>8.1} µs",
            m.as_secs_f64() * 1e6,
            p.as_secs_f64() * 1e6
        );
    }
}
