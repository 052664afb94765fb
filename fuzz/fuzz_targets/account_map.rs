//! Fuzz target `account_map`: see `metadataproxy::fuzzing::account_map` for what it checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| metadataproxy::fuzzing::account_map(data));
