//! dockerd and its containerd killed (SIGKILL, no goodbye events) and started again under the daemon: the containers
//! it knew keep being served while Docker is down, it reconnects and resynchronises, a container
//! that died while Docker was down is forgotten (its address then serves only its successor), a
//! restarted container and new ones get their roles.
//!
//! A dockerd that stops answering without closing anything (a relay in front of it freezes) is
//! noticed by the liveness ping: not ready meanwhile, and afterwards a container started while the
//! stream was dead gets its role and one that stopped is forgotten. An event stream whose own
//! connection went silent while dockerd answers new ones is caught by comparing its listing with
//! the index.
//!
//! A container dockerd cannot describe (a relay answers `500` to its inspection) is left out
//! alone: the others are served, it gets nothing, the connection is kept, it is asked about again
//! soon and then at least every liveness interval, and it is served once dockerd describes it;
//! logs, `/readyz` and `/metrics` say so.
//!
//! Needs root and a real dockerd (IP mode: containers call the daemon at their gateway).

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use metadataproxy_tests::{
    CREDS_PATH, Daemon, DockerD, FaultyDockerRelay, FreezableRelay, IMAGE, Moto, SRC_1, free_port,
    get, loopback,
};

/// The pids of dockerd and of the containerd it started, from their pid files.
fn docker_pids(docker: &DockerD) -> [String; 2] {
    let socket = PathBuf::from(docker.url().trim_start_matches("unix://"));
    let read = |path: PathBuf| {
        std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
            .trim()
            .to_owned()
    };
    [
        read(socket.with_file_name("docker.pid")),
        read(
            socket
                .with_file_name("exec")
                .join("containerd/containerd.pid"),
        ),
    ]
}

