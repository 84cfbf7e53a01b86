//! `GET /v1/stream`: subscribe, replay from `Last-Event-ID`, then live events.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{RawQuery, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::Response;
use bytes::Bytes;
use futures_util::Stream;
use tokio::sync::watch;
use tokio::time::{Instant, Sleep};
use tokio_util::sync::{ReusableBoxFuture, WaitForCancellationFutureOwned};

use super::error::ApiError;
use super::limits::{ClientAddr, StreamPermit};
use super::{AppState, REPLICA_HEADER};
use crate::auth::Action;
use crate::event::{validate_channel, Frame, Position};
use crate::hub::{StreamLimits, Subscription};
use crate::policy::{EffectivePolicy, PolicyStore, SlowConsumerAction};
use crate::queue::StreamWriter;
use crate::sse::{gap_frame, retry_line, token_expired_frame, StreamIds, KEEPALIVE};

/// How long a new stream waits for its channels to go live on the backplane.
const SUBSCRIBE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a resuming stream waits for its replay (history reads are
/// bounded and shared; beyond this the client is asked to come back later).
const REPLAY_TIMEOUT: Duration = Duration::from_secs(10);
/// Refused streams are told to retry after 1 to this many seconds, drawn at
/// random, so that a wave of refused clients does not come back as one wave.
const RETRY_AFTER_SPREAD_SECS: u64 = 5;

/// What the query string asks for.
struct StreamRequest {
    channels: Vec<Arc<str>>,
    last_event_id: Option<String>,
}

fn parse_query(
    query: Option<&str>,
    headers: &HeaderMap,
    max_channels: usize,
) -> Result<StreamRequest, ApiError> {
    let mut channels: Vec<Arc<str>> = Vec::new();
    let mut query_last_id = None;
    for (key, value) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
        match &*key {
            "channel" => {
                validate_channel(&value)
                    .map_err(|m| ApiError::bad_request("invalid_channel", m))?;
                channels.push(Arc::from(&*value));
            }
            "lastEventId" => query_last_id = Some(value.into_owned()),
            _ => {}
        }
    }
    if channels.is_empty() {
        return Err(ApiError::bad_request(
            "missing_channel",
            "name at least one channel: /v1/stream?channel=NAME",
        ));
    }
    channels.sort();
    channels.dedup();
    if channels.len() > max_channels {
        return Err(ApiError::bad_request(
            "too_many_channels",
            format!("a stream takes at most {max_channels} channels"),
        ));
    }
    // The header wins: browsers send it on reconnect, with the newest id.
    let header_last_id = match headers.get("last-event-id") {
        Some(value) => Some(
            value
                .to_str()
                .map_err(|_| {
                    ApiError::bad_request("invalid_last_event_id", "Last-Event-ID is not ASCII")
                })?
                .to_owned(),
        ),
        None => None,
    };
    let last_event_id = header_last_id.or(query_last_id).filter(|id| !id.is_empty());
    Ok(StreamRequest {
        channels,
        last_event_id,
    })
}

/// What a stream of several channels takes from their policies: the shortest
/// keepalive, the longest retry, the smallest queue, and drop-oldest only when
/// every channel asks for it.
struct StreamPolicy {
    keepalive: Duration,
    retry: Duration,
    queue_events: usize,
    drop_oldest: bool,
}

impl StreamPolicy {
    fn of(policies: &[Arc<EffectivePolicy>]) -> StreamPolicy {
        StreamPolicy {
            keepalive: policies
                .iter()
                .map(|p| p.keepalive)
                .min()
                .unwrap_or(Duration::from_secs(15)),
            retry: policies
                .iter()
                .map(|p| p.retry)
                .max()
                .unwrap_or(Duration::from_secs(3)),
            queue_events: policies
                .iter()
                .map(|p| p.queue_events)
                .min()
                .unwrap_or(1024),
            drop_oldest: policies
                .iter()
                .all(|p| p.slow_consumer == SlowConsumerAction::DropOldest),
        }
    }
}

