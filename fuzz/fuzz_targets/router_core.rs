//! See `imrouter::fuzzing::router_core`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| imrouter::fuzzing::router_core(data));
