//! The daemon's log cannot stall it nor be flooded by a caller: with its stderr going into a pipe
//! nobody reads it still answers every request promptly, counts the lines it dropped in
//! `/metrics` and says so once the pipe is read; a caller provoking refusals by the thousand gets
//! a bounded number of lines, with a count of what was suppressed, while another caller's audit
//! line is written.

use std::io::Read as _;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use metadataproxy_tests::{
    CREDS_PATH, Daemon, MappingFile, Moto, SRC_1, SRC_2, SRC_3, free_port, get, loopback,
    other_local_ipv4,
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

#[tokio::test]
async fn a_caller_flooding_refusals_gets_few_lines_and_a_count_while_audit_lines_go_on() {
    // Every loopback source is one caller: the other caller needs another address of this machine.
    let Some(other) = other_local_ipv4() else {
        return;
    };
    let moto = Moto::start().await;
    moto.create_role("role-b", "/").await;
    let mapping = MappingFile::new(&json!({other.to_string(): "role-b"}));
    let daemon = Daemon::builder()
        .moto(&moto)
        .mapping(&mapping)
        .default_account()
        .start()
        .await;
    let addr = daemon.addr();
    let flood = "/latest/meta-data/a/../b";
    let started = Instant::now();
    let mut sent = 0;
    for i in 0..2000 {
        assert_eq!(prompt_get(SRC_2, addr, flood).await, 400);
        sent += 1;
        if i == 1000 {
            // Meanwhile another caller gets its credentials, and is refused once itself.
            assert_eq!(
                prompt_get(other, addr, &format!("{CREDS_PATH}role-b")).await,
                200
            );
            assert_eq!(prompt_get(other, addr, flood).await, 400);
        }
    }
    let flood_took = started.elapsed();
    let flood_end = Instant::now();
    let logs = daemon
        .wait_for_logs(&[
            "credentials served",
            &format!("refused path caller=ip:{other} "),
        ])
        .await;
    let refused = |logs: &str, caller: &str| -> Vec<String> {
        logs.lines()
            .filter(|l| l.contains("refused path") && l.contains(&format!("caller=ip:{caller} ")))
            .map(str::to_owned)
            .collect()
    };
    let lines = refused(&logs, "loopback");
    // 10 per caller per 10 s window; the flood may straddle one window boundary.
    let windows = 1 + usize::try_from(flood_took.as_secs() / 10).unwrap_or(usize::MAX);
    assert!(
        !lines.is_empty() && lines.len() <= 10 * (windows + 1),
        "{} refusal lines for 2000 refusals in {flood_took:?}",
        lines.len()
    );
    assert!(
        logs.lines()
            .any(|l| l.contains("audit") && l.contains("role/role-b")),
        "the other caller's audit line is missing:\n{logs}"
    );
    assert_eq!(
        refused(&logs, &other.to_string()).len(),
        1,
        "the other caller's own refusal line"
    );
    // Once its window is over (windows last 10 s), the flooder's next line says how many were
    // suppressed: every refusal is either a line or in a count.
    tokio::time::sleep_until((flood_end + Duration::from_millis(10_200)).into()).await;
    assert_eq!(prompt_get(SRC_2, addr, flood).await, 400);
    sent += 1;
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let logs = daemon.logs();
        let lines = refused(&logs, "loopback");
        let suppressed: u64 = lines
            .iter()
            .filter_map(|l| l.split("suppressed=").nth(1))
            .filter_map(|v| v.split_whitespace().next()?.parse::<u64>().ok())
            .sum();
        let accounted = lines.len() as u64 + suppressed;
        if accounted == sent {
            println!(
                "{sent} refusals of one caller in {flood_took:?}: {} lines, {suppressed} suppressed and counted",
                lines.len()
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{sent} refusals, {} lines and {suppressed} counted as suppressed:\n{}",
            lines.len(),
            lines.join("\n")
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
