//! Fuzz target `imds_token`: see `metadataproxy::fuzzing::imds_token` for what it checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| metadataproxy::fuzzing::imds_token(data));
