//! `POST /v1/publish` and `POST /v1/broadcast`.

use axum::body::{to_bytes, Body};
use axum::extract::{RawQuery, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::Json;
use bytes::Bytes;
use schemars::JsonSchema;
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::value::RawValue;
use tracing::Instrument;

use super::error::ApiError;
use super::AppState;
use crate::auth::Action;
use crate::backplane::{BackplaneError, PublishItem};
use crate::event::{
    data_value, now_ms, scan_data, validate_channel, validate_event_type, DataValueError,
    EventBody, MAX_DATA_DEPTH,
};
use crate::policy::EffectivePolicy;

/// Most channels in one publish.
pub const MAX_CHANNELS_PER_PUBLISH: usize = 100;

/// Body of `POST /v1/publish`: exactly one of `channel` and `channels`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(extend(
    "required" = ["data"],
    "oneOf" = [
        {"properties": {"channel": {"type": "string"}}, "required": ["channel"]},
        {"properties": {"channels": {"type": "array"}}, "required": ["channels"]},
    ],
))]
pub struct PublishRequest<'a> {
    /// One channel.
    #[serde(default)]
    #[schemars(length(min = 1, max = 200), pattern(CHANNEL_PATTERN))]
    pub channel: Option<String>,
    /// Several channels (all or none are published).
    #[serde(default)]
    #[schemars(
        length(min = 1, max = 100),
        inner(length(min = 1, max = 200), pattern(CHANNEL_PATTERN))
    )]
    #[schemars(extend("uniqueItems" = true))]
    pub channels: Option<Vec<String>>,
    /// The SSE event type (browsers fire `onmessage` without one).
    #[serde(default)]
    #[schemars(length(min = 1, max = 64), pattern(EVENT_TYPE_PATTERN))]
    #[schemars(extend("not" = {"type": "string", "pattern": "^sseplane\\."}))]
    pub event: Option<String>,
    /// The data: any JSON value (`null` included).
    #[serde(default, borrow, deserialize_with = "present")]
    #[schemars(with = "serde_json::Value")]
    pub data: Option<&'a RawValue>,
}

/// Body of `POST /v1/broadcast`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(extend("required" = ["data"]))]
pub struct BroadcastRequest<'a> {
    /// The SSE event type.
    #[serde(default)]
    #[schemars(length(min = 1, max = 64), pattern(EVENT_TYPE_PATTERN))]
    #[schemars(extend("not" = {"type": "string", "pattern": "^sseplane\\."}))]
    pub event: Option<String>,
    /// The data: any JSON value.
    #[serde(default, borrow, deserialize_with = "present")]
    #[schemars(with = "serde_json::Value")]
    pub data: Option<&'a RawValue>,
}

/// Answer of `POST /v1/broadcast`.
#[derive(Debug, Serialize, Deserialize, JsonSchema)]
pub struct BroadcastResponse {
    /// Replicas that received it.
    pub replicas: u64,
}

/// What channel names look like (`validate_channel`).
pub const CHANNEL_PATTERN: &str = "^[A-Za-z0-9_.:@/-]+$";
/// What event types look like (`validate_event_type`; `sseplane.` is reserved).
pub const EVENT_TYPE_PATTERN: &str = "^[A-Za-z0-9_.:-]+$";

/// Wraps a present value (even JSON `null`) in `Some`; absence stays `None`.
fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<&'de RawValue>, D::Error> {
    <&RawValue>::deserialize(d).map(Some)
}

/// One channel's result.
#[derive(Debug, Serialize, Deserialize, JsonSchema)]
pub struct PublishResult {
    /// The channel.
    pub channel: String,
    /// The event's id on that channel.
    pub id: String,
}

/// Answer of `POST /v1/publish`.
#[derive(Debug, Serialize, Deserialize, JsonSchema)]
pub struct PublishResponse {
    /// One result per channel, in request order.
    pub results: Vec<PublishResult>,
}

/// Checks that the body is declared JSON and not over `limit` bytes.
pub(super) fn json_content(headers: &HeaderMap, limit: usize) -> Result<(), ApiError> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    let is_json = essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"));
    if !is_json {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "send the body as Content-Type: application/json",
        ));
    }
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(too_large(limit));
    }
    Ok(())
}

