//! The admin listener of the real daemon: `/healthz`, `/readyz` and `/metrics` only (never
//! credentials), and readiness following its peers: a real dockerd stopped and started again,
//! STS unreachable.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use metadataproxy_tests::{
    CREDS_PATH, Daemon, DockerD, MappingFile, Moto, SRC_1, SRC_2, free_port, get, loopback, request,
};
use serde_json::json;

/// `/readyz` once its status is `status` and its body has every line of `lines`; panics with
/// the last answer after `within`.
async fn readyz_when(admin: SocketAddr, status: u16, lines: &[&str], within: Duration) -> String {
    let deadline = Instant::now() + within;
    loop {
        let resp = get(SRC_1, admin, "/readyz", &[]).await;
        if resp.status == status
            && lines
                .iter()
                .all(|l| resp.body.lines().any(|b| b.starts_with(l)))
        {
            return resp.body;
        }
        assert!(
            Instant::now() < deadline,
            "/readyz never became {status} with {lines:?}; last: {} {}",
            resp.status,
            resp.body
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn serves_health_and_metrics_and_nothing_else() {
    let moto = Moto::start().await;
    moto.create_role("role-a", "/").await;
    // 127.0.0.1 is the admin client's own address: were the admin listener the IMDS API, it
    // would be handed role-a.
    let mapping = MappingFile::new(&json!({"127.0.0.1": "role-a", "127.0.0.2": "role-a"}));
    let admin = loopback(free_port());
    let daemon = Daemon::builder()
        .moto(&moto)
        .mapping(&mapping)
        .default_account()
        .env("ADMIN_LISTEN", admin.to_string())
        .start()
        .await;
    let health = get(SRC_1, admin, "/healthz", &[]).await;
    assert_eq!((health.status, health.body.as_str()), (200, "ok\n"));
    let metrics = get(SRC_1, admin, "/metrics", &[]).await;
    assert_eq!(metrics.status, 200);
    assert_eq!(
        metrics.header("content-type"),
        Some("application/openmetrics-text; version=1.0.0; charset=utf-8")
    );
    assert!(metrics.body.ends_with("# EOF\n"), "{}", metrics.body);
    for path in [
        "/",
        "/latest/meta-data/iam/security-credentials/",
        &format!("{CREDS_PATH}role-a"),
        "/latest/meta-data/iam/info",
        "/latest/api/token",
        "/metrics/",
        "/healthz/../metrics",
    ] {
        let resp = get(SRC_1, admin, path, &[]).await;
        assert_eq!(
            (resp.status, resp.body.as_str()),
            (404, "Not Found\n"),
            "{path}"
        );
    }
    let put = request("PUT", SRC_1, admin, "/latest/api/token", &[]).await;
    assert_eq!(put.status, 404, "{put:?}");
    let post = request("POST", SRC_1, admin, "/metrics", &[]).await;
    assert_eq!(
        (post.status, post.header("allow")),
        (405, Some("GET, HEAD"))
    );
    // The IMDS listener, for its part, serves no admin path.
    let imds = get(SRC_2, daemon.addr(), "/metrics", &[]).await;
    assert_eq!(imds.status, 404, "{imds:?}");
}

#[tokio::test]
async fn admin_listen_off_and_on_the_imds_port_are_handled() {
    let port = free_port();
    let exited = Daemon::builder()
        .env("PORT", port.to_string())
        .env("ADMIN_LISTEN", format!("127.0.0.1:{port}"))
        .run_expecting_exit(Duration::from_secs(10))
        .await;
    assert_eq!(
        exited.status.and_then(|s| s.code()),
        Some(2),
        "{}",
        exited.stderr
    );
    assert!(
        exited.stderr.contains(&format!(
            "ADMIN_LISTEN=\"127.0.0.1:{port}\": is the IMDS listener's address (HOST, PORT): give the admin listener its own port"
        )),
        "{}",
        exited.stderr
    );
    let exited = Daemon::builder()
        .env("ADMIN_LISTEN", "localhost")
        .run_expecting_exit(Duration::from_secs(10))
        .await;
    assert!(
        exited.stderr.contains("ADMIN_LISTEN=\"localhost\": not an address:port like `127.0.0.1:45002` or `[::1]:45002`, nor `off`"),
        "{}",
        exited.stderr
    );
    // `off` (the harness default): nothing but the IMDS listener.
    let daemon = Daemon::builder().start().await;
    assert!(daemon.logs().contains("listening"));
    assert!(
        !daemon.logs().contains("admin listener"),
        "{}",
        daemon.logs()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_follows_docker_going_away_and_coming_back() {
    let Some(mut docker) = DockerD::start() else {
        return;
    };
    let moto = Moto::start().await;
    let admin = loopback(free_port());
    let _daemon = Daemon::builder()
        .moto(&moto)
        .default_account()
        .env("DOCKER_URL", docker.url())
        .env("ADMIN_LISTEN", admin.to_string())
        .start()
        .await;
    let body = readyz_when(
        admin,
        200,
        &[
            "docker: ok (container index synchronised (0 running))",
            "sts: ok",
        ],
        Duration::from_secs(15),
    )
    .await;
    assert_eq!(
        body.lines().next(),
        Some("ebpf: ok (not used (EBPF=off: IP-only mode))"),
        "{body}"
    );
    docker.stop_daemon();
    readyz_when(
        admin,
        503,
        &[&format!(
            "docker: FAIL (container index not synchronised: Docker at {} unreachable",
            docker.url()
        )],
        Duration::from_secs(10),
    )
    .await;
    let metrics = get(SRC_1, admin, "/metrics", &[]).await;
    assert!(
        metrics
            .body
            .lines()
            .any(|l| l == "metadataproxy_docker_synchronised 0"),
        "{}",
        metrics.body
    );
    docker.restart_daemon();
    readyz_when(admin, 200, &["docker: ok"], Duration::from_secs(30)).await;
}

#[tokio::test]
async fn readiness_reports_sts_unreachable_after_a_failed_call() {
    let mut moto = Moto::start().await;
    moto.create_role("role-a", "/").await;
    let mapping = MappingFile::new(&json!({"127.0.0.2": "role-a"}));
    let admin = loopback(free_port());
    let _daemon = Daemon::builder()
        .moto(&moto)
        .mapping(&mapping)
        .default_account()
        .env("ADMIN_LISTEN", admin.to_string())
        .start()
        .await;
    // Docker is absent here, so the daemon is never ready; only the STS line matters.
    readyz_when(admin, 503, &["sts: ok (sts:"], Duration::from_secs(10)).await;
    moto.stop();
    // A role newly mapped is fetched at once, and that call fails.
    mapping.write(&json!({"127.0.0.2": "role-a", "127.0.0.3": "role-b"}));
    let body = readyz_when(
        admin,
        503,
        &["sts: FAIL (", "docker: FAIL"],
        Duration::from_secs(20),
    )
    .await;
    let sts = body
        .lines()
        .find(|l| l.starts_with("sts:"))
        .unwrap_or_default();
    assert!(
        sts.contains("sts:AssumeRole failed (Unavailable)"),
        "the failed call is named: {body}"
    );
}
