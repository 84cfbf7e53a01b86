//! The backplane carries events between replicas and keeps per-channel history.
//!
//! Two implementations: [`memory::MemoryBackplane`] for one instance with
//! nothing to install, and [`redis::RedisBackplane`] for several replicas. Both
//! hand received events to an [`EventSink`] (the hub), in id order per channel.

pub mod memory;
mod pipeline;
pub mod redis;
pub mod shared_reads;

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use serde::Serialize;

use crate::event::{EventBody, Position};
use crate::policy::Retention;

/// Why the backplane could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum BackplaneError {
    /// Redis is unreachable, timed out, or refuses writes; nothing was done.
    #[error("backplane unavailable: {0}")]
    Unavailable(String),
    /// A publish that may not create channels named `count` channels that do
    /// not exist; nothing was done.
    #[error("{count} of the channels do not exist yet")]
    NewChannels {
        /// How many.
        count: u32,
    },
    /// A publish was sent to Redis but its answer did not come: it may or may
    /// not have been published.
    #[error("the publish was sent to Redis but no answer came: {0}")]
    OutcomeUnknown(String),
}

impl From<::redis::RedisError> for BackplaneError {
    fn from(e: ::redis::RedisError) -> Self {
        use ::redis::{ErrorKind, ServerErrorKind};
        if e.kind() == ErrorKind::Server(ServerErrorKind::ReadOnly) {
            return BackplaneError::Unavailable(format!(
                "READONLY: Redis refuses writes (a read-only replica, e.g. after a failover): {e}"
            ));
        }
        BackplaneError::Unavailable(e.to_string())
    }
}

/// One channel's part of a publish.
#[derive(Debug)]
pub struct PublishItem<'a> {
    /// The channel.
    pub channel: &'a str,
    /// The event.
    pub body: &'a EventBody,
    /// How much history the channel keeps.
    pub retention: Retention,
}

/// What history holds after a position.
#[derive(Debug, Default, Clone)]
pub struct History {
    /// False when the channel has no history at all (never published, expired,
    /// or lost with Redis's data).
    pub exists: bool,
    /// The channel's latest position.
    pub last: Position,
    /// True when some event after the asked position is no longer in history.
    pub gap: bool,
    /// The events after the asked position still in history, in order.
    pub events: Vec<(Position, EventBody)>,
}

/// One check of readiness.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    /// Whether the check passes.
    pub ok: bool,
    /// What was seen.
    pub message: String,
}

impl Check {
    /// A passing check.
    pub fn ok(message: impl Into<String>) -> Check {
        Check {
            ok: true,
            message: message.into(),
        }
    }

    /// A failing check.
    pub fn fail(message: impl Into<String>) -> Check {
        Check {
            ok: false,
            message: message.into(),
        }
    }
}

/// The backplane's part of readiness.
#[derive(Debug, Clone)]
pub struct Health {
    /// Redis answers within the timeout and accepts writes.
    pub redis: Check,
    /// The pub/sub subscription is live.
    pub subscription: Check,
}

impl Health {
    /// True when events can be published and received.
    pub fn is_up(&self) -> bool {
        self.redis.ok && self.subscription.ok
    }
}

/// One replica's figures as shared with the others.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ReplicaReport {
    /// The replica's id.
    pub replica: String,
    /// Channels with local subscribers.
    pub total_channels: usize,
    /// Open local subscriptions (a stream of several channels counts once per channel).
    pub total_local_subscribers: usize,
    /// When the replica last reported (RFC 3339).
    pub last_seen: String,
}

/// Receives what the backplane brings in. Calls for one channel never overlap
/// and come in id order.
pub trait EventSink: Send + Sync + 'static {
    /// A published event for `channel`.
    fn deliver(&self, channel: &str, position: Position, body: &EventBody);
    /// A broadcast for every local stream.
    fn deliver_broadcast(&self, body: &EventBody);
    /// Events of `channel` were lost before this replica could receive them.
    fn deliver_gap(&self, channel: &str);
    /// Ends a batch of deliveries: what was queued for parked streams is written
    /// now. A backplane calls it after every run of `deliver*` calls (after each
    /// message it received, or after the messages that were ready at once).
    fn end_of_batch(&self);
    /// The last position of `channel` handed to this sink, if it has subscribers.
    fn position(&self, channel: &str) -> Option<Position>;
    /// This replica's figures, for the cluster view.
    fn report(&self) -> ReplicaReport;
}

/// Moves events between replicas and keeps their history.
pub trait Backplane: Send + Sync + 'static {
    /// `memory` or `redis`.
    fn kind(&self) -> &'static str;

    /// Starts background work; received events go to `sink`.
    fn start(&self, sink: Arc<dyn EventSink>);

    /// Appends each item to its channel's history and notifies every replica, as
    /// one atomic step: either all items are published or none is. Returns the
    /// position of each item. Unless `create` is set, a channel with no state
    /// yet (never published, or expired) makes it publish nothing and answer
    /// [`BackplaneError::NewChannels`].
    fn publish<'a>(
        &'a self,
        items: &'a [PublishItem<'a>],
        create: bool,
    ) -> BoxFuture<'a, Result<Vec<Position>, BackplaneError>>;

    /// Sends an event to every stream of every replica; returns the replicas reached.
    fn broadcast<'a>(&'a self, body: &'a EventBody)
        -> BoxFuture<'a, Result<usize, BackplaneError>>;

    /// Starts live delivery of `channel` to this replica. Resolves once live, with
    /// the channel's position at that moment: every later event reaches the sink.
    fn subscribe(&self, channel: Arc<str>) -> BoxFuture<'static, Result<Position, BackplaneError>>;

    /// Stops live delivery of `channel` to this replica.
    fn unsubscribe(&self, channel: Arc<str>);

    /// What history holds after `after`: the newest `limit` events, none older
    /// than `max_age`. The caller's live delivery of `channel` has been in place
    /// since `live_since`, so a read sent after that instant serves it and may
    /// be shared with other resumes.
    fn history<'a>(
        &'a self,
        channel: &'a str,
        after: Position,
        max_age: Duration,
        limit: usize,
        live_since: tokio::time::Instant,
    ) -> BoxFuture<'a, Result<Arc<History>, BackplaneError>>;

    /// The backplane's readiness.
    fn health(&self) -> Health;

    /// Every live replica's figures (only this one on the memory backplane).
    fn replicas(&self) -> BoxFuture<'_, Result<Vec<ReplicaReport>, BackplaneError>>;
}

/// Formats Unix milliseconds as RFC 3339.
pub fn rfc3339_ms(ms: u64) -> String {
    humantime::format_rfc3339_millis(std::time::UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}
