//! See `imrouter::fuzzing::node_core`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| imrouter::fuzzing::node_core(data));
