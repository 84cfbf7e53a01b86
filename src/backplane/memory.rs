//! The in-memory backplane: one instance, nothing to install, the same semantics
//! as Redis (ids, bounded history, resume, gaps).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use futures_util::future::{self, BoxFuture};

use super::{Backplane, BackplaneError, Check, Health, History, PublishItem, ReplicaReport};
use crate::backplane::EventSink;
use crate::event::{now_ms, EventBody, Position};

/// A channel whose history is empty is forgotten once its last event is this
/// old: memory follows what channels keep, not how many names were ever used.
/// (A resume on a forgotten channel gets `sseplane.gap`, as after Redis loses
/// a channel's keys: nothing can tell whether events were missed.)
const FORGET_IDLE_AFTER_MS: u64 = 10_000;
/// How often idle channels are looked for.
const SWEEP_EVERY: Duration = Duration::from_secs(5);

/// History of one channel.
#[derive(Default)]
struct ChannelLog {
    last: Position,
    /// Highest position dropped from history (for gap detection).
    trimmed_up_to: Position,
    events: VecDeque<(Position, EventBody)>,
    /// How long its events are kept (from its latest publish).
    max_age: Duration,
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
        if self.events.is_empty() && self.events.capacity() > 0 {
            // An empty history holds no buffer: a channel that keeps none
            // costs its name and ids only.
            self.events = VecDeque::new();
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

    /// Channels this backplane holds state for.
    pub fn channels(&self) -> usize {
        self.logs
            .lock()
            .expect("memory backplane lock poisoned")
            .len()
    }

    /// Drops events past their age and forgets channels with nothing left
    /// whose last event is older than [`FORGET_IDLE_AFTER_MS`].
    pub fn forget_idle(&self, now: u64) {
        forget_idle(&self.logs, now);
    }
}

fn forget_idle(logs: &Mutex<HashMap<String, ChannelLog>>, now: u64) {
    let mut logs = logs.lock().expect("memory backplane lock poisoned");
    logs.retain(|_, log| {
        log.trim(u64::MAX, log.max_age, now);
        !log.events.is_empty() || log.last.ms + FORGET_IDLE_AFTER_MS > now
    });
    if logs.capacity() > 64 && logs.capacity() > 4 * logs.len() {
        logs.shrink_to_fit();
    }
    metrics::gauge!(crate::metrics::BACKPLANE_CHANNELS).set(logs.len() as f64);
}

impl Backplane for MemoryBackplane {
    fn kind(&self) -> &'static str {
        "memory"
    }

    fn start(&self, sink: Arc<dyn EventSink>) {
        if self.sink.set(sink).is_err() {
            return;
        }
        let logs = Arc::downgrade(&self.logs);
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval(SWEEP_EVERY);
            loop {
                ticker.tick().await;
                let Some(logs) = logs.upgrade() else { return };
                forget_idle(&logs, now_ms());
            }
        });
    }

    fn publish<'a>(
        &'a self,
        items: &'a [PublishItem<'a>],
        create: bool,
    ) -> BoxFuture<'a, Result<Vec<Position>, BackplaneError>> {
        let now = now_ms();
        let mut logs = self.logs.lock().expect("memory backplane lock poisoned");
        if !create {
            let count = items
                .iter()
                .filter(|item| !logs.contains_key(item.channel))
                .count() as u32;
            if count > 0 {
                return Box::pin(future::ready(Err(BackplaneError::NewChannels { count })));
            }
        }
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
            log.max_age = retention.max_age;
            log.trim(max_events, retention.max_age, now);
            if let Some(sink) = self.sink.get() {
                sink.deliver(item.channel, position, item.body);
            }
            positions.push(position);
        }
        if let Some(sink) = self.sink.get() {
            sink.end_of_batch();
        }
        Box::pin(future::ready(Ok(positions)))
    }

    fn broadcast<'a>(
        &'a self,
        body: &'a EventBody,
    ) -> BoxFuture<'a, Result<usize, BackplaneError>> {
        if let Some(sink) = self.sink.get() {
            sink.deliver_broadcast(body);
            sink.end_of_batch();
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
        _live_since: tokio::time::Instant,
    ) -> BoxFuture<'a, Result<Arc<History>, BackplaneError>> {
        let mut logs = self.logs.lock().expect("memory backplane lock poisoned");
        let history = match logs.get_mut(channel) {
            None => History::default(),
            Some(log) => {
                log.trim(u64::MAX, max_age, now_ms());
                let newer = log.events.iter().filter(|(pos, _)| *pos > after).count();
                let events: Vec<_> = log
                    .events
                    .iter()
                    .filter(|(pos, _)| *pos > after)
                    .skip(newer.saturating_sub(limit))
                    .cloned()
                    .collect();
                History {
                    exists: true,
                    last: log.last,
                    gap: log.trimmed_up_to > after || newer > limit,
                    events,
                }
            }
        };
        Box::pin(future::ready(Ok(Arc::new(history))))
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::Retention;

    fn publish(backplane: &MemoryBackplane, channel: &str, max_events: u64, max_age: Duration) {
        let body = EventBody {
            event_type: None,
            data: "1".into(),
            published_ms: now_ms(),
            trace_parent: String::new(),
        };
        let item = PublishItem {
            channel,
            body: &body,
            retention: Retention {
                max_events,
                max_age,
            },
        };
        futures_util::FutureExt::now_or_never(backplane.publish(&[item], true))
            .expect("ready")
            .expect("published");
    }

    #[test]
    fn channels_without_history_are_forgotten_once_idle() {
        let backplane = MemoryBackplane::new();
        for n in 0..1000 {
            publish(&backplane, &format!("c{n}"), 0, Duration::from_secs(3600));
        }
        assert_eq!(backplane.channels(), 1000);
        backplane.forget_idle(now_ms());
        assert_eq!(backplane.channels(), 1000, "not idle yet");
        backplane.forget_idle(now_ms() + FORGET_IDLE_AFTER_MS + 1);
        assert_eq!(backplane.channels(), 0);
    }

    #[test]
    fn channels_are_kept_while_their_history_lasts() {
        let backplane = MemoryBackplane::new();
        publish(&backplane, "kept", 10, Duration::from_secs(60));
        backplane.forget_idle(now_ms() + FORGET_IDLE_AFTER_MS + 1);
        assert_eq!(backplane.channels(), 1);
        backplane.forget_idle(now_ms() + 61_000);
        assert_eq!(backplane.channels(), 0);
    }

    #[test]
    fn a_resume_on_a_forgotten_channel_is_a_gap() {
        let backplane = MemoryBackplane::new();
        publish(&backplane, "c", 10, Duration::from_secs(1));
        let after = backplane.logs.lock().unwrap()["c"].last;
        backplane.forget_idle(now_ms() + FORGET_IDLE_AFTER_MS + 1);
        let history = futures_util::FutureExt::now_or_never(backplane.history(
            "c",
            after,
            Duration::from_secs(1),
            10,
            tokio::time::Instant::now(),
        ))
        .unwrap()
        .unwrap();
        assert!(!history.exists);
    }
}
