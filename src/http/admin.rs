//! Admin endpoints: liveness, readiness, diagnostics.

use std::collections::HashMap;

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use super::error::ApiError;
use super::AppState;
use crate::backplane::Check;

/// Lets a request through when no admin token is configured or when it
/// carries `Authorization: Bearer <admin token>` (compared in constant time);
/// 401 otherwise.
pub async fn require_admin_token(
    State(state): State<AppState>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    use crate::auth::{AuthError, Credentials};
    use subtle::ConstantTimeEq;
    let Some(expected) = &state.admin_token else {
        return next.run(request).await;
    };
    let error = match crate::auth::credentials::bearer(request.headers()) {
        Credentials::Token(given) if bool::from(given.as_bytes().ct_eq(expected.as_bytes())) => {
            return next.run(request).await
        }
        Credentials::Token(_) => AuthError::Invalid("not the admin token".to_owned()),
        Credentials::Malformed(why) => AuthError::Invalid(why.to_owned()),
        Credentials::None => AuthError::Missing("use the admin API".to_owned()),
    };
    ApiError::from(error).into_response()
}

/// `GET /metrics`: Prometheus text. Probes and scrapes are not counted in the
/// HTTP metrics (those cover the public API only).
pub async fn metrics(State(state): State<AppState>) -> Response {
    let up = state.hub.backplane().health().is_up();
    ::metrics::gauge!(crate::metrics::BACKPLANE_UP).set(if up { 1.0 } else { 0.0 });
    let (_, handle) = crate::metrics::install();
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        handle.render(),
    )
        .into_response()
}

/// `GET /v1/log-level`: the log filter in force.
pub async fn get_log_level(
    State(state): State<AppState>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let level = state.log_level.as_ref().ok_or_else(log_level_unavailable)?;
    Ok(Json(json!({ "filter": level.current() })))
}

/// `PUT /v1/log-level` with `{"filter":"debug"}`: changes the log filter now.
pub async fn set_log_level(
    State(state): State<AppState>,
    body: axum::body::Bytes,
) -> Result<Json<serde_json::Value>, ApiError> {
    #[derive(serde::Deserialize)]
    struct Body {
        filter: String,
    }
    let level = state.log_level.as_ref().ok_or_else(log_level_unavailable)?;
    let request: Body = serde_json::from_slice(&body).map_err(|e| {
        ApiError::bad_request(
            "invalid_request",
            format!("send {{\"filter\":\"debug\"}}: {e}"),
        )
    })?;
    level
        .set(&request.filter)
        .map_err(|e| ApiError::bad_request("invalid_filter", e))?;
    tracing::info!(filter = %request.filter, "log filter changed");
    Ok(Json(json!({ "filter": level.current() })))
}

fn log_level_unavailable() -> ApiError {
    ApiError::new(
        axum::http::StatusCode::NOT_IMPLEMENTED,
        "not_available",
        "the log filter cannot be changed in this process",
    )
}

/// `GET /healthz`: 200 while the process serves, whatever Redis does.
pub async fn healthz() -> Json<serde_json::Value> {
    Json(json!({ "status": "ok" }))
}

/// `GET /readyz`: 200 only when Redis answers and accepts writes, the
/// subscription is live and policies have synced; 503 with the reasons otherwise.
pub async fn readyz(State(state): State<AppState>) -> Response {
    let health = state.hub.backplane().health();
    let policies = if state.policies.synced() {
        Check::ok(format!(
            "policies synced ({} in force)",
            state
                .policies
                .verdicts()
                .iter()
                .filter(|v| v.error.is_none())
                .count()
        ))
    } else {
        Check::fail(format!(
            "waiting for the first sync of: {}",
            state.policies.unsynced_sources().join(", ")
        ))
    };
    let mut checks = json!({
        "redis": health.redis,
        "subscription": health.subscription,
        "policies": policies,
    });
    let draining = state.shutdown.is_triggered();
    if draining {
        checks["shutdown"] = json!(Check::fail("shutting down: streams are being drained"));
    }
    let ready = health.is_up() && policies.ok && !draining;
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(json!({ "ready": ready, "checks": checks }))).into_response()
}

/// `GET /v1/diagnostics[?scope=cluster][&channel=NAME]`: this replica's
/// channels and subscribers, each with the policy that applies; every policy
/// read and whether it is in force; with `scope=cluster`, every live replica's
/// figures too; with `channel`, which policy that channel gets and why.
pub async fn diagnostics(
    State(state): State<AppState>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let cluster = match query.get("scope").map(String::as_str) {
        None | Some("local") => false,
        Some("cluster") => true,
        Some(other) => {
            return Err(ApiError::bad_request(
                "invalid_scope",
                format!("scope {other:?} is not one of local, cluster"),
            ))
        }
    };
    let hub = &state.hub;
    let channels: Vec<_> = hub
        .channel_figures()
        .into_iter()
        .map(|c| {
            let policy = state.policies.resolve(&c.channel).source.clone();
            json!({"channel": c.channel, "localSubscribers": c.local_subscribers, "policy": policy})
        })
        .collect();
    let mut body = json!({
        "replica": hub.replica_id(),
        "backplane": hub.backplane().kind(),
        "totalChannels": channels.len(),
        "totalLocalSubscribers": channels.iter().filter_map(|c| c["localSubscribers"].as_u64()).sum::<u64>(),
        "openStreams": hub.open_streams(),
        "slowConsumerDisconnects": hub.slow_disconnects(),
        "droppedEvents": hub.dropped_events(),
        "channels": channels,
        "policies": state.policies.verdicts(),
        "policySources": state.policies.source_status(),
    });
    if let Some(channel) = query.get("channel") {
        crate::event::validate_channel(channel)
            .map_err(|m| ApiError::bad_request("invalid_channel", m))?;
        body["policy"] = json!(state.policies.explain(channel));
    }
    if cluster {
        let replicas = hub.backplane().replicas().await?;
        body["replicas"] = json!(replicas);
    }
    Ok(Json(body))
}
