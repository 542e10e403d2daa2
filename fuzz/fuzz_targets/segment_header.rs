#![no_main]
//! cargo fuzz run segment_header (see fuzz/README.md); the oracle is keel_fuzz::segment_header.

libfuzzer_sys::fuzz_target!(|data: &[u8]| keel_fuzz::segment_header(data));
