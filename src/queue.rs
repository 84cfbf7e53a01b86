//! The per-stream outbox between the hub and one stream.
//!
//! Bounded: when full it either cuts the stream off (the client resumes from
//! history) or drops the oldest events and remembers on which channels, so the
//! stream can tell the client with `sseplane.gap`. It turns deliveries into the
//! stream's bytes ([`StreamWriter`]: duplicates skipped, multi-channel ids).
//!
//! A stream served on its own socket (the lean HTTP/1 path) can *park*: while
//! its task has nothing left to write, events are not handed to the task (a
//! wake-up and a poll per event) but written to the socket by the hub itself at
//! the end of each backplane batch ([`EventQueue::flush`]), several events in one
//! write. If the socket cannot take everything, the rest goes back to the task,
//! which writes it asynchronously; the task takes the socket back whenever it
//! wakes for anything else (keepalive, shutdown, token expiry). Writes from the
//! hub never wait: a socket that cannot take a byte gets none.
//!
//! A stream cut off as too slow has its socket's sending side shut down at
//! once ([`EventQueue::push`]): its task may be waiting to write to a client
//! that stopped reading, which would otherwise keep the stream's place, its
//! descriptor and megabytes of kernel send buffer for good. The task's write
//! then fails, the stream ends, and the task closes the connection (the end
//! of the body follows what was sent; a client that does not take it in time
//! gets a reset, which frees the kernel's buffer).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use futures_util::task::AtomicWaker;
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::event::{Frame, Position};
use crate::hub::{Delivery, NO_CHANNEL};
use crate::sse::StreamIds;

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

/// Turns deliveries into the bytes of one stream, keeping its position on each
/// channel: positions at or before it are duplicates and skipped.
#[derive(Debug)]
pub struct StreamWriter {
    ids: StreamIds,
    cursors: Vec<Position>,
}

impl StreamWriter {
    /// A writer for a stream with these ids, at these positions (one per channel).
    pub fn new(ids: StreamIds, cursors: Vec<Position>) -> StreamWriter {
        StreamWriter { ids, cursors }
    }

    /// The stream's position on each channel.
    pub fn cursors_mut(&mut self) -> &mut Vec<Position> {
        &mut self.cursors
    }

    /// Appends the chunks to write for `frame` on channel `index` to `out`;
    /// false (and nothing appended) for a duplicate.
    pub fn write(&mut self, index: u16, frame: &Frame, out: &mut impl Extend<Bytes>) -> bool {
        let Some(position) = frame.position.filter(|_| index != NO_CHANNEL) else {
            out.extend([frame.bytes.clone()]);
            return true;
        };
        let cursor = &mut self.cursors[index as usize];
        if position <= *cursor {
            return false;
        }
        *cursor = position;
        if !self.ids.is_multi() {
            // One channel: the id line framed with the event is already right.
            out.extend([frame.bytes.clone()]);
            return true;
        }
        let id_line = format!("id: {}\n", self.ids.encode(&self.cursors));
        out.extend([Bytes::from(id_line), frame.body()]);
        true
    }
}

/// Chunks joined into one buffer, without a copy for a single chunk.
#[derive(Default)]
enum Joined {
    #[default]
    Empty,
    One(Bytes),
    Many(BytesMut),
}

impl Extend<Bytes> for Joined {
    fn extend<I: IntoIterator<Item = Bytes>>(&mut self, chunks: I) {
        for chunk in chunks {
            *self = match std::mem::take(self) {
                Joined::Empty => Joined::One(chunk),
                Joined::One(first) => {
                    let mut joined = BytesMut::with_capacity(2 * (first.len() + chunk.len()));
                    joined.extend_from_slice(&first);
                    joined.extend_from_slice(&chunk);
                    Joined::Many(joined)
                }
                Joined::Many(mut joined) => {
                    joined.extend_from_slice(&chunk);
                    Joined::Many(joined)
                }
            }
        }
    }
}

impl Joined {
    fn into_bytes(self) -> Bytes {
        match self {
            Joined::Empty => Bytes::new(),
            Joined::One(bytes) => bytes,
            Joined::Many(joined) => joined.freeze(),
        }
    }
}

