//! The public listener with a lean HTTP/1 path for streams and publishes.
//!
//! hyper keeps about 24 KiB of read and write buffers per connection for as
//! long as a response lasts; an SSE stream needs neither once its request head
//! is read. So the public listener reads each connection's first request head
//! itself, into a small buffer that is dropped at once: `GET /v1/stream` is then
//! served directly on the socket (a close-delimited response), and every other
//! request goes to hyper and the axum router, together with the bytes already
//! read. Later requests on a kept-alive hyper connection stay with hyper, which
//! serves `/v1/stream` through the same [`super::stream::open`].
//!
//! Plain `POST /v1/publish` requests are served here too, one after another
//! on a kept-alive connection ([`publish`]), until one comes that is not.
//!
//! Both paths keep the same limits: a request head has [`MAX_HEAD`] bytes and
//! [`MAX_HEADERS`] headers, and a connection waiting for a request (a new one,
//! or a kept-alive one between requests) is closed when no whole head came
//! within the idle timeout (`--idle-timeout`, hyper's `header_read_timeout`).
//! Idle connections are capped (`idle.rs`), and a write that makes no progress
//! for [`WRITE_TIMEOUT`] ends the connection.

mod idle;
mod publish;

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::Router;
use futures_util::StreamExt;
use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use super::error::ApiError;
use super::limits::ClientAddr;
use super::stream;
use super::AppState;
use crate::shutdown::Shutdown;

/// Largest request head, on the lean path and through hyper (431 beyond).
pub const MAX_HEAD: usize = 16 * 1024;
/// Most headers of a request, on the lean path and through hyper (431 beyond).
pub const MAX_HEADERS: usize = 64;
/// The default of `--idle-timeout`: the time a connection may wait for a whole
/// request head, whether it is new or kept alive between requests (hyper's
/// `header_read_timeout` is set to the same value).
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(10);
/// The default of `--max-idle-connections`.
pub const DEFAULT_MAX_IDLE: usize = 128;
/// A write to a client that makes no progress for this long ends the
/// connection (with a reset, which frees the kernel's send buffer): a client
/// that stopped reading would otherwise keep its task, its stream's place and
/// megabytes of kernel send buffer for good. A stream that ended (cut off as
/// too slow, for one) gives its client as long to take what was already sent.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// What a read buffer starts with, and what it is shrunk back to after a large
/// request body.
const READ_CAPACITY: usize = 1024;
/// Idle connections closed at once when `accept` runs out of descriptors
/// (nginx closes up to 32 of its reusable connections).
const CLOSE_WHEN_OUT_OF_FILES: usize = 32;
/// Pause after `accept` failed for want of resources.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// Limits of the public listener's connections.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    /// Time a connection may wait for a whole request head (`--idle-timeout`).
    pub idle_timeout: Duration,
    /// Most connections idle at once (`--max-idle-connections`; 0 = no cap).
    pub max_idle: usize,
}

/// Cross-origin headers for streams served on the lean path, as the CORS layer
/// of the router answers them.
#[derive(Debug, Clone)]
pub struct StreamCors {
    any: bool,
    origins: Vec<String>,
}

impl StreamCors {
    /// From `--cors-origins`.
    pub fn new(origins: &str) -> StreamCors {
        let any = origins.trim() == "*";
        let origins = origins
            .split(',')
            .map(|o| o.trim().to_owned())
            .filter(|o| !o.is_empty())
            .collect();
        StreamCors { any, origins }
    }

    fn headers(&self, origin: Option<&str>) -> Vec<(&'static str, String)> {
        let mut out = vec![(
            "vary",
            "origin, access-control-request-method, access-control-request-headers".to_owned(),
        )];
        if self.any {
            out.push(("access-control-allow-origin", "*".to_owned()));
        } else if let Some(origin) = origin.filter(|o| self.origins.iter().any(|a| a == o)) {
            out.push(("access-control-allow-origin", origin.to_owned()));
            out.push(("access-control-allow-credentials", "true".to_owned()));
        } else {
            return out;
        }
        out.push((
            "access-control-expose-headers",
            super::REPLICA_HEADER.to_owned(),
        ));
        out
    }
}

