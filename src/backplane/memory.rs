//! The in-memory backplane: one instance, nothing to install, the same semantics
//! as Redis (ids, bounded history, resume, gaps).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use futures_util::future::{self, BoxFuture};

use super::{Backplane, BackplaneError, Check, Health, History, PublishItem, ReplicaReport};
use crate::backplane::EventSink;
use crate::event::{now_ms, EventBody, Position};

/// History of one channel.
#[derive(Default)]
struct ChannelLog {
    last: Position,
    /// Highest position dropped from history (for gap detection).
    trimmed_up_to: Position,
    events: VecDeque<(Position, EventBody)>,
}

impl ChannelLog {
    fn trim(&mut self, max_events: u64, max_age: Duration, now: u64) {
        let oldest_kept = now.saturating_sub(max_age.as_millis() as u64);
        while let Some((pos, _)) = self.events.front() {
            if self.events.len() as u64 > max_events || pos.ms < oldest_kept {
                self.trimmed_up_to = *pos;
                self.events.pop_front();
            } else {
                break;
            }
        }
    }
}

/// Backplane for a single instance.
#[derive(Default)]
pub struct MemoryBackplane {
    // A std mutex: it is never held across an await. Publishing holds it while
    // handing the events to the sink so that delivery order is publish order.
    logs: Arc<Mutex<HashMap<String, ChannelLog>>>,
    sink: OnceLock<Arc<dyn EventSink>>,
}

impl MemoryBackplane {
    /// A new, empty backplane.
    pub fn new() -> MemoryBackplane {
        MemoryBackplane::default()
    }
}

impl Backplane for MemoryBackplane {
    fn kind(&self) -> &'static str {
        "memory"
    }

    fn start(&self, sink: Arc<dyn EventSink>) {
        let _ = self.sink.set(sink);
    }

    fn publish<'a>(
        &'a self,
        items: &'a [PublishItem<'a>],
    ) -> BoxFuture<'a, Result<Vec<Position>, BackplaneError>> {
        let now = now_ms();
        let mut logs = self.logs.lock().expect("memory backplane lock poisoned");
        let mut positions = Vec::with_capacity(items.len());
        for item in items {
            let log = logs.entry(item.channel.to_owned()).or_default();
            let position = log.last.next_after(now);
            log.last = position;
            log.events.push_back((position, item.body.clone()));
            let retention = item.retention;
            let max_events = if retention.keeps_history() {
                retention.max_events
            } else {
                0
            };
            log.trim(max_events, retention.max_age, now);
            if let Some(sink) = self.sink.get() {
                sink.deliver(item.channel, position, item.body);
            }
            positions.push(position);
        }
        if let Some(sink) = self.sink.get() {
            sink.flush();
        }
        Box::pin(future::ready(Ok(positions)))
    }

    fn broadcast<'a>(
        &'a self,
        body: &'a EventBody,
    ) -> BoxFuture<'a, Result<usize, BackplaneError>> {
        if let Some(sink) = self.sink.get() {
            sink.deliver_broadcast(body);
            sink.flush();
        }
        Box::pin(future::ready(Ok(1)))
    }

    fn subscribe(&self, channel: Arc<str>) -> BoxFuture<'static, Result<Position, BackplaneError>> {
        // The lock is taken when the future runs, not here: the hub calls this
        // with its own lock held, and publishing takes the two the other way round.
        let logs = self.logs.clone();
        Box::pin(async move {
            let logs = logs.lock().expect("memory backplane lock poisoned");
            Ok(logs.get(&*channel).map(|log| log.last).unwrap_or_default())
        })
    }

    fn unsubscribe(&self, _channel: Arc<str>) {}

    fn history<'a>(
        &'a self,
        channel: &'a str,
        after: Position,
        max_age: Duration,
        limit: usize,
    ) -> BoxFuture<'a, Result<History, BackplaneError>> {
        let mut logs = self.logs.lock().expect("memory backplane lock poisoned");
        let history = match logs.get_mut(channel) {
            None => History::default(),
            Some(log) => {
                log.trim(u64::MAX, max_age, now_ms());
                let events: Vec<_> = log
                    .events
                    .iter()
                    .filter(|(pos, _)| *pos > after)
                    .take(limit)
                    .cloned()
                    .collect();
                History {
                    exists: true,
                    last: log.last,
                    gap: log.trimmed_up_to > after,
                    events,
                }
            }
        };
        Box::pin(future::ready(Ok(history)))
    }

    fn health(&self) -> Health {
        Health {
            redis: Check::ok("in-memory backplane: no Redis in use"),
            subscription: Check::ok("in-memory backplane: always live"),
        }
    }

    fn replicas(&self) -> BoxFuture<'_, Result<Vec<ReplicaReport>, BackplaneError>> {
        let reports = self
            .sink
            .get()
            .map(|sink| vec![sink.report()])
            .unwrap_or_default();
        Box::pin(future::ready(Ok(reports)))
    }
}
