//! Redis: the connection pool and the key layout. Every key lives under
//! `{ns}:{component_appid}:` so that platforms, environments and tests never collide.

use crate::ids::Namespace;

/// A Redis failure, with what was being done.
#[derive(Debug, thiserror::Error)]
pub enum RedisError {
    #[error("invalid WXPIPE_REDIS_URL: {0}")]
    Config(String),
    #[error("Redis unavailable while {what}: {detail}")]
    Unavailable { what: &'static str, detail: String },
}

/// A pool of multiplexed connections. Nothing connects until the first use, so a process starts
/// while Redis is down.
pub fn pool(url: &str) -> Result<deadpool_redis::Pool, RedisError> {
    deadpool_redis::Config::from_url(url)
        .create_pool(Some(deadpool_redis::Runtime::Tokio1))
        .map_err(|e| RedisError::Config(e.to_string()))
}

/// The key layout of one platform.
#[derive(Debug, Clone)]
pub struct Keys {
    prefix: String,
}

impl Keys {
    pub fn new(ns: &Namespace, component_appid: &str) -> Self {
        Self {
            prefix: ns.redis_prefix(component_appid),
        }
    }

    /// The common prefix, `{ns}:{component_appid}:`.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// `…:dedup:{event id}`: the dedup state of one push (see the decrypt worker).
    pub fn dedup(&self, event_id: &str) -> String {
        format!("{}dedup:{event_id}", self.prefix)
    }
}
