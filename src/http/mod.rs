//! The HTTP APIs: the public one (streams, publish, broadcast) and the admin one
//! (health, readiness, diagnostics), on separate ports.

pub mod admin;
pub mod error;
pub mod lean;
pub mod limits;
pub mod openapi;
pub mod publish;
pub mod stream;

use std::sync::Arc;

use axum::extract::{MatchedPath, Request};
use axum::http::{header, HeaderName, HeaderValue, Method};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{get, post};
use axum::Router;
use tower_http::cors::{AllowOrigin, Any, CorsLayer};
use tracing::Instrument;

use crate::hub::Hub;
use crate::policy::PolicyStore;
use crate::shutdown::Shutdown;

/// Header naming the replica that served a response.
pub const REPLICA_HEADER: &str = "x-sseplane-replica";

/// What every handler shares.
#[derive(Clone)]
pub struct AppState {
    /// Local channels and subscribers.
    pub hub: Arc<Hub>,
    /// Channel policies.
    pub policies: PolicyStore,
    /// Most channels on one stream.
    pub max_channels_per_stream: usize,
    /// Process shutdown.
    pub shutdown: Shutdown,
    /// The runtime log filter (absent when another subscriber was installed first).
    pub log_level: Option<crate::telemetry::LogLevel>,
    /// Token verification (off when no key is configured).
    pub auth: crate::auth::Authenticator,
    /// Name of the cookie that carries a browser's token.
    pub token_cookie: Arc<str>,
    /// Token the admin API asks for on diagnostics and the log level.
    pub admin_token: Option<Arc<str>>,
    /// Caps on open streams.
    pub streams: limits::StreamGate,
    /// Time allowed for a request body to arrive.
    pub body_timeout: std::time::Duration,
    /// New channels per publisher (`None`: no limit).
    pub channel_creation: Option<crate::policy::RateLimit>,
}

impl AppState {
    /// A state over `hub` and `policies` with every other setting at its
    /// default (auth off, no stream caps).
    pub fn new(hub: Arc<Hub>, policies: PolicyStore, shutdown: Shutdown) -> AppState {
        AppState {
            hub,
            policies,
            max_channels_per_stream: 100,
            shutdown,
            log_level: None,
            auth: crate::auth::Authenticator::default(),
            token_cookie: Arc::from(crate::auth::credentials::DEFAULT_COOKIE),
            admin_token: None,
            streams: limits::StreamGate::default(),
            body_timeout: std::time::Duration::from_secs(10),
            channel_creation: None,
        }
    }

    /// The token a request carries (header, cookie, then query).
    pub fn credentials(
        &self,
        headers: &axum::http::HeaderMap,
        query: Option<&str>,
    ) -> Result<Option<String>, error::ApiError> {
        match crate::auth::credentials(headers, query, &self.token_cookie) {
            crate::auth::Credentials::None => Ok(None),
            crate::auth::Credentials::Token(token) => Ok(Some(token)),
            crate::auth::Credentials::Malformed(why) => {
                Err(crate::auth::AuthError::Invalid(why.to_owned()).into())
            }
        }
    }
}

/// The public API on `--listen`.
pub fn public_router(state: AppState, cors_origins: &str, ui: bool) -> Router {
    let (http_metrics, _) = crate::metrics::install();
    let router = if ui {
        Router::new().route("/", get(watch_page))
    } else {
        Router::new()
    };
    router
        .route("/v1/stream", get(stream::stream))
        .route("/v1/publish", post(publish::publish))
        .route("/v1/broadcast", post(publish::broadcast))
        .route("/v1/openapi.json", get(openapi::openapi_json))
        .route_layer(middleware::from_fn(trace_request))
        .fallback(error::not_found)
        .method_not_allowed_fallback(error::method_not_allowed)
        .layer(cors_layer(cors_origins))
        .layer(http_metrics)
        .with_state(state)
}

/// The built-in page to watch delivery (`--ui`).
async fn watch_page() -> axum::response::Html<&'static str> {
    axum::response::Html(include_str!("ui/index.html"))
}

/// Opens a span per request that continues the caller's W3C trace context, so
/// that log lines inside the request carry its trace id. For a stream the span
/// covers subscribing and replay, not the open connection.
async fn trace_request(request: Request, next: Next) -> Response {
    let method = request.method().clone();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_default();
    let span = crate::telemetry::request_span(method.as_str(), &route, request.headers());
    let response = next.run(request).instrument(span.clone()).await;
    span.record("http.response.status_code", response.status().as_u16());
    response
}

/// The admin API on `--admin-listen`.
pub fn admin_router(state: AppState) -> Router {
    // Diagnostics and the log level need the admin token when one is set;
    // probes and scrapes never do.
    let guarded = Router::new()
        .route("/v1/diagnostics", get(admin::diagnostics))
        .route(
            "/v1/log-level",
            get(admin::get_log_level).put(admin::set_log_level),
        )
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            admin::require_admin_token,
        ));
    Router::new()
        .route("/healthz", get(admin::healthz))
        .route("/readyz", get(admin::readyz))
        .route("/metrics", get(admin::metrics))
        .merge(guarded)
        .fallback(error::not_found)
        .method_not_allowed_fallback(error::method_not_allowed)
        .with_state(state)
}

/// CORS for browsers on other origins: `*` allows any origin (no credentials);
/// a list allows those origins with credentials (for cookie auth).
pub fn cors_layer(origins: &str) -> CorsLayer {
    let layer = CorsLayer::new()
        .allow_methods([Method::GET, Method::POST])
        .allow_headers([
            header::CONTENT_TYPE,
            header::AUTHORIZATION,
            HeaderName::from_static("last-event-id"),
            HeaderName::from_static("traceparent"),
            HeaderName::from_static("tracestate"),
        ])
        .expose_headers([HeaderName::from_static(REPLICA_HEADER)])
        .max_age(std::time::Duration::from_secs(3600));
    if origins.trim() == "*" {
        return layer.allow_origin(Any);
    }
    let list: Vec<HeaderValue> = origins
        .split(',')
        .map(str::trim)
        .filter(|o| !o.is_empty())
        .filter_map(|o| HeaderValue::from_str(o).ok())
        .collect();
    layer
        .allow_origin(AllowOrigin::list(list))
        .allow_credentials(true)
}
