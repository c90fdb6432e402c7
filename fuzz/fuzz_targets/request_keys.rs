#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| deja_fuzz::properties::request_keys(data));
