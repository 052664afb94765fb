//! What a containerd container says about itself, read from the records containerd keeps: the OCI
//! runtime spec (environment, cgroup, CRI annotations), the labels, and for a Kubernetes pod the
//! CRI plugin's sandbox metadata (the pod's annotations). Pure functions, tested with tables.
//!
//! Keys checked against containerd's CRI plugin (`pkg/cri/annotations`, `pkg/cri/store/sandbox`):
//! every CRI container's spec carries `io.kubernetes.cri.container-type` (`sandbox` or
//! `container`), `io.kubernetes.cri.sandbox-id`, `…sandbox-name`, `…sandbox-namespace` and, for
//! containers, `…container-name`; its containerd labels carry `io.cri-containerd.kind`. The pod's
//! sandbox container has the extension `io.cri-containerd.sandbox.metadata`, a typeurl JSON
//! `{"Version":"v1","Metadata":{"Config":<PodSandboxConfig>,…}}` whose `Config.annotations` are
//! the pod's annotations.

use std::collections::HashMap;

use serde::Deserialize;

/// Spec annotation: `sandbox` (the pod's pause container) or `container`.
pub const CONTAINER_TYPE: &str = "io.kubernetes.cri.container-type";
/// Spec annotation: the id of the pod's sandbox container.
pub const SANDBOX_ID: &str = "io.kubernetes.cri.sandbox-id";
/// Spec annotation: the pod's name.
pub const SANDBOX_NAME: &str = "io.kubernetes.cri.sandbox-name";
/// Spec annotation: the pod's Kubernetes namespace.
pub const SANDBOX_NAMESPACE: &str = "io.kubernetes.cri.sandbox-namespace";
/// Spec annotation: the container's name in its pod.
pub const CONTAINER_NAME: &str = "io.kubernetes.cri.container-name";
/// containerd label the CRI plugin sets: `sandbox` or `container`.
pub const KIND_LABEL: &str = "io.cri-containerd.kind";
/// Extension of a sandbox container holding the CRI sandbox metadata (the pod's config).
pub const SANDBOX_METADATA_EXTENSION: &str = "io.cri-containerd.sandbox.metadata";

