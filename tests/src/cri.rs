//! Pods made by containerd's real CRI plugin, driven through the CRI gRPC API (`runtime.v1`) as
//! kubelet drives it: `RunPodSandbox`, `CreateContainer`, `StartContainer`, `ExecSync`,
//! `StopPodSandbox`, `RemovePodSandbox`.
//!
//! [`ContainerdD::start_cri`] runs a containerd of the test's own (socket, root, state, config)
//! with the CRI plugin on. No registry is reachable: the one image, [`IMAGE`] (busybox whose
//! entrypoint sleeps), is a docker-archive tarball made here from the busybox root filesystem and
//! imported with `ctr -n k8s.io images import`; it is the plugin's `sandbox_image` (the "pause"
//! container) and the pods' containers' image. Pods use the host's network (`NamespaceMode::Node`):
//! containerd 1.6 then sets up no network, and no CNI plugin or config is needed — it logs "failed
//! to load cni during init" at start and serves host-network pods all the same. Each pod's
//! cgroup parent is below the test's own ([`ContainerdD::cgroup_parent`]), with cgroupfs paths as
//! kubelet's cgroupfs driver gives them: `<parent>/kubepods/besteffort/pod<uid>/<container id>`.

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use metadataproxy_grpc::runtime::v1::image_service_client::ImageServiceClient;
use metadataproxy_grpc::runtime::v1::runtime_service_client::RuntimeServiceClient;
use metadataproxy_grpc::runtime::v1::{
    ContainerConfig, ContainerMetadata, CreateContainerRequest, ExecSyncRequest, ImageSpec,
    ImageStatusRequest, KeyValue, LinuxContainerConfig, LinuxContainerSecurityContext,
    LinuxPodSandboxConfig, LinuxSandboxSecurityContext, NamespaceMode, NamespaceOption,
    PodSandboxConfig, PodSandboxMetadata, RemovePodSandboxRequest, RunPodSandboxRequest,
    StartContainerRequest, StopPodSandboxRequest,
};
use metadataproxy_grpc::tonic::transport::Channel;

use crate::{ContainerdD, ExecResult};

/// The containerd namespace the CRI plugin keeps its pods in.
pub const NAMESPACE: &str = "k8s.io";
/// The image every pod uses: the sandbox ("pause") image and its containers' image.
pub const IMAGE: &str = "mp.test/busybox:sleep";
/// How long [`Cri::exec_sync`] lets a command run.
const EXEC_TIMEOUT_SECS: i64 = 30;

/// The CRI plugin's part of containerd's config for a containerd whose files are below `dir`.
///
/// `restrict_oom_score_adj`: the plugin gives a sandbox `oomScoreAdj` -998, and lowering it needs
/// `CAP_SYS_RESOURCE`, which root lacks on some machines (this project's among them): runc then
/// fails with "can't get final child's PID from pipe: EOF". Restricted, it is never below
/// containerd's own. `disable_apparmor`: no profile to load (none is loaded on these machines).
/// The CNI folders are the test's own, empty: no CNI config of the machine's is ever loaded.
pub(crate) fn plugin_config(dir: &Path) -> String {
    let cni = dir.join("cni").display().to_string();
    format!(
        "[plugins.\"io.containerd.grpc.v1.cri\"]\n  \
         sandbox_image = \"{IMAGE}\"\n  \
         disable_apparmor = true\n  \
         restrict_oom_score_adj = true\n  \
         [plugins.\"io.containerd.grpc.v1.cri\".cni]\n    \
         bin_dir = \"{cni}/bin\"\n    \
         conf_dir = \"{cni}/conf\"\n"
    )
}

/// A pod to make: its Kubernetes namespace, name and uid, labels and annotations. kubelet's own
/// labels (`io.kubernetes.pod.name`, `…namespace`, `…uid`) are there from [`PodSpec::new`].
#[derive(Debug, Clone)]
pub struct PodSpec {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub labels: HashMap<String, String>,
    pub annotations: HashMap<String, String>,
}

impl PodSpec {
    pub fn new(namespace: &str, name: &str, uid: &str) -> Self {
        Self {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            uid: uid.to_owned(),
            labels: kubelet_labels(namespace, name, uid),
            annotations: HashMap::new(),
        }
    }

    #[must_use]
    pub fn label(mut self, key: &str, value: &str) -> Self {
        self.labels.insert(key.to_owned(), value.to_owned());
        self
    }

    #[must_use]
    pub fn annotation(mut self, key: &str, value: &str) -> Self {
        self.annotations.insert(key.to_owned(), value.to_owned());
        self
    }
}

