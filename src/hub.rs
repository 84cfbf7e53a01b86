//! The hub: this replica's registry of channels and their local subscribers.
//!
//! Each channel with at least one local subscriber has one backplane
//! subscription (taken with the first subscriber, dropped after the last). Events
//! from the backplane are framed once and the same bytes are queued to every
//! local subscriber; a subscriber whose bounded queue is full is cut off (it
//! reconnects and resumes from history) instead of growing memory.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::watch;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::backplane::{Backplane, BackplaneError, EventSink, ReplicaReport};
use crate::event::{EventBody, Frame, Position};
use crate::queue::{EventQueue, Offer};

/// Index of a delivery that belongs to no channel of the stream (a broadcast).
pub const NO_CHANNEL: u16 = u16::MAX;

/// One queued item of a stream: a shared frame and which of the stream's
/// channels it belongs to.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// Index into the stream's channels, or [`NO_CHANNEL`].
    pub index: u16,
    /// The framed event, shared by every local subscriber.
    pub frame: Arc<Frame>,
}

/// A connection as the hub sees it: where to queue its events.
struct Connection {
    id: u64,
    queue: Arc<EventQueue>,
}

struct Subscriber {
    connection: Arc<Connection>,
    index: u16,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Readiness {
    Pending,
    Live,
    Failed(String),
}

struct ChannelSlot {
    name: Arc<str>,
    // A std mutex: held only to read or fan out, never across an await.
    inner: Mutex<ChannelInner>,
    readiness: watch::Sender<Readiness>,
}

struct ChannelInner {
    subscribers: Vec<Subscriber>,
    /// The last position handed to subscribers; older or equal positions are
    /// duplicates (after a reconnect catch-up) and are dropped.
    position: Position,
}

/// This replica's channels and local subscribers.
pub struct Hub {
    backplane: Arc<dyn Backplane>,
    replica_id: String,
    // Lock order: `channels`, then a slot's `inner`. Registration and removal
    // hold both so that a subscriber never joins a slot that is being removed.
    channels: Mutex<HashMap<Arc<str>, Arc<ChannelSlot>>>,
    connections: Mutex<HashMap<u64, Arc<Connection>>>,
    next_connection: AtomicU64,
    slow_disconnects: AtomicU64,
    dropped_events: AtomicU64,
    // Handles looked up once: the per-event path only adds to them.
    delivered: metrics::Counter,
    lag: metrics::Histogram,
    /// Parked queues with deliveries since the last [`EventSink::end_of_batch`].
    to_flush: Mutex<Vec<Arc<Connection>>>,
}

/// An event reaching more parked streams than this (a wide channel, a
/// broadcast) is written by the streams' tasks rather than by the hub: spread
/// over the runtime's threads, interleaved with other work (publishes), and
/// coalescing the events of a busy stream. Events of narrower channels are
/// written by the hub at the end of the batch, without waking a task per
/// stream: their streams get one event per batch, with nothing to coalesce.
const FLUSH_LIMIT: usize = 64;

/// A channel refused a new stream because it has its most subscribers.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("channel {channel:?} has its maximum of {limit} subscribers on this replica")]
pub struct ChannelFull {
    /// The channel.
    pub channel: String,
    /// Its limit.
    pub limit: u64,
}

/// How a new stream wants to be queued and limited.
#[derive(Debug, Clone)]
pub struct StreamLimits {
    /// Queue length.
    pub queue_events: usize,
    /// Drop the oldest events instead of cutting the stream off.
    pub drop_oldest: bool,
    /// Per channel: most local subscribers.
    pub max_subscribers: Vec<Option<u64>>,
}

/// Figures of one channel for diagnostics.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ChannelFigures {
    /// The channel.
    pub channel: String,
    /// Local streams subscribed to it.
    pub local_subscribers: usize,
}

