//! The real thing with containerd: containers run by a real containerd (`ctr run`) and a container
//! of a Kubernetes-shaped pod (its sandbox made through containerd's API, as the CRI plugin makes
//! it) call `http://169.254.169.254/…`; the eBPF redirect brings them to the daemon, which knows
//! each by its cgroup and serves its own role: its `IAM_ROLE`, else its pod's annotation
//! `iam.amazonaws.com/role`. A container naming no role gets 404; one whose task exits is
//! forgotten. 169.254.169.254 is made local with a stand-in "real IMDS" that must see nothing.
//!
//! Needs root, containerd and runc (with `docker.io`), and the daemon built with the eBPF object.

use metadataproxy_tests::{
    ACCOUNT, BpfFs, CREDS_PATH, ContainerdD, Daemon, DaemonBuilder, ExecResult, HOST_ACCESS_KEY_ID,
    ImdsCredentials, METADATA_IP, MetadataAddress, Moto, free_port,
};

/// IMDSv1 from inside container `id`: (ok, body or error).
fn v1(ctd: &ContainerdD, ns: &str, id: &str, path: &str) -> (bool, String) {
    let (ok, out, err): ExecResult =
        ctd.exec(ns, id, &format!("wget -q -O - http://{METADATA_IP}{path}"));
    assert!(
        !out.contains(HOST_ACCESS_KEY_ID),
        "host credentials reached container {ns}/{id}: {out}"
    );
    (ok, if ok { out } else { err })
}

/// IMDSv2 from inside container `id`: a token by PUT (busybox `nc`), then GET with it.
fn v2(ctd: &ContainerdD, ns: &str, id: &str, path: &str) -> (bool, String) {
    let (ok, out, err) = ctd.exec(ns, id, &v2_script(path));
    assert!(
        !out.contains(HOST_ACCESS_KEY_ID),
        "host credentials reached container {ns}/{id}: {out}"
    );
    (ok, if ok { out } else { err })
}

/// The busybox shell script of an IMDSv2 GET of `path`: a token by PUT (`nc`), then GET with it.
pub(crate) fn v2_script(path: &str) -> String {
    format!(
        "T=$( (printf 'PUT /latest/api/token HTTP/1.1\\r\\nHost: x\\r\\nConnection: close\\r\\n\
         X-aws-ec2-metadata-token-ttl-seconds: 60\\r\\n\\r\\n'; sleep 1) | nc {METADATA_IP} 80 \
         | sed '1,/^\\r$/d'); test -n \"$T\" || exit 7; \
         wget -q -O - --header \"X-aws-ec2-metadata-token: $T\" http://{METADATA_IP}{path}"
    )
}

/// The assumed-role ARN moto reports for the credentials document `body`.
pub(crate) async fn identity(moto: &Moto, body: &str) -> String {
    let creds: ImdsCredentials =
        serde_json::from_str(body).unwrap_or_else(|e| panic!("not credentials ({e}): {body}"));
    moto.caller_identity_arn(&creds.access_key_id, &creds.secret_access_key, &creds.token)
        .await
}

pub(crate) fn assumed(role: &str) -> String {
    format!("arn:aws:sts::{ACCOUNT}:assumed-role/{role}/devproxyauth")
}

/// A 64-hex id like the CRI plugin's, unique to this run.
fn cri_id(tag: char) -> String {
    let pid = format!("{:08x}", std::process::id());
    format!("{pid}{}", tag.to_string().repeat(56))
}

/// The daemon with the eBPF redirect on this test's cgroups and containerd followed.
pub(crate) fn daemon(ctd: &ContainerdD, moto: &Moto, bpffs: &BpfFs) -> DaemonBuilder {
    let port = free_port();
    Daemon::builder()
        .moto(moto)
        .default_account()
        .env("PORT", port.to_string())
        .env("DOCKER_URL", "unix:///nonexistent/docker.sock")
        .env("MOCK_API", "false")
        .env("METADATA_URL", format!("http://{METADATA_IP}"))
        .env("EBPF", "required")
        .env("EBPF_CGROUPS", ctd.cgroup_parent())
        // Only this test's containers live below EBPF_CGROUPS, some at paths no runtime would
        // choose (`/<parent>/web-<pid>`): redirect them all. Which host cgroups the default
        // (`false`) leaves alone is the unit tests' business.
        .env("EBPF_REDIRECT_HOST", "true")
        .env("EBPF_PIN_DIR", bpffs.pin_dir())
        .env("EBPF_ON_EXIT", "detach")
        .env("CONTAINERD", "on")
        .env("CONTAINERD_ADDRESS", ctd.address().display().to_string())
}

