//! Real containers on a real dockerd, each fetching credentials from inside with busybox `wget`
//! (IMDSv1 and v2): every container gets its own role, checked against moto; none for a container
//! without a role or with malformed settings; IP reuse; dockerd restarts; prefetch.
//!
//! No eBPF redirect yet: containers call the daemon at their network's gateway address directly.

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use metadataproxy_tests::{ACCOUNT, AssumedRole, CREDS_PATH, Daemon, DockerD, Moto, SRC_1, get};

/// A dockerd, moto with `roles`, and the daemon listening on every address, following dockerd.
async fn setup(roles: &[&str], extra: &[(&str, &str)]) -> Option<(DockerD, Moto, Daemon)> {
    let docker = DockerD::start()?;
    let moto = Moto::start().await;
    for role in roles {
        moto.create_role(role, "/").await;
    }
    let mut builder = Daemon::builder()
        .moto(&moto)
        .default_account()
        .env("HOST", "0.0.0.0")
        .env("DOCKER_URL", docker.url());
    for (k, v) in extra {
        builder = builder.env(k, *v);
    }
    let daemon = builder.start().await;
    Some((docker, moto, daemon))
}

/// The credentials URL for `role` as seen from a container on a network with `gateway`.
fn url(gateway: Ipv4Addr, daemon: &Daemon, role: &str) -> String {
    format!(
        "http://{gateway}:{}{CREDS_PATH}{role}",
        daemon.addr().port()
    )
}

/// IMDSv1 from inside the container: (ok, body or error).
fn v1(docker: &DockerD, id: &str, url: &str) -> (bool, String) {
    let (ok, out, err) = docker.exec(id, &format!("wget -q -O - {url}"));
    (ok, if ok { out } else { err })
}

/// IMDSv2 from inside the container: a token by PUT (busybox `nc`), then GET with it.
fn v2(docker: &DockerD, id: &str, gateway: Ipv4Addr, daemon: &Daemon, url: &str) -> (bool, String) {
    let port = daemon.addr().port();
    let script = format!(
        "T=$( (printf 'PUT /latest/api/token HTTP/1.1\\r\\nHost: x\\r\\nConnection: close\\r\\n\
         X-aws-ec2-metadata-token-ttl-seconds: 60\\r\\n\\r\\n'; sleep 1) | nc {gateway} {port} \
         | sed '1,/^\\r$/d'); test -n \"$T\" || exit 7; \
         wget -q -O - --header \"X-aws-ec2-metadata-token: $T\" {url}"
    );
    let (ok, out, err) = docker.exec(id, &script);
    (ok, if ok { out } else { err })
}

/// The assumed-role ARN moto reports for credentials served as `body`.
async fn identity(moto: &Moto, body: &str) -> String {
    let doc: serde_json::Value =
        serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"));
    assert_eq!(doc["Code"], "Success", "{doc}");
    let text = |k: &str| doc[k].as_str().unwrap_or_default().to_owned();
    moto.caller_identity_arn(
        &text("AccessKeyId"),
        &text("SecretAccessKey"),
        &text("Token"),
    )
    .await
}

fn assumed(role: &str, session: &str) -> String {
    format!("arn:aws:sts::{ACCOUNT}:assumed-role/{role}/{session}")
}

