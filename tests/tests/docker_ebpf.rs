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
fn v1(docker: &DockerD, id: &str, path: &str) -> (bool, String) {
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
