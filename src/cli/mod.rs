//! Command-line helpers for people: `sseplane publish`, `sseplane watch` and
//! `sseplane token`.

pub mod publish;
pub mod token;
pub mod watch;
