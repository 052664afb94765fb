//! Fuzz target `mapping_file`: see `metadataproxy::fuzzing::mapping_file` for what it checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| metadataproxy::fuzzing::mapping_file(data));
