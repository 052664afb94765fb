//! Kubernetes pods made by containerd's real CRI plugin (driven through the CRI API as kubelet
//! drives it: `RunPodSandbox`, `CreateContainer`, `StartContainer`, `ExecSync`, `StopPodSandbox`,
//! `RemovePodSandbox`) call `http://169.254.169.254/…`; the eBPF redirect brings them to the
//! daemon, which serves a pod's container its pod's annotation `iam.amazonaws.com/role` (or its
//! own `IAM_ROLE`), gives the pod's pause container nothing, and forgets the pod once it is
//! stopped and removed (a pod found by the daemon's first listing as well as one started while
//! it runs). 169.254.169.254 is made local with a stand-in "real IMDS" that must see
//! nothing. The helpers are `containerd_ebpf`'s: the same daemon, the same checks.
//!
//! Needs root, containerd (1.6, with its CRI plugin) and runc, and the daemon built with the eBPF
//! object.

use metadataproxy_tests::{
    BpfFs, CREDS_PATH, ContainerdD, Cri, HOST_ACCESS_KEY_ID, METADATA_IP, MetadataAddress, Moto,
    PodSpec,
};

use crate::containerd_ebpf::{assumed, daemon, identity, prefetched, v2_script};

/// `script` run in CRI container `id` (`ExecSync`): (ok, stdout or stderr), never the host's
/// credentials.
async fn exec(cri: &mut Cri, id: &str, script: &str) -> (bool, String) {
    let (ok, out, err) = cri.exec_sync(id, script).await;
    assert!(
        !out.contains(HOST_ACCESS_KEY_ID),
        "host credentials reached CRI container {id}: {out}"
    );
    (ok, if ok { out } else { err })
}

/// IMDSv1 GET of `path` from inside CRI container `id`.
async fn v1(cri: &mut Cri, id: &str, path: &str) -> (bool, String) {
    exec(cri, id, &format!("wget -q -O - http://{METADATA_IP}{path}")).await
}