/// Serves the public API on `listener` until `shutdown`, then waits for hyper's
/// connections to finish (streams end by themselves on shutdown).
pub async fn serve(
    listener: TcpListener,
    router: Router,
    state: AppState,
    cors: StreamCors,
    limits: ConnectionLimits,
) -> io::Result<()> {
    let graceful = GracefulShutdown::new();
    let streams = TaskTracker::new();
    let shutdown: Shutdown = state.shutdown.clone();
    let shared = std::sync::Arc::new(Shared {
        router,
        state,
        cors,
        idle_timeout: limits.idle_timeout,
        idle: idle::IdleConnections::new(limits.max_idle),
    });
    let mut last_warning: Option<std::time::Instant> = None;
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = shutdown.clone().wait() => break,
        };
        let (tcp, peer) = match accepted {
            Ok(pair) => pair,
            // That one connection is gone already: take the next.
            Err(e) if is_connection_error(&e) => continue,
            Err(e) => {
                // Out of file descriptors and the like. The connection waits in
                // the backlog; make room as nginx does, by closing the oldest
                // idle connections, back off briefly and go on. Said at most
                // every 10 seconds.
                let closed = if out_of_files(&e) {
                    shared.idle.close_oldest(CLOSE_WHEN_OUT_OF_FILES)
                } else {
                    0
                };
                if last_warning.is_none_or(|t| t.elapsed() > Duration::from_secs(10)) {
                    tracing::warn!(
                        error = %e,
                        idle_closed = closed,
                        "accept failed (more may follow silently for 10 s)"
                    );
                    last_warning = Some(std::time::Instant::now());
                }
                tokio::select! {
                    _ = tokio::time::sleep(ACCEPT_BACKOFF) => continue,
                    _ = shutdown.clone().wait() => break,
                }
            }
        };
        let _ = tcp.set_nodelay(true);
        let connection = Connection {
            client: peer.ip(),
            shared: shared.clone(),
        };
        streams.spawn(connection.serve(tcp, graceful.watcher()));
    }
    drop(listener);
    streams.close();
    tokio::join!(graceful.shutdown(), streams.wait());
    Ok(())
}

/// Errors of `accept` that concern only the connection being accepted.
fn is_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}

/// `accept` failed because the process or the system has no descriptor left.
fn out_of_files(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE))
}

/// What every connection of the listener uses, shared: a connection's task
/// keeps one pointer to it rather than copies.
struct Shared {
    router: Router,
    state: AppState,
    cors: StreamCors,
    /// Time a connection may wait for a whole request head.
    idle_timeout: Duration,
    /// Connections waiting for a request, capped.
    idle: idle::IdleConnections,
}

impl Shared {
    /// Waits, as an idle connection, for the first bytes of a request on
    /// `tcp` and reads them into `read`: false when the connection is to
    /// close instead (the client closed, `deadline` passed, shutdown, or it
    /// was the oldest idle connection when room was needed).
    async fn wait_for_request(
        &self,
        tcp: &TcpStream,
        read: &mut Vec<u8>,
        deadline: tokio::time::Instant,
    ) -> bool {
        let idle = self.idle.enter();
        loop {
            let shutdown = self.state.shutdown.clone();
            tokio::select! {
                ready = tcp.readable() => if ready.is_err() {
                    return false;
                },
                _ = idle.closed() => return false,
                _ = tokio::time::sleep_until(deadline) => return false,
                _ = shutdown.wait() => return false,
            }
            // Readiness may be left over from the last request, read whole:
            // the connection stays idle until bytes really come.
            read.reserve(READ_CAPACITY);
            match tcp.try_read_buf(read) {
                Ok(0) => return false,
                Ok(_) => return true,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(_) => return false,
            }
        }
    }
}

struct Connection {
    client: std::net::IpAddr,
    shared: std::sync::Arc<Shared>,
}

/// A request head, parsed.
struct Head {
    /// Its length in bytes (the body starts there).
    length: usize,
    /// The HTTP/1 minor version.
    version: u8,
    method: String,
    path: String,
    query: Option<String>,
    headers: HeaderMap,
}

/// Why a request head was not taken.
#[derive(Debug, PartialEq, Eq)]
enum BadHead {
    /// Over [`MAX_HEAD`] bytes or [`MAX_HEADERS`] headers: answered 431 here.
    TooLarge,
    /// Not HTTP/1 as httparse reads it: left to hyper.
    Other,
}

