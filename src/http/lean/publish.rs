//! `POST /v1/publish` on the lean path: kept-alive publish connections served
//! on the socket, request after request, without hyper and the router.
//!
//! A publisher sends one small request after another on a kept-alive
//! connection; through hyper, axum, the CORS and metrics layers each one cost
//! more CPU than the publish itself (`docs/benchmarks.md`). This path takes
//! only the plain case — HTTP/1.1, a `Content-Length` body within the limit,
//! no `Expect` or `Transfer-Encoding` — and runs the same handler code
//! ([`crate::http::publish::publish_body`]) with the same span, metrics and
//! headers. The first request it does not take hands the connection, with the
//! bytes already read, to hyper.

use std::net::IpAddr;
use std::time::Instant;

use axum::http::{header, HeaderMap, StatusCode};
use metrics::{Counter, Gauge, Histogram};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tracing::Instrument;

use super::{
    error_response, parse_head, response, BadHead, Head, Shared, MAX_HEAD, READ_CAPACITY,
    WRITE_TIMEOUT,
};
use crate::http::publish::{body_timeout, json_content, publish_body};

/// The route, as the router's metrics and spans name it.
const ROUTE: &str = "/v1/publish";

/// How a lean publish connection ended.
pub(super) enum Ended {
    /// Closed (by the client, an error, or shutdown).
    Closed,
    /// A request this path does not take: the socket goes to hyper with the
    /// bytes read so far (that request first).
    HandOver(TcpStream, Vec<u8>),
}

/// The body length of a publish request this path serves, `None` for any
/// other request.
pub(super) fn takes(head: &Head, limit: usize) -> Option<usize> {
    if head.method != "POST" || head.path != ROUTE || head.version != 1 {
        return None;
    }
    let headers = &head.headers;
    if headers.contains_key(header::TRANSFER_ENCODING) || headers.contains_key(header::EXPECT) {
        return None;
    }
    let mut lengths = headers.get_all(header::CONTENT_LENGTH).iter();
    let length = lengths.next()?.to_str().ok()?;
    if lengths.next().is_some() || length.is_empty() || !length.bytes().all(|b| b.is_ascii_digit())
    {
        return None;
    }
    length.parse().ok().filter(|n| *n <= limit)
}

/// Serves publishes of `client` on `tcp` from `head` on; `read` holds the
/// bytes read so far, from `head`'s first byte.
pub(super) async fn serve(
    shared: &Shared,
    client: IpAddr,
    mut tcp: TcpStream,
    mut read: Vec<u8>,
    mut head: Head,
) -> Ended {
    loop {
        let Some(length) = takes(&head, shared.state.policies.max_payload_bytes()) else {
            return Ended::HandOver(tcp, read);
        };
        let end = head.length + length;
        // The request's head and everything made for it are gone before the
        // connection waits for the next one.
        if !serve_one(shared, client, &mut tcp, &mut read, head, end).await {
            return Ended::Closed;
        }
        read.drain(..end);
        // A large body leaves a large buffer: give it back rather than keep
        // it for as long as the connection lives.
        if read.capacity() > READ_CAPACITY {
            read.shrink_to(READ_CAPACITY.max(read.len()));
        }
        head = match next_head(shared, &mut tcp, &mut read).await {
            Next::Head(head) => head,
            Next::HandOver => return Ended::HandOver(tcp, read),
            Next::Closed => return Ended::Closed,
        };
    }
}

/// Reads the body of the request `head` (it ends at `read[end]`), publishes
/// and answers; false when the connection is to close.
async fn serve_one(
    shared: &Shared,
    client: IpAddr,
    tcp: &mut TcpStream,
    read: &mut Vec<u8>,
    head: Head,
    end: usize,
) -> bool {
    let state = &shared.state;
    let started = Instant::now();
    let arrived = tokio::time::timeout(state.body_timeout, async {
        while read.len() < end {
            read.reserve(end - read.len());
            if tcp.read_buf(read).await.ok()? == 0 {
                return None;
            }
        }
        Some(())
    })
    .await;
    let cors = shared.cors.headers(origin(&head.headers));
    let close = wants_close(&head.headers) || state.shutdown.is_triggered();
    let bytes = match arrived {
        Ok(Some(())) => {
            let body = &read[head.length..end];
            answer(shared, client, &head, body, &cors, close, started).await
        }
        Ok(None) => return false,
        Err(_) => {
            let error = body_timeout(state);
            record(error.status, started);
            let bytes = error_response(&error, &cors, true);
            write_answer(tcp, &bytes).await;
            return false;
        }
    };
    if !write_answer(tcp, &bytes).await || close {
        let _ = tcp.shutdown().await;
        return false;
    }
    true
}

/// Writes an answer; false when it failed or the client took none of it for
/// [`WRITE_TIMEOUT`] (a publisher that sends without reading answers).
async fn write_answer(tcp: &mut TcpStream, bytes: &[u8]) -> bool {
    matches!(
        tokio::time::timeout(WRITE_TIMEOUT, tcp.write_all(bytes)).await,
        Ok(Ok(()))
    )
}

/// What came after an answered request.
enum Next {
    Head(Head),
    HandOver,
    Closed,
}

