//! `ECS_ENDPOINT`, the real thing: containers call `http://169.254.170.23/v1/credentials` (the
//! address SDKs accept for `AWS_CONTAINER_CREDENTIALS_FULL_URI`) with their
//! `AWS_CONTAINER_AUTHORIZATION_TOKEN`; the eBPF redirect brings them to the daemon, which knows
//! each by its cgroup and serves its own role only for its own token. 169.254.169.254 and
//! 169.254.170.23 are made local with stand-ins that must see no request.
//!
//! Needs root, a real dockerd, and the daemon built with the eBPF object.

use std::fmt::Write as _;
use std::io::Read as _;

use metadataproxy_tests::{
    ACCOUNT, BpfFs, Daemon, DockerD, ECS_IP, HOST_ACCESS_KEY_ID, METADATA_IP, MetadataAddress, Moto,
};

/// A port free on every address: the daemon listens on `0.0.0.0`, which a port free only on
/// 127.0.0.1 may not be (e.g. while a load test holds thousands of client ports on 127.0.0.x).
fn free_wildcard_port() -> u16 {
    std::net::TcpListener::bind("0.0.0.0:0")
        .and_then(|l| l.local_addr())
        .expect("bind 0.0.0.0:0")
        .port()
}

/// A fresh random token (hex of 16 bytes from the kernel).
fn random_token() -> String {
    let mut bytes = [0_u8; 16];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .expect("read /dev/urandom");
    bytes.iter().fold(String::new(), |mut hex, b| {
        let _ = write!(hex, "{b:02x}");
        hex
    })
}

/// `GET http://169.254.170.23/v1/credentials` from inside container `id` with `busybox wget`,
/// sending `auth` as the `Authorization` header: (ok, body or error).
fn ecs_get(docker: &DockerD, id: &str, auth: Option<&str>) -> (bool, String) {
    let header = auth.map_or_else(String::new, |a| format!("--header 'Authorization: {a}' "));
    let (ok, out, err) = docker.exec(
        id,
        &format!("wget -q -O - {header}http://{ECS_IP}/v1/credentials"),
    );
    assert!(
        !out.contains(HOST_ACCESS_KEY_ID),
        "host credentials reached container {id}: {out}"
    );
    (ok, if ok { out } else { err })
}

/// The assumed-role ARN moto reports for the credentials document `body`, and its `RoleArn`.
async fn identity(moto: &Moto, body: &str) -> (String, String) {
    let doc: serde_json::Value =
        serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"));
    let text = |k: &str| doc[k].as_str().unwrap_or_default().to_owned();
    let expiration = text("Expiration");
    humantime::parse_rfc3339(&expiration)
        .unwrap_or_else(|e| panic!("Expiration {expiration:?} is not RFC 3339: {e}"));
    let arn = moto
        .caller_identity_arn(
            &text("AccessKeyId"),
            &text("SecretAccessKey"),
            &text("Token"),
        )
        .await;
    (arn, text("RoleArn"))
}

fn assumed(role: &str) -> String {
    format!("arn:aws:sts::{ACCOUNT}:assumed-role/{role}/devproxyauth")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containers_get_their_own_role_for_their_own_token_only() {
    let Some(docker) = DockerD::start() else {
        return;
    };
    let addresses = MetadataAddress::start_with_ecs();
    let bpffs = BpfFs::mount();
    let moto = Moto::start().await;
    for role in ["role-a", "role-b"] {
        moto.create_role(role, "/").await;
    }
    let port = free_wildcard_port();
    let mut daemon = Daemon::builder()
        .moto(&moto)
        .default_account()
        .env("HOST", "0.0.0.0")
        .env("PORT", port.to_string())
        .env("DOCKER_URL", docker.url())
        .env("MOCK_API", "false")
        .env("METADATA_URL", format!("http://{METADATA_IP}"))
        .env("ECS_ENDPOINT", "true")
        .env("EBPF", "required")
        .env("EBPF_CGROUPS", docker.cgroup_parent())
        .env("EBPF_TARGET", format!("{}:{port}", docker.gateway()))
        .env("EBPF_TARGET6", "off")
        .env("EBPF_PIN_DIR", bpffs.pin_dir())
        .env("EBPF_ON_EXIT", "detach")
        .start()
        .await;

    let (token_a, token_b) = (random_token(), random_token());
    let a = docker.run_detached(&[
        "-e",
        "IAM_ROLE=role-a",
        "-e",
        &format!("AWS_CONTAINER_AUTHORIZATION_TOKEN={token_a}"),
    ]);
    let b = docker.run_detached(&[
        "-e",
        "IAM_ROLE=role-b",
        "-e",
        &format!("AWS_CONTAINER_AUTHORIZATION_TOKEN={token_b}"),
    ]);
    let no_token = docker.run_detached(&["-e", "IAM_ROLE=role-a"]);
    assert!(daemon.is_running(), "the daemon exited:\n{}", daemon.logs());

    for (id, token, role) in [(&a, &token_a, "role-a"), (&b, &token_b, "role-b")] {
        let (ok, body) = ecs_get(&docker, id, Some(token));
        assert!(ok, "{role}: {body}\n{}", daemon.logs());
        let (arn, role_arn) = identity(&moto, &body).await;
        assert_eq!(arn, assumed(role));
        assert_eq!(role_arn, format!("arn:aws:iam::{ACCOUNT}:role/{role}"));
    }
    for (id, auth, status, what) in [
        (&a, None, "401", "no Authorization header"),
        (&a, Some("not-the-token"), "403", "a wrong token"),
        (
            &b,
            Some(token_a.as_str()),
            "403",
            "another container's token",
        ),
        (
            &no_token,
            Some(token_a.as_str()),
            "403",
            "a container without a token",
        ),
    ] {
        let (ok, err) = ecs_get(&docker, id, auth);
        assert!(!ok && err.contains(status), "{what}: {err}");
    }

    // Every caller was known by its cgroup; the tokens never reached the log.
    let logs = daemon
        .wait_for_log("refused container-credentials request")
        .await;
    assert!(logs.contains("imds=\"ecs\""), "no audit line:\n{logs}");
    for token in [&token_a, &token_b] {
        assert!(
            !logs.contains(token.as_str()),
            "a token was logged:\n{logs}"
        );
    }
    assert!(
        !logs.contains("source=\"docker_ip\""),
        "a caller fell back to its address:\n{logs}"
    );
    let seen = addresses.standin.requests();
    assert!(
        seen.is_empty(),
        "the real IMDS stand-in was reached: {seen:?}"
    );
    let ecs_standin = addresses.ecs_standin.as_ref().expect("asked for");
    let seen = ecs_standin.requests();
    assert!(
        seen.is_empty(),
        "the 169.254.170.23 stand-in was reached: {seen:?}"
    );
}