fn kubelet_labels(namespace: &str, name: &str, uid: &str) -> HashMap<String, String> {
    [
        ("io.kubernetes.pod.name", name),
        ("io.kubernetes.pod.namespace", namespace),
        ("io.kubernetes.pod.uid", uid),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect()
}

/// A pod the CRI plugin runs.
#[derive(Debug, Clone)]
pub struct Pod {
    /// The sandbox id (`RunPodSandbox`'s answer; the sandbox container's id in containerd).
    pub id: String,
    /// The pod's cgroup below the test's parent (`kubepods/besteffort/pod<uid>`).
    pub cgroup: String,
    config: PodSandboxConfig,
}

impl Pod {
    /// Container `id`'s cgroup below the test's parent, for [`ContainerdD::cgroup_of`] and
    /// [`ContainerdD::exec_in_cgroup`].
    pub fn cgroup_of(&self, id: &str) -> String {
        format!("{}/{id}", self.cgroup)
    }
}

/// A CRI client of a [`ContainerdD::start_cri`] containerd.
#[derive(Debug)]
pub struct Cri {
    runtime: RuntimeServiceClient<Channel>,
    parent: String,
}

fn node_namespaces() -> NamespaceOption {
    NamespaceOption {
        network: NamespaceMode::Node.into(),
        pid: NamespaceMode::Container.into(),
        ipc: NamespaceMode::Pod.into(),
        ..NamespaceOption::default()
    }
}

impl ContainerdD {
    /// Starts containerd with its CRI plugin on and [`IMAGE`] imported; `None` (with the reason
    /// printed) only when this machine cannot run containerd.
    pub fn start_cri() -> Option<ContainerdD> {
        let ctd = Self::start_with(true)?;
        let image = ctd.path("image.tar");
        docker_archive(&ctd.path("rootfs"), &ctd.path("image"), &image);
        ctd.must(
            NAMESPACE,
            &["images", "import", &image.display().to_string()],
        );
        Some(ctd)
    }

    /// A CRI client, once the CRI plugin knows [`IMAGE`] (it learns of imports from events).
    pub async fn cri(&self) -> Cri {
        let channel = metadataproxy_grpc::connect(self.address())
            .await
            .unwrap_or_else(|e| panic!("cannot connect to containerd: {e}"));
        let mut images = ImageServiceClient::new(channel.clone());
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let status = images
                .image_status(ImageStatusRequest {
                    image: Some(image_spec()),
                    verbose: false,
                })
                .await
                .unwrap_or_else(|e| panic!("CRI ImageStatus failed: {e}\n{}", self.log()))
                .into_inner();
            if status.image.is_some() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the CRI plugin never saw the imported {IMAGE}:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Cri {
            runtime: RuntimeServiceClient::new(channel),
            parent: self.cgroup_parent(),
        }
    }
}

fn image_spec() -> ImageSpec {
    ImageSpec {
        image: IMAGE.to_owned(),
        ..ImageSpec::default()
    }
}

/// Makes a docker-archive (`docker save`'s format) of the folder `rootfs` as one layer, in
/// `work`, written to `out`: busybox with `PATH=/bin`, whose entrypoint sleeps a day.
fn docker_archive(rootfs: &Path, work: &Path, out: &Path) {
    std::fs::create_dir_all(work).expect("image work folder");
    let layer = work.join("layer.tar");
    must_run(
        Command::new("tar")
            .arg("-C")
            .arg(rootfs)
            .arg("-cf")
            .arg(&layer)
            .arg("."),
    );
    let digest = must_run(Command::new("sha256sum").arg(&layer));
    let digest = digest.split_whitespace().next().expect("sha256sum output");
    let config = serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {
            "Env": ["PATH=/bin"],
            "Entrypoint": ["/bin/sleep"],
            "Cmd": ["86400"],
            "WorkingDir": "/",
        },
        "rootfs": {"type": "layers", "diff_ids": [format!("sha256:{digest}")]},
    });
    let manifest = serde_json::json!([
        {"Config": "config.json", "RepoTags": [IMAGE], "Layers": ["layer.tar"]}
    ]);
    std::fs::write(work.join("config.json"), config.to_string()).expect("image config");
    std::fs::write(work.join("manifest.json"), manifest.to_string()).expect("image manifest");
    must_run(
        Command::new("tar")
            .arg("-C")
            .arg(work)
            .arg("-cf")
            .arg(out)
            .args(["manifest.json", "config.json", "layer.tar"]),
    );
}

