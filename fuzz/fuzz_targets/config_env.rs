//! Fuzz target `config_env`: see `metadataproxy::fuzzing::config_env` for what it checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| metadataproxy::fuzzing::config_env(data));
