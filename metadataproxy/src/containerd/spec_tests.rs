//! Tables of real-world specs, cgroup paths and CRI sandbox metadata.

use super::*;

#[test]
fn cgroups_paths_as_runc_makes_them() {
    let id = "9f3c".repeat(16);
    let cases: &[(&str, Option<String>)] = &[
        ("", None),
        // ctr and the Go client's default: /<namespace>/<id>.
        ("/default/web", Some("/default/web".into())),
        ("/k8s.io/abc/", Some("/k8s.io/abc".into())),
        ("relative/x", Some("/relative/x".into())),
        ("//a//b", Some("/a/b".into())),
        ("/a/../b", None),
        // kubelet with the cgroupfs driver.
        (
            "/kubepods/burstable/pod1234/abc",
            Some("/kubepods/burstable/pod1234/abc".into()),
        ),
        // kubelet with the systemd driver.
        (
            &format!("kubepods-besteffort-pod0a1b_2c3d.slice:cri-containerd:{id}"),
            Some(format!(
                "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod0a1b_2c3d.slice/cri-containerd-{id}.scope"
            )),
        ),
        (
            "kubepods-pod1.slice:cri-containerd:x",
            Some("/kubepods.slice/kubepods-pod1.slice/cri-containerd-x.scope".into()),
        ),
        (":docker:x", Some("/system.slice/docker-x.scope".into())),
        ("-.slice:p:x", Some("/p-x.scope".into())),
        ("machine.slice::x", Some("/machine.slice/x.scope".into())),
        ("bad:p:x", None),
        ("a--b.slice:p:x", None),
        ("a:b", None),
    ];
    for (input, want) in cases {
        assert_eq!(&cgroup_path(input), want, "cgroupsPath {input:?}");
    }
}

const CRI_CONTAINER_SPEC: &str = r#"{
  "ociVersion": "1.0.2-dev",
  "process": {"user": {"uid": 0, "gid": 0}, "args": ["/app"],
              "env": ["PATH=/usr/bin", "IAM_ROLE=own-role", "HOSTNAME=web-7d9"], "cwd": "/"},
  "root": {"path": "rootfs"},
  "annotations": {
    "io.kubernetes.cri.container-name": "app",
    "io.kubernetes.cri.container-type": "container",
    "io.kubernetes.cri.image-name": "registry.example/app:1",
    "io.kubernetes.cri.sandbox-id": "2f8ce2bd696584bcc7d7c107135a38354d6766bc7ea7dd137bb4acfc92592268",
    "io.kubernetes.cri.sandbox-name": "web-7d9",
    "io.kubernetes.cri.sandbox-namespace": "shop",
    "io.kubernetes.cri.sandbox-uid": "01b4b887-7635-4346-9c20-58a294bbb034"
  },
  "linux": {"cgroupsPath": "/kubepods/besteffort/pod01b4b887-7635-4346-9c20-58a294bbb034/7be7ca56452ce0f69575654683e3b8cdc61d8898d06caf92fbf5ffffcd856bd7",
            "namespaces": [{"type": "pid"}]}
}"#;

#[test]
fn a_cri_container_spec_names_its_pod() {
    let facts = spec_facts(CRI_CONTAINER_SPEC.as_bytes()).unwrap();
    assert_eq!(facts.env[1], "IAM_ROLE=own-role");
    assert_eq!(
        facts.cgroup.as_deref(),
        Some(
            "/kubepods/besteffort/pod01b4b887-7635-4346-9c20-58a294bbb034/7be7ca56452ce0f69575654683e3b8cdc61d8898d06caf92fbf5ffffcd856bd7"
        )
    );
    assert_eq!(
        sandbox_id(&facts),
        Some("2f8ce2bd696584bcc7d7c107135a38354d6766bc7ea7dd137bb4acfc92592268")
    );
    assert!(!is_sandbox(&HashMap::new(), &facts));
    assert_eq!(display_name("k8s.io", "7be7", &facts), "shop/web-7d9/app");
}

#[test]
fn sandboxes_and_plain_containers() {
    let sandbox = spec_facts(
        br#"{"annotations": {"io.kubernetes.cri.container-type": "sandbox",
                             "io.kubernetes.cri.sandbox-id": "abc"}}"#,
    )
    .unwrap();
    assert!(is_sandbox(&HashMap::new(), &sandbox));
    assert_eq!(sandbox_id(&sandbox), None, "a sandbox has no pod above it");
    let labels = HashMap::from([(KIND_LABEL.to_owned(), "sandbox".to_owned())]);
    assert!(is_sandbox(&labels, &SpecFacts::default()));

    let plain = spec_facts(
        br#"{"process": {"env": ["IAM_ROLE=r"]}, "linux": {"cgroupsPath": "/default/web"}}"#,
    )
    .unwrap();
    assert_eq!(plain.env, ["IAM_ROLE=r"]);
    assert_eq!(plain.cgroup.as_deref(), Some("/default/web"));
    assert_eq!(sandbox_id(&plain), None);
    assert_eq!(display_name("default", "web", &plain), "default/web");
    assert_eq!(spec_facts(b"{}").unwrap(), SpecFacts::default());
    assert!(spec_facts(b"not json").is_err());
}

#[test]
fn pod_annotations_from_cri_sandbox_metadata() {
    let json = br#"{"Version":"v1","Metadata":{"ID":"2f8c","Name":"web-7d9_shop_01b4_0",
        "Config":{"metadata":{"name":"web-7d9","uid":"01b4","namespace":"shop","attempt":0},
                  "hostname":"web-7d9","log_directory":"/var/log/pods/x",
                  "labels":{"app":"web"},
                  "annotations":{"iam.amazonaws.com/role":"shop-web","kubernetes.io/config.seen":"2024"}},
        "NetNSPath":"/var/run/netns/cni-1","IP":"10.244.0.5","RuntimeHandler":""}}"#;
    let a = pod_annotations(json).unwrap();
    assert_eq!(a.get("iam.amazonaws.com/role").unwrap(), "shop-web");
    assert_eq!(a.len(), 2);

    let no_config = br#"{"Version":"v1","Metadata":{"ID":"x"}}"#;
    assert!(pod_annotations(no_config).unwrap().is_empty());
    let v2 = br#"{"Version":"v2","Metadata":{}}"#;
    assert!(matches!(
        pod_annotations(v2),
        Err(SandboxMetadataError::Version(v)) if v == "v2"
    ));
    assert!(pod_annotations(b"\x0a\x02hi").is_err());
}
