#![no_main]
//! cargo fuzz run recovery (see fuzz/README.md); the oracle is keel_fuzz::recovery.

libfuzzer_sys::fuzz_target!(|data: &[u8]| keel_fuzz::recovery(data));
