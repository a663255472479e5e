//! See `imrouter::fuzzing::verifier_differential`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| imrouter::fuzzing::verifier_differential(data));
