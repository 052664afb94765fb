//! Which cgroups stay redirected without the host: containers in every layout, the followed
//! containerd namespaces, and what the role mapping names.

use super::*;
use crate::cgroup::is_container_path;
use crate::identity::mapping_file::{self, Mapping};

#[test]
fn container_paths_are_redirected_host_paths_only_when_mapped() {
    const ID: &str = "3f4e9b0c1d2a8e7f6b5c4d3e2f1a0b9c8d7e6f5a4b3c2d1e0f9a8b7c6d5e4f3a";
    let mapping = mapping_file::parse(
        r#"{"cgroup:/system.slice/batch.service": "batch", "cgroup:/mapped": "m"}"#,
    )
    .unwrap();
    // (path, a container's?, redirected with EBPF_REDIRECT_HOST=false?)
    let table: &[(&str, bool, bool)] = &[
        // Containers, in every layout: redirected.
        (&format!("/docker/{ID}"), true, true),
        (&format!("/docker/{ID}/init.scope"), true, true),
        (&format!("/system.slice/docker-{ID}.scope"), true, true),
        (
            &format!("/system.slice/containerd.service/k8s.io/{ID}"),
            true,
            true,
        ),
        (
            &format!(
                "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1a2b.slice/cri-containerd-{ID}.scope"
            ),
            true,
            true,
        ),
        (
            &format!("/kubepods/besteffort/pod1a2b-3c4d/{ID}"),
            true,
            true,
        ),
        // A pod's own cgroup and the runtimes' parents: no id yet, still a container's.
        (
            "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod1a2b.slice",
            true,
            true,
        ),
        ("/kubepods/burstable", true, true),
        ("/docker", true, true),
        (
            &format!("/machine.slice/libpod-{ID}.scope/container"),
            true,
            true,
        ),
        (
            &format!("/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-{ID}.scope"),
            true,
            true,
        ),
        (&format!("/system.slice/crio-{ID}.scope"), true, true),
        (&format!("/ecs/5a6b7c/{ID}"), true, true),
        // Named by the mapping (or below a named cgroup): redirected.
        ("/system.slice/batch.service", false, true),
        ("/system.slice/batch.service/worker", false, true),
        ("/mapped", false, true),
        // Plain host processes: not redirected.
        ("/", false, false),
        ("/system.slice", false, false),
        ("/system.slice/sshd.service", false, false),
        ("/system.slice/docker.service", false, false),
        ("/system.slice/containerd.service", false, false),
        ("/system.slice/batch.service2", false, false),
        ("/mapped-not", false, false),
        ("/user.slice/user-1000.slice/session-3.scope", false, false),
        ("/init.scope", false, false),
        // Not a 64-hex id: not a container.
        ("/system.slice/docker-abc.scope", false, false),
    ];
    for (path, container, redirected) in table {
        assert_eq!(is_container_path(path), *container, "{path}");
        assert_eq!(
            redirected_without_host(path, &mapping, &[]),
            *redirected,
            "{path}"
        );
    }
}

#[test]
fn containerd_namespaces_hold_containers_whatever_their_names() {
    let mapping = Mapping::default();
    let roots = ["default".to_owned(), "k8s.io".to_owned()];
    for (path, redirected) in [
        // `ctr run` and the Go client put a container at /<namespace>/<id>, any id.
        ("/default/web", true),
        ("/default/web/inner", true),
        ("/default", true),
        ("/k8s.io/anything", true),
        // Not a followed namespace, nor a runtime's layout: a host cgroup.
        ("/other/web", false),
        ("/system.slice/default", false),
        ("/defaultx/web", false),
    ] {
        assert_eq!(
            redirected_without_host(path, &mapping, &roots),
            redirected,
            "{path}"
        );
    }
    assert!(
        !redirected_without_host("/default/web", &mapping, &[]),
        "without containerd, /default is an ordinary host cgroup"
    );
}

/// Replaces `path` as operators and `ConfigMap`s do (rename over it).
fn write_atomically(path: &std::path::Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

#[test]
fn the_policy_follows_the_mapping_file_and_a_broken_one_keeps_the_last_good() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("mapping.json");
    let (cron, batch) = ("/system.slice/cron.service", "/system.slice/batch.service");
    let mut policy = MappingPolicy::new(Some(file.clone()), vec!["k8s.io".to_owned()]);
    assert_eq!(policy.watched(), Some(file.as_path()));
    // No mapping file yet: no policy, so the loader exempts nothing.
    assert!(policy.classifier().is_none());

    write_atomically(&file, r#"{"cgroup:/system.slice/batch.service": "batch"}"#);
    let redirected = policy.classifier().unwrap();
    assert!(!redirected(cron) && redirected(batch) && redirected(&format!("{batch}/worker")));
    assert!(
        redirected("/k8s.io/anything"),
        "a followed containerd namespace"
    );

    // Changed: cron is mapped now, batch no longer.
    write_atomically(&file, r#"{"cgroup:/system.slice/cron.service": "cron"}"#);
    let redirected = policy.classifier().unwrap();
    assert!(redirected(cron) && !redirected(batch));

    // Broken, not UTF-8, then gone: the last good mapping stays in force.
    for broken in [
        &br#"{"cgroup:/system.slice/batch.service": "#[..],
        &[0xff, 0xfe, b'{'],
    ] {
        std::fs::write(&file, broken).unwrap();
        let redirected = policy.classifier().unwrap();
        assert!(redirected(cron) && !redirected(batch));
    }
    std::fs::remove_file(&file).unwrap();
    let redirected = policy.classifier().unwrap();
    assert!(redirected(cron) && !redirected(batch));

    // Good again.
    write_atomically(&file, "{}");
    let redirected = policy.classifier().unwrap();
    assert!(!redirected(cron) && !redirected(batch));
}

#[test]
fn without_a_mapping_file_only_containers_stay_redirected() {
    let mut policy = MappingPolicy::new(None, vec![]);
    assert_eq!(policy.watched(), None);
    let redirected = policy.classifier().unwrap();
    assert!(!redirected("/system.slice/cron.service"));
    assert!(redirected(
        "/system.slice/docker-3f4e9b0c1d2a8e7f6b5c4d3e2f1a0b9c8d7e6f5a4b3c2d1e0f9a8b7c6d5e4f3a.scope"
    ));
    assert!(!redirected("/default/web"), "containerd is not followed");
}