/// Waits until process `pid` is gone (reaped), so a new dockerd does not take it for alive.
fn wait_gone(pid: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::path::Path::new(&format!("/proc/{pid}")).exists() {
        assert!(Instant::now() < deadline, "process {pid} still there");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn kill9(pid: &str) {
    let status = Command::new("kill")
        .args(["-KILL", pid])
        .status()
        .expect("kill");
    assert!(status.success(), "kill -KILL {pid} failed");
}

/// The role listing as container `id` sees it, asked from inside with `docker exec`.
fn listing(docker: &DockerD, id: &str, gateway: Ipv4Addr, port: u16) -> (bool, String) {
    let (ok, out, err) = docker.exec(
        id,
        &format!("wget -q -O - http://{gateway}:{port}{CREDS_PATH}"),
    );
    (ok, if ok { out } else { err })
}

/// The same from inside the network namespace of process `pid` (works while dockerd is down).
fn listing_from_netns(pid: &str, gateway: Ipv4Addr, port: u16) -> (bool, String) {
    let out = Command::new("nsenter")
        .args(["-t", pid, "-n", "/bin/busybox", "wget", "-q", "-O", "-"])
        .arg(format!("http://{gateway}:{port}{CREDS_PATH}"))
        .output()
        .expect("nsenter");
    let ok = out.status.success();
    let text = if ok { out.stdout } else { out.stderr };
    (ok, String::from_utf8_lossy(&text).into_owned())
}

/// Polls until container `id` lists `want` (a role) or, with `None`, gets a 404.
async fn until_listing(
    docker: &DockerD,
    daemon: &Daemon,
    id: &str,
    gateway: Ipv4Addr,
    want: Option<&str>,
    what: &str,
) {
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        let (ok, body) = listing(docker, id, gateway, daemon.addr().port());
        match want {
            Some(role) if ok => {
                assert_eq!(body, role, "{what}: another role");
                return;
            }
            None if !ok && body.contains("404") => return,
            None => assert!(!ok, "{what}: served {body:?}, expected a 404"),
            Some(_) => {}
        }
        assert!(
            Instant::now() < deadline,
            "{what}: not as expected after 40 s: {body}\n{}",
            daemon.logs()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dockerd_killed_and_restarted_is_resynchronised_and_the_dead_are_forgotten() {
    let Some(mut docker) = DockerD::start() else {
        return;
    };
    let moto = Moto::start().await;
    for role in ["keep", "gone", "fresh"] {
        moto.create_role(role, "/").await;
    }
    let daemon = Daemon::builder()
        .moto(&moto)
        .default_account()
        .env("HOST", "0.0.0.0")
        .env("DOCKER_URL", docker.url())
        .start()
        .await;
    let port = daemon.addr().port();
    let (net, gw) = docker.create_network();
    let ip = |n: u8| Ipv4Addr::new(gw.octets()[0], gw.octets()[1], gw.octets()[2], n).to_string();
    let keep = docker.run_detached(&[
        "--name",
        "mpd-keep",
        "--network",
        &net,
        "--ip",
        &ip(10),
        "--restart",
        "always",
        "-e",
        "IAM_ROLE=keep",
    ]);
    let gone = docker.run_detached(&[
        "--name",
        "mpd-gone",
        "--network",
        &net,
        "--ip",
        &ip(11),
        "-e",
        "IAM_ROLE=gone",
    ]);
    until_listing(&docker, &daemon, &keep, gw, Some("keep"), "keep before").await;
    until_listing(&docker, &daemon, &gone, gw, Some("gone"), "gone before").await;
    let keep_pid = docker.must(&["inspect", "-f", "{{.State.Pid}}", &keep]);
    let gone_pid = docker.must(&["inspect", "-f", "{{.State.Pid}}", &gone]);

    // dockerd and its containerd die without a word (like an OOM kill of the service); the
    // containers' shims keep them running meanwhile.
    let [dockerd, containerd] = docker_pids(&docker);
    kill9(&dockerd);
    kill9(&containerd);
    wait_gone(&containerd);
    daemon.wait_for_log("lost Docker").await;
    let (ok, body) = listing_from_netns(&keep_pid, gw, port);
    assert!(
        ok && body == "keep",
        "a known container while Docker is down: {body}"
    );
    // `gone` dies while nobody can tell the daemon.
    kill9(&gone_pid);
    tokio::time::sleep(Duration::from_millis(500)).await;

    docker.restart_daemon();
    daemon.wait_for_log("Docker reachable again").await;
    // `keep` was stopped by dockerd's start-up (no live restore) and restarted by its policy.
    until_listing(&docker, &daemon, &keep, gw, Some("keep"), "keep after").await;
    let fresh = docker.run_detached(&["--network", &net, "-e", "IAM_ROLE=fresh"]);
    until_listing(
        &docker,
        &daemon,
        &fresh,
        gw,
        Some("fresh"),
        "a new container",
    )
    .await;
    // `gone`'s address now belongs to a container without a role: nothing for it, never `gone`.
    let successor = docker.run_detached(&["--network", &net, "--ip", &ip(11)]);
    until_listing(
        &docker,
        &daemon,
        &successor,
        gw,
        None,
        "a role-less container at the dead one's address",
    )
    .await;
    let logs = daemon.logs();
    let left = logs
        .lines()
        .any(|l| l.contains("container left the index") && l.contains("mpd-gone"));
    assert!(left, "the dead container was never dropped:\n{logs}");
}

/// Asserts that one log line holds every one of `parts`.
fn assert_logged(daemon: &Daemon, parts: &[&str], what: &str) {
    let logs = daemon.logs();
    let found = logs.lines().any(|l| parts.iter().all(|p| l.contains(p)));
    assert!(found, "no log line: {what}:\n{logs}");
}

/// Polls `/readyz` until its `docker:` line starts with `want`; returns that line.
async fn docker_readiness(admin: std::net::SocketAddr, want: &str, daemon: &Daemon) -> String {
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        let resp = get(SRC_1, admin, "/readyz", &[]).await;
        if let Some(line) = resp.body.lines().find(|l| l.starts_with(want)) {
            return line.to_owned();
        }
        assert!(
            Instant::now() < deadline,
            "/readyz never said {want:?}; last: {} {}\n{}",
            resp.status,
            resp.body,
            daemon.logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silently_dead_event_stream_is_noticed_and_what_happened_meanwhile_is_resynchronised() {
    let Some(mut docker) = DockerD::start() else {
        return;
    };
    let moto = Moto::start().await;
    for role in ["stay", "stops", "new"] {
        moto.create_role(role, "/").await;
    }
    // The daemon reaches dockerd over tcp:// through the relay; the test's own docker CLI does not.
    let relay = FreezableRelay::start(PathBuf::from(docker.url().trim_start_matches("unix://")));
    let admin = loopback(free_port());
    let daemon = Daemon::builder()
        .moto(&moto)
        .default_account()
        .env("HOST", "0.0.0.0")
        .env("DOCKER_URL", relay.url())
        .env("DOCKER_PING_INTERVAL", "1")
        .env("ADMIN_LISTEN", admin.to_string())
        .start()
        .await;
    let (net, gw) = docker.create_network();
    let ip = |n: u8| Ipv4Addr::new(gw.octets()[0], gw.octets()[1], gw.octets()[2], n).to_string();
    let stay = docker.run_detached(&[
        "--name",
        "mpd-stay",
        "--network",
        &net,
        "-e",
        "IAM_ROLE=stay",
    ]);
    let stops = docker.run_detached(&[
        "--name",
        "mpd-stops",
        "--network",
        &net,
        "--ip",
        &ip(12),
        "-e",
        "IAM_ROLE=stops",
    ]);
    until_listing(&docker, &daemon, &stay, gw, Some("stay"), "stay before").await;
    until_listing(&docker, &daemon, &stops, gw, Some("stops"), "stops before").await;
    docker_readiness(admin, "docker: ok", &daemon).await;

    // Silence without a close: the event stream stays open and idle, so only the ping can tell.
    relay.freeze(true);
    let frozen_at = Instant::now();
    let line = docker_readiness(admin, "docker: FAIL", &daemon).await;
    let noticed = frozen_at.elapsed();
    assert!(line.contains("unreachable"), "{line}");
    assert!(
        noticed < Duration::from_secs(5),
        "a 1 s ping interval took {noticed:?} to notice"
    );
    assert_logged(
        &daemon,
        &["lost Docker", "no answer to a liveness ping within 1s"],
        "why the connection was dropped",
    );
    // The container it knows is still served meanwhile.
    until_listing(&docker, &daemon, &stay, gw, Some("stay"), "while frozen").await;

    // While the daemon hears nothing: one container stops, another starts.
    docker.must(&["stop", "-t", "0", &stops]);
    let fresh = docker.run_detached(&["--network", &net, "-e", "IAM_ROLE=new"]);
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        docker_readiness(admin, "docker: FAIL", &daemon)
            .await
            .contains("unreachable"),
        "still frozen"
    );

    relay.freeze(false);
    docker_readiness(admin, "docker: ok", &daemon).await;
    assert!(daemon.logs().contains("Docker reachable again"));
    until_listing(
        &docker,
        &daemon,
        &fresh,
        gw,
        Some("new"),
        "started while frozen",
    )
    .await;
    until_listing(&docker, &daemon, &stay, gw, Some("stay"), "stay after").await;
    assert_logged(
        &daemon,
        &["container left the index", "mpd-stops"],
        "the container stopped while frozen dropped",
    );
    // Its address now belongs to a role-less container: nothing for it, never `stops`.
    let successor = docker.run_detached(&["--network", &net, "--ip", &ip(12)]);
    until_listing(
        &docker,
        &daemon,
        &successor,
        gw,
        None,
        "a role-less container at the stopped one's address",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_stream_whose_connection_died_alone_is_caught_by_the_listing_check() {
    let Some(mut docker) = DockerD::start() else {
        return;
    };
    let moto = Moto::start().await;
    for role in ["stops", "new"] {
        moto.create_role(role, "/").await;
    }
    let relay = FreezableRelay::start(PathBuf::from(docker.url().trim_start_matches("unix://")));
    let daemon = Daemon::builder()
        .moto(&moto)
        .default_account()
        .env("HOST", "0.0.0.0")
        .env("DOCKER_URL", relay.url())
        .env("DOCKER_PING_INTERVAL", "1")
        .start()
        .await;
    let (net, gw) = docker.create_network();
    let ip = |n: u8| Ipv4Addr::new(gw.octets()[0], gw.octets()[1], gw.octets()[2], n).to_string();
    let stops = docker.run_detached(&[
        "--name",
        "mpd-stops-alone",
        "--network",
        &net,
        "--ip",
        &ip(13),
        "-e",
        "IAM_ROLE=stops",
    ]);
    until_listing(&docker, &daemon, &stops, gw, Some("stops"), "before").await;

    // The event stream's connection goes silent; every new connection (the pings) still works.
    relay.freeze_open();
    docker.must(&["stop", "-t", "0", &stops]);
    let fresh = docker.run_detached(&["--network", &net, "-e", "IAM_ROLE=new"]);
    until_listing(
        &docker,
        &daemon,
        &fresh,
        gw,
        Some("new"),
        "started after the stream died",
    )
    .await;
    assert_logged(
        &daemon,
        &["lost Docker", "the event stream missed events"],
        "why the connection was dropped",
    );
    assert_logged(
        &daemon,
        &["container left the index", "mpd-stops-alone"],
        "the container stopped meanwhile dropped",
    );
    let successor = docker.run_detached(&["--network", &net, "--ip", &ip(13)]);
    until_listing(&docker, &daemon, &successor, gw, None, "its address reused").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_looping_container_is_not_taken_for_missed_events() {
    let Some(docker) = DockerD::start() else {
        return;
    };
    let daemon = Daemon::builder()
        .env("DOCKER_URL", docker.url())
        .env("DOCKER_PING_INTERVAL", "1")
        .start()
        .await;
    daemon.wait_for_log("Docker reachable").await;
    // Docker lists it as running while it waits (longer each time) to be restarted.
    docker.must(&[
        "run",
        "-d",
        "--restart",
        "always",
        IMAGE,
        "sh",
        "-c",
        "sleep 0.3; exit 1",
    ]);
    tokio::time::sleep(Duration::from_secs(12)).await;
    let logs = daemon.logs();
    let restarts = logs.matches("container left the index").count();
    assert!(restarts >= 3, "the container did not crash-loop:\n{logs}");
    assert!(
        !logs.contains("lost Docker"),
        "the liveness check reconnected although no event was missed:\n{logs}"
    );
}

/// The value of the unlabelled metric `name` in the daemon's `/metrics`.
async fn metric(admin: std::net::SocketAddr, name: &str) -> String {
    let resp = get(SRC_1, admin, "/metrics", &[]).await;
    assert_eq!(resp.status, 200, "{}", resp.body);
    let prefix = format!("{name} ");
    resp.body
        .lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .unwrap_or_else(|| panic!("no {name} in /metrics:\n{}", resp.body))
        .to_owned()
}

/// Polls (up to 20 s) until `cond` holds.
async fn until(daemon: &Daemon, what: &str, cond: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !cond() {
        assert!(
            Instant::now() < deadline,
            "never {what}:\n{}",
            daemon.logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Polls (up to 20 s) until `/metrics` counts `want` containers Docker cannot describe.
async fn until_unreadable(admin: std::net::SocketAddr, want: &str, daemon: &Daemon) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let now = metric(admin, "metadataproxy_docker_containers_unreadable").await;
        if now == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{now} containers counted undescribed, not {want}:\n{}",
            daemon.logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_container_dockerd_cannot_describe_is_left_out_alone_until_it_can() {
    let Some(mut docker) = DockerD::start() else {
        return;
    };
    let moto = Moto::start().await;
    for role in ["seen", "blind", "late"] {
        moto.create_role(role, "/").await;
    }
    let relay = FaultyDockerRelay::start(PathBuf::from(docker.url().trim_start_matches("unix://")));
    let (net, gw) = docker.create_network();
    let ip = |n: u8| Ipv4Addr::new(gw.octets()[0], gw.octets()[1], gw.octets()[2], n).to_string();
    let seen = docker.run_detached(&["--network", &net, "--ip", &ip(20), "-e", "IAM_ROLE=seen"]);
    let blind = docker.run_detached(&["--network", &net, "--ip", &ip(21), "-e", "IAM_ROLE=blind"]);
    // dockerd cannot describe it from before the daemon starts: the first listing meets it.
    relay.break_inspection(&blind, true);
    let admin = loopback(free_port());
    let daemon = Daemon::builder()
        .moto(&moto)
        .default_account()
        .env("HOST", "0.0.0.0")
        .env("DOCKER_URL", relay.url())
        .env("DOCKER_PING_INTERVAL", "1")
        .env("ADMIN_LISTEN", admin.to_string())
        .start()
        .await;
    until_listing(
        &docker,
        &daemon,
        &seen,
        gw,
        Some("seen"),
        "the other container",
    )
    .await;
    until_listing(&docker, &daemon, &blind, gw, None, "undescribed").await;
    let ready = docker_readiness(admin, "docker: ok", &daemon).await;
    assert!(
        ready.contains("1 more that Docker cannot describe are left out"),
        "{ready}"
    );
    until_unreadable(admin, "1", &daemon).await;
    assert_logged(
        &daemon,
        &[
            "runs a container it cannot describe",
            &blind[..12],
            "status code 500",
        ],
        "why the container gets nothing",
    );
    // Asked about again (soon, then at least every second here), on the same connection: an
    // undescribed container running is not taken for missed events.
    let asked = relay.inspections(&blind);
    until(&daemon, "asked about again", || {
        relay.inspections(&blind) >= asked + 3
    })
    .await;
    until_listing(&docker, &daemon, &blind, gw, None, "still undescribed").await;
    assert!(
        !daemon.logs().contains("lost Docker"),
        "the connection was dropped:\n{}",
        daemon.logs()
    );

    // A container started while dockerd cannot describe it gets nothing either.
    let late = docker.must(&[
        "create",
        "--network",
        &net,
        "--ip",
        &ip(22),
        "-e",
        "IAM_ROLE=late",
        IMAGE,
        "sleep",
        "600",
    ]);
    relay.break_inspection(&late, true);
    docker.must(&["start", &late]);
    until_unreadable(admin, "2", &daemon).await;
    until_listing(&docker, &daemon, &late, gw, None, "started undescribed").await;

    // Once dockerd describes them, they are served, without a new connection.
    relay.break_inspection(&blind, false);
    relay.break_inspection(&late, false);
    until_listing(&docker, &daemon, &blind, gw, Some("blind"), "described").await;
    until_listing(&docker, &daemon, &late, gw, Some("late"), "described").await;
    until_unreadable(admin, "0", &daemon).await;
    assert_logged(
        &daemon,
        &["container described after all", &blind[..12]],
        "the recovery",
    );
    assert!(!daemon.logs().contains("lost Docker"), "{}", daemon.logs());
    let ready = docker_readiness(admin, "docker: ok", &daemon).await;
    assert!(!ready.contains("cannot describe"), "{ready}");
}
