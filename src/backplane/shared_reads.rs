//! History reads for resuming streams, bounded and shared.
//!
//! A replica that takes over the clients of a lost one sees a wave of resumes,
//! most from the same position of the same channel. Each read holds one of a
//! few permits (so the wave cannot flood Redis or this replica), and a read
//! that is already under way serves every resume that may use it: one whose
//! live subscription was in place before the read was sent (the read then
//! covers everything up to the point where live delivery takes over).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::future::{BoxFuture, FutureExt, Shared};
use tokio::sync::Semaphore;
use tokio::time::Instant;

use super::{BackplaneError, History};
use crate::event::Position;

/// What one read asks for.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ReadKey {
    /// The channel.
    pub channel: String,
    /// Events after this position.
    pub after: Position,
    /// None older than this.
    pub max_age: Duration,
    /// At most this many (the newest).
    pub limit: usize,
}

type SharedRead = Shared<BoxFuture<'static, Result<Arc<History>, Arc<str>>>>;

struct InFlight {
    sent_at: Instant,
    read: SharedRead,
}

/// Runs history reads with at most `concurrency` at a time, sharing one read
/// among the resumes it can serve.
pub struct SharedReads {
    permits: Semaphore,
    in_flight: Mutex<HashMap<ReadKey, InFlight>>,
}

impl SharedReads {
    /// At most `concurrency` reads at once.
    pub fn new(concurrency: usize) -> SharedReads {
        SharedReads {
            permits: Semaphore::new(concurrency.max(1)),
            in_flight: Mutex::new(HashMap::new()),
        }
    }

    /// Reads in flight now.
    pub fn in_flight(&self) -> usize {
        self.lock().len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<ReadKey, InFlight>> {
        self.in_flight.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A read of `key` sent at or after `live_since`, if one is under way.
    fn joinable(&self, key: &ReadKey, live_since: Instant) -> Option<SharedRead> {
        self.lock()
            .get(key)
            .filter(|read| read.sent_at >= live_since)
            .map(|read| read.read.clone())
    }

    /// What history holds for `key`, for a stream live since `live_since`:
    /// from a read under way that was sent after that instant, else from a
    /// new read made by `fetch` once a permit is free.
    pub async fn read<F>(
        &self,
        key: ReadKey,
        live_since: Instant,
        fetch: F,
    ) -> Result<Arc<History>, BackplaneError>
    where
        F: FnOnce() -> BoxFuture<'static, Result<History, BackplaneError>>,
    {
        if let Some(read) = self.joinable(&key, live_since) {
            return unshare(read.await);
        }
        let permit = self
            .permits
            .acquire()
            .await
            .map_err(|_| BackplaneError::Unavailable("history reads stopped".into()))?;
        // While this one waited, another may have sent the same read.
        if let Some(read) = self.joinable(&key, live_since) {
            drop(permit);
            return unshare(read.await);
        }
        let sent_at = Instant::now();
        let read: SharedRead = fetch()
            .map(|result| result.map(Arc::new).map_err(|e| Arc::from(e.to_string())))
            .boxed()
            .shared();
        self.lock().insert(
            key.clone(),
            InFlight {
                sent_at,
                read: read.clone(),
            },
        );
        // Forgotten when done, or when this caller goes away (the joiners
        // still hold the read).
        let _forget = Forget {
            reads: self,
            key,
            sent_at,
        };
        let result = read.await;
        drop(permit);
        unshare(result)
    }
}

/// Removes a finished (or abandoned) read from the ones under way.
struct Forget<'a> {
    reads: &'a SharedReads,
    key: ReadKey,
    sent_at: Instant,
}

impl Drop for Forget<'_> {
    fn drop(&mut self) {
        let mut in_flight = self.reads.lock();
        if in_flight
            .get(&self.key)
            .is_some_and(|r| r.sent_at == self.sent_at)
        {
            in_flight.remove(&self.key);
        }
    }
}

fn unshare(result: Result<Arc<History>, Arc<str>>) -> Result<Arc<History>, BackplaneError> {
    result.map_err(|message| BackplaneError::Unavailable(message.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn key() -> ReadKey {
        ReadKey {
            channel: "c".into(),
            after: Position::ZERO,
            max_age: Duration::ZERO,
            limit: 10,
        }
    }

    fn counting_fetch(
        reads: &Arc<AtomicUsize>,
        gate: &Arc<tokio::sync::Notify>,
    ) -> impl FnOnce() -> BoxFuture<'static, Result<History, BackplaneError>> {
        let reads = reads.clone();
        let gate = gate.clone();
        move || {
            reads.fetch_add(1, Ordering::SeqCst);
            async move {
                gate.notified().await;
                Ok(History {
                    exists: true,
                    ..History::default()
                })
            }
            .boxed()
        }
    }

    #[tokio::test]
    async fn resumes_live_before_a_read_was_sent_share_it() {
        let reads = Arc::new(SharedReads::new(4));
        let count = Arc::new(AtomicUsize::new(0));
        let gate = Arc::new(tokio::sync::Notify::new());
        let live_since = Instant::now();
        let mut tasks = Vec::new();
        for _ in 0..20 {
            let (reads, fetch) = (reads.clone(), counting_fetch(&count, &gate));
            tasks.push(tokio::spawn(async move {
                reads.read(key(), live_since, fetch).await
            }));
        }
        while reads.in_flight() == 0 {
            tokio::task::yield_now().await;
        }
        for _ in 0..50 {
            tokio::task::yield_now().await;
        }
        gate.notify_waiters();
        for task in tasks {
            assert!(task.await.unwrap().unwrap().exists);
        }
        assert_eq!(count.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_resume_live_after_a_read_was_sent_reads_again() {
        let reads = Arc::new(SharedReads::new(4));
        let count = Arc::new(AtomicUsize::new(0));
        let gate = Arc::new(tokio::sync::Notify::new());
        let first = {
            let (reads, fetch) = (reads.clone(), counting_fetch(&count, &gate));
            tokio::spawn(async move { reads.read(key(), Instant::now(), fetch).await })
        };
        while reads.in_flight() == 0 {
            tokio::task::yield_now().await;
        }
        // Live only now: the read under way may miss what was published
        // between its sending and this instant.
        let later = {
            let (reads, fetch) = (reads.clone(), counting_fetch(&count, &gate));
            let live_since = Instant::now() + Duration::from_millis(1);
            tokio::spawn(async move { reads.read(key(), live_since, fetch).await })
        };
        while count.load(Ordering::SeqCst) < 2 {
            gate.notify_waiters();
            tokio::task::yield_now().await;
        }
        gate.notify_waiters();
        first.await.unwrap().unwrap();
        loop {
            gate.notify_waiters();
            tokio::task::yield_now().await;
            if later.is_finished() {
                break;
            }
        }
        later.await.unwrap().unwrap();
        assert_eq!(count.load(Ordering::SeqCst), 2);
    }
}
