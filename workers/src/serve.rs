//! The small HTTP listener of a worker process: `/metrics` and `/healthz`.

use axum::Router;
use axum::routing::get;
use std::net::SocketAddr;
use tokio::sync::watch;

/// Serves `/metrics` and `/healthz` on `addr` until `shutdown` turns true.
pub async fn metrics_listener(
    addr: SocketAddr,
    mut shutdown: watch::Receiver<bool>,
) -> std::io::Result<()> {
    let handle = common::telemetry::metrics_handle();
    let app = Router::new()
        .route("/metrics", get(move || std::future::ready(handle.render())))
        .route("/healthz", get(|| async { "ok\n" }));
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(%addr, "serving /metrics");
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            let _ = shutdown.wait_for(|s| *s).await;
        })
        .await
}