#[derive(Default)]
struct State {
    items: VecDeque<Delivery>,
    /// Channel indexes that lost events to drop-oldest since the last drain.
    lossy: Vec<u16>,
    cut_off: bool,
    closed: bool,
    /// Set once the stream is open (after its replay).
    writer: Option<StreamWriter>,
    /// The stream's own socket, when it has one to itself.
    socket: Option<Arc<TcpStream>>,
    /// The task has nothing to write: the hub's flush writes to the socket.
    parked: bool,
    /// In the hub's list of queues to flush.
    listed: bool,
    /// What a flush could not write; the task writes it first.
    unwritten: Option<Bytes>,
    /// When a flush last wrote (the task's keepalive timer counts from it).
    last_write: Option<Instant>,
}

/// A bounded queue between the hub and one stream.
pub struct EventQueue {
    // A std mutex: held for a push, a drain or one non-blocking write, never
    // across an await.
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

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().expect("queue lock")
    }

    /// Gives the socket back to the task and wakes it (after the lock is let go).
    fn wake_task(&self, mut state: MutexGuard<'_, State>) {
        state.parked = false;
        drop(state);
        self.waker.wake();
    }

    /// Changes the limits (a policy changed); applies to the next push.
    pub fn set_limits(&self, capacity: usize, drop_oldest: bool) {
        self.capacity.store(capacity.max(1), Ordering::Relaxed);
        self.drop_oldest.store(drop_oldest, Ordering::Relaxed);
    }

    /// The stream is open: deliveries are written through `writer` from now on.
    pub fn open(&self, writer: StreamWriter) {
        self.lock().writer = Some(writer);
    }

    /// The stream has `socket` to itself: the queue may write to it while the
    /// stream's task is parked.
    pub fn attach_socket(&self, socket: Arc<TcpStream>) {
        self.lock().socket = Some(socket);
    }

    /// Offers a delivery (the hub's side). The flag is true when the queue is
    /// parked and was not listed yet: the hub must [`EventQueue::flush`] it
    /// after this batch.
    pub fn push(&self, delivery: Delivery) -> (Offer, bool) {
        let mut state = self.lock();
        if state.closed || state.cut_off {
            return (Offer::Closed, false);
        }
        let mut offer = Offer::Queued;
        if state.items.len() >= self.capacity.load(Ordering::Relaxed) {
            if !self.drop_oldest.load(Ordering::Relaxed) {
                state.cut_off = true;
                state.items.clear();
                state.unwritten = None;
                if let Some(socket) = state.socket.take() {
                    shut_down_sending(&socket);
                }
                self.wake_task(state);
                return (Offer::CutOff, false);
            }
            if let Some(old) = state.items.pop_front() {
                if old.index != NO_CHANNEL && !state.lossy.contains(&old.index) {
                    state.lossy.push(old.index);
                }
            }
            offer = Offer::DroppedOldest;
        }
        let was_empty = state.items.is_empty();
        state.items.push_back(delivery);
        if state.parked {
            let list = !state.listed;
            state.listed = true;
            return (offer, list);
        }
        drop(state);
        // The stream drains everything at once, so only the push into an empty
        // queue needs to wake it.
        if was_empty {
            self.waker.wake();
        }
        (offer, false)
    }

    /// Writes what was queued since the stream parked to its socket, in one
    /// non-blocking write (the hub's side, after a batch of deliveries). What
    /// the socket does not take goes back to the stream's task.
    pub fn flush(&self, now: Instant) {
        let mut state = self.lock();
        state.listed = false;
        if !state.parked || state.items.is_empty() {
            return;
        }
        if !state.lossy.is_empty() {
            // The gap notice names channels: the task writes it.
            return self.wake_task(state);
        }
        let State {
            items,
            writer,
            socket,
            ..
        } = &mut *state;
        // Parking needs both (see `park`).
        let (Some(writer), Some(socket)) = (writer.as_mut(), socket.as_ref()) else {
            return self.wake_task(state);
        };
        let mut joined = Joined::Empty;
        for delivery in items.drain(..) {
            writer.write(delivery.index, &delivery.frame, &mut joined);
        }
        let bytes = joined.into_bytes();
        if bytes.is_empty() {
            return;
        }
        let rest = match socket.try_write(&bytes) {
            Ok(n) if n == bytes.len() => None,
            Ok(n) => Some(bytes.slice(n..)),
            // Full, or broken: the task waits for room or finds out.
            Err(_) => Some(bytes),
        };
        state.last_write = Some(now);
        if rest.is_some() {
            state.unwritten = rest;
            self.wake_task(state);
        }
    }

    /// Gives a parked queue's pending deliveries to its task instead of
    /// flushing them (the hub's side, when a batch is better spread over the
    /// runtime's threads).
    pub fn hand_over(&self) {
        let mut state = self.lock();
        state.listed = false;
        if state.parked {
            self.wake_task(state);
        }
    }

    /// The task takes the socket back (it woke up): anything a flush left
    /// unwritten goes first into `pending`. Returns when a flush last wrote.
    pub fn resume(&self, pending: &mut VecDeque<Bytes>) -> Option<Instant> {
        let mut state = self.lock();
        state.parked = false;
        if let Some(rest) = state.unwritten.take() {
            pending.push_front(rest);
        }
        state.last_write.take()
    }

    /// The task has written everything and waits: park it if the queue has a
    /// socket to write to. False when it cannot park (or something arrived;
    /// the task was woken for it).
    pub fn park(&self) -> bool {
        let mut state = self.lock();
        if state.socket.is_none()
            || state.writer.is_none()
            || state.closed
            || state.cut_off
            || !state.items.is_empty()
            || !state.lossy.is_empty()
            || state.unwritten.is_some()
        {
            return false;
        }
        state.parked = true;
        true
    }

    /// Moves the bytes of every queued delivery into `out` and the channels that
    /// lost events into `lossy` (the stream's side). Pending when there is
    /// nothing.
    pub fn poll_take(
        &self,
        cx: &mut Context<'_>,
        out: &mut VecDeque<Bytes>,
        lossy: &mut Vec<u16>,
    ) -> Poll<Result<(), CutOff>> {
        // Register before looking, so a push after the look wakes this task.
        self.waker.register(cx.waker());
        let mut state = self.lock();
        if state.cut_off {
            return Poll::Ready(Err(CutOff));
        }
        if state.items.is_empty() && state.lossy.is_empty() {
            return Poll::Pending;
        }
        lossy.append(&mut state.lossy);
        let State { items, writer, .. } = &mut *state;
        for delivery in items.drain(..) {
            match writer.as_mut() {
                Some(writer) => {
                    writer.write(delivery.index, &delivery.frame, out);
                }
                None => out.push_back(delivery.frame.bytes.clone()),
            }
        }
        Poll::Ready(Ok(()))
    }

    /// True when the connection was cut off.
    pub fn is_cut_off(&self) -> bool {
        self.lock().cut_off
    }

    /// The stream is gone: refuse further pushes, free what is queued and let
    /// go of the socket.
    pub fn close(&self) {
        let mut state = self.lock();
        state.closed = true;
        state.parked = false;
        state.items.clear();
        state.unwritten = None;
        state.socket = None;
    }
}

