//! `cargo fuzz run last_event_id`: see `sseplane::fuzz_targets::last_event_id`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| sseplane::fuzz_targets::last_event_id(data));
