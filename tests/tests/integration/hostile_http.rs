//! Hostile HTTP against the real daemon: slow clients, oversized heads and bodies, connection
//! floods, pipelining, HTTP/1.0 and odd methods. Each gets a clear status where HTTP has one, the
//! daemon stays up and keeps serving another caller meanwhile, and its memory stays bounded.

use std::fmt::Write as _;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use metadataproxy_tests::{Daemon, SRC_1, SRC_2, SRC_3, get, other_local_ipv4, raw_http};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// A mocked route every caller may read.
const INSTANCE_ID: &str = "/latest/meta-data/instance-id";

async fn connect(src: Ipv4Addr, dst: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().expect("socket");
    socket
        .bind(SocketAddr::from((src, 0)))
        .unwrap_or_else(|e| panic!("bind {src}: {e}"));
    socket
        .connect(dst)
        .await
        .unwrap_or_else(|e| panic!("connect {dst}: {e}"))
}

/// Everything the daemon sends until it closes the connection (panics after `limit`).
async fn read_to_close(stream: &mut TcpStream, limit: Duration) -> String {
    let mut buf = Vec::new();
    match tokio::time::timeout(limit, stream.read_to_end(&mut buf)).await {
        Ok(Ok(_)) => {}
        // A reset after the answer still counts as closed; what was read is kept.
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        Ok(Err(e)) => panic!("read: {e}"),
        Err(elapsed) => panic!(
            "connection still open after {limit:?} ({elapsed}); got {:?}",
            String::from_utf8_lossy(&buf)
        ),
    }
    String::from_utf8_lossy(&buf).into_owned()
}

/// Sends `bytes` on a new connection from `src` and returns everything until the daemon closes.
async fn send_and_read(src: Ipv4Addr, dst: SocketAddr, bytes: &[u8]) -> String {
    let mut stream = connect(src, dst).await;
    // The daemon may answer and close before taking everything (e.g. 431): ignore write errors.
    let _ = stream.write_all(bytes).await;
    read_to_close(&mut stream, Duration::from_secs(10)).await
}

fn status_of(response: &str) -> u16 {
    response
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {response:?}"))
}

/// A legitimate caller is served while an attack is going on.
async fn assert_still_serving(daemon: &mut Daemon, during: &str) {
    assert_serving_from(SRC_2, daemon, during).await;
}

/// [`assert_still_serving`], the legitimate caller at `src`.
async fn assert_serving_from(src: Ipv4Addr, daemon: &mut Daemon, during: &str) {
    let r = get(src, daemon.addr(), INSTANCE_ID, &[]).await;
    assert_eq!(r.status, 200, "legitimate request during {during}: {r:?}");
    assert_eq!(r.body, "i-mockedid");
    assert!(daemon.is_running(), "the daemon died during {during}");
}

/// The daemon's resident memory, in KiB.
fn rss_kib(daemon: &Daemon) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", daemon.pid()))
        .expect("the daemon's /proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no VmRSS in {status}"))
}