fn parse_head(bytes: &[u8]) -> Option<Result<Head, BadHead>> {
    let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut slots);
    let length = match request.parse(bytes) {
        Ok(httparse::Status::Complete(length)) if length > MAX_HEAD => {
            return Some(Err(BadHead::TooLarge))
        }
        Ok(httparse::Status::Complete(length)) => length,
        Ok(httparse::Status::Partial) => return None,
        Err(httparse::Error::TooManyHeaders) => return Some(Err(BadHead::TooLarge)),
        Err(_) => return Some(Err(BadHead::Other)),
    };
    let target = request.path.unwrap_or("/");
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p.to_owned(), Some(q.to_owned())),
        None => (target.to_owned(), None),
    };
    let mut headers = HeaderMap::new();
    for h in request.headers.iter() {
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(h.name.as_bytes()),
            HeaderValue::from_bytes(h.value),
        ) {
            headers.append(name, value);
        }
    }
    Some(Ok(Head {
        length,
        version: request.version.unwrap_or(0),
        method: request.method.unwrap_or("").to_owned(),
        path,
        query,
        headers,
    }))
}

/// Where a connection goes after its first request head. The head is boxed:
/// this is what the connection's task keeps for as long as it lives.
enum Route {
    Stream(TcpStream, Box<Head>),
    Publish(TcpStream, Vec<u8>, Box<Head>),
    TooLarge(TcpStream),
    Hyper(TcpStream, Vec<u8>),
}

impl Connection {
    async fn serve(self, tcp: TcpStream, watcher: hyper_util::server::graceful::Watcher) {
        // This future lives as long as the stream, and a future is as large as
        // its largest await: every await here is boxed (freed when it is
        // done), so the task keeps little more than the socket.
        let Some(route) = Box::pin(self.route(tcp)).await else {
            return;
        };
        match route {
            Route::Stream(tcp, head) => Box::pin(self.stream(tcp, *head)).await,
            Route::Publish(tcp, read, head) => {
                let ended =
                    Box::pin(publish::serve(&self.shared, self.client, tcp, read, *head)).await;
                if let publish::Ended::HandOver(tcp, read) = ended {
                    Box::pin(self.hyper(tcp, read, watcher)).await;
                }
            }
            Route::TooLarge(mut tcp) => {
                let answer = error_response(&head_too_large(), &[], true);
                Box::pin(async move {
                    let _ = tcp.write_all(&answer).await;
                    let _ = tcp.shutdown().await;
                })
                .await;
            }
            Route::Hyper(tcp, read) => Box::pin(self.hyper(tcp, read, watcher)).await,
        }
    }

    /// Reads the first request head (into a heap buffer that a stream drops)
    /// and picks its route; `None` when the client closed or was too slow, or
    /// the connection was closed while idle.
    async fn route(&self, mut tcp: TcpStream) -> Option<Route> {
        // One deadline for the wait and the head, as hyper's header timeout.
        let deadline = tokio::time::Instant::now() + self.shared.idle_timeout;
        let mut read = Vec::new();
        if !self
            .shared
            .wait_for_request(&tcp, &mut read, deadline)
            .await
        {
            return None;
        }
        let head = tokio::time::timeout_at(deadline, async {
            loop {
                match parse_head(&read) {
                    Some(parsed) => return Some(parsed),
                    None if read.len() > MAX_HEAD => return Some(Err(BadHead::TooLarge)),
                    None => {}
                }
                read.reserve(READ_CAPACITY);
                if tcp.read_buf(&mut read).await.ok()? == 0 {
                    return None;
                }
            }
        })
        .await
        .ok()??;
        let limit = self.shared.state.policies.max_payload_bytes();
        Some(match head {
            Ok(head) if head.method == "GET" && head.path == "/v1/stream" => {
                Route::Stream(tcp, Box::new(head))
            }
            Ok(head) if publish::takes(&head, limit).is_some() => {
                Route::Publish(tcp, read, Box::new(head))
            }
            Err(BadHead::TooLarge) => Route::TooLarge(tcp),
            // Everything else (and heads httparse refuses) is hyper's.
            _ => Route::Hyper(tcp, read),
        })
    }

