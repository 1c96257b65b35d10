//! Settings every worker role shares.

use common::config::{AmqpArgs, ConfigError, NamespaceArgs, PlatformArgs, RedisArgs};
use std::net::SocketAddr;

/// Broker, Redis, namespace and platform credentials, as environment variables or flags.
#[derive(clap::Args, Debug, Clone)]
pub struct WorkerArgs {
    #[command(flatten)]
    pub platform: PlatformArgs,
    #[command(flatten)]
    pub amqp: AmqpArgs,
    #[command(flatten)]
    pub redis: RedisArgs,
    #[command(flatten)]
    pub namespace: NamespaceArgs,
    /// Serve `/metrics` and `/healthz` on this address (unset: no listener).
    #[arg(long, env = "WXPIPE_METRICS_ADDR")]
    pub metrics_addr: Option<SocketAddr>,
    /// Attempts at a transient failure (Redis down, publish not confirmed) before a message is
    /// dead-lettered; the waits between attempts grow from 100 ms to 10 s.
    #[arg(long, env = "WXPIPE_MAX_ATTEMPTS", default_value_t = 12)]
    pub max_attempts: u32,
}

impl WorkerArgs {
    pub fn check_attempts(&self) -> Result<u32, ConfigError> {
        if self.max_attempts == 0 {
            return Err(ConfigError::Invalid {
                var: "WXPIPE_MAX_ATTEMPTS",
                reason: "must be at least 1".into(),
            });
        }
        Ok(self.max_attempts)
    }
}