/// Ends a cut-off stream's sending without waiting for its task: the end of
/// the stream (FIN) is queued after what was written, and the task's pending
/// or next write fails at once, so that it ends the stream and closes the
/// connection. One non-blocking system call.
fn shut_down_sending(socket: &TcpStream) {
    use std::os::fd::AsRawFd;
    // SAFETY: the descriptor is open for as long as `socket` is borrowed;
    // shutdown(2) only changes the state of the connection.
    unsafe {
        libc::shutdown(socket.as_raw_fd(), libc::SHUT_WR);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::EventBody;
    use std::sync::atomic::AtomicUsize;
    use std::task::{Wake, Waker};
    use tokio::io::AsyncReadExt;

    fn frame(position: Option<Position>, data: &str) -> Arc<Frame> {
        let body = EventBody {
            event_type: None,
            data: data.into(),
            published_ms: 0,
            trace_parent: String::new(),
        };
        Arc::new(Frame::new(position, &body))
    }

    fn delivery(index: u16) -> Delivery {
        Delivery {
            index,
            frame: frame(None, "1"),
        }
    }

    fn at(seq: u64) -> Delivery {
        Delivery {
            index: 0,
            frame: frame(Some(Position { ms: 1, seq }), &seq.to_string()),
        }
    }

    /// A waker that counts its wake-ups.
    #[derive(Default)]
    struct Count(AtomicUsize);

    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    impl Count {
        fn get(&self) -> usize {
            self.0.load(Ordering::SeqCst)
        }
    }

    fn take_with(
        queue: &EventQueue,
        waker: &Waker,
    ) -> (Poll<Result<(), CutOff>>, VecDeque<Bytes>, Vec<u16>) {
        let mut cx = Context::from_waker(waker);
        let mut out = VecDeque::new();
        let mut lossy = Vec::new();
        let poll = queue.poll_take(&mut cx, &mut out, &mut lossy);
        (poll, out, lossy)
    }

    fn take(queue: &EventQueue) -> (Poll<Result<(), CutOff>>, usize, Vec<u16>) {
        let (poll, out, lossy) = take_with(queue, &futures_util::task::noop_waker());
        (poll, out.len(), lossy)
    }

    fn writer() -> StreamWriter {
        StreamWriter::new(StreamIds::new(&["a"]), vec![Position::ZERO])
    }

    /// A connected pair: the server side (for the queue) and the client side.
    async fn socket_pair() -> (Arc<TcpStream>, TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        (Arc::new(server), client)
    }

    /// A queue on `server`, its task waiting and parked; counts the task's wake-ups.
    fn parked(server: Arc<TcpStream>) -> (EventQueue, Arc<Count>, Waker) {
        let queue = EventQueue::new(8, false);
        queue.open(writer());
        queue.attach_socket(server);
        let task = Arc::new(Count::default());
        let waker = Waker::from(task.clone());
        assert_eq!(take_with(&queue, &waker).0, Poll::Pending);
        assert!(queue.park());
        (queue, task, waker)
    }

    async fn read_exactly(client: &mut TcpStream, n: usize) -> String {
        let mut buf = vec![0; n];
        client.read_exact(&mut buf).await.unwrap();
        String::from_utf8(buf).unwrap()
    }

    #[test]
    fn a_full_queue_cuts_off_in_disconnect_mode() {
        let queue = EventQueue::new(2, false);
        assert_eq!(queue.push(delivery(0)).0, Offer::Queued);
        assert_eq!(queue.push(delivery(0)).0, Offer::Queued);
        assert_eq!(queue.push(delivery(0)).0, Offer::CutOff);
        assert_eq!(queue.push(delivery(0)).0, Offer::Closed);
        assert_eq!(take(&queue).0, Poll::Ready(Err(CutOff)));
    }

    #[test]
    fn drop_oldest_keeps_the_newest_and_names_the_lossy_channels() {
        let queue = EventQueue::new(2, true);
        queue.push(delivery(1));
        queue.push(delivery(0));
        assert_eq!(queue.push(delivery(0)).0, Offer::DroppedOldest);
        let (poll, taken, lossy) = take(&queue);
        assert_eq!(poll, Poll::Ready(Ok(())));
        assert_eq!((taken, lossy), (2, vec![1]));
        assert_eq!(take(&queue).0, Poll::Pending);
        queue.set_limits(1, false);
        queue.push(delivery(0));
        assert_eq!(queue.push(delivery(0)).0, Offer::CutOff);
    }

    #[test]
    fn the_writer_skips_what_the_stream_already_has() {
        let queue = EventQueue::new(8, false);
        queue.open(StreamWriter::new(
            StreamIds::new(&["a"]),
            vec![Position { ms: 1, seq: 1 }],
        ));
        queue.push(at(1));
        queue.push(at(2));
        let (_, out, _) = take_with(&queue, &futures_util::task::noop_waker());
        assert_eq!(out.len(), 1);
        assert!(out[0].starts_with(b"id: 1-2\n"));
    }

    #[tokio::test]
    async fn a_parked_stream_gets_a_batch_in_one_write_without_waking_its_task() {
        let (server, mut client) = socket_pair().await;
        let (queue, task, _) = parked(server);

        // Listed once for the batch, whatever the number of events.
        assert_eq!(queue.push(at(1)), (Offer::Queued, true));
        assert_eq!(queue.push(at(2)), (Offer::Queued, false));
        queue.flush(Instant::now());
        let expected = "id: 1-1\ndata: 1\n\nid: 1-2\ndata: 2\n\n";
        assert_eq!(read_exactly(&mut client, expected.len()).await, expected);
        assert_eq!(task.get(), 0, "the task was not woken");

        // The next batch is listed again; a duplicate writes nothing.
        assert_eq!(queue.push(at(2)), (Offer::Queued, true));
        assert_eq!(queue.push(at(3)), (Offer::Queued, false));
        queue.flush(Instant::now());
        let expected = "id: 1-3\ndata: 3\n\n";
        assert_eq!(read_exactly(&mut client, expected.len()).await, expected);

        // The task takes the socket back when it wakes: pushes wake it again.
        let mut pending = VecDeque::new();
        assert!(queue.resume(&mut pending).is_some(), "a flush wrote");
        assert!(pending.is_empty());
        assert_eq!(queue.push(at(4)), (Offer::Queued, false));
        assert_eq!(task.get(), 1);
    }

    #[tokio::test]
    async fn what_a_full_socket_does_not_take_goes_back_to_the_task_in_order() {
        let (server, mut client) = socket_pair().await;
        // Fill the socket's buffers until the kernel refuses more.
        let filler = vec![b'x'; 64 * 1024];
        let mut filled = 0;
        loop {
            match server.try_write(&filler) {
                Ok(n) => filled += n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => panic!("{e}"),
            }
        }
        let (queue, task, waker) = parked(server);
        queue.push(at(1));
        queue.flush(Instant::now());
        assert_eq!(task.get(), 1, "the task is woken to write the rest");

        // The task gets the unwritten bytes first, then what came after.
        queue.push(at(2));
        let mut pending = VecDeque::new();
        queue.resume(&mut pending);
        let (_, taken, _) = take_with(&queue, &waker);
        pending.extend(taken);
        let rest: Vec<u8> = pending.iter().flat_map(|b| b.to_vec()).collect();
        // The client reads everything the socket took: the filler, then
        // whatever part of event 1 went out; with the rest, events 1 and 2
        // follow whole and in order.
        let tail = "id: 1-1\ndata: 1\n\nid: 1-2\ndata: 2\n\n";
        let mut received = read_exactly(&mut client, filled + tail.len() - rest.len()).await;
        assert!(received[..filled].bytes().all(|b| b == b'x'));
        received.push_str(std::str::from_utf8(&rest).unwrap());
        assert!(received.ends_with(tail));
    }

    #[tokio::test]
    async fn a_cut_off_stream_stops_sending_at_once() {
        let (server, mut client) = socket_pair().await;
        let (queue, task, _) = parked(server.clone());
        queue.set_limits(1, false);
        queue.push(at(1));
        assert_eq!(queue.push(at(2)).0, Offer::CutOff);
        assert_eq!(task.get(), 1, "the task is woken to end");
        // The task's writes fail now instead of waiting for the client.
        let written = server.try_write(b"x");
        assert!(
            written
                .as_ref()
                .is_err_and(|e| e.kind() != std::io::ErrorKind::WouldBlock),
            "{written:?}"
        );
        // The client sees the end of the stream.
        let mut buf = [0u8; 64];
        assert_eq!(client.read(&mut buf).await.unwrap(), 0);
        drop((queue, server));
    }

    #[tokio::test]
    async fn a_stream_without_a_socket_or_with_work_left_does_not_park() {
        let queue = EventQueue::new(8, false);
        queue.open(writer());
        assert!(!queue.park(), "no socket");
        let (server, _client) = socket_pair().await;
        queue.attach_socket(server);
        queue.push(at(1));
        assert!(!queue.park(), "an event is waiting for the task");
        assert_eq!(take(&queue).1, 1);
        assert!(queue.park());
        queue.close();
        assert_eq!(queue.push(at(2)).0, Offer::Closed);
        assert!(!queue.park());
    }
}