#[tokio::test]
async fn slow_request_heads_get_408_and_idle_keep_alive_is_closed() {
    let mut daemon = Daemon::builder()
        .env("HTTP_HEADER_TIMEOUT", "1")
        .start()
        .await;
    let addr = daemon.addr();
    // Slowloris: 20 connections each trickling a header byte every 200 ms, never finishing.
    let started = Instant::now();
    let slow: Vec<_> = (0..20)
        .map(|_| {
            tokio::spawn(async move {
                let mut s = connect(SRC_3, addr).await;
                s.write_all(b"GET /latest/meta-data/ HTTP/1.1\r\nHost: x\r\n")
                    .await
                    .expect("write");
                let mut got = Vec::new();
                loop {
                    let mut buf = [0_u8; 512];
                    tokio::select! {
                        r = s.read(&mut buf) => match r {
                            Ok(0) | Err(_) => break,
                            Ok(n) => got.extend_from_slice(&buf[..n]),
                        },
                        () = tokio::time::sleep(Duration::from_millis(200)) => {
                            if s.write_all(b"X").await.is_err() {
                                break;
                            }
                        }
                    }
                    assert!(started.elapsed() < Duration::from_secs(10), "never closed");
                }
                String::from_utf8_lossy(&got).into_owned()
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_still_serving(&mut daemon, "a slowloris attack").await;
    for task in slow {
        let got = task.await.expect("slow client");
        assert!(got.starts_with("HTTP/1.1 408 "), "slow client got {got:?}");
    }
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "slow clients were cut at about HTTP_HEADER_TIMEOUT, not later ({:?})",
        started.elapsed()
    );

    // An idle keep-alive connection is closed after the timeout, without an unasked-for answer.
    let mut s = connect(SRC_3, addr).await;
    s.write_all(b"GET /latest/meta-data/instance-id HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("write");
    let idle_since = Instant::now();
    let got = read_to_close(&mut s, Duration::from_secs(5)).await;
    assert!(got.starts_with("HTTP/1.1 200 "), "{got:?}");
    assert!(
        got.ends_with("i-mockedid"),
        "only the one response: {got:?}"
    );
    assert!(
        idle_since.elapsed() >= Duration::from_millis(900),
        "closed too early"
    );
    assert_still_serving(&mut daemon, "the slow clients' aftermath").await;
}

#[tokio::test]
async fn oversized_request_lines_and_headers_get_414_or_431() {
    let mut daemon = Daemon::builder()
        .env("HTTP_MAX_HEAD_BYTES", "10000")
        .start()
        .await;
    let addr = daemon.addr();
    let long_path = format!("/latest/meta-data/{}", "a".repeat(2000));
    let r = get(SRC_3, addr, &long_path, &[]).await;
    assert_eq!(r.status, 414, "a path over 1024 bytes: {r:?}");

    let huge_line = format!("GET /{} HTTP/1.1\r\nHost: x\r\n\r\n", "a".repeat(12_000));
    let got = send_and_read(SRC_3, addr, huge_line.as_bytes()).await;
    assert_eq!(status_of(&got), 414, "a request line over the head limit");

    let mut many = String::from("GET /latest/meta-data/instance-id HTTP/1.1\r\nHost: x\r\n");
    for i in 0..100 {
        let _ = write!(many, "X-Pad-{i}: {}\r\n", "b".repeat(100));
    }
    many.push_str("\r\n");
    assert!(many.len() > 10_000);
    let got = send_and_read(SRC_3, addr, many.as_bytes()).await;
    assert_eq!(status_of(&got), 431, "headers over HTTP_MAX_HEAD_BYTES");

    let mut fewer = String::from("GET /latest/meta-data/instance-id HTTP/1.1\r\nHost: x\r\n");
    for i in 0..60 {
        let _ = write!(fewer, "X-Pad-{i}: {}\r\n", "b".repeat(100));
    }
    fewer.push_str("Connection: close\r\n\r\n");
    assert!(fewer.len() < 9_000);
    let r = raw_http(SRC_3, addr, fewer.as_bytes()).await;
    assert_eq!(r.status, 200, "a head under the limit is served: {r:?}");

    // A head that never ends is cut at the limit, not buffered without bound.
    let mut s = connect(SRC_3, addr).await;
    s.write_all(b"GET / HTTP/1.1\r\n").await.expect("write");
    let line = format!("X-Endless: {}\r\n", "c".repeat(1000));
    let mut sent = 0;
    while sent < 1_000_000 {
        if s.write_all(line.as_bytes()).await.is_err() {
            break;
        }
        sent += line.len();
    }
    let got = read_to_close(&mut s, Duration::from_secs(10)).await;
    assert!(got.starts_with("HTTP/1.1 431 "), "endless head: {got:?}");
    assert_still_serving(&mut daemon, "oversized heads").await;
}

#[tokio::test]
async fn request_bodies_are_refused_with_413() {
    let mut daemon = Daemon::builder().start().await;
    let addr = daemon.addr();
    let ttl = "X-aws-ec2-metadata-token-ttl-seconds: 60\r\n";
    for (what, request) in [
        (
            "token PUT with a body",
            format!("PUT /latest/api/token HTTP/1.1\r\nHost: x\r\n{ttl}Content-Length: 5\r\n\r\nhello"),
        ),
        (
            "token PUT with a chunked body",
            format!(
                "PUT /latest/api/token HTTP/1.1\r\nHost: x\r\n{ttl}Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
            ),
        ),
        (
            "GET announcing a terabyte",
            "GET /latest/meta-data/instance-id HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000000000\r\n\r\n".to_owned(),
        ),
        (
            "POST with a body",
            "POST /latest/meta-data/ HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc".to_owned(),
        ),
    ] {
        let got = send_and_read(SRC_3, addr, request.as_bytes()).await;
        assert_eq!(status_of(&got), 413, "{what}: {got:?}");
    }
    // An empty body is no body: the token PUT clients send still works.
    let ok = format!(
        "PUT /latest/api/token HTTP/1.1\r\nHost: x\r\n{ttl}Content-Length: 0\r\nConnection: close\r\n\r\n"
    );
    let r = raw_http(SRC_3, addr, ok.as_bytes()).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_still_serving(&mut daemon, "request bodies").await;
}

#[tokio::test]
async fn connection_floods_get_503_others_are_served_and_memory_stays_bounded() {
    // Every loopback address is one caller: the other caller is at this machine's other address.
    let Some(other) = other_local_ipv4() else {
        return;
    };
    let mut daemon = Daemon::builder()
        .env("HTTP_HEADER_TIMEOUT", "60")
        .env("HTTP_MAX_CONNECTIONS", "80")
        .env("HTTP_MAX_CONNECTIONS_PER_CALLER", "50")
        .start()
        .await;
    let addr = daemon.addr();
    assert_serving_from(other, &mut daemon, "warm-up").await;
    let rss_before = rss_kib(&daemon);

    // One caller holds 50 connections, each with a 9 KiB unfinished head, from 50 loopback
    // addresses: it is one caller all the same, and its 51st (from yet another) gets 503.
    let partial = format!("GET / HTTP/1.1\r\nX-Pad: {}", "p".repeat(9 * 1024));
    let mut held = Vec::new();
    for i in 0..50 {
        let mut s = connect(Ipv4Addr::new(127, 0, 3, i + 1), addr).await;
        s.write_all(partial.as_bytes()).await.expect("write");
        held.push(s);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let got = send_and_read(
        SRC_3,
        addr,
        b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status_of(&got), 503, "over the per-caller limit: {got:?}");
    assert!(
        got.to_ascii_lowercase().contains("retry-after: 1"),
        "{got:?}"
    );
    assert_serving_from(other, &mut daemon, "one caller at its connection limit").await;

    // The other caller fills the total (80): then everyone new gets 503, and room comes back
    // as soon as connections close.
    for _ in 0..30 {
        let mut s = connect(other, addr).await;
        s.write_all(partial.as_bytes()).await.expect("write");
        held.push(s);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let got = send_and_read(
        other,
        addr,
        b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status_of(&got), 503, "over the total: {got:?}");

    // A flood of short-lived connections on top: all refused, none accumulates.
    let flood: Vec<_> = (0..500)
        .map(|i| {
            tokio::spawn(async move {
                let src = Ipv4Addr::new(127, 0, 1, u8::try_from(i % 200).unwrap_or(0) + 1);
                send_and_read(
                    src,
                    addr,
                    b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
                )
                .await
            })
        })
        .collect();
    for task in flood {
        let got = task.await.expect("flood client");
        assert_eq!(status_of(&got), 503, "{got:?}");
    }
    let rss_during = rss_kib(&daemon);
    held.truncate(60);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_serving_from(other, &mut daemon, "a connection flood").await;
    drop(held);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_still_serving(&mut daemon, "the end of the flood").await;
    let rss_after = rss_kib(&daemon);
    println!(
        "RSS before {rss_before} KiB, holding 80 connections {rss_during} KiB, after {rss_after} KiB"
    );
    // 80 connections × (16 KiB head buffer + task) is a few MiB; allow a generous 64 MiB.
    assert!(
        rss_during < rss_before + 64 * 1024 && rss_after < rss_before + 64 * 1024,
        "memory grew from {rss_before} KiB to {rss_during} KiB (after: {rss_after} KiB)"
    );
}

#[tokio::test]
async fn pipelined_requests_are_answered_in_order() {
    let mut daemon = Daemon::builder().start().await;
    let pipelined = b"GET /latest/meta-data/instance-id HTTP/1.1\r\nHost: x\r\n\r\n\
GET /latest/meta-data/no-such-thing HTTP/1.1\r\nHost: x\r\n\r\n\
GET /latest/meta-data/iam/../iam/info HTTP/1.1\r\nHost: x\r\n\r\n\
GET /latest/meta-data/instance-id HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    let got = send_and_read(SRC_3, daemon.addr(), pipelined).await;
    let statuses: Vec<u16> = got
        .match_indices("HTTP/1.1 ")
        .map(|(i, _)| status_of(&got[i..]))
        .collect();
    assert_eq!(statuses, [200, 404, 400, 200], "{got:?}");
    assert_still_serving(&mut daemon, "pipelining").await;
}

#[tokio::test]
async fn http_1_0_is_served_and_closed() {
    let mut daemon = Daemon::builder().start().await;
    let got = send_and_read(
        SRC_1,
        daemon.addr(),
        b"GET /latest/meta-data/instance-id HTTP/1.0\r\n\r\n",
    )
    .await;
    assert!(got.starts_with("HTTP/1.0 200 "), "{got:?}");
    assert!(got.ends_with("i-mockedid"), "{got:?}");
    assert_still_serving(&mut daemon, "HTTP/1.0").await;
}

#[tokio::test]
async fn odd_methods_and_request_targets_get_clear_statuses() {
    let mut daemon = Daemon::builder().start().await;
    let addr = daemon.addr();
    for (request, want) in [
        ("TRACE /latest/meta-data/ HTTP/1.1", 405),
        ("PATCH /latest/meta-data/instance-id HTTP/1.1", 405),
        ("OPTIONS /latest/meta-data/ HTTP/1.1", 405),
        ("DELETE /latest/api/token HTTP/1.1", 405),
        ("GET /latest/api/token HTTP/1.1", 405),
        ("get /latest/meta-data/instance-id HTTP/1.1", 405),
        ("CONNECT 169.254.169.254:80 HTTP/1.1", 400),
        ("GET * HTTP/1.1", 400),
        (
            "GET http://169.254.169.254/latest/meta-data/instance-id HTTP/1.1",
            200,
        ),
        (
            "GET http://169.254.169.254/latest/meta-data/iam/../iam/info HTTP/1.1",
            400,
        ),
        ("GET /latest/meta-data/instance-id HTTP/9.9", 400),
        ("HELLO", 400),
        ("GET /latest/meta-data/\x01 HTTP/1.1", 400),
    ] {
        let bytes = format!("{request}\r\nHost: x\r\nConnection: close\r\n\r\n");
        let got = send_and_read(SRC_3, addr, bytes.as_bytes()).await;
        assert_eq!(status_of(&got), want, "{request:?}: {got:?}");
    }
    assert_still_serving(&mut daemon, "odd methods").await;
}

/// The spellings the normalisation property found (an upstream that drops `;…` parameters or
/// trailing dots would read them as IAM paths) are refused by the daemon in proxy mode: the
/// stand-in for the host's IMDS sees nothing.
#[tokio::test]
async fn regression_path_spellings_found_by_the_property_never_reach_the_upstream() {
    let upstream = metadataproxy_tests::Upstream::start();
    let mut daemon = Daemon::builder().upstream(&upstream).start().await;
    let addr = daemon.addr();
    for (path, want) in [
        (
            "/latest/meta-data/x/..;/iam/security-credentials/host-role",
            400,
        ),
        (
            "/latest/meta-data/;x/iam/security-credentials/host-role",
            400,
        ),
        ("/latest/meta-data/iam./security-credentials/host-role", 404),
        ("/latest/meta-data../iam/info", 404),
        ("/latest/meta-data/identity-credentials./ec2/info", 404),
    ] {
        let r = get(SRC_3, addr, path, &[]).await;
        assert_eq!(r.status, want, "{path}: {r:?}");
        assert!(!r.body.contains(metadataproxy_tests::HOST_ACCESS_KEY_ID));
    }
    assert!(
        upstream.requests().is_empty(),
        "the upstream saw {:?}",
        upstream.requests()
    );
    let r = get(SRC_3, addr, "/latest/meta-data/placement/region", &[]).await;
    assert_eq!(r.status, 200, "ordinary paths are still forwarded: {r:?}");
    assert!(daemon.is_running());
}
