//! Fuzz target `role_policy`: see `metadataproxy::fuzzing::role_policy` for what it checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| metadataproxy::fuzzing::role_policy(data));