/// Reads the next request head. Until its first bytes come the connection is
/// idle: it is closed when the idle timeout passes first (as hyper closes its
/// kept-alive connections), at shutdown, or when it is the oldest idle
/// connection and room is needed. The whole head must be in within the idle
/// timeout, and within the limits of the first request's head.
async fn next_head(shared: &Shared, tcp: &mut TcpStream, read: &mut Vec<u8>) -> Next {
    let deadline = tokio::time::Instant::now() + shared.idle_timeout;
    if read.is_empty() && !shared.wait_for_request(tcp, read, deadline).await {
        return Next::Closed;
    }
    let reading = tokio::time::timeout_at(deadline, async {
        loop {
            match parse_head(read) {
                Some(Ok(head)) => return Next::Head(head),
                Some(Err(BadHead::Other)) => return Next::HandOver,
                Some(Err(BadHead::TooLarge)) => break,
                None if read.len() > MAX_HEAD => break,
                None => {}
            }
            read.reserve(READ_CAPACITY);
            match tcp.read_buf(read).await {
                Ok(0) | Err(_) => return Next::Closed,
                Ok(_) => {}
            }
        }
        let error = super::head_too_large();
        write_answer(tcp, &error_response(&error, &[], true)).await;
        Next::Closed
    });
    reading.await.unwrap_or(Next::Closed)
}

/// Runs the publish under the request's span and records its metrics; the
/// whole response.
async fn answer(
    shared: &Shared,
    client: IpAddr,
    head: &Head,
    body: &[u8],
    cors: &[(&'static str, String)],
    close: bool,
    started: Instant,
) -> Vec<u8> {
    let handles = route_metrics();
    handles.pending.increment(1.0);
    let state = &shared.state;
    let span = crate::telemetry::request_span("POST", ROUTE, &head.headers);
    let result = async {
        let token = state.credentials(&head.headers, head.query.as_deref())?;
        json_content(&head.headers, state.policies.max_payload_bytes())?;
        publish_body(state, &head.headers, token, Some(client), body).await
    }
    .instrument(span.clone())
    .await;
    let (status, bytes) = match result {
        Ok(published) => {
            let json = serde_json::to_vec(&published).unwrap_or_default();
            let bytes = response(StatusCode::OK, &[], cors, &json, close);
            (StatusCode::OK, bytes)
        }
        Err(error) => (error.status, error_response(&error, cors, close)),
    };
    span.record("http.response.status_code", status.as_u16());
    handles.pending.decrement(1.0);
    record(status, started);
    bytes
}

/// The `Origin` of a request.
fn origin(headers: &HeaderMap) -> Option<&str> {
    headers.get(header::ORIGIN).and_then(|v| v.to_str().ok())
}

/// Whether the client asked to close after this request.
fn wants_close(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|token| token.trim().eq_ignore_ascii_case("close"))
}

/// The router's HTTP metrics for this route (`axum-prometheus` names and
/// labels), the handles of the usual answer looked up once.
struct RouteMetrics {
    pending: Gauge,
    ok_total: Counter,
    ok_duration: Histogram,
}

fn route_metrics() -> &'static RouteMetrics {
    static HANDLES: std::sync::OnceLock<RouteMetrics> = std::sync::OnceLock::new();
    HANDLES.get_or_init(|| RouteMetrics {
        pending: metrics::gauge!(
            axum_prometheus::utils::requests_pending_name(),
            "method" => "POST",
            "endpoint" => ROUTE
        ),
        ok_total: metrics::counter!(
            axum_prometheus::utils::requests_total_name(),
            "method" => "POST", "status" => "200", "endpoint" => ROUTE
        ),
        ok_duration: metrics::histogram!(
            axum_prometheus::utils::requests_duration_name(),
            "method" => "POST", "status" => "200", "endpoint" => ROUTE
        ),
    })
}

/// Counts one answered request and its duration.
fn record(status: StatusCode, started: Instant) {
    let seconds = started.elapsed().as_secs_f64();
    if status == StatusCode::OK {
        let handles = route_metrics();
        handles.ok_total.increment(1);
        handles.ok_duration.record(seconds);
        return;
    }
    let labels = [
        ("method", "POST".to_owned()),
        ("status", status.as_u16().to_string()),
        ("endpoint", ROUTE.to_owned()),
    ];
    metrics::counter!(axum_prometheus::utils::requests_total_name(), &labels).increment(1);
    metrics::histogram!(axum_prometheus::utils::requests_duration_name(), &labels).record(seconds);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(text: &str) -> Head {
        parse_head(text.as_bytes()).unwrap().unwrap()
    }

    #[test]
    fn takes_only_plain_publishes_within_the_limit() {
        let plain = "POST /v1/publish HTTP/1.1\r\nContent-Length: 10\r\n\r\n";
        assert_eq!(takes(&head(plain), 100), Some(10));
        assert_eq!(
            takes(&head(plain), 9),
            None,
            "over the limit: hyper answers 413"
        );
        for other in [
            "POST /v1/publish HTTP/1.0\r\nContent-Length: 10\r\n\r\n",
            "POST /v1/broadcast HTTP/1.1\r\nContent-Length: 10\r\n\r\n",
            "GET /v1/publish HTTP/1.1\r\n\r\n",
            "POST /v1/publish HTTP/1.1\r\n\r\n",
            "POST /v1/publish HTTP/1.1\r\nContent-Length: +10\r\n\r\n",
            "POST /v1/publish HTTP/1.1\r\nContent-Length: 10\r\nContent-Length: 10\r\n\r\n",
            "POST /v1/publish HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
            "POST /v1/publish HTTP/1.1\r\nContent-Length: 10\r\nExpect: 100-continue\r\n\r\n",
        ] {
            assert_eq!(takes(&head(other), 100), None, "{other:?}");
        }
    }

    #[test]
    fn connection_close_is_honoured_in_any_case_and_list() {
        let h = head("POST / HTTP/1.1\r\nConnection: keep-alive, Close\r\n\r\n");
        assert!(wants_close(&h.headers));
        let h = head("POST / HTTP/1.1\r\nConnection: keep-alive\r\n\r\n");
        assert!(!wants_close(&h.headers));
    }
}