fn too_large(limit: usize) -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
        format!("the body is over the limit of {limit} bytes"),
    )
}

/// The answer to a body that did not arrive within the allowed time.
pub(super) fn body_timeout(state: &AppState) -> ApiError {
    ApiError::new(
        StatusCode::REQUEST_TIMEOUT,
        "body_timeout",
        format!(
            "the body did not arrive within {}",
            humantime::format_duration(state.body_timeout)
        ),
    )
}

/// Checks the content type and reads at most `limit` bytes of body.
async fn read_json_body(
    state: &AppState,
    headers: &HeaderMap,
    body: Body,
    limit: usize,
) -> Result<Bytes, ApiError> {
    json_content(headers, limit)?;
    let read = tokio::time::timeout(state.body_timeout, to_bytes(body, limit))
        .await
        .map_err(|_| body_timeout(state))?;
    read.map_err(|e| {
        let over = std::error::Error::source(&e)
            .is_some_and(|s| s.is::<http_body_util::LengthLimitError>());
        if over {
            too_large(limit)
        } else {
            ApiError::bad_request("bad_body", format!("could not read the body: {e}"))
        }
    })
}

fn parse_json<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> Result<T, ApiError> {
    let result = serde_json::from_slice(bytes).map_err(|e| {
        let code = if e.is_syntax() || e.is_eof() {
            "malformed_json"
        } else {
            "invalid_request"
        };
        ApiError::bad_request(code, e.to_string())
    });
    // Valid JSON that is not an object is refused even when serde could read
    // it (serde reads an array as the fields in order: `[null, 1]` is not a
    // broadcast).
    let first = bytes.iter().find(|b| !b.is_ascii_whitespace());
    if first.is_some_and(|b| *b != b'{')
        && serde_json::from_slice::<serde::de::IgnoredAny>(bytes).is_ok()
    {
        return Err(ApiError::bad_request(
            "invalid_request",
            "the body must be a JSON object",
        ));
    }
    result
}

fn event_body(
    event: Option<String>,
    data: Option<&RawValue>,
    headers: &HeaderMap,
) -> Result<EventBody, ApiError> {
    if let Some(event) = &event {
        validate_event_type(event).map_err(|m| ApiError::bad_request("invalid_event_type", m))?;
    }
    let data = data.ok_or_else(|| {
        ApiError::bad_request(
            "missing_data",
            "the body needs a \"data\" field (null is a value)",
        )
    })?;
    // One pass: the compact text, its depth and any lone surrogate escape.
    let scan = scan_data(data);
    let depth = scan.depth;
    if depth > MAX_DATA_DEPTH {
        return Err(ApiError::bad_request(
            "data_too_deep",
            format!("data nests arrays and objects {depth} levels deep; the limit is {MAX_DATA_DEPTH} levels"),
        ));
    }
    // One rule on every channel, schema or not (a schema validator could not
    // hold such a string; many subscribers' parsers could not either).
    if let Some(lone) = scan.lone_surrogate {
        return Err(ApiError::bad_request("invalid_string", lone.to_string()));
    }
    Ok(EventBody {
        event_type: event,
        data: scan.data,
        published_ms: now_ms(),
        trace_parent: trace_parent(headers),
    })
}

