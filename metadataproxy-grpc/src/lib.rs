//! The container runtimes' gRPC APIs that the daemon and its tests speak — containerd's containers,
//! tasks and events services and its event types — and [`connect`], a gRPC channel over a unix
//! socket. With the `cri` feature (the tests' only), also Kubernetes' CRI, [`runtime::v1`].
//!
//! The code is generated at build time from the `.proto` files vendored in `proto/` (their origin,
//! version and licences are in `proto/README.md`) by a protobuf compiler written in Rust: building
//! needs no `protoc`. Modules follow the protobuf packages: `containerd.services.tasks.v1` is
//! [`containerd::services::tasks::v1`]; `google.protobuf` types are [`prost_types`]'.

mod unix;

pub use unix::connect;
pub use {prost, prost_types, tonic};

/// What `build.rs` generated: one module per protobuf package.
#[allow(
    clippy::all,
    clippy::pedantic,
    missing_debug_implementations,
    reason = "generated code, not written here: its shape is the generator's"
)]
mod generated {
    include!(concat!(env!("OUT_DIR"), "/protos.rs"));
}

pub use generated::containerd;
#[cfg(feature = "cri")]
pub use generated::runtime;
