//! `cargo fuzz run sse_framing`: see `sseplane::fuzz_targets::sse_framing`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| sseplane::fuzz_targets::sse_framing(data));
