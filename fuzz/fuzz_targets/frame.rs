#![no_main]
//! cargo fuzz run frame (see fuzz/README.md); the oracle is keel_fuzz::frame.

libfuzzer_sys::fuzz_target!(|data: &[u8]| keel_fuzz::frame(data));
