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

/// `GET /healthz`: 200 while the process serves, whatever Redis does.
pub async fn healthz() -> Json<serde_json::Value> {
    Json(json!({ "status": "ok" }))
}

/// `GET /readyz`: 200 only when Redis answers and accepts writes, the
/// subscription is live and policies have synced; 503 with the reasons otherwise.
pub async fn readyz(State(state): State<AppState>) -> Response {
    let health = state.hub.backplane().health();
    let policies = if state.policies.synced() {
        Check::ok("policies loaded")
    } else {
        Check::fail("policies not synced yet")
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

/// `GET /v1/diagnostics[?scope=cluster]`: this replica's channels and
/// subscribers; with `scope=cluster`, every live replica's figures too.
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
    let channels = hub.channel_figures();
    let mut body = json!({
        "replica": hub.replica_id(),
        "backplane": hub.backplane().kind(),
        "totalChannels": channels.len(),
        "totalLocalSubscribers": channels.iter().map(|c| c.local_subscribers).sum::<usize>(),
        "openStreams": hub.open_streams(),
        "slowConsumerDisconnects": hub.slow_disconnects(),
        "channels": channels,
    });
    if cluster {
        let replicas = hub.backplane().replicas().await?;
        body["replicas"] = json!(replicas);
    }
    Ok(Json(body))
}
