//! The public edge's own HTTP/1.1 server loop, with the limits a public listener needs and
//! `axum::serve` does not set:
//!
//! * **a header-read timeout** (`WXPIPE_HEADER_TIMEOUT_MS`): a client that has not sent a whole
//!   request head within it is disconnected. Hyper starts this clock whenever it waits for a
//!   head — on a new connection and between keep-alive requests — so it is also the idle
//!   timeout (slowloris and idle sockets cost a file descriptor for at most this long);
//! * **a body-read timeout** (`WXPIPE_BODY_TIMEOUT_MS`): a body that trickles in is refused
//!   with 408 (the body size limit is the push route's);
//! * **a connection limit** (`WXPIPE_MAX_CONNECTIONS`): beyond it, new connections wait in the
//!   kernel's backlog instead of exhausting file descriptors.
//!
//! Open connections are a gauge (`wxpipe_ingress_connections`); connections closed for a
//! timeout are counted (`wxpipe_ingress_timeouts_total{what}`). On shutdown the loop stops
//! accepting and every connection finishes its in-flight request, then closes.

use axum::Router;
use axum::extract::ConnectInfo;
use hyper_util::rt::{TokioIo, TokioTimer};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tower::ServiceExt;

/// The edge's limits.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub header_timeout: Duration,
    pub body_timeout: Duration,
    pub max_connections: usize,
}

/// Serves `app` on `listener` until `shutdown` completes, then waits for in-flight requests.
/// Returns once every connection is closed (the caller bounds that with its grace period).
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: Limits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let app = app.layer(tower_http::timeout::RequestBodyTimeoutLayer::new(
        limits.body_timeout,
    ));
    let permits = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .keep_alive(true);
    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            _ = &mut shutdown => break,
            p = permits.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
        };
        let (stream, peer) = tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors, or a connection reset before accept: wait a
                    // moment rather than spin.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let app = app.clone();
        let service = hyper::service::service_fn(move |mut req: hyper::Request<_>| {
            req.extensions_mut().insert(ConnectInfo(peer));
            app.clone().oneshot(req)
        });
        let conn = builder.serve_connection(TokioIo::new(stream), service);
        let conn = graceful.watch(conn);
        metrics::gauge!("wxpipe_ingress_connections").increment(1.0);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                if e.is_timeout() {
                    metrics::counter!("wxpipe_ingress_timeouts_total", "what" => "header")
                        .increment(1);
                }
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
            metrics::gauge!("wxpipe_ingress_connections").decrement(1.0);
            drop(permit);
        });
    }
    drop(listener);
    graceful.shutdown().await;
}
