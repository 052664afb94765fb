//! The real thing: containers call `http://169.254.169.254/…` and the eBPF redirect brings them to
//! the daemon, which knows each caller by its cgroup — bridge, user-defined network, host network,
//! `docker exec` — and serves that container's own role. 169.254.169.254 is made local with a
//! stand-in "real IMDS" serving host credentials: no container may receive those, and the
//! stand-in must see no request at all.
//!
//! Needs root, a real dockerd, and the daemon built with the eBPF object (`cargo xtask test`
//! builds it with `cargo xtask build-ebpf`).

use metadataproxy_tests::{
    ACCOUNT, BpfFs, CREDS_PATH, Daemon, DockerD, HOST_ACCESS_KEY_ID, METADATA_IP, MetadataAddress,
    Moto,
};

/// IMDSv1 at the metadata address from inside container `id`: (ok, body or error).
pub(crate) fn v1(docker: &DockerD, id: &str, path: &str) -> (bool, String) {
    let (ok, out, err) = docker.exec(id, &format!("wget -q -O - http://{METADATA_IP}{path}"));
    assert!(
        !out.contains(HOST_ACCESS_KEY_ID),
        "host credentials reached container {id}: {out}"
    );
    (ok, if ok { out } else { err })
}

/// An IMDSv2 token obtained from inside container `id` (PUT through busybox `nc`).
fn token_in(docker: &DockerD, id: &str) -> String {
    let script = format!(
        "(printf 'PUT /latest/api/token HTTP/1.1\\r\\nHost: x\\r\\nConnection: close\\r\\n\
         X-aws-ec2-metadata-token-ttl-seconds: 60\\r\\n\\r\\n'; sleep 1) | nc {METADATA_IP} 80 \
         | sed '1,/^\\r$/d'"
    );
    let (ok, out, err) = docker.exec(id, &script);
    assert!(
        ok && !out.trim().is_empty(),
        "no token in {id}: {out} {err}"
    );
    out.trim().to_owned()
}

/// `path` from inside container `id` with the IMDSv2 token `token`: (ok, body or error).
fn with_token(docker: &DockerD, id: &str, token: &str, path: &str) -> (bool, String) {
    let (ok, out, err) = docker.exec(
        id,
        &format!(
            "wget -q -O - --header 'X-aws-ec2-metadata-token: {token}' http://{METADATA_IP}{path}"
        ),
    );
    (ok, if ok { out } else { err })
}

/// IMDSv2 at the metadata address: a token by PUT (busybox `nc`), then GET with it.
fn v2(docker: &DockerD, id: &str, path: &str) -> (bool, String) {
    let token = token_in(docker, id);
    let (ok, out) = with_token(docker, id, &token, path);
    assert!(
        !out.contains(HOST_ACCESS_KEY_ID),
        "host credentials reached container {id}: {out}"
    );
    (ok, out)
}

/// The assumed-role ARN moto reports for credentials served as `body`.
async fn identity(moto: &Moto, body: &str) -> String {
    let doc: serde_json::Value =
        serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"));
    let text = |k: &str| doc[k].as_str().unwrap_or_default().to_owned();
    moto.caller_identity_arn(
        &text("AccessKeyId"),
        &text("SecretAccessKey"),
        &text("Token"),
    )
    .await
}