impl Hub {
    /// A hub over `backplane`; call [`Hub::start`] to begin receiving.
    pub fn new(backplane: Arc<dyn Backplane>, replica_id: String) -> Arc<Hub> {
        Arc::new(Hub {
            backplane,
            replica_id,
            channels: Mutex::new(HashMap::new()),
            connections: Mutex::new(HashMap::new()),
            next_connection: AtomicU64::new(1),
            slow_disconnects: AtomicU64::new(0),
            dropped_events: AtomicU64::new(0),
            delivered: metrics::counter!(crate::metrics::EVENTS_DELIVERED),
            lag: metrics::histogram!(crate::metrics::DELIVER_LAG),
            to_flush: Mutex::new(Vec::new()),
        })
    }

    /// Starts the backplane with this hub as its sink.
    pub fn start(self: &Arc<Self>) {
        self.backplane.start(self.clone());
    }

    /// The backplane behind this hub.
    pub fn backplane(&self) -> &Arc<dyn Backplane> {
        &self.backplane
    }

    /// This replica's id.
    pub fn replica_id(&self) -> &str {
        &self.replica_id
    }

    /// Registers a stream on `channels`. The subscription is live once
    /// [`Subscription::ready`] resolves. Refused when a channel is at its limit.
    pub fn subscribe(
        self: &Arc<Self>,
        channels: &[Arc<str>],
        limits: &StreamLimits,
    ) -> Result<Subscription, ChannelFull> {
        let connection = Arc::new(Connection {
            id: self.next_connection.fetch_add(1, Ordering::Relaxed),
            queue: Arc::new(EventQueue::new(limits.queue_events, limits.drop_oldest)),
        });
        let mut slots = Vec::with_capacity(channels.len());
        {
            let mut map = self.channels.lock().expect("hub lock");
            for (index, name) in channels.iter().enumerate() {
                let limit = limits.max_subscribers.get(index).copied().flatten();
                if let (Some(limit), Some(slot)) = (limit, map.get(name)) {
                    if slot.inner.lock().expect("slot lock").subscribers.len() as u64 >= limit {
                        drop(map);
                        self.unsubscribe(&connection, &slots);
                        return Err(ChannelFull {
                            channel: name.to_string(),
                            limit,
                        });
                    }
                }
                let slot = map
                    .entry(name.clone())
                    .or_insert_with(|| self.new_slot(name.clone()));
                slot.inner
                    .lock()
                    .expect("slot lock")
                    .subscribers
                    .push(Subscriber {
                        connection: connection.clone(),
                        index: index as u16,
                    });
                slots.push(slot.clone());
            }
        }
        self.connections
            .lock()
            .expect("hub lock")
            .insert(connection.id, connection.clone());
        metrics::gauge!(crate::metrics::OPEN_STREAMS).increment(1.0);
        Ok(Subscription {
            hub: self.clone(),
            connection,
            slots,
        })
    }

    /// Creates a slot and asks the backplane for the channel. Called with the
    /// channels lock held: the backplane only queues the request here (so that
    /// subscribe and unsubscribe of one channel stay in order) and the answer is
    /// awaited on a task of its own.
    fn new_slot(&self, name: Arc<str>) -> Arc<ChannelSlot> {
        let slot = Arc::new(ChannelSlot {
            name: name.clone(),
            inner: Mutex::new(ChannelInner {
                subscribers: Vec::new(),
                position: Position::ZERO,
            }),
            readiness: watch::Sender::new(Readiness::Pending),
        });
        let subscribed = self.backplane.subscribe(name);
        let waiting = slot.clone();
        tokio::spawn(async move {
            let readiness = match subscribed.await {
                Ok(position) => {
                    let mut inner = waiting.inner.lock().expect("slot lock");
                    inner.position = inner.position.max(position);
                    Readiness::Live
                }
                Err(e) => Readiness::Failed(e.to_string()),
            };
            waiting.readiness.send_replace(readiness);
        });
        slot
    }

    fn unsubscribe(&self, connection: &Connection, slots: &[Arc<ChannelSlot>]) {
        {
            let mut map = self.channels.lock().expect("hub lock");
            for slot in slots {
                let mut inner = slot.inner.lock().expect("slot lock");
                inner
                    .subscribers
                    .retain(|s| s.connection.id != connection.id);
                let current = map.get(&slot.name).is_some_and(|s| Arc::ptr_eq(s, slot));
                if inner.subscribers.is_empty() && current {
                    map.remove(&slot.name);
                    // A slot whose subscription failed never subscribed.
                    if !matches!(*slot.readiness.borrow(), Readiness::Failed(_)) {
                        self.backplane.unsubscribe(slot.name.clone());
                    }
                }
            }
        }
        self.connections
            .lock()
            .expect("hub lock")
            .remove(&connection.id);
    }

