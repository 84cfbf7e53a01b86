//! Idle connections of the public listener, capped.
//!
//! A connection is idle while it waits for a request with nothing of it read
//! yet: a new connection before its first bytes, and a kept-alive publish
//! connection between requests. Each holds a file descriptor, and descriptors
//! are shared with streams: without a cap, idle connections could use them up
//! until `accept` fails and no stream can open. So, as nginx does with its
//! reusable (idle keep-alive) connections, the oldest idle connection is closed
//! when one more would go over the cap (if it has been idle for at least
//! [`EVICTABLE_AFTER`]), and when `accept` runs out of descriptors. Closing an
//! idle connection loses nothing: no request is in flight on it, and HTTP
//! clients reopen a kept-alive connection the server closed.
//!
//! The grace keeps a wave of new connections (a resume storm: each is idle
//! only until its request arrives, a few milliseconds) from closing each
//! other, or a busy publisher's connection between two requests; running out
//! of descriptors closes the oldest regardless.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

/// An idle connection is closed to make room under the cap only once it has
/// been idle this long.
pub(super) const EVICTABLE_AFTER: Duration = Duration::from_secs(1);

/// A connection idle for less than this is never closed to make room.
const FRESH: Duration = Duration::from_millis(100);

/// The idle connections of one listener, oldest first.
pub(super) struct IdleConnections {
    /// Most idle connections at once; 0 = no cap.
    cap: usize,
    /// How long a connection is idle before the cap may close it.
    grace: Duration,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    next: u64,
    /// By order of going idle: since when, and what tells it to close.
    waiting: BTreeMap<u64, (Instant, Arc<Notify>)>,
}

/// One connection's idle spell; dropping it (the connection got bytes, or
/// closed) takes it off the list.
pub(super) struct Idle<'a> {
    set: &'a IdleConnections,
    key: u64,
    close: Arc<Notify>,
}

impl IdleConnections {
    /// A list of at most `cap` idle connections (0 = no cap).
    pub(super) fn new(cap: usize) -> IdleConnections {
        IdleConnections::with_grace(cap, EVICTABLE_AFTER)
    }

    /// A list of at most `cap` idle connections, closing only those idle for
    /// `grace` to make room.
    pub(super) fn with_grace(cap: usize, grace: Duration) -> IdleConnections {
        IdleConnections {
            cap,
            grace,
            inner: Mutex::new(Inner::default()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A connection goes idle: listed as the newest, closing the oldest when
    /// the list is full.
    pub(super) fn enter(&self) -> Idle<'_> {
        let close = Arc::new(Notify::new());
        let mut inner = self.lock();
        let now = Instant::now();
        let evictable = |since: &Instant| now.duration_since(*since) >= self.grace;
        if self.cap > 0
            && inner.waiting.len() >= self.cap
            && inner
                .waiting
                .first_key_value()
                .is_some_and(|(_, (since, _))| evictable(since))
        {
            if let Some((_, (_, oldest))) = inner.waiting.pop_first() {
                // Stored as a permit when the connection is not waiting yet.
                oldest.notify_one();
                tracing::debug!(
                    cap = self.cap,
                    "idle connections at their cap: closing the oldest"
                );
            }
        }
        let key = inner.next;
        inner.next += 1;
        inner.waiting.insert(key, (now, close.clone()));
        Idle {
            set: self,
            key,
            close,
        }
    }

    /// Closes up to `n` of the oldest idle connections (descriptors ran out);
    /// how many.
    /// Connections idle for less than [`FRESH`] are spared: their request
    /// is most likely on its way, and closing one to accept another gains
    /// nothing.
    pub(super) fn close_oldest(&self, n: usize) -> usize {
        let mut inner = self.lock();
        let now = Instant::now();
        let mut closed = 0;
        while closed < n {
            let fresh = inner
                .waiting
                .first_key_value()
                .is_none_or(|(_, (since, _))| now.duration_since(*since) < FRESH);
            if fresh {
                break;
            }
            let Some((_, (_, oldest))) = inner.waiting.pop_first() else {
                break;
            };
            oldest.notify_one();
            closed += 1;
        }
        closed
    }

    /// Connections idle now.
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.lock().waiting.len()
    }
}

impl Idle<'_> {
    /// Resolves when the connection must close to make room: told to by a
    /// newer one, or, once its grace is over, when at least the cap's worth
    /// of newer connections are idle too (a wave that came in within the
    /// grace made no room for itself).
    pub(super) async fn closed(&self) {
        let grace = tokio::time::sleep(self.set.grace);
        tokio::pin!(grace);
        tokio::select! {
            _ = self.close.notified() => return,
            _ = &mut grace => {}
        }
        if self.beyond_cap() {
            return;
        }
        self.close.notified().await;
    }

    /// True when the cap's worth of newer connections are idle too.
    fn beyond_cap(&self) -> bool {
        let set = self.set;
        set.cap > 0 && set.lock().waiting.range(self.key + 1..).count() >= set.cap
    }
}

impl Drop for Idle<'_> {
    fn drop(&mut self) {
        self.set.lock().waiting.remove(&self.key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::Future;
    use std::pin::pin;
    use std::task::{Context, Poll};

    fn is_closed(idle: &Idle<'_>) -> bool {
        let waker = futures_util::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        pin!(idle.closed()).as_mut().poll(&mut cx) == Poll::Ready(())
    }

    #[tokio::test]
    async fn the_oldest_idle_connection_makes_room() {
        let set = IdleConnections::with_grace(2, Duration::ZERO);
        let first = set.enter();
        let second = set.enter();
        assert!(!is_closed(&first) && !is_closed(&second));
        let third = set.enter();
        assert!(is_closed(&first), "the oldest goes");
        assert!(!is_closed(&second) && !is_closed(&third));
        assert_eq!(set.len(), 2);
        // A connection that got its bytes leaves the list.
        drop(second);
        assert_eq!(set.len(), 1);
        drop(first);
        assert_eq!(set.len(), 1, "the closed one was listed no more");
        let _fourth = set.enter();
        assert!(!is_closed(&third));
    }

    #[tokio::test]
    async fn connections_idle_for_less_than_the_grace_are_not_closed_for_room() {
        let set = IdleConnections::with_grace(2, Duration::from_secs(3600));
        let all: Vec<_> = (0..5).map(|_| set.enter()).collect();
        assert!(
            all.iter().all(|idle| !is_closed(idle)),
            "a wave of new connections"
        );
        assert_eq!(set.len(), 5);
        // Out of descriptors, the oldest go whatever their grace.
        std::thread::sleep(FRESH);
        assert_eq!(set.close_oldest(2), 2);
        assert!(is_closed(&all[0]) && is_closed(&all[1]));
    }

    #[tokio::test]
    async fn running_out_of_descriptors_closes_the_oldest() {
        let set = IdleConnections::new(0);
        let all: Vec<_> = (0..5).map(|_| set.enter()).collect();
        assert_eq!(
            set.close_oldest(3),
            0,
            "a connection just accepted is spared"
        );
        std::thread::sleep(FRESH);
        assert_eq!(set.close_oldest(3), 3);
        let closed: Vec<bool> = all.iter().map(is_closed).collect();
        assert_eq!(closed, [true, true, true, false, false]);
        assert_eq!(set.close_oldest(10), 2);
        assert_eq!(set.len(), 0);
    }
}