fn assumed(role: &str) -> String {
    format!("arn:aws:sts::{ACCOUNT}:assumed-role/{role}/devproxyauth")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containers_calling_169_254_169_254_get_their_own_roles() {
    let Some(mut docker) = DockerD::start() else {
        return;
    };
    let metadata = MetadataAddress::start();
    let bpffs = BpfFs::mount();
    let moto = Moto::start().await;
    for role in ["role-a", "role-f", "role-h"] {
        moto.create_role(role, "/").await;
    }
    let mut daemon = Daemon::builder()
        .moto(&moto)
        .default_account()
        .redirecting_docker(&docker, &bpffs)
        .start()
        .await;

    let bridge = docker.run_detached(&["-e", "IAM_ROLE=role-a"]);
    let (net, _) = docker.create_network();
    let user_net = docker.run_detached(&["--network", &net, "-e", "IAM_ROLE=role-f"]);
    let host_net = docker.run_detached(&["--network", "host", "-e", "IAM_ROLE=role-h"]);
    let host_none = docker.run_detached(&["--network", "host"]);
    let no_role = docker.run_detached(&[]);
    assert!(daemon.is_running(), "the daemon exited:\n{}", daemon.logs());

    for (id, role, what) in [
        (&bridge, "role-a", "default bridge"),
        (&user_net, "role-f", "user-defined network"),
        (&host_net, "role-h", "host network"),
    ] {
        let (ok, listing) = v1(&docker, id, CREDS_PATH);
        assert!(
            ok && listing == role,
            "{what}: listing {listing:?}\n{}",
            daemon.logs()
        );
        let (ok, body) = v2(&docker, id, &format!("{CREDS_PATH}{role}"));
        assert!(ok, "{what}, IMDSv2: {body}");
        assert_eq!(identity(&moto, &body).await, assumed(role), "{what}");
    }
    for (id, what) in [
        (&host_none, "host network, no role"),
        (&no_role, "bridge, no role"),
    ] {
        let (ok, err) = v1(&docker, id, CREDS_PATH);
        assert!(!ok && err.contains("404"), "{what}: {err}");
    }
    // An IMDSv2 token is bound to the container that obtained it: refused in any other, whether
    // on the same bridge or sharing the host's network (and so the host's address).
    let token_a = token_in(&docker, &bridge);
    let (ok, own) = with_token(&docker, &bridge, &token_a, CREDS_PATH);
    assert!(
        ok && own == "role-a",
        "the token in its own container: {own}"
    );
    for (other, what) in [
        (&host_net, "host-network container"),
        (&no_role, "same bridge"),
    ] {
        let (ok, err) = with_token(&docker, other, &token_a, CREDS_PATH);
        assert!(
            !ok && err.contains("401"),
            "{what} used another container's token: {err}"
        );
    }
    let token_h = token_in(&docker, &host_net);
    let (ok, err) = with_token(&docker, &host_none, &token_h, CREDS_PATH);
    assert!(
        !ok && err.contains("401"),
        "two host-network containers share an address, not a token: {err}"
    );
    // Every container was known by its cgroup, the host-network ones included.
    let logs = daemon.wait_for_log("source=\"docker_cgroup\"").await;
    assert!(
        !logs.contains("source=\"docker_ip\""),
        "a caller fell back to its address:\n{logs}"
    );
    let seen = metadata.standin.requests();
    assert!(
        seen.is_empty(),
        "the real IMDS stand-in was reached: {seen:?}"
    );
}

/// A cgroup made by the test below the cgroup2 mount, with its parents; removed (deepest first,
/// once its processes are gone) when dropped.
struct LookAlike {
    dirs: Vec<std::path::PathBuf>,
}

impl LookAlike {
    /// Makes `<cgroup2><parent>/<rel>` and every folder on the way.
    fn new(parent: &str, rel: &str) -> Self {
        let mut dirs = Vec::new();
        let mut dir = metadataproxy_tests::cgroup2_mount().join(parent.trim_start_matches('/'));
        for seg in rel.split('/') {
            dir = dir.join(seg);
            std::fs::create_dir(&dir)
                .unwrap_or_else(|e| panic!("cannot create cgroup {}: {e}", dir.display()));
            dirs.push(dir.clone());
        }
        Self { dirs }
    }

    /// The deepest cgroup's folder.
    fn dir(&self) -> &std::path::Path {
        self.dirs.last().expect("at least one folder")
    }

    /// A host process moved into the deepest cgroup fetches `url` with curl: (HTTP status,
    /// output).
    fn fetch(&self, url: &str) -> (u16, String) {
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!(
                "echo $$ > {}/cgroup.procs && exec curl -sS -m 5 -w '\nstatus=%{{http_code}}' {url}",
                self.dir().display()
            ))
            .output()
            .expect("running curl");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            !text.contains(HOST_ACCESS_KEY_ID),
            "host credentials reached the look-alike: {text}"
        );
        let status = text
            .rsplit_once("status=")
            .and_then(|(_, s)| s.trim().parse().ok())
            .unwrap_or(0);
        (status, text)
    }
}