/// The parts of an OCI runtime spec that identify a container and give its role.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SpecFacts {
    /// `process.env`.
    pub env: Vec<String>,
    /// `linux.cgroupsPath`, as a cgroup v2 path (see [`cgroup_path`]).
    pub cgroup: Option<String>,
    /// `annotations`.
    pub annotations: HashMap<String, String>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct Spec {
    process: Option<Process>,
    linux: Option<Linux>,
    annotations: HashMap<String, String>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct Process {
    env: Vec<String>,
}

#[derive(Deserialize, Default)]
#[serde(default, rename_all = "camelCase")]
struct Linux {
    cgroups_path: String,
}

/// Reads an OCI runtime spec (the JSON containerd stores as the container's `spec`).
pub fn spec_facts(json: &[u8]) -> Result<SpecFacts, serde_json::Error> {
    let spec: Spec = serde_json::from_slice(json)?;
    Ok(SpecFacts {
        env: spec.process.map(|p| p.env).unwrap_or_default(),
        cgroup: spec.linux.and_then(|l| cgroup_path(&l.cgroups_path)),
        annotations: spec.annotations,
    })
}

/// Whether the container is a pod's sandbox (pause) container, by its labels or spec annotations.
pub fn is_sandbox<S: std::hash::BuildHasher>(
    labels: &HashMap<String, String, S>,
    facts: &SpecFacts,
) -> bool {
    labels.get(KIND_LABEL).is_some_and(|k| k == "sandbox")
        || facts
            .annotations
            .get(CONTAINER_TYPE)
            .is_some_and(|k| k == "sandbox")
}

/// The id of the container's pod sandbox, for a CRI container.
pub fn sandbox_id(facts: &SpecFacts) -> Option<&str> {
    let kind = facts.annotations.get(CONTAINER_TYPE)?;
    if kind != "container" {
        return None;
    }
    facts
        .annotations
        .get(SANDBOX_ID)
        .map(String::as_str)
        .filter(|id| !id.is_empty())
}

/// A readable name: `pod-namespace/pod/container` for a CRI container, else `namespace/id`.
pub fn display_name(namespace: &str, id: &str, facts: &SpecFacts) -> String {
    let a = &facts.annotations;
    match (
        a.get(SANDBOX_NAMESPACE),
        a.get(SANDBOX_NAME),
        a.get(CONTAINER_NAME),
    ) {
        (Some(ns), Some(pod), Some(name)) => format!("{ns}/{pod}/{name}"),
        _ => format!("{namespace}/{id}"),
    }
}

#[derive(Deserialize)]
struct Versioned {
    #[serde(rename = "Version")]
    version: String,
    #[serde(rename = "Metadata")]
    metadata: SandboxMetadata,
}

#[derive(Deserialize)]
struct SandboxMetadata {
    #[serde(rename = "Config")]
    config: Option<PodSandboxConfig>,
}

#[derive(Deserialize)]
struct PodSandboxConfig {
    #[serde(default)]
    annotations: HashMap<String, String>,
}

/// Why the CRI sandbox metadata cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum SandboxMetadataError {
    /// Not the JSON the CRI plugin writes.
    #[error("not CRI sandbox metadata: {0}")]
    Json(#[from] serde_json::Error),
    /// A metadata version this code does not know.
    #[error("unsupported CRI sandbox metadata version {0:?} (expected \"v1\")")]
    Version(String),
}

/// The pod's annotations, from the sandbox container's [`SANDBOX_METADATA_EXTENSION`] value.
pub fn pod_annotations(json: &[u8]) -> Result<HashMap<String, String>, SandboxMetadataError> {
    let versioned: Versioned = serde_json::from_slice(json)?;
    if versioned.version != "v1" {
        return Err(SandboxMetadataError::Version(versioned.version));
    }
    Ok(versioned
        .metadata
        .config
        .map(|c| c.annotations)
        .unwrap_or_default())
}

/// The cgroup v2 path (relative to the cgroup2 mount, starting with `/`) that runc makes of a
/// spec's `linux.cgroupsPath`: a cgroupfs path as it is, or systemd's `slice:prefix:name` as
/// `/<expanded slice>/<prefix>-<name>.scope`. `None` when unset or not understood.
pub fn cgroup_path(spec_path: &str) -> Option<String> {
    let spec_path = spec_path.trim();
    if spec_path.is_empty() {
        return None;
    }
    let parts: Vec<&str> = spec_path.split(':').collect();
    let path = match parts.as_slice() {
        [slice, prefix, name] => {
            let slice = if slice.is_empty() {
                "system.slice"
            } else {
                slice
            };
            // systemd unit names are case-sensitive: `.SLICE` is not a slice.
            let unit = if name.rsplit('.').next() == Some("slice") && name.contains('.') {
                (*name).to_owned()
            } else if prefix.is_empty() {
                format!("{name}.scope")
            } else {
                format!("{prefix}-{name}.scope")
            };
            format!("{}/{unit}", expand_slice(slice)?)
        }
        [path] => format!("/{}", path.trim_start_matches('/')),
        _ => return None,
    };
    let clean: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    if clean.iter().any(|s| *s == "." || *s == "..") {
        return None;
    }
    Some(format!("/{}", clean.join("/")))
}

/// systemd's slice hierarchy: `a-b-c.slice` is `/a.slice/a-b.slice/a-b-c.slice`; `-.slice` is `/`.
fn expand_slice(slice: &str) -> Option<String> {
    let name = slice.strip_suffix(".slice")?;
    if name == "-" {
        return Some(String::new());
    }
    if name.is_empty() || name.contains('/') || name.starts_with('-') || name.contains("--") {
        return None;
    }
    let mut out = String::new();
    let mut prefix = String::new();
    for part in name.split('-') {
        if !prefix.is_empty() {
            prefix.push('-');
        }
        prefix.push_str(part);
        out.push('/');
        out.push_str(&prefix);
        out.push_str(".slice");
    }
    Some(out)
}

#[cfg(test)]
#[path = "spec_tests.rs"]
mod tests;
