//! `ECS_ENDPOINT`, the real thing: containers call `http://169.254.170.23/v1/credentials` (the
//! address SDKs accept for `AWS_CONTAINER_CREDENTIALS_FULL_URI`) with their
//! `AWS_CONTAINER_AUTHORIZATION_TOKEN`; the eBPF redirect brings them to the daemon, which knows
//! each by its cgroup and serves its own role only for its own token. The same over IPv6 at
//! `http://[fd00:ec2::23]/v1/credentials`. 169.254.169.254, 169.254.170.23 and `fd00:ec2::23` are
//! made local with stand-ins that must see no request.
//!
//! Needs root, a real dockerd, and the daemon built with the eBPF object.

use std::fmt::Write as _;
use std::io::Read as _;

use metadataproxy_tests::{
    ACCOUNT, BpfFs, Daemon, DaemonBuilder, DockerD, ECS_IP, ECS_IP6, HOST_ACCESS_KEY_ID,
    METADATA_IP, MetadataAddress, Moto, path_var, required_path,
};

/// The SDKs' variable holding the token itself.
const TOKEN_VAR: &str = "AWS_CONTAINER_AUTHORIZATION_TOKEN";
/// The SDKs' variable naming a file holding it.
const TOKEN_FILE_VAR: &str = "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE";

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

/// `http://169.254.170.23/v1/credentials`.
fn ecs_uri() -> String {
    format!("http://{ECS_IP}/v1/credentials")
}

/// `http://[fd00:ec2::23]/v1/credentials`.
fn ecs6_uri() -> String {
    format!("http://[{ECS_IP6}]/v1/credentials")
}

/// `GET http://169.254.170.23/v1/credentials` from inside container `id` with `busybox wget`,
/// sending `auth` as the `Authorization` header: (ok, body or error).
fn ecs_get(docker: &DockerD, id: &str, auth: Option<&str>) -> (bool, String) {
    ecs_get_at(docker, id, &ecs_uri(), auth)
}

/// [`ecs_get`] at `uri`.
fn ecs_get_at(docker: &DockerD, id: &str, uri: &str, auth: Option<&str>) -> (bool, String) {
    let header = auth.map_or_else(String::new, |a| format!("--header 'Authorization: {a}' "));
    let (ok, out, err) = docker.exec(id, &format!("wget -q -O - {header}'{uri}'"));
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

/// What the Python script prints: the provider botocore used and who STS says it is.
const BOTOCORE_SCRIPT: &str = r#"
import json, os, botocore.session
session = botocore.session.get_session()
creds = session.get_credentials()
if creds is None:
    raise SystemExit("botocore found no credentials")
sts = session.create_client("sts", region_name="us-east-1", endpoint_url=os.environ["MOTO_URL"])
print(json.dumps({"method": creds.method, "arn": sts.get_caller_identity()["Arn"]}))
"#;

/// The cgroup v2 directory of container `id` (from its main process's `/proc/<pid>/cgroup`).
fn container_cgroup_dir(docker: &DockerD, id: &str) -> std::path::PathBuf {
    let pid = docker.must(&["inspect", "-f", "{{.State.Pid}}", id]);
    let cgroups = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).expect("its cgroups");
    let path = cgroups
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .unwrap_or_else(|| panic!("no cgroup v2 line for {id}: {cgroups}"));
    let mounts = std::fs::read_to_string("/proc/mounts").expect("/proc/mounts");
    let mount = mounts
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|f| f.get(2) == Some(&"cgroup2"))
        .and_then(|f| f.get(1).map(|m| (*m).to_owned()))
        .expect("a cgroup2 mount");
    std::path::PathBuf::from(format!("{mount}{path}"))
}

