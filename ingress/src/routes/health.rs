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

/// Readiness: both RabbitMQ connections are up (the publishing one and the sync-reply one) and
/// Redis answers a PING within a second (the same meaning as every role's `/readyz`, see
/// [`common::health`]). A push for a sync-reply account that arrives while the reply channel
/// is down is still accepted, but answered without its passive reply.
pub async fn readyz(State(state): State<SharedState>) -> impl IntoResponse {
    let broker = state.publisher.is_connected();
    let replies = state.replier.is_connected();
    let redis = common::health::redis_ping(&state.redis).await;
    let ready = broker && replies && redis;
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        Json(serde_json::json!({
            "ready": ready, "broker": broker, "replies": replies, "redis": redis
        })),
    )
}

/// Prometheus text format.
pub async fn metrics(State(state): State<SharedState>) -> impl IntoResponse {
    (
        [("content-type", "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
}