async fn calls_for(moto: &Moto, role: &str) -> Vec<AssumedRole> {
    let arn = format!("arn:aws:iam::{ACCOUNT}:role/{role}");
    let all = moto.assumed_roles().await;
    all.into_iter().filter(|r| r.role_arn == arn).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_container_gets_its_own_role() {
    let roles = ["role-a", "role-b"];
    let Some((docker, moto, daemon)) = setup(&roles, &[]).await else {
        return;
    };
    let gw = docker.gateway();
    let with_a = docker.run_detached(&["-e", "IAM_ROLE=role-a"]);
    let with_b = docker.run_detached(&["-e", "IAM_ROLE=role-b", "-e", "IAM_EXTERNAL_ID=ext-b-123"]);
    let no_role = docker.run_detached(&[]);
    let bare = docker.run_detached(&["-e", "IAM_ROLE"]);
    let invalid = docker.run_detached(&["-e", "IAM_ROLE=not a role"]);

    let (ok, body) = v1(&docker, &with_a, &url(gw, &daemon, "role-a"));
    assert!(ok, "container a, IMDSv1: {body}");
    assert_eq!(
        identity(&moto, &body).await,
        assumed("role-a", "devproxyauth")
    );
    let (ok, listing) = v1(&docker, &with_a, &url(gw, &daemon, ""));
    assert!(ok && listing == "role-a", "listing from a: {listing:?}");
    let (ok, err) = v1(&docker, &with_a, &url(gw, &daemon, "role-b"));
    assert!(!ok && err.contains("404"), "a asking for b's role: {err}");

    let (ok, body) = v2(&docker, &with_b, gw, &daemon, &url(gw, &daemon, "role-b"));
    assert!(ok, "container b, IMDSv2: {body}");
    assert_eq!(
        identity(&moto, &body).await,
        assumed("role-b", "devproxyauth")
    );
    let b_calls = calls_for(&moto, "role-b").await;
    assert!(
        !b_calls.is_empty()
            && b_calls
                .iter()
                .all(|r| r.external_id.as_deref() == Some("ext-b-123")),
        "{b_calls:?}"
    );

    for (what, id) in [
        ("no role", &no_role),
        ("bare IAM_ROLE", &bare),
        ("invalid IAM_ROLE", &invalid),
    ] {
        let (ok, err) = v1(&docker, id, &url(gw, &daemon, ""));
        assert!(!ok && err.contains("404"), "container with {what}: {err}");
    }
    daemon
        .wait_for_log("environment entry `IAM_ROLE` has no `=`")
        .await;
    // The others were unaffected by the malformed ones.
    let (ok, body) = v1(&docker, &with_a, &url(gw, &daemon, ""));
    assert!(ok && body == "role-a", "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn label_role_session_key_user_network_and_reverse_dns() {
    let localhost = std::process::Command::new("getent")
        .args(["hosts", "127.0.0.1"])
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .split_whitespace()
                .nth(1)
                .unwrap_or("")
                .to_owned()
        })
        .unwrap_or_default();
    assert!(!localhost.is_empty(), "getent hosts 127.0.0.1 gave no name");
    let extra = [
        ("ROLE_SESSION_KEY", "Labels:com.example.session"),
        ("ROLE_REVERSE_LOOKUP", "true"),
    ];
    let Some((mut docker, moto, daemon)) = setup(&["role-e", "role-f", "role-h"], &extra).await
    else {
        return;
    };
    let gw = docker.gateway();
    let labelled = docker.run_detached(&[
        "--label",
        "metadataproxy.role=role-e",
        "--label",
        "com.example.session=team/e:v1",
    ]);
    let (net, net_gw) = docker.create_network();
    let on_net = docker.run_detached(&["--network", &net, "-e", "IAM_ROLE=role-f"]);
    // No address of its own: only its hostname can identify it.
    docker.run_detached(&[
        "--hostname",
        &localhost,
        "--network",
        "none",
        "-e",
        "IAM_ROLE=role-h",
    ]);

    let (ok, body) = v2(&docker, &labelled, gw, &daemon, &url(gw, &daemon, "role-e"));
    assert!(ok, "container e (label role, label session): {body}");
    assert_eq!(identity(&moto, &body).await, assumed("role-e", "team_e_v1"));

    let (ok, body) = v1(&docker, &on_net, &url(net_gw, &daemon, "role-f"));
    assert!(ok, "container f on a user-defined network: {body}");
    assert_eq!(
        identity(&moto, &body).await,
        assumed("role-f", "devproxyauth")
    );

    // Reverse DNS: a caller at 127.0.0.1 is `localhost`, the hostname of the last container.
    let response = get(SRC_1, daemon.addr(), &format!("{CREDS_PATH}role-h"), &[]).await;
    assert_eq!(
        response.status,
        200,
        "reverse DNS: {response:?}\n{}",
        daemon.logs()
    );
    daemon.wait_for_log("reverse_dns").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reused_address_serves_the_new_container_never_the_old() {
    let Some((mut docker, moto, daemon)) = setup(&["old-role", "new-role"], &[]).await else {
        return;
    };
    let (net, gw) = docker.create_network();
    let ip = format!(
        "{}.{}.{}.10",
        gw.octets()[0],
        gw.octets()[1],
        gw.octets()[2]
    );
    let old = docker.run_detached(&["--network", &net, "--ip", &ip, "-e", "IAM_ROLE=old-role"]);
    let (ok, body) = v1(&docker, &old, &url(gw, &daemon, ""));
    assert!(ok && body == "old-role", "{body}");
    docker.must(&["stop", "-t", "0", &old]);
    let new = docker.run_detached(&["--network", &net, "--ip", &ip, "-e", "IAM_ROLE=new-role"]);
    assert_eq!(
        docker.ip(&new, &net).to_string(),
        ip,
        "Docker gave the new container the same address"
    );
    let (ok, body) = v1(&docker, &new, &url(gw, &daemon, ""));
    assert!(
        ok && body == "new-role",
        "new container at the old address: {body}"
    );
    let (ok, err) = v1(&docker, &new, &url(gw, &daemon, "old-role"));
    assert!(
        !ok && err.contains("404"),
        "old role from the new container: {err}"
    );
    let (ok, body) = v1(&docker, &new, &url(gw, &daemon, "new-role"));
    assert!(ok, "{body}");
    assert_eq!(
        identity(&moto, &body).await,
        assumed("new-role", "devproxyauth")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn index_recovers_after_dockerd_restarts() {
    let Some((mut docker, _moto, daemon)) = setup(&["role-a", "role-b"], &[]).await else {
        return;
    };
    let gw = docker.gateway();
    let a = docker.run_detached(&["-e", "IAM_ROLE=role-a"]);
    let (ok, body) = v1(&docker, &a, &url(gw, &daemon, ""));
    assert!(ok && body == "role-a", "{body}");
    docker.restart_daemon();
    // The old container stopped with dockerd; a new one (maybe at the same address) starts.
    let b = docker.run_detached(&["-e", "IAM_ROLE=role-b"]);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (ok, body) = v1(&docker, &b, &url(gw, &daemon, ""));
        if ok {
            assert_eq!(body, "role-b");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no role for b 30 s after dockerd restarted: {body}\n{}",
            daemon.logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    daemon.wait_for_log("Docker reachable again").await;
}

/// A shell script timing one `wget` of `url` with microsecond clock readings; the body, then a
/// last line `elapsed <start> <end>`.
fn timed_wget(url: &str) -> String {
    format!(
        "s=$EPOCHREALTIME; wget -q -O /tmp/body {url}; rc=$?; e=$EPOCHREALTIME; \
         cat /tmp/body; echo; echo \"elapsed $s $e\"; exit $rc"
    )
}

/// The elapsed time reported by [`timed_wget`]'s output.
fn elapsed(out: &str) -> Duration {
    let line = out
        .lines()
        .rev()
        .find(|l| l.starts_with("elapsed "))
        .unwrap_or_else(|| panic!("no timing in {out:?}"));
    let t: Vec<f64> = line
        .split_whitespace()
        .skip(1)
        .map(|v| v.parse().unwrap_or_else(|_| panic!("bad timing {line:?}")))
        .collect();
    Duration::from_secs_f64(t[1] - t[0])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_request_of_a_new_container_is_served_from_the_prefetched_cache() {
    let Some((docker, moto, daemon)) = setup(&["role-p", "role-q"], &[]).await else {
        return;
    };
    let gw = docker.gateway();
    // Started, indexed and prefetched before it asks.
    let p = docker.run_detached(&["-e", "IAM_ROLE=role-p"]);
    let deadline = Instant::now() + Duration::from_secs(10);
    while calls_for(&moto, "role-p").await.is_empty() {
        assert!(
            Instant::now() < deadline,
            "role-p never prefetched\n{}",
            daemon.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let before = moto.assume_role_count().await;
    let (ok, out, err) = docker.exec(&p, &timed_wget(&url(gw, &daemon, "role-p")));
    assert!(ok, "{err}");
    assert!(out.contains("AccessKeyId"), "{out}");
    assert_eq!(
        moto.assume_role_count().await,
        before,
        "the first request called STS"
    );
    let took = elapsed(&out);
    // Reported, not asserted: timing thresholds belong in the benchmarks (`cargo xtask bench`).
    eprintln!("LATENCY first request of a prefetched container: {took:?}");

    // A container that asks the moment it starts, before its start event is applied: one
    // AssumeRole in all (prefetch and request share it).
    let out = docker.must(&[
        "run",
        "--rm",
        "-e",
        "IAM_ROLE=role-q",
        metadataproxy_tests::IMAGE,
        "sh",
        "-c",
        &timed_wget(&url(gw, &daemon, "role-q")),
    ]);
    assert!(out.contains("AccessKeyId"), "{out}");
    assert_eq!(
        calls_for(&moto, "role-q").await.len(),
        1,
        "{}",
        daemon.logs()
    );
    let took = elapsed(&out);
    eprintln!(
        "LATENCY request at the instant a container starts (not yet indexed, STS included): {took:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_container_killed_mid_request_disturbs_nobody_and_is_never_served_again() {
    let Some((mut docker, _moto, mut daemon)) = setup(&["role-v", "role-w"], &[]).await else {
        return;
    };
    // A user-defined network, so a later container can take the dead one's address (`--ip`).
    let (net, gw) = docker.create_network();
    let victim = docker.run_detached(&["--network", &net, "-e", "IAM_ROLE=role-v"]);
    let other = docker.run_detached(&["--network", &net, "-e", "IAM_ROLE=role-w"]);
    let victim_ip = docker.ip(&victim, &net);
    let deadline = Instant::now() + Duration::from_secs(10);
    while v1(&docker, &victim, &url(gw, &daemon, "")).1 != "role-v" {
        assert!(
            Instant::now() < deadline,
            "victim never known\n{}",
            daemon.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Requests in a tight loop inside the victim; it is killed while they are in flight.
    let script = format!(
        "while true; do wget -q -O /dev/null {}; done",
        url(gw, &daemon, "role-v")
    );
    let mut burst = docker
        .command(&["exec", &victim, "sh", "-c", &script])
        .spawn()
        .expect("docker exec");
    tokio::time::sleep(Duration::from_millis(500)).await;
    docker.must(&["rm", "-f", &victim]);
    let _ = burst.wait();

    assert!(daemon.is_running(), "the daemon died\n{}", daemon.logs());
    let (ok, body) = v1(&docker, &other, &url(gw, &daemon, ""));
    assert!(ok && body == "role-w", "the other container: {body}");
    // A container taking the dead one's address gets its own role: the dead entry is gone (a
    // lingering one would make the address ambiguous, or worse, serve role-v).
    let taker = docker.run_detached(&[
        "--network",
        &net,
        "--ip",
        &victim_ip.to_string(),
        "-e",
        "IAM_ROLE=role-w",
    ]);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (ok, body) = v1(&docker, &taker, &url(gw, &daemon, ""));
        if ok {
            assert_eq!(body, "role-w", "the container on the victim's address");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "taker never served: {body}\n{}",
            daemon.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(!daemon.logs().contains("panicked"), "{}", daemon.logs());
}