/// `GET /v1/stream?channel=A[&channel=B…][&lastEventId=…]`.
pub async fn stream(
    State(state): State<AppState>,
    client: Option<axum::Extension<ClientAddr>>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let client = client.map(|axum::Extension(ClientAddr(ip))| ip);
    let events = open(&state, query.as_deref(), &headers, client).await?;
    let mut response = Response::new(Body::from_stream(events));
    *response.status_mut() = StatusCode::OK;
    for (name, value) in response_headers(&state) {
        response.headers_mut().insert(name, value);
    }
    Ok(response)
}

/// The headers of a stream's response.
pub fn response_headers(state: &AppState) -> Vec<(header::HeaderName, HeaderValue)> {
    let mut headers = vec![
        (
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/event-stream"),
        ),
        (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        (
            header::HeaderName::from_static("x-accel-buffering"),
            HeaderValue::from_static("no"),
        ),
    ];
    if let Ok(replica) = HeaderValue::from_str(state.hub.replica_id()) {
        headers.push((header::HeaderName::from_static(REPLICA_HEADER), replica));
    }
    headers
}

/// Opens a stream: validates the request, subscribes, reads what a resume
/// missed, and returns the body (the `retry:` line first). Shared by the axum
/// handler and the lean HTTP/1 path. A refusal for lack of capacity (503)
/// carries a `Retry-After` spread over a few seconds.
pub async fn open(
    state: &AppState,
    query: Option<&str>,
    headers: &HeaderMap,
    client: Option<IpAddr>,
) -> Result<EventStream, ApiError> {
    open_stream(state, query, headers, client)
        .await
        .map_err(|mut error| {
            if error.status == StatusCode::SERVICE_UNAVAILABLE {
                error.retry_after = Some(fastrand::u64(1..=RETRY_AFTER_SPREAD_SECS));
            }
            error
        })
}

async fn open_stream(
    state: &AppState,
    query: Option<&str>,
    headers: &HeaderMap,
    client: Option<IpAddr>,
) -> Result<EventStream, ApiError> {
    if state.shutdown.is_triggered() {
        return Err(ApiError::unavailable(
            "shutting_down",
            "this replica is shutting down; reconnect",
        ));
    }
    let request = parse_query(query, headers, state.max_channels_per_stream)?;
    let ids = StreamIds::new(&request.channels);
    let resume = match &request.last_event_id {
        Some(token) => Some(
            ids.decode(token, request.channels.len())
                .map_err(|e| ApiError::bad_request("invalid_last_event_id", e.to_string()))?,
        ),
        None => None,
    };
    let policies = state.policies.resolve_all(&request.channels);
    let stream_policy = StreamPolicy::of(&policies);
    let token = state.credentials(headers, query)?;
    let grants = state.auth.authorize(
        token.as_deref(),
        Action::Subscribe,
        &request.channels,
        &policies,
    )?;
    let permit = state.streams.admit(client)?;

    let backplane = state.hub.backplane().clone();
    let health = backplane.health();
    if !health.is_up() {
        let reason = if health.redis.ok {
            health.subscription.message
        } else {
            health.redis.message
        };
        return Err(ApiError::unavailable("backplane_unavailable", reason));
    }
    // Subscribe first, then read history: an event published meanwhile is
    // either in the history read or queued live (or both; duplicates are
    // dropped by position), so it is delivered exactly once.
    let limits = StreamLimits {
        queue_events: stream_policy.queue_events,
        drop_oldest: stream_policy.drop_oldest,
        max_subscribers: policies
            .iter()
            .map(|p| p.max_subscribers_per_replica)
            .collect(),
    };
    let subscription = state
        .hub
        .subscribe(&request.channels, &limits)
        .map_err(|full| {
            ApiError::unavailable("subscriber_limit", format!("{full}; try again later"))
        })?;
    let live = match tokio::time::timeout(SUBSCRIBE_TIMEOUT, subscription.ready()).await {
        Ok(result) => result?,
        Err(_) => {
            return Err(ApiError::unavailable(
                "backplane_unavailable",
                "subscribing timed out",
            ))
        }
    };
    // Every event after this instant reaches the stream live.
    let live_since = Instant::now();
    let mut writer = StreamWriter::new(ids, live);
    let mut initial: VecDeque<Bytes> = VecDeque::new();
    initial.push_back(retry_line(stream_policy.retry));
    if let Some(resume) = resume {
        // A span from here to the end of the replay (a child of the request's).
        let span = tracing::info_span!(
            "sseplane.replay",
            sseplane.channels = request.channels.len(),
            sseplane.replayed = tracing::field::Empty,
            sseplane.gaps = tracing::field::Empty,
        );
        *writer.cursors_mut() = resume;
        let mut gaps: Vec<&str> = Vec::new();
        let mut replay: Vec<Bytes> = Vec::new();
        let mut replayed = 0u64;
        for (index, channel) in request.channels.iter().enumerate() {
            let retention = policies[index].history;
            let after = writer.cursors_mut()[index];
            let limit = if retention.keeps_history() {
                retention.max_events as usize
            } else {
                0
            };
            let read = backplane.history(channel, after, retention.max_age, limit, live_since);
            let history = tokio::time::timeout(REPLAY_TIMEOUT, read)
                .await
                .map_err(|_| {
                    ApiError::unavailable("backplane_unavailable", "reading history timed out")
                })??;
            // A position ahead of the channel (history lost with Redis's data,
            // or a failover to a replica that lagged) cannot be trusted: resume
            // from what the channel has.
            let lost = if history.exists {
                history.gap || after > history.last
            } else {
                after > Position::ZERO
            };
            if lost {
                gaps.push(channel);
                let cursor = &mut writer.cursors_mut()[index];
                *cursor = (*cursor).min(history.last);
            }
            for (position, body) in &history.events {
                let frame = Frame::new(Some(*position), body);
                replayed += u64::from(writer.write(index as u16, &frame, &mut replay));
            }
        }
        if !gaps.is_empty() {
            initial.push_back(gap_frame(&gaps));
        }
        span.record("sseplane.replayed", replayed);
        span.record("sseplane.gaps", gaps.len());
        metrics::counter!(crate::metrics::REPLAYED).increment(replayed);
        initial.extend(replay);
    }

    subscription.queue().open(writer);
    let changes = state.policies.changes();
    let expiry = grants
        .and_then(|g| g.time_left())
        .map(|left| Box::pin(tokio::time::sleep(left)));
    let events = EventStream {
        expiry,
        closing: false,
        _permit: permit,
        pending: initial,
        lossy: Vec::new(),
        keepalive_every: stream_policy.keepalive,
        last_sent: Instant::now(),
        keepalive: Box::pin(tokio::time::sleep(stream_policy.keepalive)),
        shutdown: Box::pin(state.shutdown.token().clone().cancelled_owned()),
        policy_changed: ReusableBoxFuture::new(next_change(changes)),
        policies: state.policies.clone(),
        channels: request.channels,
        subscription,
    };
    Ok(events)
}

/// Most bytes joined into one write.
const COALESCE_LIMIT: usize = 64 * 1024;

/// Takes the next chunk to write: under load, everything queued (up to
/// [`COALESCE_LIMIT`]) joined into one buffer, so that a busy stream costs one
/// write for many events instead of one write each.
fn coalesce(pending: &mut VecDeque<Bytes>) -> Bytes {
    let mut size = 0;
    let mut count = 0;
    for chunk in pending.iter() {
        if count > 0 && size + chunk.len() > COALESCE_LIMIT {
            break;
        }
        size += chunk.len();
        count += 1;
    }
    if count <= 1 {
        return pending.pop_front().unwrap_or_default();
    }
    let mut joined = bytes::BytesMut::with_capacity(size);
    for chunk in pending.drain(..count) {
        joined.extend_from_slice(&chunk);
    }
    joined.freeze()
}

/// Resolves with the receiver when policies change (never, if the store is gone).
async fn next_change(mut changes: watch::Receiver<u64>) -> watch::Receiver<u64> {
    if changes.changed().await.is_err() {
        std::future::pending::<()>().await;
    }
    changes
}

/// The body of a stream: initial chunks (`retry:`, gap notice, replay), then
/// live deliveries, with keepalive comments when quiet. Ends on shutdown, when
/// the hub cut it off as too slow, or when the client goes away (hyper drops it;
/// dropping the subscription unregisters it from the hub).
pub struct EventStream {
    /// Fires when the token the stream was opened with expires.
    expiry: Option<Pin<Box<Sleep>>>,
    /// The stream ends once `pending` is written.
    closing: bool,
    _permit: StreamPermit,
    pending: VecDeque<Bytes>,
    lossy: Vec<u16>,
    keepalive_every: Duration,
    last_sent: Instant,
    keepalive: Pin<Box<Sleep>>,
    shutdown: Pin<Box<WaitForCancellationFutureOwned>>,
    policy_changed: ReusableBoxFuture<'static, watch::Receiver<u64>>,
    policies: PolicyStore,
    channels: Vec<Arc<str>>,
    subscription: Subscription,
}

impl EventStream {
    /// The stream has `socket` to itself (the lean HTTP/1 path): while it waits
    /// for events, the hub writes them to the socket directly.
    pub fn attach_socket(&self, socket: Arc<tokio::net::TcpStream>) {
        self.subscription.queue().attach_socket(socket);
    }

    /// Hands a chunk to the writer. The keepalive timer is not moved here (that
    /// would cost a timer update per event): it checks `last_sent` when it fires.
    fn sent(&mut self, chunk: Bytes) -> Poll<Option<Result<Bytes, Infallible>>> {
        self.last_sent = Instant::now();
        Poll::Ready(Some(Ok(chunk)))
    }

    /// Applies changed policies to this open stream: keepalive and queue.
    fn apply_policies(&mut self) {
        let policies = self.policies.resolve_all(&self.channels);
        let policy = StreamPolicy::of(&policies);
        if policy.keepalive != self.keepalive_every {
            self.keepalive_every = policy.keepalive;
            let deadline = Instant::now() + policy.keepalive;
            self.keepalive.as_mut().reset(deadline);
        }
        self.subscription
            .queue()
            .set_limits(policy.queue_events, policy.drop_oldest);
    }
}

impl Stream for EventStream {
    type Item = Result<Bytes, Infallible>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        // Whatever woke the task, it writes from here on (the hub stops).
        if let Some(at) = this.subscription.queue().resume(&mut this.pending) {
            this.last_sent = this.last_sent.max(at);
        }
        if let Poll::Ready(changes) = this.policy_changed.poll(cx) {
            this.policy_changed.set(next_change(changes));
            this.apply_policies();
            // Poll the new future once so that it registers for the next change.
            let _ = this.policy_changed.poll(cx);
        }
        if let Some(expiry) = &mut this.expiry {
            if expiry.as_mut().poll(cx).is_ready() {
                // The client is told why, then reconnects with a fresh token
                // and resumes from its last id.
                this.expiry = None;
                this.closing = true;
                this.pending.push_back(token_expired_frame());
            }
        }
        loop {
            if !this.pending.is_empty() {
                let chunk = coalesce(&mut this.pending);
                return this.sent(chunk);
            }
            if this.closing {
                return Poll::Ready(None);
            }
            if this.shutdown.as_mut().poll(cx).is_ready() {
                return Poll::Ready(None);
            }
            match this
                .subscription
                .queue()
                .poll_take(cx, &mut this.pending, &mut this.lossy)
            {
                Poll::Ready(Ok(())) => {
                    if !this.lossy.is_empty() {
                        // The notice goes before the events that follow the loss.
                        let names: Vec<&str> = this
                            .lossy
                            .drain(..)
                            .map(|i| &*this.channels[i as usize])
                            .collect();
                        this.pending.push_front(gap_frame(&names));
                    }
                }
                Poll::Ready(Err(_cut_off)) => return Poll::Ready(None),
                Poll::Pending => break,
            }
        }
        // The timer fires `keepalive_every` after it was last armed; the stream is
        // quiet only if nothing was sent since then, else it re-arms for the
        // rest of the interval after the last write.
        while this.keepalive.as_mut().poll(cx).is_ready() {
            let due = this.last_sent + this.keepalive_every;
            if Instant::now() >= due {
                this.keepalive
                    .as_mut()
                    .reset(Instant::now() + this.keepalive_every);
                return this.sent(Bytes::from_static(KEEPALIVE));
            }
            this.keepalive.as_mut().reset(due);
        }
        // Nothing left to write: until the task wakes again, the hub writes
        // events to the socket itself (when the stream has one).
        this.subscription.queue().park();
        Poll::Pending
    }
}
