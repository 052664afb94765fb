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
    ACCOUNT, BpfFs, CREDS_PATH, ContainerdD, Cri, FaultySts, HOST_ACCESS_KEY_ID, METADATA_IP,
    MetadataAddress, Moto, PodSpec,
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

/// Payments' pods may have `pay-*`, web's front tier `web-*`, nobody an `*-admin` role.
const CRI_POLICY: &str = r#"{"version": 1, "rules": [
            {"name": "payments", "match": {"namespace": "payments"}, "allow": ["pay-*"]},
            {"name": "web", "match": {"namespace": "web", "labels": {"tier": "front"}}, "allow": ["web-*"]},
            {"name": "no-admin", "match": {}, "deny": ["*-admin"]}
        ]}"#;

/// The role policy and session tags on pods the CRI plugin made: each pod's containers get only
/// the roles its namespace's rule allows (a deny wins; another namespace gets 403 and an audit
/// line naming the rule, with no AssumeRole for it), and every AssumeRole carries the pod's
/// namespace, name, uid and a pod label as tags, the namespace transitive, the pod's name as
/// `SourceIdentity` — checked on the wire by a recording relay in front of moto.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_role_policy_and_session_tags_follow_each_pod() {
    let Some(ctd) = ContainerdD::start_cri() else {
        return;
    };
    let metadata = MetadataAddress::start();
    let bpffs = BpfFs::mount();
    let moto = Moto::start().await;
    for role in ["pay-api", "pay-admin", "web-front"] {
        moto.create_role(role, "/").await;
    }
    let relay = FaultySts::start(moto.addr());
    let dir = tempfile::tempdir().expect("temp dir");
    let policy = dir.path().join("policy.json");
    std::fs::write(&policy, CRI_POLICY).expect("write the policy");
    let mut daemon = daemon(&ctd, &moto, &bpffs)
        .env("AWS_ENDPOINT_URL_STS", relay.url())
        .env("ROLE_POLICY_FILE", policy.display().to_string())
        .env(
            "SESSION_TAGS",
            "kubernetes-namespace=Namespace,kubernetes-pod-name=PodName,kubernetes-pod-uid=PodUid,tier=Labels:tier",
        )
        .env("SESSION_TAGS_TRANSITIVE", "kubernetes-namespace")
        .env("SOURCE_IDENTITY", "PodName")
        .start()
        .await;
    daemon
        .wait_for_log("containerd reachable; container index synchronised")
        .await;

    let mut cri = ctd.cri().await;
    let pay_uid = uid("c3");
    let pay = cri
        .run_pod(
            &PodSpec::new("payments", "api-6c8", &pay_uid)
                .label("tier", "back")
                .annotation("iam.amazonaws.com/role", "pay-api"),
        )
        .await;
    let app = cri.run_container(&pay, "app", &[]).await;
    let admin = cri
        .run_container(&pay, "admin", &[("IAM_ROLE", "pay-admin")])
        .await;
    // A pod of another namespace asking for payments' role, and one with the web rule's label.
    let intruder = cri
        .run_pod(
            &PodSpec::new("web", "sneaky-1", &uid("d4"))
                .label("tier", "front")
                .annotation("iam.amazonaws.com/role", "pay-api"),
        )
        .await;
    let sneaky = cri.run_container(&intruder, "app", &[]).await;
    let front = cri
        .run_container(&intruder, "front", &[("IAM_ROLE", "web-front")])
        .await;
    assert!(daemon.is_running(), "the daemon exited:\n{}", daemon.logs());
    prefetched(&moto, &["pay-api", "web-front"]).await;

    let (ok, body) = v1(&mut cri, &app, &format!("{CREDS_PATH}pay-api")).await;
    assert!(ok, "payments' app: {body}\n{}", daemon.logs());
    assert_eq!(
        identity(&moto, &body).await,
        format!("arn:aws:sts::{ACCOUNT}:assumed-role/pay-api/devproxyauth")
    );
    let (ok, body) = v1(&mut cri, &front, &format!("{CREDS_PATH}web-front")).await;
    assert!(ok, "web's labelled container: {body}");
    for (id, role, what) in [
        (&admin, "pay-admin", "denied by no-admin"),
        (&sneaky, "pay-api", "another namespace's role"),
    ] {
        let (ok, err) = v1(&mut cri, id, &format!("{CREDS_PATH}{role}")).await;
        assert!(!ok && err.contains("403"), "{what}: {err}");
        let (ok, err) = v1(&mut cri, id, CREDS_PATH).await;
        assert!(!ok && err.contains("403"), "{what}, listing: {err}");
    }
    let logs = daemon
        .wait_for_logs(&[
            "role refused by the role policy",
            "rule=no-admin",
            "reason=denied by rule `no-admin`",
        ])
        .await;
    assert!(
        logs.lines()
            .any(|l| l.contains("role refused by the role policy")
                && l.contains("container_name=\"web/sneaky-1/app\"")
                && l.contains("namespace=\"web\"")
                && l.contains(&format!("role_arn=arn:aws:iam::{ACCOUNT}:role/pay-api"))
                && l.contains("rule=(none)")),
        "no audit line for the other namespace's refusal:\n{logs}"
    );

    check_wire(&relay, &pay_uid);
    // The audit line of credentials served shows the tags sent.
    assert!(
        logs.lines().any(|l| l.contains("credentials served")
            && l.contains("kubernetes-namespace=payments,kubernetes-pod-name=api-6c8")
            && l.contains("source_identity=api-6c8")),
        "no served line with the tags:\n{logs}"
    );
    let seen = metadata.standin.requests();
    assert!(
        seen.is_empty(),
        "the real IMDS stand-in was reached: {seen:?}"
    );
}

