//! Fuzz target `role_string`: see `metadataproxy::fuzzing::role_string` for what it checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| metadataproxy::fuzzing::role_string(data));
