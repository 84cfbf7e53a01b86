//! Command-line helpers for people: `sseplane publish` and `sseplane watch`.

pub mod publish;
pub mod watch;
