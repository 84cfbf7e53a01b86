//! The per-connection event queue: bounded, filled by the hub, drained whole by
//! the stream. When full it either cuts the connection off (the client resumes
//! from history) or drops the oldest events and remembers on which channels, so
//! the stream can tell the client with `sseplane.gap`.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::task::{Context, Poll};

use futures_util::task::AtomicWaker;

use crate::hub::{Delivery, NO_CHANNEL};

/// What became of an offered delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offer {
    /// Queued.
    Queued,
    /// Queued after dropping the oldest queued delivery.
    DroppedOldest,
    /// The queue was full: the connection is cut off.
    CutOff,
    /// The connection is gone or was cut off before.
    Closed,
}

/// Why a stream must end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CutOff;

#[derive(Default)]
struct State {
    items: VecDeque<Delivery>,
    /// Channel indexes that lost events to drop-oldest since the last drain.
    lossy: Vec<u16>,
    cut_off: bool,
    closed: bool,
}

/// A bounded queue between the hub and one stream.
pub struct EventQueue {
    // A std mutex: held for a push or a drain, never across an await.
    state: Mutex<State>,
    waker: AtomicWaker,
    capacity: AtomicUsize,
    drop_oldest: AtomicBool,
}

impl EventQueue {
    /// A queue of `capacity` deliveries.
    pub fn new(capacity: usize, drop_oldest: bool) -> EventQueue {
        EventQueue {
            state: Mutex::new(State::default()),
            waker: AtomicWaker::new(),
            capacity: AtomicUsize::new(capacity.max(1)),
            drop_oldest: AtomicBool::new(drop_oldest),
        }
    }

    /// Changes the limits (a policy changed); applies to the next push.
    pub fn set_limits(&self, capacity: usize, drop_oldest: bool) {
        self.capacity.store(capacity.max(1), Ordering::Relaxed);
        self.drop_oldest.store(drop_oldest, Ordering::Relaxed);
    }

    /// Offers a delivery (the hub's side).
    pub fn push(&self, delivery: Delivery) -> Offer {
        let mut state = self.state.lock().expect("queue lock");
        if state.closed || state.cut_off {
            return Offer::Closed;
        }
        let mut offer = Offer::Queued;
        if state.items.len() >= self.capacity.load(Ordering::Relaxed) {
            if !self.drop_oldest.load(Ordering::Relaxed) {
                state.cut_off = true;
                state.items.clear();
                drop(state);
                self.waker.wake();
                return Offer::CutOff;
            }
            if let Some(old) = state.items.pop_front() {
                if old.index != NO_CHANNEL && !state.lossy.contains(&old.index) {
                    state.lossy.push(old.index);
                }
            }
            offer = Offer::DroppedOldest;
        }
        // The stream drains everything at once, so only the push into an empty
        // queue needs to wake it.
        let was_empty = state.items.is_empty();
        state.items.push_back(delivery);
        drop(state);
        if was_empty {
            self.waker.wake();
        }
        offer
    }

    /// Moves every queued delivery into `out` and the channels that lost events
    /// into `lossy` (the stream's side). Pending when there is nothing.
    pub fn poll_take(
        &self,
        cx: &mut Context<'_>,
        out: &mut VecDeque<Delivery>,
        lossy: &mut Vec<u16>,
    ) -> Poll<Result<(), CutOff>> {
        // Register before looking, so a push after the look wakes this task.
        self.waker.register(cx.waker());
        let mut state = self.state.lock().expect("queue lock");
        if state.cut_off {
            return Poll::Ready(Err(CutOff));
        }
        if state.items.is_empty() && state.lossy.is_empty() {
            return Poll::Pending;
        }
        out.extend(state.items.drain(..));
        lossy.append(&mut state.lossy);
        Poll::Ready(Ok(()))
    }

    /// True when the connection was cut off.
    pub fn is_cut_off(&self) -> bool {
        self.state.lock().expect("queue lock").cut_off
    }

    /// The stream is gone: refuse further pushes and free what is queued.
    pub fn close(&self) {
        let mut state = self.state.lock().expect("queue lock");
        state.closed = true;
        state.items.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{EventBody, Frame};
    use std::sync::Arc;

    fn delivery(index: u16) -> Delivery {
        let body = EventBody {
            event_type: None,
            data: "1".into(),
            published_ms: 0,
            trace_parent: String::new(),
        };
        Delivery {
            index,
            frame: Arc::new(Frame::new(None, &body)),
        }
    }

    fn take(queue: &EventQueue) -> (Poll<Result<(), CutOff>>, usize, Vec<u16>) {
        let waker = futures_util::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        let mut out = VecDeque::new();
        let mut lossy = Vec::new();
        let poll = queue.poll_take(&mut cx, &mut out, &mut lossy);
        (poll, out.len(), lossy)
    }

    #[test]
    fn a_full_queue_cuts_off_in_disconnect_mode() {
        let queue = EventQueue::new(2, false);
        assert_eq!(queue.push(delivery(0)), Offer::Queued);
        assert_eq!(queue.push(delivery(0)), Offer::Queued);
        assert_eq!(queue.push(delivery(0)), Offer::CutOff);
        assert_eq!(queue.push(delivery(0)), Offer::Closed);
        assert_eq!(take(&queue).0, Poll::Ready(Err(CutOff)));
    }

    #[test]
    fn drop_oldest_keeps_the_newest_and_names_the_lossy_channels() {
        let queue = EventQueue::new(2, true);
        queue.push(delivery(1));
        queue.push(delivery(0));
        assert_eq!(queue.push(delivery(0)), Offer::DroppedOldest);
        let (poll, taken, lossy) = take(&queue);
        assert_eq!(poll, Poll::Ready(Ok(())));
        assert_eq!((taken, lossy), (2, vec![1]));
        assert_eq!(take(&queue).0, Poll::Pending);
        queue.set_limits(1, false);
        queue.push(delivery(0));
        assert_eq!(queue.push(delivery(0)), Offer::CutOff);
    }
}