    fn slot(&self, channel: &str) -> Option<Arc<ChannelSlot>> {
        self.channels
            .lock()
            .expect("hub lock")
            .get(channel)
            .cloned()
    }

    /// Queues `frame` to every subscriber, cutting off those whose queue is full.
    fn fan_out(&self, subscribers: &mut Vec<Subscriber>, frame: &Arc<Frame>) {
        let mut to_flush = self.to_flush.lock().expect("hub lock");
        let listed_before = to_flush.len();
        subscribers.retain(|s| self.offer(&s.connection, s.index, frame, &mut to_flush));
        if to_flush.len() - listed_before > FLUSH_LIMIT {
            let wide = to_flush.split_off(listed_before);
            drop(to_flush);
            for connection in wide {
                connection.queue.hand_over();
            }
        }
    }

    /// Queues one delivery (listing a parked queue for the next flush); false
    /// when the connection is gone or was cut off.
    fn offer(
        &self,
        connection: &Arc<Connection>,
        index: u16,
        frame: &Arc<Frame>,
        to_flush: &mut Vec<Arc<Connection>>,
    ) -> bool {
        let (offer, list) = connection.queue.push(Delivery {
            index,
            frame: frame.clone(),
        });
        if list {
            to_flush.push(connection.clone());
        }
        match offer {
            Offer::Queued => true,
            Offer::DroppedOldest => {
                self.dropped_events.fetch_add(1, Ordering::Relaxed);
                metrics::counter!(crate::metrics::SLOW_CONSUMERS, "reason" => "dropped_oldest")
                    .increment(1);
                true
            }
            Offer::CutOff => {
                self.slow_disconnects.fetch_add(1, Ordering::Relaxed);
                metrics::counter!(crate::metrics::SLOW_CONSUMERS, "reason" => "disconnected")
                    .increment(1);
                tracing::info!(connection = connection.id, "cutting off a slow consumer");
                false
            }
            Offer::Closed => false,
        }
    }

    /// Channels with local subscribers and their counts, sorted by name.
    pub fn channel_figures(&self) -> Vec<ChannelFigures> {
        let slots: Vec<Arc<ChannelSlot>> = self
            .channels
            .lock()
            .expect("hub lock")
            .values()
            .cloned()
            .collect();
        let mut figures: Vec<ChannelFigures> = slots
            .iter()
            .map(|slot| ChannelFigures {
                channel: slot.name.to_string(),
                local_subscribers: slot.inner.lock().expect("slot lock").subscribers.len(),
            })
            .collect();
        figures.sort_by(|a, b| a.channel.cmp(&b.channel));
        figures
    }

    /// Open streams on this replica.
    pub fn open_streams(&self) -> usize {
        self.connections.lock().expect("hub lock").len()
    }

    /// Streams cut off because they could not keep up, since start.
    pub fn slow_disconnects(&self) -> u64 {
        self.slow_disconnects.load(Ordering::Relaxed)
    }

    /// Events dropped from slow streams' queues (drop-oldest policies), since start.
    pub fn dropped_events(&self) -> u64 {
        self.dropped_events.load(Ordering::Relaxed)
    }

    /// Local subscribers of `channel`.
    pub fn local_subscribers(&self, channel: &str) -> usize {
        self.slot(channel)
            .map(|s| s.inner.lock().expect("slot lock").subscribers.len())
            .unwrap_or(0)
    }
}

