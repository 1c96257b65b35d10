//! Connecting to one of several RabbitMQ nodes.

use super::AmqpError;
use crate::config::redact_url;
use lapin::{Connection, ConnectionProperties};
use std::time::Duration;

/// How long one node may take to accept a connection before the next one is tried.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Connects to the first node of `urls` that answers, trying them in turn from `start` (so that
/// successive reconnects spread over the cluster). `name` is shown by the broker
/// (`rabbitmqctl list_connections client_properties`, the management UI).
pub async fn connect_any(
    urls: &[String],
    start: usize,
    name: &str,
) -> Result<Connection, AmqpError> {
    let mut last = String::from("no URL configured");
    for i in 0..urls.len() {
        let url = &urls[(start + i) % urls.len()];
        let props = ConnectionProperties::default().with_connection_name(name.into());
        match tokio::time::timeout(CONNECT_TIMEOUT, Connection::connect(url, props)).await {
            Ok(Ok(conn)) => {
                tracing::info!(node = %redact_url(url), connection = name, "connected to RabbitMQ");
                return Ok(conn);
            }
            Ok(Err(e)) => last = format!("{}: {e}", redact_url(url)),
            Err(_) => last = format!("{}: no answer within {CONNECT_TIMEOUT:?}", redact_url(url)),
        }
        tracing::warn!(error = %last, "RabbitMQ node unavailable");
    }
    Err(AmqpError::Connect {
        tried: urls.len(),
        last,
    })
}
