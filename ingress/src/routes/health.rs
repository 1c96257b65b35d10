//! Liveness, readiness and metrics.

use crate::state::SharedState;
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;

/// Liveness: the process answers.
pub async fn healthz() -> &'static str {
    "ok\n"
}

/// Readiness: the publishing connection is up and Redis answers a PING within a second (the
/// same meaning as every role's `/readyz`, see [`common::health`]).
pub async fn readyz(State(state): State<SharedState>) -> impl IntoResponse {
    let broker = state.publisher.is_connected();
    let redis = common::health::redis_ping(&state.redis).await;
    let status = if broker && redis {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        Json(serde_json::json!({ "ready": broker && redis, "broker": broker, "redis": redis })),
    )
}

/// Prometheus text format.
pub async fn metrics(State(state): State<SharedState>) -> impl IntoResponse {
    (
        [("content-type", "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
}