impl EventSink for Hub {
    fn deliver(&self, channel: &str, position: Position, body: &EventBody) {
        let Some(slot) = self.slot(channel) else {
            return;
        };
        let frame = Arc::new(Frame::new(Some(position), body));
        let reached = {
            let mut inner = slot.inner.lock().expect("slot lock");
            if position <= inner.position {
                return;
            }
            inner.position = position;
            self.fan_out(&mut inner.subscribers, &frame);
            inner.subscribers.len()
        };
        // One span and a few counter updates per event and replica, whatever
        // the number of subscribers.
        let lag = crate::event::now_ms().saturating_sub(body.published_ms);
        self.delivered.increment(reached as u64);
        self.lag.record(lag as f64 / 1000.0);
        if crate::telemetry::tracing_on() && !body.trace_parent.is_empty() {
            let span = tracing::info_span!(
                "sseplane.deliver",
                otel.kind = "consumer",
                messaging.destination.name = channel,
                sseplane.event_id = %position,
                sseplane.replica = %self.replica_id,
                sseplane.subscribers = reached,
                sseplane.lag_ms = lag,
            );
            let _ = span.set_parent(crate::telemetry::context_from_traceparent(
                &body.trace_parent,
            ));
        }
    }

    fn deliver_broadcast(&self, body: &EventBody) {
        let frame = Arc::new(Frame::new(None, body));
        let connections: Vec<Arc<Connection>> = self
            .connections
            .lock()
            .expect("hub lock")
            .values()
            .cloned()
            .collect();
        let mut listed = Vec::new();
        for connection in connections {
            self.offer(&connection, NO_CHANNEL, &frame, &mut listed);
        }
        if listed.len() > FLUSH_LIMIT {
            for connection in listed {
                connection.queue.hand_over();
            }
        } else {
            self.to_flush.lock().expect("hub lock").append(&mut listed);
        }
    }

    fn end_of_batch(&self) {
        let mut batch = std::mem::take(&mut *self.to_flush.lock().expect("hub lock"));
        if batch.is_empty() {
            return;
        }
        let now = tokio::time::Instant::now();
        for connection in batch.drain(..) {
            connection.queue.flush(now);
        }
        // Keep the allocation for the next batch.
        let mut list = self.to_flush.lock().expect("hub lock");
        if list.is_empty() {
            *list = batch;
        }
    }

    fn deliver_gap(&self, channel: &str) {
        let Some(slot) = self.slot(channel) else {
            return;
        };
        let frame = Arc::new(Frame {
            position: None,
            bytes: crate::sse::gap_frame(&[channel]),
            body_start: 0,
            published_ms: crate::event::now_ms(),
        });
        let mut inner = slot.inner.lock().expect("slot lock");
        self.fan_out(&mut inner.subscribers, &frame);
    }

    fn position(&self, channel: &str) -> Option<Position> {
        let slot = self.slot(channel)?;
        let position = slot.inner.lock().expect("slot lock").position;
        Some(position)
    }

    fn report(&self) -> ReplicaReport {
        let figures = self.channel_figures();
        ReplicaReport {
            replica: self.replica_id.clone(),
            total_channels: figures.len(),
            total_local_subscribers: figures.iter().map(|f| f.local_subscribers).sum(),
            last_seen: crate::backplane::rfc3339_ms(crate::event::now_ms()),
        }
    }
}

/// A stream's registration in the hub; dropping it unsubscribes.
pub struct Subscription {
    hub: Arc<Hub>,
    connection: Arc<Connection>,
    slots: Vec<Arc<ChannelSlot>>,
}

impl Subscription {
    /// Waits until every channel is live on the backplane, then returns the
    /// position of each: every event after these positions will be queued.
    pub async fn ready(&self) -> Result<Vec<Position>, BackplaneError> {
        let mut positions = Vec::with_capacity(self.slots.len());
        for slot in &self.slots {
            let mut readiness = slot.readiness.subscribe();
            let state = readiness
                .wait_for(|r| *r != Readiness::Pending)
                .await
                .map(|r| r.clone())
                .unwrap_or(Readiness::Failed("hub stopped".into()));
            if let Readiness::Failed(reason) = state {
                return Err(BackplaneError::Unavailable(reason));
            }
            positions.push(slot.inner.lock().expect("slot lock").position);
        }
        Ok(positions)
    }

    /// The queue the hub fills.
    pub fn queue(&self) -> &Arc<EventQueue> {
        &self.connection.queue
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        metrics::gauge!(crate::metrics::OPEN_STREAMS).decrement(1.0);
        self.connection.queue.close();
        self.hub.unsubscribe(&self.connection, &self.slots);
    }
}
