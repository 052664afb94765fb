//! Fuzz target `imds_path`: see `metadataproxy::fuzzing::imds_path` for what it checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| metadataproxy::fuzzing::imds_path(data));
