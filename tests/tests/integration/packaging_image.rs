//! `deploy/docker/Dockerfile` for real: the image is built by a real dockerd (from a local base
//! holding the binary's shared libraries, since no registry is reachable) and run the way
//! docs/DEPLOY.md says — host network and PIDs, the three capabilities, bpffs, cgroups and the
//! Docker socket mounted. A busybox container on the same dockerd then calls 169.254.169.254 and
//! gets its own role through the containerised daemon's eBPF redirect; the stand-in "real IMDS"
//! sees nothing.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use metadataproxy_tests::{
    ACCOUNT, BpfFs, CREDS_PATH, DockerD, HOST_ACCESS_KEY_ID, METADATA_IP, MetadataAddress, Moto,
    free_port, required_path,
};

const IMAGE_TAG: &str = "metadataproxy:packaging-test";
const BASE_TAG: &str = "metadataproxy-base:packaging-test";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("repository root")
        .to_owned()
}

/// The shared libraries `ldd` lists for `bin`, with the loader.
fn shared_libraries(bin: &Path) -> Vec<PathBuf> {
    let out = Command::new("ldd").arg(bin).output().expect("ldd");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            l.split_whitespace()
                .find(|w| w.starts_with('/'))
                .map(PathBuf::from)
        })
        .collect()
}

/// A base image with what distroless/cc offers the binary: its libraries and CA certificates.
fn import_base(docker: &DockerD, bin: &Path) {
    let root = tempfile::tempdir().expect("rootfs");
    let mut files = shared_libraries(bin);
    assert!(
        files.iter().any(|f| f.ends_with("libc.so.6")),
        "ldd found no libc: {files:?}"
    );
    files.push(PathBuf::from("/etc/ssl/certs/ca-certificates.crt"));
    for file in files.iter().filter(|f| f.exists()) {
        let target = root.path().join(file.strip_prefix("/").expect("absolute"));
        std::fs::create_dir_all(target.parent().expect("parent")).expect("mkdir");
        std::fs::copy(file, &target).unwrap_or_else(|e| panic!("copy {}: {e}", file.display()));
    }
    let mut tar = Command::new("tar")
        .arg("-C")
        .arg(root.path())
        .args(["-c", "."])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("tar");
    let mut import = docker.command(&["import", "-", BASE_TAG]);
    import.stdin(tar.stdout.take().expect("tar stdout"));
    let out = import.output().expect("docker import");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(tar.wait().expect("tar").success());
}