impl Drop for LookAlike {
    fn drop(&mut self) {
        for dir in self.dirs.iter().rev() {
            for _ in 0..50 {
                if std::fs::remove_dir(dir).is_ok() || !dir.exists() {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
        }
    }
}

/// Regression (issue 11, item 2): a process moved into a cgroup named like a running container —
/// anywhere but in that container's own cgroup — borrowed the container's role.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cgroup_named_like_a_container_gets_nothing_and_is_logged() {
    let Some(docker) = DockerD::start() else {
        return;
    };
    let metadata = MetadataAddress::start();
    let bpffs = BpfFs::mount();
    let moto = Moto::start().await;
    for role in ["role-a", "role-d"] {
        moto.create_role(role, "/").await;
    }
    // DEFAULT_ROLE: a refused look-alike must not fall through to it either.
    let daemon = Daemon::builder()
        .moto(&moto)
        .default_account()
        .redirecting_docker(&docker, &bpffs)
        .env("DEFAULT_ROLE", "role-d")
        .start()
        .await;
    let web = docker.run_detached(&["-e", "IAM_ROLE=role-a"]);
    let (ok, listing) = v1(&docker, &web, CREDS_PATH);
    assert!(ok && listing == "role-a", "the container itself: {listing}");

    // The redirect's cgroup (the dockerd's cgroup parent) holds both the containers and a
    // user's subtree: the user makes `docker-<id of web>.scope` in it and moves a process there.
    let parent = docker.cgroup_parent();
    for rel in [
        format!("user.slice/user-1000.slice/session-9.scope/docker-{web}.scope"),
        format!("user.slice/user-1000.slice/{web}"),
    ] {
        let look_alike = LookAlike::new(&parent, &rel);
        let (status, out) = look_alike.fetch(&format!("http://{METADATA_IP}{CREDS_PATH}"));
        assert_eq!(
            status,
            404,
            "a look-alike at {rel} was answered: {out}\n{}",
            daemon.logs()
        );
        let (status, out) = look_alike.fetch(&format!("http://{METADATA_IP}{CREDS_PATH}role-a"));
        assert_eq!(status, 404, "{rel}: {out}");
        let cgroup = format!("{parent}/{rel}");
        let needle = format!("cgroup=\"{cgroup}\"");
        let logs = daemon.wait_for_log(&needle).await;
        let line = logs
            .lines()
            .find(|l| l.contains(&needle))
            .unwrap_or_default();
        assert!(
            line.contains("look-alike")
                && line.contains(&format!("id=\"{web}\""))
                && line.contains("pid="),
            "the refusal names the cgroup, the container it imitates and the pid: {line}"
        );
    }
    // The real container, and a `docker exec` into it, still get their role.
    let (ok, body) = v2(&docker, &web, &format!("{CREDS_PATH}role-a"));
    assert!(ok, "{body}");
    assert_eq!(identity(&moto, &body).await, assumed("role-a"));
    let (ok, listing) = v1(&docker, &web, CREDS_PATH);
    assert!(ok && listing == "role-a", "docker exec: {listing}");
    let seen = metadata.standin.requests();
    assert!(
        seen.is_empty(),
        "the real IMDS stand-in was reached: {seen:?}"
    );
}

/// Issue 11, item 6: with the redirect attached, a caller that skips it (connects straight to the
/// daemon's address) is not identified by address unless `EBPF_DIRECT_CALLERS` names it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_network_container_skipping_the_redirect_is_refused_unless_named() {
    let Some(docker) = DockerD::start() else {
        return;
    };
    let metadata = MetadataAddress::start();
    let moto = Moto::start().await;
    for role in ["role-h", "role-d"] {
        moto.create_role(role, "/").await;
    }
    let host_net = docker.run_detached(&["--network", "host", "-e", "IAM_ROLE=role-h"]);
    let gateway = docker.gateway();
    for direct_callers in [None, Some(gateway.to_string())] {
        let bpffs = BpfFs::mount();
        let mut builder = Daemon::builder()
            .moto(&moto)
            .default_account()
            .redirecting_docker(&docker, &bpffs)
            .env("DEFAULT_ROLE", "role-d");
        if let Some(named) = &direct_callers {
            builder = builder.env("EBPF_DIRECT_CALLERS", named.clone());
        }
        let daemon = builder.start().await;
        // The container runs already: wait for the redirect and the index (the daemon listens
        // before it attaches the redirect).
        daemon
            .wait_for_logs(&["listening", "container index synchronised"])
            .await;
        let direct = format!("http://{gateway}:{}", daemon.addr().port());
        // Redirected: its own role, whatever the setting.
        let (ok, listing) = v1(&docker, &host_net, CREDS_PATH);
        assert!(
            ok && listing == "role-h",
            "redirected: {listing}\n{}",
            daemon.logs()
        );
        // Straight to the daemon's port, from the host's address.
        let (ok, out, err) = docker.exec(&host_net, &format!("wget -q -O - {direct}{CREDS_PATH}"));
        let (_, token, _) = docker.exec(
            &host_net,
            &format!(
                "(printf 'PUT /latest/api/token HTTP/1.1\\r\\nHost: x\\r\\nConnection: close\\r\\n\
                 X-aws-ec2-metadata-token-ttl-seconds: 60\\r\\n\\r\\n'; sleep 1) | nc {gateway} {} | head -1",
                daemon.addr().port()
            ),
        );
        if direct_callers.is_none() {
            assert!(
                !ok && err.contains("403"),
                "straight to the daemon: refused, not DEFAULT_ROLE: {out} {err}"
            );
            assert!(token.contains(" 403 "), "token: {token:?}");
            daemon
                .wait_for_log("did not come through the eBPF redirect")
                .await;
        } else {
            assert!(
                ok && out == "role-d",
                "named: identified by address: {out} {err}"
            );
            assert!(token.contains(" 200 "), "token: {token:?}");
        }
    }
    let seen = metadata.standin.requests();
    assert!(
        seen.is_empty(),
        "the real IMDS stand-in was reached: {seen:?}"
    );
}