    /// Serves the connection with hyper and the router; `read` holds the bytes
    /// already read from it.
    async fn hyper(
        &self,
        tcp: TcpStream,
        read: Vec<u8>,
        watcher: hyper_util::server::graceful::Watcher,
    ) {
        let io = TokioIo::new(Prefixed {
            prefix: read,
            offset: 0,
            inner: tcp,
            stalled: None,
            write_timeout: WRITE_TIMEOUT,
        });
        let router = (self.shared.router.clone()).layer(axum::Extension(ClientAddr(self.client)));
        let service = TowerToHyperService::new(router);
        // The lean path's limits, for every later request of the connection:
        // heads over them get 431 and a closed connection, and a kept-alive
        // connection is closed when its next head does not come in time.
        let connection = hyper::server::conn::http1::Builder::new()
            .timer(hyper_util::rt::TokioTimer::new())
            .header_read_timeout(self.shared.idle_timeout)
            .max_headers(MAX_HEADERS)
            .max_header_size(MAX_HEAD)
            .max_buf_size(MAX_HEAD + 8192)
            .serve_connection(io, service);
        let _ = Box::pin(watcher.watch(connection)).await;
    }

    /// Serves one stream on the socket: the head, then the body until it ends
    /// or the client goes away.
    async fn stream(self, mut tcp: TcpStream, head: Head) {
        // Everything but the socket and the body is dropped before the stream
        // settles in: this future lives as long as the stream.
        // Opening (subscribing, reading history) is boxed: its locals are freed
        // once the stream is open instead of sizing this future for good.
        let Some(mut events) = Box::pin(self.open_stream(&mut tcp, head)).await else {
            return;
        };
        // The socket is shared with the stream's queue: while the task waits,
        // the hub writes events to it directly.
        let tcp = std::sync::Arc::new(tcp);
        events.attach_socket(tcp.clone());
        // Watch the read side too: a client that closes its end is noticed at
        // once rather than at the next write (hyper does the same).
        let mut probe = [0u8; 64];
        let end = loop {
            tokio::select! {
                chunk = events.next() => match chunk {
                    Some(Ok(chunk)) => {
                        // Fails when the client takes no byte for
                        // WRITE_TIMEOUT, and at once when the hub cut the
                        // stream off (the queue shut its sending down).
                        match write_all(&tcp, &chunk, WRITE_TIMEOUT).await {
                            Ok(()) => {}
                            Err(e) if e.kind() == io::ErrorKind::TimedOut => break End::Stalled,
                            Err(_) => break End::Ended,
                        }
                    }
                    _ => break End::Ended,
                },
                readable = tcp.readable() => match readable.and_then(|()| tcp.try_read(&mut probe)) {
                    Ok(0) => break End::ClientLeft,
                    // Bytes after the request (a pipelined request) are ignored.
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(_) => break End::ClientLeft,
                },
            }
        };
        // The stream's place and subscription go first; closing the stream
        // lets go of the queue's handle on the socket.
        drop(events);
        let Ok(tcp) = std::sync::Arc::try_unwrap(tcp) else {
            return;
        };
        match end {
            End::ClientLeft => {}
            End::Stalled => {
                let _ = tcp.set_zero_linger();
            }
            End::Ended => Box::pin(close_stream(tcp)).await,
        }
    }

    /// Opens the stream and writes the response head; `None` when the request
    /// was answered with an error (or the client left).
    async fn open_stream(self, tcp: &mut TcpStream, head: Head) -> Option<stream::EventStream> {
        let origin = head
            .headers
            .get("origin")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let cors = self.shared.cors.headers(origin.as_deref());
        let span = crate::telemetry::request_span("GET", "/v1/stream", &head.headers);
        let opened = stream::open(
            &self.shared.state,
            head.query.as_deref(),
            &head.headers,
            Some(self.client),
        )
        .instrument(span.clone())
        .await;
        drop(head);
        let status = match &opened {
            Ok(_) => StatusCode::OK,
            Err(e) => e.status,
        };
        span.record("http.response.status_code", status.as_u16());
        drop(span);
        metrics::counter!(
            axum_prometheus::utils::requests_total_name(),
            "method" => "GET",
            "status" => status.as_u16().to_string(),
            "endpoint" => "/v1/stream"
        )
        .increment(1);
        let events = match opened {
            Ok(events) => events,
            Err(error) => {
                let _ = tcp.write_all(&error_response(&error, &cors, true)).await;
                let _ = tcp.shutdown().await;
                return None;
            }
        };
        let mut response = String::from("HTTP/1.1 200 OK\r\nconnection: close\r\n");
        for (name, value) in stream::response_headers(&self.shared.state) {
            response.push_str(&format!("{name}: {}\r\n", value.to_str().unwrap_or("")));
        }
        for (name, value) in cors {
            response.push_str(&format!("{name}: {value}\r\n"));
        }
        response.push_str("\r\n");
        tcp.write_all(response.as_bytes()).await.ok()?;
        Some(events)
    }
}