/// The caller's W3C `traceparent`, when it has the right shape.
fn trace_parent(headers: &HeaderMap) -> String {
    headers
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        .filter(|v| v.len() == 55 && v.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-'))
        .unwrap_or("")
        .to_owned()
}

/// `POST /v1/publish`.
pub async fn publish(
    State(state): State<AppState>,
    client: Option<axum::Extension<super::limits::ClientAddr>>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
    body: Body,
) -> Result<Json<PublishResponse>, ApiError> {
    let client = client.map(|axum::Extension(super::limits::ClientAddr(ip))| ip);
    let token = state.credentials(&headers, query.as_deref())?;
    let bytes = read_json_body(&state, &headers, body, state.policies.max_payload_bytes()).await?;
    publish_body(&state, &headers, token, client, &bytes)
        .await
        .map(Json)
}

/// Publishes a body that passed [`json_content`], for a caller holding
/// `token` at address `client`: everything of `POST /v1/publish` after
/// reading the body.
pub(super) async fn publish_body(
    state: &AppState,
    headers: &HeaderMap,
    token: Option<String>,
    client: Option<std::net::IpAddr>,
    bytes: &[u8],
) -> Result<PublishResponse, ApiError> {
    let request: PublishRequest = parse_json(bytes)?;
    let channels = match (request.channel, request.channels) {
        (Some(channel), None) => vec![channel],
        (None, Some(channels)) => {
            if channels.is_empty() || channels.len() > MAX_CHANNELS_PER_PUBLISH {
                return Err(ApiError::bad_request(
                    "invalid_channels",
                    format!("\"channels\" holds 1 to {MAX_CHANNELS_PER_PUBLISH} channels"),
                ));
            }
            channels
        }
        (Some(_), Some(_)) => {
            return Err(ApiError::bad_request(
                "invalid_request",
                "give exactly one of \"channel\" and \"channels\", not both",
            ))
        }
        (None, None) => {
            return Err(ApiError::bad_request(
                "missing_channel",
                "give \"channel\" or \"channels\"",
            ))
        }
    };
    for (i, channel) in channels.iter().enumerate() {
        validate_channel(channel).map_err(|m| ApiError::bad_request("invalid_channel", m))?;
        if channels[..i].contains(channel) {
            return Err(ApiError::bad_request(
                "invalid_channels",
                format!("channel {channel:?} is named twice"),
            ));
        }
    }
    let body = event_body(request.event, request.data, headers)?;
    let policies: Vec<_> = channels.iter().map(|c| state.policies.resolve(c)).collect();
    let grants = state
        .auth
        .authorize(token.as_deref(), Action::Publish, &channels, &policies)?;
    for (channel, policy) in channels.iter().zip(&policies) {
        enforce(channel, policy, bytes.len(), &body)?;
    }
    // Rate limits last, so that refused requests spend no tokens.
    for (channel, policy) in channels.iter().zip(&policies) {
        if let Some(limit) = &policy.rate_limit {
            limit.check(channel).map_err(|wait| {
                let mut error = ApiError::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    "rate_limited",
                    format!(
                        "channel {channel:?} takes {} publishes per second (burst {}); retry later",
                        limit.per_second, limit.burst
                    ),
                );
                error.retry_after = Some(wait.as_secs_f64().ceil().max(1.0) as u64);
                error
            })?;
        }
    }
    let items: Vec<_> = channels
        .iter()
        .zip(&policies)
        .map(|(channel, policy)| PublishItem {
            channel,
            body: &body,
            retention: policy.history,
        })
        .collect();
    // The Redis hop is a span of its own; its context travels with the event
    // so that every replica's delivery span joins this trace.
    let backplane = state.hub.backplane();
    let span = tracing::info_span!(
        "backplane.publish",
        otel.kind = "producer",
        messaging.system = backplane.kind(),
        sseplane.channels = items.len(),
    );
    let traceparent = crate::telemetry::traceparent_of(&span);
    let traced;
    let items = if traceparent.is_empty() {
        items
    } else {
        traced = EventBody {
            trace_parent: traceparent,
            ..body.clone()
        };
        items
            .into_iter()
            .map(|item| PublishItem {
                body: &traced,
                ..item
            })
            .collect()
    };
    // With a bound on new channels, a publish first runs without creating
    // any; when it names new ones, it runs again if the publisher may create
    // that many now.
    let limit = state.channel_creation.as_ref();
    let mut published = backplane
        .publish(&items, limit.is_none())
        .instrument(span.clone())
        .await;
    if let (Err(BackplaneError::NewChannels { count }), Some(limit)) = (&published, limit) {
        let publisher = publisher_of(grants.as_ref(), client);
        limit
            .check_n(&publisher, *count)
            .map_err(|wait| creation_limited(limit, wait))?;
        published = backplane.publish(&items, true).instrument(span).await;
    }
    let positions = match published {
        Ok(positions) => positions,
        Err(e) => {
            metrics::counter!(crate::metrics::EVENTS_PUBLISHED, "outcome" => "unavailable")
                .increment(items.len() as u64);
            return Err(e.into());
        }
    };
    metrics::counter!(crate::metrics::EVENTS_PUBLISHED, "outcome" => "ok")
        .increment(items.len() as u64);
    tracing::debug!(channels = items.len(), "published");
    let results = channels
        .into_iter()
        .zip(positions)
        .map(|(channel, position)| PublishResult {
            channel,
            id: position.to_string(),
        })
        .collect();
    Ok(PublishResponse { results })
}

