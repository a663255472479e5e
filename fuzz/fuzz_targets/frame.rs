//! See `imrouter::fuzzing::frame`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| imrouter::fuzzing::frame(data));
