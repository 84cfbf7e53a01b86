//! `cargo fuzz run envelope`: see `sseplane::fuzz_targets::envelope`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| sseplane::fuzz_targets::envelope(data));
