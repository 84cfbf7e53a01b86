//! Durations as users write them (`250ms`, `15s`, `1h`, `1h30m`): one parser
//! for flags, policies and the bench, with no dependency on the rest of the
//! crate.

use std::time::Duration;

/// Parses `250ms`, `15s`, `1h`, `1h30m`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{e} (write durations like 250ms, 15s, 1h)"))
}
