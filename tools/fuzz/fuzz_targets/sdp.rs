#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| conclave_fuzz::sdp(data));