/// Why a stream on the lean path ended.
enum End {
    /// The client closed its end or reset: nothing more to send.
    ClientLeft,
    /// A write made no progress for [`WRITE_TIMEOUT`]: the connection is reset.
    Stalled,
    /// The stream ended (shutdown, token expiry, cut off as too slow, …).
    Ended,
}

/// Closes a stream's connection after its body: the end of the body (FIN)
/// follows what was written. A client that has not taken all of it within
/// [`WRITE_TIMEOUT`] (one cut off for not reading, say) gets a reset instead:
/// the kernel would otherwise keep the unsent bytes, megabytes, for as long as
/// the client stays and does not read. The stream's place is free meanwhile.
async fn close_stream(mut tcp: TcpStream) {
    // Already shut down after a cut-off: then this changes nothing.
    let _ = tcp.shutdown().await;
    if unsent_bytes(&tcp) == 0 {
        return;
    }
    let gone = tokio::time::timeout(WRITE_TIMEOUT, async {
        // Until the client closes its end (having read the end of the body)
        // or resets; what it sends meanwhile is dropped.
        let mut probe = [0u8; 64];
        while matches!(tcp.read(&mut probe).await, Ok(n) if n > 0) {}
    })
    .await
    .is_ok();
    if !gone && unsent_bytes(&tcp) > 0 {
        let _ = tcp.set_zero_linger();
    }
}

/// Bytes written to `tcp` that the client has not acknowledged yet.
fn unsent_bytes(tcp: &TcpStream) -> usize {
    use std::os::fd::AsRawFd;
    let mut unsent: libc::c_int = 0;
    // SAFETY: SIOCOUTQ (TIOCOUTQ) writes one int for an open TCP socket.
    let done = unsafe { libc::ioctl(tcp.as_raw_fd(), libc::TIOCOUTQ, &mut unsent) };
    if done == 0 {
        unsent.max(0) as usize
    } else {
        0
    }
}

