//! Generates the Rust code of the vendored `.proto` files (`proto/`) with a protobuf compiler
//! written in Rust (`protox`): building needs no `protoc` on the machine and no `PROTOC`.
//!
//! The files are parsed into a `FileDescriptorSet` (with their comments, which become doc
//! comments), then `tonic-prost-build` writes the messages and the gRPC clients, and one include
//! file (`protos.rs`) nesting them in modules named after their protobuf packages, so the
//! cross-package paths it generates (`super::super::…`) resolve as written.

use std::path::{Path, PathBuf};

/// The include root: files import each other by their path below it, as upstream does.
const ROOT: &str = "proto";

/// The files compiled, below [`ROOT`]; what they import is compiled with them. To add an API,
/// vendor its files below `proto/` (noted in `proto/README.md`) and list its services here.
const PROTOS: &[&str] = &[
    "github.com/containerd/containerd/api/services/containers/v1/containers.proto",
    "github.com/containerd/containerd/api/services/events/v1/events.proto",
    "github.com/containerd/containerd/api/services/tasks/v1/tasks.proto",
    "github.com/containerd/containerd/api/events/container.proto",
    "github.com/containerd/containerd/api/events/task.proto",
];

/// Kubernetes' CRI (`runtime.v1`), compiled only with the `cri` feature: the tests drive
/// containerd's CRI plugin as kubelet does; the daemon never speaks it.
const CRI_PROTOS: &[&str] = &["k8s.io/cri-api/pkg/apis/runtime/v1/api.proto"];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = Path::new(ROOT);
    // The whole folder: an edited import is picked up as well as a listed file.
    println!("cargo::rerun-if-changed={ROOT}");
    println!("cargo::rerun-if-changed=build.rs");
    let cri = std::env::var_os("CARGO_FEATURE_CRI").is_some();
    let files: Vec<PathBuf> = PROTOS
        .iter()
        .chain(if cri { CRI_PROTOS } else { &[] })
        .map(|p| root.join(p))
        .collect();
    let descriptors = protox::compile(&files, [root])
        .map_err(|e| format!("compiling the vendored .proto files: {e}"))?;
    tonic_prost_build::configure()
        .build_server(false)
        // The clients' `connect(uri)` needs tonic's TCP transport: [`crate::connect`] is used.
        .build_transport(false)
        .include_file("protos.rs")
        .compile_fds(descriptors)?;
    Ok(())
}