/// `docker build` of the shipped Dockerfile, from a context holding only the binary.
fn build_image(docker: &DockerD, bin: &Path) {
    let context = tempfile::tempdir().expect("context");
    std::fs::copy(bin, context.path().join("metadataproxy")).expect("copy binary");
    let dockerfile = repo().join("deploy/docker/Dockerfile");
    let out = docker
        .command(&[
            "build",
            "--build-arg",
            &format!("BASE={BASE_TAG}"),
            "-t",
            IMAGE_TAG,
            "-f",
        ])
        .arg(&dockerfile)
        .arg(context.path())
        // The classic builder: BuildKit would want its own frontend image from a registry.
        .env("DOCKER_BUILDKIT", "0")
        .output()
        .expect("docker build");
    assert!(
        out.status.success(),
        "docker build failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `docker run -d` of the image with the documented flags and `caps`; the command's output.
fn run_with(
    docker: &DockerD,
    caps: &[&str],
    mounts: &[String],
    envs: &[(&str, String)],
) -> std::process::Output {
    let mut args: Vec<String> = ["run", "-d", "--network", "host", "--pid", "host"]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
    for cap in caps {
        args.extend(["--cap-add".to_owned(), (*cap).to_owned()]);
    }
    args.extend(
        ["--user", "0", "--security-opt", "apparmor=unconfined"]
            .iter()
            .map(|s| (*s).to_owned()),
    );
    for mount in mounts {
        args.extend(["-v".to_owned(), mount.clone()]);
    }
    for (k, v) in envs {
        args.extend(["-e".to_owned(), format!("{k}={v}")]);
    }
    args.push(IMAGE_TAG.to_owned());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    docker.cli(&args)
}

/// Runs the daemon's container as documented: the three capabilities, or `SYS_ADMIN` in place of
/// `BPF` and `PERFMON` on a Docker that does not know them (Debian 12's 20.10). Its id.
fn run_daemon(docker: &DockerD, mounts: &[String], envs: &[(&str, String)]) -> String {
    let mut out = run_with(docker, &["BPF", "PERFMON", "NET_ADMIN"], mounts, envs);
    if String::from_utf8_lossy(&out.stderr).contains("unknown capability") {
        eprintln!(
            "this dockerd does not know CAP_BPF/CAP_PERFMON ({}): running with SYS_ADMIN + \
             NET_ADMIN, the Dockerfile's documented alternative",
            String::from_utf8_lossy(&out.stderr).trim()
        );
        out = run_with(docker, &["SYS_ADMIN", "NET_ADMIN"], mounts, envs);
    }
    assert!(
        out.status.success(),
        "docker run failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// Waits until the containerised daemon has attached the redirect and listens; its logs.
fn wait_up(docker: &DockerD, daemon: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let out = docker.cli(&["logs", daemon]);
        let logs = String::from_utf8_lossy(&out.stderr).into_owned();
        if logs.contains("listening") && logs.contains("attached") {
            return logs;
        }
        let running = docker.must(&["inspect", "-f", "{{.State.Running}}", daemon]);
        assert!(
            running == "true" && Instant::now() < deadline,
            "the containerised daemon did not come up (running: {running}):\n{logs}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_image_run_as_documented_serves_containers_their_roles_through_the_redirect() {
    let Some(docker) = DockerD::start() else {
        return;
    };
    let bin = required_path("METADATAPROXY_BIN");
    import_base(&docker, &bin);
    build_image(&docker, &bin);

    let metadata = MetadataAddress::start();
    let bpffs = BpfFs::mount();
    let moto = Moto::start().await;
    moto.create_role("role-a", "/").await;
    let port = free_port();
    let sock = docker.url();
    let sock = sock.strip_prefix("unix://").expect("unix socket");
    let bpf_root = bpffs.pin_dir();
    let bpf_root = Path::new(&bpf_root).parent().expect("bpffs root");
    let envs = [
        ("HOST", "0.0.0.0".to_owned()),
        ("PORT", port.to_string()),
        ("EBPF_CGROUPS", docker.cgroup_parent()),
        ("EBPF_ON_EXIT", "detach".to_owned()),
        ("METADATA_URL", format!("http://{METADATA_IP}")),
        ("DEFAULT_ACCOUNT_ID", ACCOUNT.to_owned()),
        ("AWS_ACCESS_KEY_ID", "testing".to_owned()),
        ("AWS_SECRET_ACCESS_KEY", "testing".to_owned()),
        ("AWS_REGION", "us-east-1".to_owned()),
        ("AWS_ENDPOINT_URL_STS", moto.endpoint()),
        ("AWS_ENDPOINT_URL_IAM", moto.endpoint()),
        ("AWS_EC2_METADATA_DISABLED", "true".to_owned()),
    ];
    let mounts = [
        format!("{}:/sys/fs/bpf", bpf_root.display()),
        "/sys/fs/cgroup:/sys/fs/cgroup:ro".to_owned(),
        format!("{sock}:/var/run/docker.sock"),
    ];
    let daemon = run_daemon(&docker, &mounts, &envs);
    let logs = wait_up(&docker, &daemon);

    let caller = docker.run_detached(&["-e", "IAM_ROLE=role-a"]);
    let url = format!("http://{METADATA_IP}{CREDS_PATH}");
    let mut listed = String::new();
    for _ in 0..50 {
        let (ok, out, _) = docker.exec(&caller, &format!("wget -q -O - {url}"));
        if ok && out == "role-a" {
            listed = out;
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(listed, "role-a", "daemon logs:\n{logs}");
    let (ok, body, err) = docker.exec(&caller, &format!("wget -q -O - {url}role-a"));
    assert!(ok, "{err}");
    assert!(
        !body.contains(HOST_ACCESS_KEY_ID),
        "host credentials: {body}"
    );
    let doc: serde_json::Value = serde_json::from_str(&body).expect("credentials JSON");
    let text = |k: &str| doc[k].as_str().unwrap_or_default().to_owned();
    let arn = moto
        .caller_identity_arn(
            &text("AccessKeyId"),
            &text("SecretAccessKey"),
            &text("Token"),
        )
        .await;
    assert_eq!(
        arn,
        format!("arn:aws:sts::{ACCOUNT}:assumed-role/role-a/devproxyauth")
    );
    docker.must(&["rm", "-f", &caller]);
    docker.must(&["stop", "-t", "10", &daemon]);
    assert_eq!(
        metadata.standin.requests().len(),
        0,
        "a caller reached the real IMDS"
    );
}
