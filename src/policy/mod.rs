//! Channel policies: what the hub and the HTTP handlers ask about a channel.
//!
//! [`crd`] holds the `ChannelPolicy` types, [`store`] resolves a channel to its
//! [`EffectivePolicy`], and two sources feed the store: [`file`] (YAML files,
//! reloaded on change) and [`kube`] (a watcher on the cluster's resources).

pub mod compile;
pub mod crd;
pub mod file;
pub mod kube;
pub mod store;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

pub use crd::{AuthSpec, SlowConsumerAction};

/// Which actions on a channel need a token (when auth is on).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct AuthRequirement {
    /// Opening a stream needs a token covering the channel.
    pub subscribe: bool,
    /// Publishing needs a token covering the channel.
    pub publish: bool,
}

pub use store::{PolicyStore, SourceHandle};

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

/// A compiled JSON Schema for event data.
#[derive(Clone)]
pub struct DataSchema(pub Arc<jsonschema::Validator>);

impl fmt::Debug for DataSchema {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DataSchema")
    }
}

/// Most channels whose buckets a rate limit keeps: past it, buckets that are
/// full again (indistinguishable from new ones) are dropped, and when every
/// bucket is in use, channels it does not know yet share one bucket.
const MAX_TRACKED_CHANNELS: usize = 10_000;
/// The bucket shared by channels beyond [`MAX_TRACKED_CHANNELS`] (no channel
/// name is empty).
const OVERFLOW_BUCKET: &str = "";

/// Publish rate limit of a policy: one token bucket per channel, bounded in
/// number (a flood of channel names costs no more memory than
/// [`MAX_TRACKED_CHANNELS`] buckets).
#[derive(Clone)]
pub struct RateLimit {
    /// Sustained publishes per second.
    pub per_second: u32,
    /// Burst above the rate.
    pub burst: u32,
    limiter: Arc<governor::DefaultKeyedRateLimiter<String>>,
}

impl fmt::Debug for RateLimit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RateLimit({}/s, burst {})", self.per_second, self.burst)
    }
}

impl RateLimit {
    /// A limit of `per_second` with `burst`.
    pub fn new(per_second: u32, burst: u32) -> RateLimit {
        use std::num::NonZeroU32;
        let rate = NonZeroU32::new(per_second.max(1)).expect("non-zero");
        let burst_n = NonZeroU32::new(burst.max(1)).expect("non-zero");
        let quota = governor::Quota::per_second(rate).allow_burst(burst_n);
        RateLimit {
            per_second,
            burst,
            limiter: Arc::new(governor::RateLimiter::keyed(quota)),
        }
    }

    /// Takes a token for `channel`; when none is left, how long until one is.
    pub fn check(&self, channel: &str) -> Result<(), Duration> {
        self.check_n(channel, 1)
    }

    /// Takes `n` tokens for `key` at once; when they are not there, how long
    /// until they are (`Duration::MAX` when `n` is over the burst).
    pub fn check_n(&self, key: &str, n: u32) -> Result<(), Duration> {
        use governor::clock::{Clock, DefaultClock};
        let Some(n) = std::num::NonZeroU32::new(n) else {
            return Ok(());
        };
        let mut key = key;
        if self.limiter.len() >= MAX_TRACKED_CHANNELS {
            self.forget_idle();
            if self.limiter.len() >= MAX_TRACKED_CHANNELS {
                key = OVERFLOW_BUCKET;
            }
        }
        match self.limiter.check_key_n(&key.to_owned(), n) {
            Ok(Ok(())) => Ok(()),
            Ok(Err(not_until)) => Err(not_until.wait_time_from(DefaultClock::default().now())),
            Err(_insufficient) => Err(Duration::MAX),
        }
    }

    /// Drops the buckets that are full again (a new bucket would be the same)
    /// and gives their memory back.
    pub fn forget_idle(&self) {
        self.limiter.retain_recent();
        self.limiter.shrink_to_fit();
    }

    /// Buckets kept now.
    pub fn tracked_channels(&self) -> usize {
        self.limiter.len()
    }

    /// True when `other` limits the same way (same rate and burst).
    pub fn same_limit(&self, other: &RateLimit) -> bool {
        self.per_second == other.per_second && self.burst == other.burst
    }
}

/// The behaviour that applies to one channel.
#[derive(Debug, Clone)]
pub struct EffectivePolicy {
    /// `default`, or the `namespace/name` (or `file:name`) of the policy that won.
    pub source: String,
    /// A `: keepalive` comment is sent after this much quiet.
    pub keepalive: Duration,
    /// The `retry:` directive given to clients.
    pub retry: Duration,
    /// History kept for replay.
    pub history: Retention,
    /// Largest publish body accepted, in bytes.
    pub max_payload_bytes: usize,
    /// Events queued per connection before the slow-consumer action.
    pub queue_events: usize,
    /// What happens when the queue is full.
    pub slow_consumer: SlowConsumerAction,
    /// Most local streams on one channel.
    pub max_subscribers_per_replica: Option<u64>,
    /// Event types publishers may use (`None`: any).
    pub allowed_event_types: Option<Vec<String>>,
    /// JSON Schema the data must match.
    pub schema: Option<DataSchema>,
    /// Publish rate limit.
    pub rate_limit: Option<RateLimit>,
    /// Which actions need a token.
    pub auth: AuthRequirement,
}

impl EffectivePolicy {
    /// The policy built from flags, for channels no `ChannelPolicy` matches.
    pub fn defaults(
        keepalive: Duration,
        retry: Duration,
        history: Retention,
        max_payload_bytes: usize,
        queue_events: usize,
    ) -> EffectivePolicy {
        EffectivePolicy {
            source: "default".to_owned(),
            keepalive,
            retry,
            history,
            max_payload_bytes,
            queue_events,
            slow_consumer: SlowConsumerAction::Disconnect,
            max_subscribers_per_replica: None,
            allowed_event_types: None,
            schema: None,
            rate_limit: None,
            auth: AuthRequirement::default(),
        }
    }
}
