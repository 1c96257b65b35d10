//! The HTTP/1.1 server loop of every listener clients reach — the ingress, the gateway and the
//! admin API — with the limits a listener needs and `axum::serve` does not set:
//!
//! * **a header-read timeout** (`WXPIPE_HEADER_TIMEOUT_MS`): a client that has not sent a whole
//!   request head within it is disconnected. Hyper starts this clock whenever it waits for a
//!   head — on a new connection and between keep-alive requests — so it is also the idle
//!   timeout (slowloris and idle sockets cost a file descriptor for at most this long);
//! * **a body-read timeout** (`WXPIPE_BODY_TIMEOUT_MS`): a body that trickles in is refused
//!   with 408 (each route sets its own body size limit);
//! * **a write timeout** (`WXPIPE_WRITE_TIMEOUT_MS`, [`stall`]): a response that makes no
//!   progress for this long — the client reads nothing, e.g. it pipelines requests and never
//!   reads the answers — ends the connection;
//! * **a connection limit** (`WXPIPE_MAX_CONNECTIONS`): beyond it, new connections wait in the
//!   kernel's backlog instead of exhausting file descriptors;
//! * **a share per client address** (`WXPIPE_CLIENT_CONNECTION_SHARE`, [`clients`]): one address
//!   holding its share has its further connections closed at once, so it cannot fill the limit
//!   and stop `accept` for every other client.
//!
//! For each listener ([`INGRESS`], [`GATEWAY`], [`ADMIN`]: `wxpipe_{ingress,gateway,admin}_…`),
//! open connections are a gauge (`…_connections`), connections closed for a timeout are counted
//! (`…_timeouts_total{what="header"|"write"}`), and connections closed for the per-address share
//! too (`…_refused_connections_total{reason="per_client"}`). On shutdown the loop stops
//! accepting and every connection finishes its in-flight request, then closes.

pub mod clients;
pub mod stall;

use crate::config::{ConfigError, positive};
use axum::Router;
use axum::extract::ConnectInfo;
use hyper_util::rt::{TokioIo, TokioTimer};
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tower::ServiceExt;

/// The defaults, named once for the flags and for [`EdgeArgs::default`].
const TIMEOUT_MS: u64 = 10_000;
const MAX_CONNECTIONS: usize = 10_000;
const CLIENT_SHARE: u8 = 25;

/// A listener's limits, as environment variables or flags (the same names for the ingress,
/// the gateway and the admin API; each process reads them for its own listeners).
#[derive(clap::Args, Debug, Clone)]
pub struct EdgeArgs {
    /// A client must send a whole request head within this (on a new connection and between
    /// keep-alive requests, so it is also the idle timeout); else it is disconnected.
    #[arg(long, env = "WXPIPE_HEADER_TIMEOUT_MS", default_value_t = TIMEOUT_MS)]
    pub header_timeout_ms: u64,
    /// A request body must arrive within this; else 408.
    #[arg(long, env = "WXPIPE_BODY_TIMEOUT_MS", default_value_t = TIMEOUT_MS)]
    pub body_timeout_ms: u64,
    /// A response the client reads none of for this long ends its connection.
    #[arg(long, env = "WXPIPE_WRITE_TIMEOUT_MS", default_value_t = TIMEOUT_MS)]
    pub write_timeout_ms: u64,
    /// Open connections at most; more wait in the kernel's backlog.
    #[arg(long, env = "WXPIPE_MAX_CONNECTIONS", default_value_t = MAX_CONNECTIONS)]
    pub max_connections: usize,
    /// The share of WXPIPE_MAX_CONNECTIONS one client address may hold, percent (100: no
    /// per-address limit; behind a proxy every connection comes from the proxy's address).
    #[arg(long, env = "WXPIPE_CLIENT_CONNECTION_SHARE", default_value_t = CLIENT_SHARE,
          value_parser = clap::value_parser!(u8).range(1..=100))]
    pub client_connection_share: u8,
}

impl Default for EdgeArgs {
    fn default() -> Self {
        Self {
            header_timeout_ms: TIMEOUT_MS,
            body_timeout_ms: TIMEOUT_MS,
            write_timeout_ms: TIMEOUT_MS,
            max_connections: MAX_CONNECTIONS,
            client_connection_share: CLIENT_SHARE,
        }
    }
}