/// Who is publishing, for the bound on new channels: the token's subject,
/// else the client's address.
fn publisher_of(grants: Option<&crate::auth::Grants>, client: Option<std::net::IpAddr>) -> String {
    match (grants.and_then(|g| g.subject.as_deref()), client) {
        (Some(subject), _) => format!("sub:{subject}"),
        (None, Some(ip)) => format!("ip:{ip}"),
        (None, None) => "unknown".to_owned(),
    }
}

/// 429 for a publisher that created its share of new channels.
fn creation_limited(limit: &crate::policy::RateLimit, wait: std::time::Duration) -> ApiError {
    let mut error = ApiError::new(
        StatusCode::TOO_MANY_REQUESTS,
        "channel_creation_limited",
        format!(
            "this publisher may create {} new channels per second (bursts of {}); \
             publishing to existing channels goes on; retry later",
            limit.per_second, limit.burst
        ),
    );
    error.retry_after = Some(wait.as_secs_f64().ceil().clamp(1.0, 60.0) as u64);
    error
}

/// Applies a channel's policy to one event: body size, event type, schema.
fn enforce(
    channel: &str,
    policy: &EffectivePolicy,
    body_len: usize,
    event: &EventBody,
) -> Result<(), ApiError> {
    if body_len > policy.max_payload_bytes {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!(
                "channel {channel:?} takes bodies of at most {} bytes",
                policy.max_payload_bytes
            ),
        ));
    }
    if let Some(allowed) = &policy.allowed_event_types {
        let event_type = event.event_type.as_deref().unwrap_or("message");
        if !allowed.iter().any(|t| t == event_type) {
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "event_type_not_allowed",
                format!("channel {channel:?} takes event types {allowed:?}, not {event_type:?}"),
            ));
        }
    }
    if let Some(schema) = &policy.schema {
        let data = data_value(&event.data).map_err(|e| match e {
            DataValueError::UnsupportedNumber(number) => ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "unsupported_number",
                format!(
                    "the schema validator of channel {channel:?} cannot represent number {}: it is out of the 64-bit floating point range",
                    abbreviated(&number)
                ),
            ),
            DataValueError::Malformed(e) => ApiError::bad_request("malformed_json", e),
        })?;
        let failure = schema
            .0
            .iter_errors(&data)
            .next()
            .map(|error| (error.instance_path().to_string(), error.to_string()));
        if let Some((path, error)) = failure {
            let path = if path.is_empty() {
                "/".to_owned()
            } else {
                path
            };
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "schema_violation",
                format!("data fails the schema of channel {channel:?} at {path}: {error}"),
            ));
        }
    }
    Ok(())
}

/// `text`, cut to its first 40 characters when longer (a number may have thousands).
fn abbreviated(text: &str) -> String {
    match text.char_indices().nth(40) {
        Some((end, _)) => format!("{}…", &text[..end]),
        None => text.to_owned(),
    }
}

/// `POST /v1/broadcast`: to every stream of every replica; not kept in history.
pub async fn broadcast(
    State(state): State<AppState>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
    body: Body,
) -> Result<Json<BroadcastResponse>, ApiError> {
    let token = state.credentials(&headers, query.as_deref())?;
    state.auth.authorize_broadcast(token.as_deref())?;
    let bytes = read_json_body(&state, &headers, body, state.policies.max_payload_bytes()).await?;
    let request: BroadcastRequest = parse_json(&bytes)?;
    let body = event_body(request.event, request.data, &headers)?;
    let replicas = state.hub.backplane().broadcast(&body).await?;
    Ok(Json(BroadcastResponse {
        replicas: replicas as u64,
    }))
}
