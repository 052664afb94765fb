//! The integration tests, as one test binary: the real daemon binary against real peers (moto,
//! a recording stand-in for the host's IMDS, the AWS SDKs' own clients, and, as root, a real
//! dockerd and containerd with the eBPF redirect). One module per area; a module's tests are
//! selected by its path, e.g. `cargo test -p metadataproxy-tests --test integration docker_ebpf::`.
//!
//! One binary rather than one per file: each binary linked the AWS SDKs and the harness again.

mod admin;
mod audit;
mod bad_input;
mod config_errors;
mod containerd_cri;
mod containerd_ebpf;
mod docker_containers;
mod docker_ebpf;
mod docker_guard;
mod docker_policy;
mod docker_unreachable;
mod doctor;
mod ecs_endpoint;
mod faults_docker;
mod faults_mapping;
mod faults_sts;
mod faults_sts_cap;
mod getrole_fallback;
mod harness;
mod hostile_http;
mod imds_flows;
mod isolation;
mod isolation_load;
mod logging;
mod mapping_reload;
mod metrics;
mod packaging;
mod packaging_image;
mod proxy;
mod sdk_clients;
mod secrets;
mod single_flight;
mod sts_failure;
mod tokens;
