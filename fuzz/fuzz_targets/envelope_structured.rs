#![no_main]

libfuzzer_sys::fuzz_target!(|input: &[u8]| choreo_fuzz::envelope_structured(input));
