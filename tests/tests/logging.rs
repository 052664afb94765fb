//! The daemon's log cannot stall it: with its stderr going into a pipe nobody reads it still
//! answers every request promptly, counts the lines it dropped in `/metrics` and says so once the
//! pipe is read, and keeps room for audit lines.

use std::io::Read as _;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use metadataproxy_tests::{
    CREDS_PATH, Daemon, MappingFile, Moto, SRC_1, SRC_2, SRC_3, free_port, get, loopback,
};
use serde_json::json;

/// How long one request may take here: a daemon waiting on its log never answers at all.
const PROMPT: Duration = Duration::from_secs(5);

/// `GET path` from `src`, which must be answered within [`PROMPT`].
async fn prompt_get(src: std::net::Ipv4Addr, daemon: SocketAddr, path: &str) -> u16 {
    tokio::time::timeout(PROMPT, get(src, daemon, path, &[]))
        .await
        .unwrap_or_else(|_| panic!("GET {path} from {src}: no answer within {PROMPT:?}"))
        .status
}

/// The value of the metric line starting with `series ` in `/metrics` of `admin`.
async fn metric(admin: SocketAddr, series: &str) -> u64 {
    let metrics = get(SRC_1, admin, "/metrics", &[]).await;
    metrics
        .body
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {series} in /metrics:\n{}", metrics.body))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_sink_nobody_reads_neither_stalls_requests_nor_loses_audit_lines() {
    let moto = Moto::start().await;
    moto.create_role("role-a", "/").await;
    moto.create_role("role-b", "/").await;
    let mapping = MappingFile::new(&json!({"127.0.0.2": "role-a", "127.0.0.3": "role-b"}));
    let admin = loopback(free_port());
    let (mut reader, writer) = std::io::pipe().expect("a pipe for the daemon's stderr");
    // DEBUG: a line per credentials request, the most a user can make the daemon log.
    let daemon = Daemon::builder()
        .moto(&moto)
        .mapping(&mapping)
        .default_account()
        .env("DEBUG", "true")
        .env("ADMIN_LISTEN", admin.to_string())
        .stderr_to(writer)
        .start()
        .await;
    let addr = daemon.addr();
    assert_eq!(
        prompt_get(SRC_2, addr, &format!("{CREDS_PATH}role-a")).await,
        200
    );
    // Nobody reads the pipe: it fills (64 KiB), then the daemon's queue (4096 lines), and then
    // every further line is dropped, never waited for.
    let started = Instant::now();
    let tasks: Vec<_> = (0..4)
        .map(|_| {
            tokio::spawn(async move {
                for _ in 0..1500 {
                    let status = prompt_get(SRC_2, addr, &format!("{CREDS_PATH}role-a")).await;
                    assert_eq!(status, 200);
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("a caller task");
    }
    let took = started.elapsed();
    let dropped = metric(
        admin,
        r#"metadataproxy_log_lines_dropped_total{stream="other"}"#,
    )
    .await;
    assert!(
        dropped > 0,
        "6,000 debug lines into a stalled sink, none dropped?"
    );
    // Another caller's first credentials while the sink is still stalled: its audit line has a
    // queue of its own.
    assert_eq!(
        prompt_get(SRC_3, addr, &format!("{CREDS_PATH}role-b")).await,
        200
    );
    assert_eq!(
        metric(
            admin,
            r#"metadataproxy_log_lines_dropped_total{stream="audit"}"#
        )
        .await,
        0
    );
    // Now the pipe is read: what was queued comes out, and a line says lines were dropped.
    let read = std::thread::spawn(move || {
        let mut log = Vec::new();
        let mut chunk = vec![0_u8; 65_536];
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            match reader.read(&mut chunk) {
                Ok(0) | Err(_) => break,
                Ok(n) => log.extend_from_slice(&chunk[..n]),
            }
            let text = String::from_utf8_lossy(&log);
            if text.contains("log lines were dropped") && text.contains("role/role-b") {
                break;
            }
        }
        String::from_utf8_lossy(&log).into_owned()
    });
    // One more line, so that a line follows the report even if the queue was already empty.
    assert_eq!(
        prompt_get(SRC_2, addr, &format!("{CREDS_PATH}role-a")).await,
        200
    );
    let log = tokio::task::spawn_blocking(move || read.join().expect("the pipe reader"))
        .await
        .expect("the pipe reader task");
    let tail: String = log.lines().rev().take(5).collect::<Vec<_>>().join("\n");
    assert!(
        log.lines()
            .any(|l| l.contains("log lines were dropped") && l.contains("dropped=")),
        "no line about the dropped lines; the log ends with:\n{tail}"
    );
    assert!(
        log.lines().any(|l| l.contains("audit")
            && l.contains("credentials served")
            && l.contains("role/role-b")),
        "the audit line of role-b's caller is missing; the log ends with:\n{tail}"
    );
    println!(
        "6,000 requests with the log stalled: {took:?}; {dropped} lines dropped and counted; the audit line of the next caller kept"
    );
}
