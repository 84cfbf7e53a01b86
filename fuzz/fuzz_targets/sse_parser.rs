//! `cargo fuzz run sse_parser`: see `sseplane::fuzz_targets::sse_parser`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| sseplane::fuzz_targets::sse_parser(data));