/// On the wire: no AssumeRole ever for the denied role; payments' role only with payments' tags
/// (the other namespace's pod never got a session of it); the exact parameters.
fn check_wire(relay: &FaultySts, pay_uid: &str) {
    assert!(
        relay
            .assume_role_attempts(&format!("arn:aws:iam::{ACCOUNT}:role/pay-admin"))
            .is_empty(),
        "AssumeRole for a denied role"
    );
    let calls = relay.assume_role_attempts(&format!("arn:aws:iam::{ACCOUNT}:role/pay-api"));
    assert!(!calls.is_empty(), "no AssumeRole for pay-api");
    for call in &calls {
        assert_eq!(
            call.params_starting("Tags.member."),
            [
                ("Tags.member.1.Key", "kubernetes-namespace"),
                ("Tags.member.1.Value", "payments"),
                ("Tags.member.2.Key", "kubernetes-pod-name"),
                ("Tags.member.2.Value", "api-6c8"),
                ("Tags.member.3.Key", "kubernetes-pod-uid"),
                ("Tags.member.3.Value", pay_uid),
                ("Tags.member.4.Key", "tier"),
                ("Tags.member.4.Value", "back"),
            ]
            .map(|(k, v)| (k.to_owned(), v.to_owned())),
            "{:?}",
            call.params
        );
        assert_eq!(
            call.params_starting("TransitiveTagKeys."),
            [(
                "TransitiveTagKeys.member.1".to_owned(),
                "kubernetes-namespace".to_owned()
            )]
        );
        assert_eq!(call.param("SourceIdentity"), Some("api-6c8"));
        assert_eq!(call.param("RoleSessionName"), Some("devproxyauth"));
    }
    let front_calls = relay.assume_role_attempts(&format!("arn:aws:iam::{ACCOUNT}:role/web-front"));
    assert!(
        front_calls
            .iter()
            .all(|c| c.param("SourceIdentity") == Some("sneaky-1")
                && c.param("Tags.member.1.Value") == Some("web")),
        "{front_calls:?}"
    );
}
