//! Liveness, readiness and metrics.

use crate::state::SharedState;
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use std::time::Duration;

/// Liveness: the process answers.
pub async fn healthz() -> &'static str {
    "ok\n"
}

/// Readiness: the broker connection is up and Redis answers a PING within a second.
pub async fn readyz(State(state): State<SharedState>) -> impl IntoResponse {
    let broker = state.publisher.is_connected();
    let redis = redis_ping(&state.redis).await;
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

async fn redis_ping(pool: &deadpool_redis::Pool) -> bool {
    let ping = async {
        let mut conn = pool.get().await.ok()?;
        deadpool_redis::redis::cmd("PING")
            .query_async::<String>(&mut conn)
            .await
            .ok()
    };
    matches!(
        tokio::time::timeout(Duration::from_secs(1), ping).await,
        Ok(Some(_))
    )
}

/// Prometheus text format.
pub async fn metrics(State(state): State<SharedState>) -> impl IntoResponse {
    (
        [("content-type", "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
}
