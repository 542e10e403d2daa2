#![no_main]
//! cargo fuzz run node_frame (see fuzz/README.md); the oracle is keel_fuzz::node::node_frame.

libfuzzer_sys::fuzz_target!(|data: &[u8]| keel_fuzz::node::node_frame(data));
