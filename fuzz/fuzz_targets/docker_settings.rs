//! Fuzz target `docker_settings`: see `metadataproxy::fuzzing::docker_settings` for what it checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| metadataproxy::fuzzing::docker_settings(data));