/// botocore's container-credentials provider, run in container `id`'s cgroup (so the redirect
/// and the daemon know it as that container) with the SDK's two variables, the URI being `uri`
/// and the token given by `auth`, a variable and its value: (ok, output).
async fn botocore_in_container(
    docker: &DockerD,
    id: &str,
    uri: &str,
    auth: (&str, &str),
    moto: &Moto,
) -> (bool, String) {
    let python = required_path("METADATAPROXY_VENV")
        .join("bin")
        .join("python");
    let procs = container_cgroup_dir(docker, id).join("cgroup.procs");
    let out = tokio::process::Command::new("sh")
        .args([
            "-c",
            r#"echo $$ > "$1" && exec "$2" -c "$3""#,
            "sh",
            &procs.display().to_string(),
            &python.display().to_string(),
            BOTOCORE_SCRIPT,
        ])
        .env_clear()
        .env("PATH", path_var())
        .env("AWS_CONFIG_FILE", "/dev/null")
        .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("AWS_CONTAINER_CREDENTIALS_FULL_URI", uri)
        .env(auth.0, auth.1)
        .env("MOTO_URL", moto.endpoint())
        .output()
        .await
        .expect("run botocore");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// botocore in container `id`'s cgroup at `uri`: with `own` token it gets `role`'s credentials
/// from the container provider; with `other` (another container's token) it gets none.
async fn botocore_gets_only_its_own(
    (docker, moto, daemon): (&DockerD, &Moto, &Daemon),
    id: &str,
    uri: &str,
    (own, other): (&str, &str),
    role: &str,
) {
    let (ok, out) = botocore_in_container(docker, id, uri, (TOKEN_VAR, own), moto).await;
    assert!(ok, "botocore at {uri}: {out}\n{}", daemon.logs());
    let got: serde_json::Value = serde_json::from_str(out.trim())
        .unwrap_or_else(|e| panic!("botocore printed {out:?}: {e}"));
    assert_eq!(got["method"], "container-role", "{got}");
    assert_eq!(got["arn"], assumed(role), "{got}");
    let (ok, out) = botocore_in_container(docker, id, uri, (TOKEN_VAR, other), moto).await;
    assert!(
        !ok,
        "botocore at {uri} got credentials with another container's token: {out}"
    );
}

fn assumed(role: &str) -> String {
    format!("arn:aws:sts::{ACCOUNT}:assumed-role/{role}/devproxyauth")
}

/// The daemon with `ECS_ENDPOINT=ecs` and the redirect attached to `docker`'s containers.
fn daemon(docker: &DockerD, bpffs: &BpfFs, moto: &Moto, ecs: bool) -> DaemonBuilder {
    Daemon::builder()
        .moto(moto)
        .default_account()
        .redirecting_docker(docker, bpffs)
        .env("ECS_ENDPOINT", ecs.to_string())
}

/// [`daemon`], started.
async fn start_daemon(docker: &DockerD, bpffs: &BpfFs, moto: &Moto, ecs: bool) -> Daemon {
    daemon(docker, bpffs, moto, ecs).start().await
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
    let mut daemon = start_daemon(&docker, &bpffs, &moto, true).await;

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

    // A real SDK: botocore's container provider, in container a's cgroup, with a's token and
    // then with b's.
    botocore_gets_only_its_own(
        (&docker, &moto, &daemon),
        &a,
        &ecs_uri(),
        (&token_a, &token_b),
        "role-a",
    )
    .await;

    // Every caller was known by its cgroup; the tokens never reached the log.
    let logs = daemon
        .wait_for_logs(&["refused container-credentials request", "imds=\"ecs\""])
        .await;
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

/// With the setting off, nothing changes: 169.254.170.23 is not redirected (the stand-in gets the
/// request, which on a real host would go to whatever owns that address), and the daemon's
/// `/v1/credentials` is a 404 even with the right token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_setting_169_254_170_23_is_left_alone() {
    let Some(docker) = DockerD::start() else {
        return;
    };
    let addresses = MetadataAddress::start_with_ecs();
    let bpffs = BpfFs::mount();
    let moto = Moto::start().await;
    moto.create_role("role-a", "/").await;
    let mut daemon = start_daemon(&docker, &bpffs, &moto, false).await;
    let token = random_token();
    let a = docker.run_detached(&[
        "-e",
        "IAM_ROLE=role-a",
        "-e",
        &format!("AWS_CONTAINER_AUTHORIZATION_TOKEN={token}"),
    ]);
    assert!(daemon.is_running(), "the daemon exited:\n{}", daemon.logs());

    let _ = ecs_get(&docker, &a, Some(&token));
    let ecs_standin = addresses.ecs_standin.as_ref().expect("asked for");
    let seen = ecs_standin.requests();
    assert!(
        seen.iter().any(|r| r.target == "/v1/credentials"),
        "the 169.254.170.23 stand-in saw {seen:?}"
    );
    // 169.254.169.254 is still redirected, and the daemon does not serve the route.
    let (ok, _, err) = docker.exec(
        &a,
        &format!(
            "wget -q -O - --header 'Authorization: {token}' http://{METADATA_IP}/v1/credentials"
        ),
    );
    assert!(!ok && err.contains("404"), "{err}");
    let seen = addresses.standin.requests();
    assert!(
        seen.is_empty(),
        "the real IMDS stand-in was reached: {seen:?}"
    );
}

/// IPv6, as SDKs on IPv6-only hosts (EKS Pod Identity) call it: `http://[fd00:ec2::23]/v1/credentials`
/// is redirected by connect6 to the daemon's `EBPF_TARGET6` (its default, the IPv4-mapped
/// `[::ffff:169.254.170.45]:PORT`, reached over IPv4 from any network namespace), which knows the
/// caller by its cgroup as over IPv4. The callers: busybox `wget` in a host-network container,
/// and botocore's container provider in a bridge-network container's cgroup. `fd00:ec2::23` is made local with a stand-in that must see
/// nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ipv6_callers_at_fd00_ec2_23_get_their_own_role_for_their_own_token_only() {
    let Some(docker) = DockerD::start() else {
        return;
    };
    let Some(addresses) = MetadataAddress::start_with_ecs6() else {
        return;
    };
    let bpffs = BpfFs::mount();
    let moto = Moto::start().await;
    for role in ["role-a", "role-b"] {
        moto.create_role(role, "/").await;
    }
    // EBPF_TARGET6 at its default.
    let mut daemon = daemon(&docker, &bpffs, &moto, true).start().await;
    let (token_a, token_b) = (random_token(), random_token());
    let host_net = docker.run_detached(&[
        "--network",
        "host",
        "-e",
        "IAM_ROLE=role-a",
        "-e",
        &format!("AWS_CONTAINER_AUTHORIZATION_TOKEN={token_a}"),
    ]);
    let bridged = docker.run_detached(&[
        "-e",
        "IAM_ROLE=role-b",
        "-e",
        &format!("AWS_CONTAINER_AUTHORIZATION_TOKEN={token_b}"),
    ]);
    assert!(daemon.is_running(), "the daemon exited:\n{}", daemon.logs());

    let (ok, body) = ecs_get_at(&docker, &host_net, &ecs6_uri(), Some(&token_a));
    let ecs6_standin = addresses.ecs6_standin.as_ref().expect("asked for");
    let seen = ecs6_standin.requests();
    assert!(
        seen.is_empty(),
        "not redirected: the fd00:ec2::23 stand-in saw {seen:?}"
    );
    assert!(ok, "over IPv6: {body}\n{}", daemon.logs());
    let (arn, role_arn) = identity(&moto, &body).await;
    assert_eq!(arn, assumed("role-a"));
    assert_eq!(role_arn, format!("arn:aws:iam::{ACCOUNT}:role/role-a"));
    for (auth, status, what) in [
        (None, "401", "no Authorization header"),
        (Some(token_b.as_str()), "403", "another container's token"),
    ] {
        let (ok, err) = ecs_get_at(&docker, &host_net, &ecs6_uri(), auth);
        assert!(!ok && err.contains(status), "{what} over IPv6: {err}");
    }

    botocore_gets_only_its_own(
        (&docker, &moto, &daemon),
        &bridged,
        &ecs6_uri(),
        (&token_b, &token_a),
        "role-b",
    )
    .await;

    let logs = daemon
        .wait_for_logs(&["refused container-credentials request", "imds=\"ecs\""])
        .await;
    assert!(
        logs.contains("source=\"docker_cgroup\""),
        "no caller known by its cgroup:\n{logs}"
    );
    assert!(
        !logs.contains("source=\"docker_ip\""),
        "a caller fell back to its address:\n{logs}"
    );
    for token in [&token_a, &token_b] {
        assert!(
            !logs.contains(token.as_str()),
            "a token was logged:\n{logs}"
        );
    }
    let seen = ecs6_standin.requests();
    assert!(
        seen.is_empty(),
        "the fd00:ec2::23 stand-in was reached: {seen:?}"
    );
    let seen = addresses.standin.requests();
    assert!(
        seen.is_empty(),
        "the real IMDS stand-in was reached: {seen:?}"
    );
}

