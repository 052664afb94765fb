//! metadataproxy: an EC2 instance metadata service that gives every caller its own scoped IAM credentials.

pub mod admin;
pub mod app;
pub mod caller;
pub mod cgroup;
pub mod clock;
pub mod config;
pub mod containerd;
pub mod containers;
pub mod creds;
pub mod docker;
pub mod doctor;
pub mod ebpf;
// Fuzz entry points: only for the fuzz targets, the corpus replay test and unit tests, never in
// the daemon's own build (the `fuzzing` feature is off unless `fuzz/` or a test turns it on).
#[cfg(any(test, feature = "fuzzing"))]
#[doc(hidden)]
pub mod fuzzing;
pub mod generation;
pub mod identity;
pub mod imds;
pub mod logging;
pub mod memory;
pub mod metrics;
pub mod policy;
pub mod role;
pub mod server;
pub mod watched;
