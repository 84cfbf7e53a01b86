//! Channel policies: what the hub and the HTTP handlers ask about a channel.
//!
//! Today every channel gets the default policy built from flags; the
//! `ChannelPolicy` resources and files feed the same [`PolicyStore`] later.

use std::sync::Arc;
use std::time::Duration;

/// How much of a channel's past is kept for replay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// At most this many events (0 = no replay).
    pub max_events: u64,
    /// At most this old (zero = no replay).
    pub max_age: Duration,
}

impl Retention {
    /// True when events are kept at all.
    pub fn keeps_history(&self) -> bool {
        self.max_events > 0 && !self.max_age.is_zero()
    }
}

/// The behaviour that applies to one channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EffectivePolicy {
    /// Where the policy came from (`default` for the flags).
    pub source: String,
    /// A `: keepalive` comment is sent after this much quiet.
    pub keepalive: Duration,
    /// The `retry:` directive given to clients.
    pub retry: Duration,
    /// History kept for replay.
    pub history: Retention,
    /// Largest publish body accepted, in bytes.
    pub max_payload_bytes: usize,
    /// Events queued per connection before a slow client is cut off.
    pub queue_events: usize,
}

/// Resolves a channel name to its effective policy.
#[derive(Debug, Clone)]
pub struct PolicyStore {
    default: Arc<EffectivePolicy>,
}

impl PolicyStore {
    /// A store that answers `default` for every channel.
    pub fn new(default: EffectivePolicy) -> PolicyStore {
        PolicyStore {
            default: Arc::new(default),
        }
    }

    /// The policy of `channel`.
    pub fn resolve(&self, _channel: &str) -> Arc<EffectivePolicy> {
        self.default.clone()
    }

    /// The largest publish body any policy accepts (the limit for reading bodies).
    pub fn max_payload_bytes(&self) -> usize {
        self.default.max_payload_bytes
    }

    /// True once every configured policy source has been read.
    pub fn synced(&self) -> bool {
        true
    }
}
