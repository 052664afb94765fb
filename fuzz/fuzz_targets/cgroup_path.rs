//! Fuzz target `cgroup_path`: see `metadataproxy::fuzzing::cgroup_path` for what it checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| metadataproxy::fuzzing::cgroup_path(data));