/// [`botocore_in_container`] with `AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE=token_file`: the ARN STS
/// knows it by, or the output.
async fn botocore_with_token_file(
    docker: &DockerD,
    id: &str,
    token_file: &str,
    moto: &Moto,
) -> Result<String, String> {
    let (ok, out) =
        botocore_in_container(docker, id, &ecs_uri(), (TOKEN_FILE_VAR, token_file), moto).await;
    if !ok {
        return Err(out);
    }
    let got: serde_json::Value = serde_json::from_str(out.trim())
        .unwrap_or_else(|e| panic!("botocore printed {out:?}: {e}"));
    assert_eq!(got["method"], "container-role", "{got}");
    Ok(got["arn"].as_str().unwrap_or_default().to_owned())
}

/// `AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE`: the daemon reads the caller's container's token file
/// through the container's root, sees it rotated at once, and refuses (with the reason in its log)
/// a container whose file is missing or is a symlink to a host file. The SDK is botocore's
/// container provider, in the container's cgroup, reading the same file by its host path (the
/// container has it from a bind mount).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_token_file_is_read_in_the_callers_container_and_may_rotate() {
    let Some(docker) = DockerD::start() else {
        return;
    };
    let addresses = MetadataAddress::start_with_ecs();
    let bpffs = BpfFs::mount();
    let moto = Moto::start().await;
    for role in ["role-a", "role-b"] {
        moto.create_role(role, "/").await;
    }
    let mut daemon = start_daemon(&docker, &bpffs, &moto, true).await;
    let dir = tempfile::tempdir().expect("token dir");
    let host_file = dir.path().join("token");
    let host_path = host_file.display().to_string();
    let (token_1, token_2) = (random_token(), random_token());
    std::fs::write(&host_file, &token_1).expect("write the token file");
    let a = docker.run_detached(&[
        "-e",
        "IAM_ROLE=role-a",
        "-e",
        &format!("{TOKEN_FILE_VAR}=/run/mp/token"),
        "-v",
        &format!("{}:/run/mp:ro", dir.path().display()),
    ]);
    // b's file is a symlink to the host path of a's file (which b's root does not have), c's
    // file does not exist.
    let b = docker.run_detached(&[
        "-e",
        "IAM_ROLE=role-b",
        "-e",
        &format!("{TOKEN_FILE_VAR}=/tmp/link"),
    ]);
    let (ok, _, err) = docker.exec(&b, &format!("ln -s '{host_path}' /tmp/link"));
    assert!(ok, "ln -s in b: {err}");
    let c = docker.run_detached(&[
        "-e",
        "IAM_ROLE=role-b",
        "-e",
        &format!("{TOKEN_FILE_VAR}=/run/no-such-token"),
    ]);
    assert!(daemon.is_running(), "the daemon exited:\n{}", daemon.logs());

    let sdk = botocore_with_token_file(&docker, &a, &host_path, &moto).await;
    assert_eq!(sdk, Ok(assumed("role-a")), "{}", daemon.logs());
    let (ok, body) = ecs_get(&docker, &a, Some(&token_1));
    assert!(ok, "wget with the file's token: {body}");
    assert_eq!(identity(&moto, &body).await.0, assumed("role-a"));

    // Rotation as Kubernetes does it: a new file renamed over the old one. The next request
    // needs the new token; the old one is refused.
    std::fs::write(dir.path().join(".token.new"), format!("{token_2}\n")).expect("new token");
    std::fs::rename(dir.path().join(".token.new"), &host_file).expect("rotate");
    let (ok, err) = ecs_get(&docker, &a, Some(&token_1));
    assert!(
        !ok && err.contains("403"),
        "the old token after rotation: {err}"
    );
    let (ok, body) = ecs_get(&docker, &a, Some(&token_2));
    assert!(
        ok,
        "the new token after rotation: {body}\n{}",
        daemon.logs()
    );
    // botocore sends the file as it is, so without the line break.
    std::fs::write(&host_file, &token_2).expect("token without a line break");
    let sdk = botocore_with_token_file(&docker, &a, &host_path, &moto).await;
    assert_eq!(
        sdk,
        Ok(assumed("role-a")),
        "after rotation: {}",
        daemon.logs()
    );

    // Fail closed: a symlink out of the container's root, a missing file.
    for (id, what) in [(&b, "a symlink to a host file"), (&c, "a missing file")] {
        let (ok, err) = ecs_get(&docker, id, Some(&token_2));
        assert!(!ok && err.contains("403"), "{what}: {err}");
    }
    let logs = daemon.wait_for_log("token_file=/run/no-such-token").await;
    for (path, what) in [
        ("/tmp/link", "the symlink"),
        ("/run/no-such-token", "the missing file"),
    ] {
        assert!(
            logs.lines().any(|l| l
                .contains("cannot read the caller's AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE")
                && l.contains(&format!("token_file={path}"))
                && l.contains("No such file or directory")),
            "no precise log line for {what}:\n{logs}"
        );
    }
    for token in [&token_1, &token_2] {
        assert!(
            !logs.contains(token.as_str()),
            "a token was logged:\n{logs}"
        );
    }
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
