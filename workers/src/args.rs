//! The arguments every worker role shares (flags or environment variables).

use common::config::{ConfigError, ServiceArgs};
use std::net::SocketAddr;

/// Broker, Redis, namespace and platform credentials, as environment variables or flags.
#[derive(clap::Args, Debug, Clone)]
pub struct WorkerArgs {
    #[command(flatten)]
    pub service: ServiceArgs,
    /// Serve `/metrics` and `/healthz` on this address (unset: no listener).
    #[arg(long, env = "WXPIPE_METRICS_ADDR")]
    pub metrics_addr: Option<SocketAddr>,
    /// Attempts at a transient failure (Redis down, publish not confirmed) before a message is
    /// dead-lettered; the waits between attempts grow from 100 ms to 10 s.
    #[arg(long, env = "WXPIPE_MAX_ATTEMPTS", default_value_t = 12)]
    pub max_attempts: u32,
    #[command(flatten)]
    pub wechat: common::config::WechatArgs,
    /// The limits of the listeners clients reach (the admin API, the gateway).
    #[command(flatten)]
    pub edge: common::edge::EdgeArgs,
}

/// A given `WXPIPE_ADMIN_TOKEN` (trimmed): at least 16 characters.
pub fn admin_token(given: &str) -> Result<String, ConfigError> {
    if given.len() >= 16 {
        Ok(given.to_owned())
    } else {
        Err(ConfigError::Invalid {
            var: "WXPIPE_ADMIN_TOKEN",
            reason: "use at least 16 characters".into(),
        })
    }
}

impl WorkerArgs {
    /// The token service of this platform (needs the AppSecret).
    pub fn token_service(&self) -> Result<common::token::TokenService, ConfigError> {
        let appid = self.service.platform.component_appid()?;
        let secret = self.service.platform.component_secret()?;
        let api_base = self.wechat.api_base()?;
        let margin = self.wechat.refresh_margin()?;
        let client = common::wechat::WechatClient::new(&api_base, appid.as_str(), Some(secret))
            .map_err(|e| ConfigError::Invalid {
                var: "WXPIPE_WECHAT_API_BASE",
                reason: e.to_string(),
            })?;
        let pool = self.redis_pool()?;
        let ns = self.service.namespace.namespace()?;
        Ok(common::token::TokenService {
            store: common::token::TokenStore::new(
                pool,
                common::redis::Keys::new(&ns, appid.as_str()),
            ),
            client,
            margin,
        })
    }

    /// A pool for `WXPIPE_REDIS_URL` (nothing connects until used).
    pub fn redis_pool(&self) -> Result<common::redis::Pool, ConfigError> {
        common::redis::pool(&self.service.redis.redis_url).map_err(|e| ConfigError::Invalid {
            var: "WXPIPE_REDIS_URL",
            reason: e.to_string(),
        })
    }

    pub fn check_attempts(&self) -> Result<u32, ConfigError> {
        common::config::positive("WXPIPE_MAX_ATTEMPTS", u64::from(self.max_attempts))?;
        Ok(self.max_attempts)
    }
}
