//! The privileged integration tests, as one test binary (root; one test thread: `cargo xtask
//! test-privileged`): the eBPF programs really loaded into test cgroups and network namespaces.
//! A module's tests are selected by its path, e.g.
//! `cargo test -p metadataproxy-privileged-tests --test privileged -- --ignored --test-threads=1 redirect::`.

mod common;

mod faults_restart;
mod forwarding;
mod guard;
mod identity;
mod least_privilege;
mod redirect;