/// Waits (up to 10 s) until moto has answered an AssumeRole for each of `roles`.
pub(crate) async fn prefetched(moto: &Moto, roles: &[&str]) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let arns: Vec<String> = moto
            .assumed_roles()
            .await
            .into_iter()
            .map(|r| r.role_arn)
            .collect();
        let missing: Vec<&&str> = roles
            .iter()
            .filter(|r| !arns.iter().any(|a| a.ends_with(&format!(":role/{r}"))))
            .collect();
        if missing.is_empty() {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "roles never prefetched: {missing:?} (assumed: {arns:?})"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// Containers `ctr` runs (containerd's `default` namespace, no Kubernetes): each gets its own
/// `IAM_ROLE`, assumed once when it starts; one naming no role gets nothing; one whose task exits
/// is forgotten at once. (Kubernetes pods are made by the real CRI plugin in `containerd_cri`.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containerd_containers_get_their_own_roles() {
    let Some(mut ctd) = ContainerdD::start() else {
        return;
    };
    let metadata = MetadataAddress::start();
    let bpffs = BpfFs::mount();
    let moto = Moto::start().await;
    moto.create_role("ctd-web", "/").await;
    let mut daemon = daemon(&ctd, &moto, &bpffs).start().await;
    daemon
        .wait_for_log("containerd reachable; container index synchronised")
        .await;

    let pid = std::process::id();
    let web = format!("web-{pid}");
    let plain = format!("plain-{pid}");
    ctd.run("default", &web, &web, &["--env", "IAM_ROLE=ctd-web"]);
    ctd.run("default", &plain, &plain, &[]);
    assert!(daemon.is_running(), "the daemon exited:\n{}", daemon.logs());
    // The container's role is assumed when it starts, before it asks.
    prefetched(&moto, &["ctd-web"]).await;

    let (ok, listing) = v1(&ctd, "default", &web, CREDS_PATH);
    assert!(
        ok && listing == "ctd-web",
        "ctr container with IAM_ROLE: listing {listing:?}\n{}",
        daemon.logs()
    );
    let (ok, body) = v1(&ctd, "default", &web, &format!("{CREDS_PATH}ctd-web"));
    assert!(ok, "ctr container: {body}");
    assert_eq!(identity(&moto, &body).await, assumed("ctd-web"));
    let (ok, body) = v2(&ctd, "default", &web, &format!("{CREDS_PATH}ctd-web"));
    assert!(ok, "ctr container, IMDSv2: {body}");
    assert_eq!(identity(&moto, &body).await, assumed("ctd-web"));

    let (ok, err) = v1(&ctd, "default", &plain, CREDS_PATH);
    assert!(!ok && err.contains("404"), "no role: {err}");

    // The audit line names the container the credentials went to.
    let logs = daemon
        .wait_for_logs(&["source=\"containerd_cgroup\"", "credentials served"])
        .await;
    assert!(
        logs.lines().any(|l| l.contains("credentials served")
            && l.contains(&format!("container_name=\"default/{web}\""))),
        "no audit line naming the container:\n{logs}"
    );

    // Every request was served from the credentials fetched at start.
    let arns: Vec<String> = moto
        .assumed_roles()
        .await
        .into_iter()
        .map(|r| r.role_arn)
        .collect();
    let n = arns.iter().filter(|a| a.ends_with(":role/ctd-web")).count();
    assert_eq!(n, 1, "AssumeRole calls for ctd-web: {arns:?}");

    // A container whose task exits is forgotten at once.
    ctd.kill("default", &web);
    daemon
        .wait_for_log(&format!("container left the index container=default/{web}"))
        .await;

    let seen = metadata.standin.requests();
    assert!(
        seen.is_empty(),
        "the real IMDS stand-in was reached: {seen:?}"
    );
}

/// The daemon's log once it shows `needle`, waiting up to `secs` (reconnections back off).
async fn log_within(daemon: &Daemon, needle: &str, secs: u64) -> String {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    loop {
        let logs = daemon.logs();
        if logs.contains(needle) {
            return logs;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the daemon's log never showed {needle:?} in {secs} s:\n{logs}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_containerd_fails_closed_and_is_followed_once_back() {
    let Some(mut ctd) = ContainerdD::start() else {
        return;
    };
    let metadata = MetadataAddress::start();
    let bpffs = BpfFs::mount();
    let moto = Moto::start().await;
    for role in ["ctd-back", "fallback"] {
        moto.create_role(role, "/").await;
    }
    // A Kubernetes-shaped cgroup: recognisably containerd's even while containerd is away.
    let id = cri_id('c');
    let rel = format!("kubepods/burstable/pod0a1b/{id}");
    ctd.run("k8s.io", &id, &rel, &["--env", "IAM_ROLE=ctd-back"]);
    // containerd goes away; its container keeps running under its shim.
    ctd.stop_daemon();
    let daemon = daemon(&ctd, &moto, &bpffs)
        .env("DEFAULT_ROLE", "fallback")
        .start()
        .await;
    let logs = daemon.wait_for_log("containerd is unreachable").await;
    assert!(
        logs.contains(&ctd.address().display().to_string()),
        "the error names the socket:\n{logs}"
    );

    let call = format!("/bin/busybox wget -q -O - http://{METADATA_IP}{CREDS_PATH}");
    let (ok, out, err) = ctd.exec_in_cgroup(&rel, &call);
    assert!(
        !ok && err.contains("404"),
        "a containerd container nobody can vouch for gets nothing, not DEFAULT_ROLE: {out}{err}"
    );
    daemon
        .wait_for_log(
            "caller's cgroup is a containerd container's, and containerd is not reachable",
        )
        .await;

    ctd.restart_daemon();
    log_within(
        &daemon,
        "containerd reachable again; container index synchronised",
        20,
    )
    .await;
    let (ok, out, err) = ctd.exec_in_cgroup(&rel, &call);
    assert!(
        ok && out == "ctd-back",
        "once containerd is back: {out}{err}"
    );
    let (ok, body, err) = ctd.exec_in_cgroup(&rel, &format!("{call}ctd-back"));
    assert!(ok, "{err}");
    assert!(!body.contains(HOST_ACCESS_KEY_ID), "{body}");
    assert_eq!(identity(&moto, &body).await, assumed("ctd-back"));

    let seen = metadata.standin.requests();
    assert!(
        seen.is_empty(),
        "the real IMDS stand-in was reached: {seen:?}"
    );
}
