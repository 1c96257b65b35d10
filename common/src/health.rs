//! Readiness, with the same meaning in every role: `/readyz` answers 200 when every RabbitMQ
//! connection the process keeps is up and Redis answers a PING within a second, else 503 with
//! what is down. `/healthz` (liveness) only says the process answers.

use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

static CONNECTIONS: Mutex<BTreeMap<String, bool>> = Mutex::new(BTreeMap::new());

/// Records whether the RabbitMQ connection `name` is up (and sets `wxpipe_amqp_connected`).
pub fn set_connected(name: &str, up: bool) {
    metrics::gauge!("wxpipe_amqp_connected", "connection" => name.to_owned()).set(if up {
        1.0
    } else {
        0.0
    });
    if let Ok(mut c) = CONNECTIONS.lock() {
        c.insert(name.to_owned(), up);
    }
}

/// Forgets a connection the process closed on purpose.
pub fn forget_connection(name: &str) {
    if let Ok(mut c) = CONNECTIONS.lock() {
        c.remove(name);
    }
}

/// What `/readyz` answers.
#[derive(Debug, Clone, Serialize)]
pub struct Readiness {
    pub ready: bool,
    /// Every RabbitMQ connection of the process: up or not.
    pub broker: BTreeMap<String, bool>,
    pub redis: bool,
}

/// Checks the process's RabbitMQ connections and `redis`.
pub async fn readiness(redis: &crate::redis::Pool) -> Readiness {
    let broker = CONNECTIONS.lock().map(|c| c.clone()).unwrap_or_default();
    let redis = redis_ping(redis).await;
    Readiness {
        ready: redis && broker.values().all(|up| *up),
        broker,
        redis,
    }
}

/// Redis answers a PING within a second.
pub async fn redis_ping(pool: &crate::redis::Pool) -> bool {
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