/// Writes all of `bytes` to a socket shared with the stream's queue (which
/// writes only while the task waits for events, never during this). Fails
/// when the socket takes nothing for `timeout`.
async fn write_all(tcp: &TcpStream, mut bytes: &[u8], timeout: Duration) -> io::Result<()> {
    while !bytes.is_empty() {
        match tcp.try_write(bytes) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => {
                bytes = &bytes[n..];
                continue;
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
        // The socket is full: wait for room, at most `timeout`. The timer is
        // boxed, made only when needed: inline, it would size the future of
        // every idle stream that ever writes.
        Box::pin(tokio::time::timeout(timeout, tcp.writable()))
            .await
            .map_err(|_| io::Error::from(io::ErrorKind::TimedOut))??;
    }
    Ok(())
}

/// The answer to a request head over the limits.
fn head_too_large() -> ApiError {
    ApiError::new(
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
        "headers_too_large",
        format!("the request head is over {MAX_HEAD} bytes or {MAX_HEADERS} headers"),
    )
}

/// A JSON error response; `close` closes the connection after it.
fn error_response(error: &ApiError, cors: &[(&'static str, String)], close: bool) -> Vec<u8> {
    let body = serde_json::to_vec(&error.body()).unwrap_or_default();
    response(error.status, &error.headers(), cors, &body, close)
}

/// A whole HTTP/1.1 response with a JSON body, as hyper and the router would
/// write it (`date` included); `close` adds `connection: close`.
fn response(
    status: StatusCode,
    headers: &[(HeaderName, String)],
    cors: &[(&'static str, String)],
    json: &[u8],
    close: bool,
) -> Vec<u8> {
    use std::fmt::Write;
    let mut head = String::with_capacity(256);
    let _ = write!(
        head,
        "HTTP/1.1 {} {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\ndate: {}\r\n",
        status.as_u16(),
        status.canonical_reason().unwrap_or(""),
        json.len(),
        httpdate::fmt_http_date(std::time::SystemTime::now()),
    );
    if close {
        head.push_str("connection: close\r\n");
    }
    for (name, value) in headers {
        let _ = write!(head, "{name}: {value}\r\n");
    }
    for (name, value) in cors {
        let _ = write!(head, "{name}: {value}\r\n");
    }
    head.push_str("\r\n");
    let mut out = head.into_bytes();
    out.extend_from_slice(json);
    out
}

/// A socket whose first bytes were already read: replays them, then reads on.
/// A write that makes no progress for `write_timeout` ([`WRITE_TIMEOUT`])
/// fails (hyper has no write timeout of its own: a stream to a client that
/// stopped reading would wait forever).
struct Prefixed {
    prefix: Vec<u8>,
    offset: usize,
    inner: TcpStream,
    /// Since when writes wait for room, while they do.
    stalled: Option<Pin<Box<tokio::time::Sleep>>>,
    write_timeout: Duration,
}

impl Prefixed {
    /// Passes a write's outcome on; a pending write starts (or goes on
    /// waiting on) the write timeout, and fails once it ran out.
    fn watch_write<T>(
        &mut self,
        cx: &mut Context<'_>,
        polled: Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        if polled.is_ready() {
            self.stalled = None;
            return polled;
        }
        let stalled = self
            .stalled
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(self.write_timeout)));
        match stalled.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(io::ErrorKind::TimedOut.into())),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl AsyncRead for Prefixed {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.offset < self.prefix.len() {
            let n = buf.remaining().min(self.prefix.len() - self.offset);
            let start = self.offset;
            buf.put_slice(&self.prefix[start..start + n]);
            self.offset += n;
            if self.offset == self.prefix.len() {
                self.prefix = Vec::new();
                self.offset = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Prefixed {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.watch_write(cx, polled)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.watch_write(cx, polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heads_parse_incrementally() {
        assert!(parse_head(b"GET /v1/stream?channel=a HTTP/1.1\r\nHost: x\r\n").is_none());
        let head = parse_head(b"GET /v1/stream?channel=a HTTP/1.1\r\nLast-Event-ID: 1-0\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(head.method, "GET");
        assert_eq!(head.path, "/v1/stream");
        assert_eq!(head.query.as_deref(), Some("channel=a"));
        assert_eq!(head.headers["last-event-id"], "1-0");
        assert_eq!(
            parse_head(b"\x00\x01 garbage\r\n\r\n").unwrap().err(),
            Some(BadHead::Other)
        );
        let many: String = (0..=MAX_HEADERS).map(|i| format!("x-{i}: 1\r\n")).collect();
        let head = format!("GET / HTTP/1.1\r\n{many}\r\n");
        assert_eq!(
            parse_head(head.as_bytes()).unwrap().err(),
            Some(BadHead::TooLarge)
        );
    }

    /// A connected pair whose server side cannot take a byte more: the
    /// client does not read.
    async fn full_socket() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        let filler = vec![0u8; 64 * 1024];
        loop {
            match server.try_write(&filler) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => panic!("{e}"),
            }
        }
        (server, client)
    }

    #[tokio::test]
    async fn writes_that_make_no_progress_time_out_on_both_paths() {
        let timeout = Duration::from_millis(100);
        let (server, _client) = full_socket().await;
        let error = write_all(&server, b"data: 1\n\n", timeout)
            .await
            .unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::TimedOut);
        // What hyper writes through.
        let mut prefixed = Prefixed {
            prefix: Vec::new(),
            offset: 0,
            inner: server,
            stalled: None,
            write_timeout: timeout,
        };
        let error = prefixed.write_all(b"data: 1\n\n").await.unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::TimedOut);
    }

    #[test]
    fn cors_matches_the_router_layer() {
        let any = StreamCors::new("*");
        assert!(any
            .headers(None)
            .contains(&("access-control-allow-origin", "*".to_owned())));
        let listed = StreamCors::new("https://a.example, https://b.example");
        let headers = listed.headers(Some("https://b.example"));
        assert!(headers.contains(&(
            "access-control-allow-origin",
            "https://b.example".to_owned()
        )));
        assert!(headers.contains(&("access-control-allow-credentials", "true".to_owned())));
        assert!(!listed
            .headers(Some("https://evil.example"))
            .iter()
            .any(|(n, _)| *n == "access-control-allow-origin"));
    }
}