/// A pod uid unique to this run.
fn uid(tag: &str) -> String {
    format!("{:08x}-{tag}", std::process::id())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cri_pod_containers_get_their_pods_annotation_role() {
    let Some(ctd) = ContainerdD::start_cri() else {
        return;
    };
    let metadata = MetadataAddress::start();
    let bpffs = BpfFs::mount();
    let moto = Moto::start().await;
    for role in ["cri-pod", "cri-own"] {
        moto.create_role(role, "/").await;
    }
    let mut daemon = daemon(&ctd, &moto, &bpffs).start().await;
    daemon
        .wait_for_log("containerd reachable; container index synchronised")
        .await;

    let mut cri = ctd.cri().await;
    let spec = PodSpec::new("shop", "web-7d9", &uid("a1"))
        .label("app", "web")
        .annotation("iam.amazonaws.com/role", "cri-pod")
        .annotation("other", "x");
    let pod = cri.run_pod(&spec).await;
    let app = cri.run_container(&pod, "app", &[]).await;
    let own = cri
        .run_container(&pod, "sidecar", &[("IAM_ROLE", "cri-own")])
        .await;
    assert!(daemon.is_running(), "the daemon exited:\n{}", daemon.logs());
    // Each container's role is assumed when it starts, before it asks.
    prefetched(&moto, &["cri-pod", "cri-own"]).await;

    for (id, role, what) in [
        (&app, "cri-pod", "CRI container naming no role"),
        (&own, "cri-own", "CRI container with its own IAM_ROLE"),
    ] {
        let (ok, listing) = v1(&mut cri, id, CREDS_PATH).await;
        assert!(
            ok && listing == role,
            "{what}: listing {listing:?}\n{}",
            daemon.logs()
        );
        let (ok, body) = v1(&mut cri, id, &format!("{CREDS_PATH}{role}")).await;
        assert!(ok, "{what}: {body}");
        assert_eq!(identity(&moto, &body).await, assumed(role), "{what}");
    }
    let (ok, body) = exec(&mut cri, &app, &v2_script(&format!("{CREDS_PATH}cri-pod"))).await;
    assert!(ok, "CRI container, IMDSv2: {body}");
    assert_eq!(identity(&moto, &body).await, assumed("cri-pod"));

    // The pod's pause container is no caller: a process in its cgroup gets nothing.
    let call = format!("/bin/busybox wget -q -O - http://{METADATA_IP}{CREDS_PATH}");
    let (ok, out, err) = ctd.exec_in_cgroup(&pod.cgroup_of(&pod.id), &call);
    assert!(!ok && err.contains("404"), "pause container: {out}{err}");

    // Named after its pod; the audit line names the container the credentials went to.
    let logs = daemon
        .wait_for_logs(&[
            "source=\"containerd_cgroup\"",
            "container indexed",
            "shop/web-7d9/app",
        ])
        .await;
    assert!(
        logs.lines().any(|l| l.contains("credentials served")
            && l.contains("container_name=\"shop/web-7d9/app\"")
            && l.contains(&format!("container_id=\"k8s.io/{app}\""))),
        "no audit line naming the CRI container:\n{logs}"
    );
    // The real sandbox record was read (no "pod sandbox … not found / unreadable" warning); the
    // index holds the pod's two containers, never its pause container, whose caller was refused.
    assert!(
        !logs.contains("pod sandbox"),
        "the pod's sandbox record was not read:\n{logs}"
    );
    let indexed = logs
        .lines()
        .filter(|l| l.contains("container indexed"))
        .count();
    assert_eq!(indexed, 2, "indexed:\n{logs}");
    assert!(
        logs.lines()
            .any(|l| l.contains("no followed container has it")
                && l.contains(&format!("/{}", pod.id))),
        "the pause container's caller was not refused:\n{logs}"
    );

    let seen = metadata.standin.requests();
    assert!(
        seen.is_empty(),
        "the real IMDS stand-in was reached: {seen:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_and_removed_cri_pod_is_forgotten() {
    let Some(ctd) = ContainerdD::start_cri() else {
        return;
    };
    let metadata = MetadataAddress::start();
    let bpffs = BpfFs::mount();
    let moto = Moto::start().await;
    moto.create_role("cri-gone", "/").await;
    // The pod runs before the daemon starts: the daemon learns of it from its first listing.
    let mut cri = ctd.cri().await;
    let spec = PodSpec::new("shop", "gone-5f4", &uid("b2"))
        .annotation("iam.amazonaws.com/role", "cri-gone");
    let pod = cri.run_pod(&spec).await;
    let app = cri.run_container(&pod, "app", &[]).await;
    let daemon = daemon(&ctd, &moto, &bpffs).start().await;
    daemon
        .wait_for_logs(&[
            "containerd reachable; container index synchronised",
            "container indexed container=shop/gone-5f4/app",
        ])
        .await;
    // A process placed in the container's cgroup by hand, like after the pod is gone below.
    let rel = pod.cgroup_of(&app);
    let call = format!("/bin/busybox wget -q -O - http://{METADATA_IP}{CREDS_PATH}");
    let (ok, out, err) = ctd.exec_in_cgroup(&rel, &call);
    assert!(ok && out == "cri-gone", "while the pod runs: {out}{err}");

    cri.stop_pod(&pod).await;
    daemon
        .wait_for_log("container left the index container=shop/gone-5f4/app")
        .await;
    cri.remove_pod(&pod).await;
    let left = ctd.must("k8s.io", &["containers", "ls", "-q"]);
    assert!(
        left.is_empty(),
        "containers left after RemovePodSandbox: {left}"
    );

    // The container's cgroup (runc removed it) made again: a caller there is nobody's.
    let v2 = metadataproxy_tests::cgroup2_mount().join(ctd.cgroup_of(&rel).trim_start_matches('/'));
    std::fs::create_dir_all(&v2).unwrap_or_else(|e| panic!("cgroup {}: {e}", v2.display()));
    let (ok, out, err) = ctd.exec_in_cgroup(&rel, &call);
    assert!(
        !ok && err.contains("404"),
        "the removed pod's cgroup still gets credentials: {out}{err}\n{}",
        daemon.logs()
    );
    // The index dropped it: the daemon was not asked about it again, nor did it serve it.
    let logs = daemon.logs();
    let served_after = logs
        .lines()
        .skip_while(|l| !l.contains("container left the index"))
        .any(|l| l.contains("credentials served"));
    assert!(!served_after, "credentials served after removal:\n{logs}");

    let seen = metadata.standin.requests();
    assert!(
        seen.is_empty(),
        "the real IMDS stand-in was reached: {seen:?}"
    );
}
