//! Table tests of container-id parsing with real-world cgroup paths.

use super::*;

const ID: &str = "3f2a9d6c1b8e4f7a0c5d2e9b6a3f8c1d4e7b0a5c2f9d6e3b8a1c4f7d0e5b2a9c";

#[test]
fn container_ids_from_real_world_layouts() {
    let cases: &[(&str, Option<&str>)] = &[
        // Docker, cgroupfs driver.
        (&format!("/docker/{ID}"), Some("docker")),
        // Docker, systemd driver.
        (&format!("/system.slice/docker-{ID}.scope"), Some("docker")),
        // Docker-in-docker / nested cgroup namespaces.
        (&format!("/docker/{ID}/docker/{ID}"), Some("docker")),
        // Kubernetes + containerd, systemd driver.
        (
            &format!(
                "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1a2b3c4d_5e6f_7a8b_9c0d_1e2f3a4b5c6d.slice/cri-containerd-{ID}.scope"
            ),
            Some("containerd"),
        ),
        // Kubernetes, cgroupfs driver.
        (
            &format!("/kubepods/besteffort/pod1a2b3c4d-5e6f-7a8b-9c0d-1e2f3a4b5c6d/{ID}"),
            Some("containerd"),
        ),
        // Kubernetes + containerd, systemd driver, Guaranteed QoS (no QoS slice).
        (
            &format!("/kubepods.slice/kubepods-pod0a1b.slice/cri-containerd-{ID}.scope"),
            Some("containerd"),
        ),
        // Kubernetes, cgroupfs driver, kubepods below a node-level parent.
        (
            &format!("/kubelet/kubepods/burstable/pod0a1b/{ID}"),
            Some("containerd"),
        ),
        // containerd without Kubernetes (ctr, nerdctl).
        (&format!("/k8s.io/{ID}"), Some("containerd")),
        (
            &format!("/system.slice/nerdctl-{ID}.scope"),
            Some("containerd"),
        ),
        // CRI-O and podman.
        (
            &format!("/kubepods.slice/kubepods-pod1.slice/crio-{ID}.scope"),
            Some("crio"),
        ),
        (&format!("/machine.slice/libpod-{ID}.scope"), Some("podman")),
        // Not containers.
        ("/", None),
        ("/system.slice/sshd.service", None),
        ("/user.slice/user-1000.slice/session-2.scope", None),
        ("/system.slice/docker.service", None),
        ("/docker/not-an-id", None),
        (&format!("/docker/{}", ID.to_uppercase()), None),
        (&format!("/system.slice/docker-{}.scope", &ID[..63]), None),
    ];
    for (path, runtime) in cases {
        let got = container_of(path);
        assert_eq!(got.as_ref().map(|c| c.runtime), *runtime, "{path}");
        if let Some(c) = got {
            assert_eq!(c.id, ID, "{path}");
        }
    }
}

#[test]
fn ancestors_deepest_first() {
    let all: Vec<&str> = ancestors("/system.slice/foo.service/sub").collect();
    assert_eq!(
        all,
        [
            "/system.slice/foo.service/sub",
            "/system.slice/foo.service",
            "/system.slice",
            "/"
        ]
    );
    assert_eq!(ancestors("/").collect::<Vec<_>>(), ["/"]);
}

#[test]
fn the_runtime_of_a_bare_id_comes_from_its_parent() {
    let cases: &[(String, &str)] = &[
        (format!("/docker/{ID}"), "docker"),
        (format!("/moby/{ID}"), "containerd"),
        (format!("/k8s.io/{ID}"), "containerd"),
        (
            format!("/system.slice/containerd.service/k8s.io/{ID}"),
            "containerd",
        ),
        // Anywhere below a kubepods cgroup, whatever the parent.
        (format!("/kubepods/burstable/pod1/{ID}"), "containerd"),
        (format!("/x/kubepods-besteffort.slice/y/{ID}"), "containerd"),
        // Any other parent (a custom --cgroup-parent), or none: Docker's cgroupfs layout.
        (format!("/mpd123/{ID}"), "docker"),
        (format!("/{ID}"), "docker"),
        // A bare id right below a `docker` cgroup is Docker's, even below kubepods.
        (format!("/kubepods/docker/{ID}"), "docker"),
        // A scope's own prefix wins over the parent.
        (format!("/k8s.io/docker-{ID}.scope"), "docker"),
        (format!("/docker/cri-containerd-{ID}.scope"), "containerd"),
    ];
    for (path, runtime) in cases {
        let got = container_of(path).unwrap_or_else(|| panic!("{path}: none"));
        assert_eq!((got.runtime, got.id.as_str()), (*runtime, ID), "{path}");
    }
}

#[test]
fn named_ids_are_every_segment_naming_a_container_deepest_first() {
    const OTHER: &str = "7be7ca56452ce0f69575654683e3b8cdc61d8898d06caf92fbf5ffffcd856bd7";
    let path = format!(
        "/docker/{ID}/x/crio-{OTHER}.scope/docker-abc.scope/{}",
        &ID[1..]
    );
    assert_eq!(named_ids(&path).collect::<Vec<_>>(), [OTHER, ID]);
    assert_eq!(named_ids("/system.slice/sshd.service").count(), 0);
    assert_eq!(named_ids(&format!("libpod-{ID}")).collect::<Vec<_>>(), [ID]);
}

#[test]
fn within_is_segment_by_segment() {
    let table: &[(&str, &str, bool)] = &[
        ("/a/b", "/a/b", true),
        ("/a/b/c", "/a/b", true),
        ("/a/b/c/d", "/a/b", true),
        ("/a/b", "/a/b/", true),
        ("/a/bc", "/a/b", false),
        ("/a/b.scope", "/a/b", false),
        ("/a", "/a/b", false),
        ("/x/a/b", "/a/b", false),
        ("/anything", "/", true),
        ("/", "/", true),
        ("relative", "/", false),
    ];
    for (path, cgroup, want) in table {
        assert_eq!(is_within(path, cgroup), *want, "{path} in {cgroup}");
    }
}