/// Runs `cmd`, panicking on failure; its stdout.
fn must_run(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

impl Cri {
    /// `RunPodSandbox`: the pod `spec` on the host's network, its cgroup parent
    /// `<test parent>/kubepods/besteffort/pod<uid>`.
    pub async fn run_pod(&mut self, spec: &PodSpec) -> Pod {
        let cgroup = format!("kubepods/besteffort/pod{}", spec.uid);
        let config = PodSandboxConfig {
            metadata: Some(PodSandboxMetadata {
                name: spec.name.clone(),
                uid: spec.uid.clone(),
                namespace: spec.namespace.clone(),
                attempt: 0,
            }),
            labels: spec.labels.clone(),
            annotations: spec.annotations.clone(),
            linux: Some(LinuxPodSandboxConfig {
                cgroup_parent: format!("{}/{cgroup}", self.parent),
                security_context: Some(LinuxSandboxSecurityContext {
                    namespace_options: Some(node_namespaces()),
                    ..LinuxSandboxSecurityContext::default()
                }),
                ..LinuxPodSandboxConfig::default()
            }),
            ..PodSandboxConfig::default()
        };
        let id = self
            .runtime
            .run_pod_sandbox(RunPodSandboxRequest {
                config: Some(config.clone()),
                runtime_handler: String::new(),
            })
            .await
            .unwrap_or_else(|e| panic!("RunPodSandbox {}/{}: {e}", spec.namespace, spec.name))
            .into_inner()
            .pod_sandbox_id;
        Pod { id, cgroup, config }
    }

    /// `CreateContainer` and `StartContainer` of container `name` in `pod`: [`IMAGE`] running
    /// `sleep 600` with the extra environment `env`. Returns its id.
    pub async fn run_container(&mut self, pod: &Pod, name: &str, env: &[(&str, &str)]) -> String {
        let meta = pod.config.metadata.clone().unwrap_or_default();
        let mut labels = kubelet_labels(&meta.namespace, &meta.name, &meta.uid);
        // kubelet's container labels (the CRI plugin copies them to containerd's record).
        labels.insert("io.kubernetes.container.name".to_owned(), name.to_owned());
        let config = ContainerConfig {
            metadata: Some(ContainerMetadata {
                name: name.to_owned(),
                attempt: 0,
            }),
            image: Some(image_spec()),
            command: vec!["/bin/sleep".to_owned(), "600".to_owned()],
            // `KeyValue.value` is `bytes` in this cri-api (`string` before): the same on the wire.
            envs: env
                .iter()
                .map(|(key, value)| KeyValue {
                    key: (*key).to_owned(),
                    value: value.as_bytes().to_vec(),
                })
                .collect(),
            labels,
            linux: Some(LinuxContainerConfig {
                security_context: Some(LinuxContainerSecurityContext {
                    namespace_options: Some(node_namespaces()),
                    ..LinuxContainerSecurityContext::default()
                }),
                ..LinuxContainerConfig::default()
            }),
            ..ContainerConfig::default()
        };
        let id = self
            .runtime
            .create_container(CreateContainerRequest {
                pod_sandbox_id: pod.id.clone(),
                config: Some(config),
                sandbox_config: Some(pod.config.clone()),
            })
            .await
            .unwrap_or_else(|e| panic!("CreateContainer {name} in pod {}: {e}", pod.id))
            .into_inner()
            .container_id;
        self.runtime
            .start_container(StartContainerRequest {
                container_id: id.clone(),
            })
            .await
            .unwrap_or_else(|e| panic!("StartContainer {name} ({id}): {e}"));
        id
    }

    /// `ExecSync` of `sh -c script` in container `id` (a process in the container's cgroup):
    /// (exit code 0, stdout, stderr).
    pub async fn exec_sync(&mut self, id: &str, script: &str) -> ExecResult {
        let out = self
            .runtime
            .exec_sync(ExecSyncRequest {
                container_id: id.to_owned(),
                cmd: vec!["/bin/sh".to_owned(), "-c".to_owned(), script.to_owned()],
                timeout: EXEC_TIMEOUT_SECS,
            })
            .await
            .unwrap_or_else(|e| panic!("ExecSync in {id}: {e}"))
            .into_inner();
        (
            out.exit_code == 0,
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// `StopPodSandbox`: every container of the pod and its sandbox stop (their tasks exit).
    pub async fn stop_pod(&mut self, pod: &Pod) {
        self.runtime
            .stop_pod_sandbox(StopPodSandboxRequest {
                pod_sandbox_id: pod.id.clone(),
            })
            .await
            .unwrap_or_else(|e| panic!("StopPodSandbox {}: {e}", pod.id));
    }

    /// `RemovePodSandbox`: the pod's containers and sandbox are deleted from containerd.
    pub async fn remove_pod(&mut self, pod: &Pod) {
        self.runtime
            .remove_pod_sandbox(RemovePodSandboxRequest {
                pod_sandbox_id: pod.id.clone(),
            })
            .await
            .unwrap_or_else(|e| panic!("RemovePodSandbox {}: {e}", pod.id));
    }
}
