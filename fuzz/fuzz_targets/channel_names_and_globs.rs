//! `cargo fuzz run channel_names_and_globs`: see `sseplane::fuzz_targets::channel_names_and_globs`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| sseplane::fuzz_targets::channel_names_and_globs(data));