/// A listener's limits.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub header_timeout: Duration,
    pub body_timeout: Duration,
    pub write_timeout: Duration,
    pub max_connections: usize,
    /// Connections one client address may hold.
    pub max_per_client: usize,
}

impl Default for Limits {
    fn default() -> Self {
        EdgeArgs::default()
            .limits()
            .expect("the defaults are valid")
    }
}

impl EdgeArgs {
    /// The limits, checked (every duration and the connection limit at least 1).
    pub fn limits(&self) -> Result<Limits, ConfigError> {
        let max_connections =
            positive("WXPIPE_MAX_CONNECTIONS", self.max_connections as u64)? as usize;
        let share = usize::from(self.client_connection_share.clamp(1, 100));
        Ok(Limits {
            header_timeout: Duration::from_millis(positive(
                "WXPIPE_HEADER_TIMEOUT_MS",
                self.header_timeout_ms,
            )?),
            body_timeout: Duration::from_millis(positive(
                "WXPIPE_BODY_TIMEOUT_MS",
                self.body_timeout_ms,
            )?),
            write_timeout: Duration::from_millis(positive(
                "WXPIPE_WRITE_TIMEOUT_MS",
                self.write_timeout_ms,
            )?),
            max_connections,
            max_per_client: (max_connections * share / 100).max(1),
        })
    }
}

/// The metric names of one listener (spelled out, so that the monitoring test finds them).
#[derive(Debug, Clone, Copy)]
pub struct Names {
    /// Names the listener in logs.
    pub listener: &'static str,
    pub connections: &'static str,
    pub timeouts: &'static str,
    pub refused: &'static str,
}

/// The ingress's listener.
pub const INGRESS: Names = Names {
    listener: "ingress",
    connections: "wxpipe_ingress_connections",
    timeouts: "wxpipe_ingress_timeouts_total",
    refused: "wxpipe_ingress_refused_connections_total",
};
/// The gateway's listener.
pub const GATEWAY: Names = Names {
    listener: "gateway",
    connections: "wxpipe_gateway_connections",
    timeouts: "wxpipe_gateway_timeouts_total",
    refused: "wxpipe_gateway_refused_connections_total",
};
/// The admin API's (and console's) listener.
pub const ADMIN: Names = Names {
    listener: "admin",
    connections: "wxpipe_admin_connections",
    timeouts: "wxpipe_admin_timeouts_total",
    refused: "wxpipe_admin_refused_connections_total",
};

/// Serves `app` on `listener` (its metrics named by `names`) until `shutdown` completes, then
/// waits for in-flight requests. Returns once every connection is closed (the caller bounds
/// that with its grace period).
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: Limits,
    names: Names,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let name = names.listener;
    let app = app.layer(tower_http::timeout::RequestBodyTimeoutLayer::new(
        limits.body_timeout,
    ));
    let permits = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let clients = clients::ClientSlots::new(limits.max_per_client);
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
                    tracing::warn!(error = %e, listener = name, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Some(slot) = clients.take(peer.ip()) else {
            // Closed at once: its permit goes back to everyone else.
            metrics::counter!(names.refused, "reason" => "per_client").increment(1);
            tracing::debug!(%peer, listener = name, "over its share of connections: closed");
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let app = app.clone();
        let service = hyper::service::service_fn(move |mut req: hyper::Request<_>| {
            req.extensions_mut().insert(ConnectInfo(peer));
            app.clone().oneshot(req)
        });
        let stalled = Arc::new(AtomicBool::new(false));
        let io = stall::WriteDeadline::new(stream, limits.write_timeout, stalled.clone());
        let conn = builder.serve_connection(TokioIo::new(io), service);
        let conn = graceful.watch(conn);
        metrics::gauge!(names.connections).increment(1.0);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                if stalled.load(Ordering::Relaxed) {
                    metrics::counter!(names.timeouts, "what" => "write").increment(1);
                } else if e.is_timeout() {
                    metrics::counter!(names.timeouts, "what" => "header").increment(1);
                }
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
            metrics::gauge!(names.connections).decrement(1.0);
            drop((permit, slot));
        });
    }
    drop(listener);
    graceful.shutdown().await;
}