/// A container's cgroup while Docker is unreachable: the daemon cannot vouch for the container
/// (nor read its role), so it refuses rather than hand out `DEFAULT_ROLE`, and says why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_container_is_refused_not_defaulted_while_docker_is_unreachable() {
    let Some(docker) = DockerD::start() else {
        return;
    };
    let metadata = MetadataAddress::start();
    let bpffs = BpfFs::mount();
    let moto = Moto::start().await;
    for role in ["role-a", "role-d"] {
        moto.create_role(role, "/").await;
    }
    let web = docker.run_detached(&["-e", "IAM_ROLE=role-a"]);
    let daemon = Daemon::builder()
        .moto(&moto)
        .default_account()
        .redirecting_docker(&docker, &bpffs)
        .env("DEFAULT_ROLE", "role-d")
        .env(
            "DOCKER_URL",
            "unix:///nonexistent-metadataproxy-test/docker.sock",
        )
        .start()
        .await;
    daemon
        .wait_for_logs(&["listening", "Docker is unreachable"])
        .await;
    let (ok, listing) = v1(&docker, &web, CREDS_PATH);
    assert!(
        !ok && listing.contains("404"),
        "a container Docker cannot vouch for got a role (DEFAULT_ROLE on main): {listing}\n{}",
        daemon.logs()
    );
    let logs = daemon
        .wait_for_log("events are not followed: no credentials until they are")
        .await;
    assert!(
        logs.contains(&web[..12]),
        "the refusal names the container: {logs}"
    );
    let seen = metadata.standin.requests();
    assert!(
        seen.is_empty(),
        "the real IMDS stand-in was reached: {seen:?}"
    );
}
