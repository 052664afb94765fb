//! The admin listener of the real daemon: `/healthz`, `/readyz` and `/metrics` only (never
//! credentials), and readiness following its peers: a real dockerd stopped and started again,
//! STS unreachable; with the eBPF redirect, what it reports of the kernel side and the audit line
//! of a container found by its cgroup.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use metadataproxy_tests::{
    ACCOUNT, BpfFs, CREDS_PATH, Daemon, DockerD, METADATA_IP, MappingFile, MetadataAddress, Moto,
    SRC_1, SRC_2, free_port, get, loopback, request,
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
    // The admin listener would be announced before "listening".
    let logs = daemon.wait_for_log("listening").await;
    assert!(!logs.contains("admin listener"), "{logs}");
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_ebpf_the_redirect_and_its_maps_are_reported() {
    let Some(docker) = DockerD::start() else {
        return;
    };
    let metadata = MetadataAddress::start();
    let bpffs = BpfFs::mount();
    let moto = Moto::start().await;
    moto.create_role("role-h", "/").await;
    let port = free_port();
    let admin = loopback(free_port());
    let daemon = Daemon::builder()
        .moto(&moto)
        .default_account()
        .env("HOST", "0.0.0.0")
        .env("PORT", port.to_string())
        .env("ADMIN_LISTEN", admin.to_string())
        .env("DOCKER_URL", docker.url())
        .env("LOG_FORMAT", "json")
        .env("EBPF", "required")
        .env("EBPF_CGROUPS", docker.cgroup_parent())
        .env("EBPF_PIN_DIR", bpffs.pin_dir())
        .env("EBPF_MAP_SIZE", "4096")
        .env("EBPF_ON_EXIT", "detach")
        .start()
        .await;
    let body = readyz_when(
        admin,
        200,
        &["docker: ok", "sts: ok"],
        Duration::from_secs(15),
    )
    .await;
    assert_eq!(
        body.lines().next(),
        Some("ebpf: ok (redirect of 169.254.169.254:80 attached and pinned)"),
        "{body}"
    );
    // A host-network container has no address of its own: only its cgroup names it.
    let id = docker.run_detached(&[
        "--network",
        "host",
        "--name",
        "hostnet-h",
        "-e",
        "IAM_ROLE=role-h",
    ]);
    let (ok, out, err) = docker.exec(
        &id,
        &format!("wget -q -O - http://{METADATA_IP}{CREDS_PATH}role-h"),
    );
    assert!(ok, "wget in the container: {err}\n{}", daemon.logs());
    assert!(out.contains("\"AccessKeyId\""), "{out}");
    assert!(
        metadata.standin.requests().is_empty(),
        "the stand-in was reached"
    );

    let logs = daemon.wait_for_log("credentials served").await;
    let audit: Vec<serde_json::Value> = logs
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["target"] == "audit")
        .collect();
    assert_eq!(audit.len(), 1, "{logs}");
    for (field, want) in [
        ("container_id", id.as_str()),
        ("container_name", "hostnet-h"),
        ("source", "docker_cgroup"),
        ("imds", "v1"),
        ("role_arn", &format!("arn:aws:iam::{ACCOUNT}:role/role-h")),
    ] {
        assert_eq!(
            audit[0][field].as_str(),
            Some(want),
            "{field}: {}",
            audit[0]
        );
    }
    assert!(
        audit[0]["caller"]
            .as_str()
            .is_some_and(|c| c.starts_with("cgroup:")),
        "{}",
        audit[0]
    );

    let metrics = get(SRC_1, admin, "/metrics", &[]).await.body;
    for want in [
        "metadataproxy_ebpf_connection_capacity 4096",
        // Every redirected connection was accepted, so its record was taken out of the map.
        r#"metadataproxy_ebpf_connection_entries{map="conn4"} 0"#,
        r#"metadataproxy_identifications_total{source="docker_cgroup"} 1"#,
        "metadataproxy_docker_containers 1",
        "metadataproxy_docker_synchronised 1",
    ] {
        assert!(
            metrics.lines().any(|l| l == want),
            "no {want:?} in:\n{metrics}"
        );
    }
}

/// Open file descriptors of process `pid`.
fn descriptors(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("read the daemon's /proc/<pid>/fd")
        .count()
}

/// What a connection to the admin listener gets for `GET /healthz`: its status line, or the
/// error that ended it (a refused connection may be reset before its request is read).
async fn healthz_outcome(admin: SocketAddr) -> String {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(admin).await?;
        stream
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await?;
        let mut got = Vec::new();
        stream.read_to_end(&mut got).await?;
        Ok::<_, std::io::Error>(
            String::from_utf8_lossy(&got)
                .lines()
                .next()
                .unwrap_or("closed without an answer")
                .to_owned(),
        )
    };
    match tokio::time::timeout(Duration::from_secs(5), exchange).await {
        Ok(Ok(line)) => line,
        Ok(Err(e)) => format!("error: {e}"),
        Err(_) => "no answer within 5 s".to_owned(),
    }
}

#[tokio::test]
async fn a_flood_of_admin_connections_holds_few_descriptors_and_spares_the_imds_listener() {
    let admin = loopback(free_port());
    let daemon = Daemon::builder()
        .env("ADMIN_LISTEN", admin.to_string())
        .start()
        .await;
    assert_eq!(healthz_outcome(admin).await, "HTTP/1.1 200 OK");
    let before = descriptors(daemon.pid());
    // 300 connections that never send a byte: each would be kept until the 5 s header timeout.
    let mut flood = Vec::new();
    for _ in 0..300 {
        flood.push(
            tokio::net::TcpStream::connect(admin)
                .await
                .expect("connect to the admin listener"),
        );
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let during = descriptors(daemon.pid());
    // The limit (32) plus slack for the runtime's own descriptors.
    assert!(
        during <= before + 32 + 8,
        "the daemon holds {during} descriptors during the flood (before: {before})"
    );
    let refused = healthz_outcome(admin).await;
    assert!(
        !refused.contains("200"),
        "admin connection beyond the limit was served: {refused}"
    );
    // The IMDS listener serves meanwhile.
    let started = Instant::now();
    let id = get(SRC_2, daemon.addr(), "/latest/meta-data/instance-id", &[]).await;
    assert_eq!((id.status, id.body.as_str()), (200, "i-mockedid"), "{id:?}");
    println!(
        "descriptors before {before}, during a 300-connection flood {during}; IMDS answered in {:?} meanwhile; a 33rd admin connection got: {refused}",
        started.elapsed()
    );
    drop(flood);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let outcome = healthz_outcome(admin).await;
        if outcome == "HTTP/1.1 200 OK" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the admin listener never recovered after the flood: {outcome}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
