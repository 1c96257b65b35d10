//! The small HTTP listener of a worker process: `/metrics`, `/healthz` and `/readyz` (see
//! [`common::health`] for what ready means).

use axum::Router;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Json};
use axum::routing::get;
use std::net::SocketAddr;
use tokio::sync::watch;

/// The token of an `Authorization: Bearer …` header, as sent ("" when there is none).
pub fn bearer(headers: &axum::http::HeaderMap) -> &str {
    headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("")
}

/// Whether `given` is the admin token, compared in constant time (the comparison does not
/// reveal how much of it was right).
pub fn is_admin_token(given: &str, admin: &str) -> bool {
    use subtle::ConstantTimeEq;
    given.as_bytes().ct_eq(admin.as_bytes()).into()
}

/// `/healthz` and `/readyz`, for every listener of the workers.
pub fn health_routes<S: Clone + Send + Sync + 'static>(redis: common::redis::Pool) -> Router<S> {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route(
            "/readyz",
            get(move || {
                let redis = redis.clone();
                async move {
                    let r = common::health::readiness(&redis).await;
                    let status = if r.ready {
                        StatusCode::OK
                    } else {
                        StatusCode::SERVICE_UNAVAILABLE
                    };
                    (status, Json(r)).into_response()
                }
            }),
        )
}

/// Serves `/metrics`, `/healthz` and `/readyz` on `addr` until `shutdown` turns true.
pub async fn metrics_listener(
    addr: SocketAddr,
    redis: common::redis::Pool,
    mut shutdown: watch::Receiver<bool>,
) -> std::io::Result<()> {
    let handle = common::telemetry::metrics_handle();
    let app = Router::new()
        .route("/metrics", get(move || std::future::ready(handle.render())))
        .merge(health_routes(redis));
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(%addr, "serving /metrics");
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            let _ = shutdown.wait_for(|s| *s).await;
        })
        .await
}
