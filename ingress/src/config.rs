//! The ingress's settings: environment variables, each also a flag (`ingress --help`).

use common::config::{ConfigError, ServiceArgs, http_url, redact_url};
use common::crypto::MsgCrypt;
use common::ids::Namespace;
use std::net::SocketAddr;
use std::time::Duration;

/// Receives WeChat's pushes, verifies them and publishes them to RabbitMQ with a publisher
/// confirm; answers `success` only after the broker confirmed.
#[derive(clap::Parser, Debug, Clone)]
#[command(name = "ingress", version, about, long_about = None)]
pub struct IngressArgs {
    #[command(flatten)]
    pub service: ServiceArgs,
    /// Address the HTTP server listens on.
    #[arg(long, env = "WXPIPE_INGRESS_ADDR", default_value = "0.0.0.0:8080")]
    pub addr: SocketAddr,
    /// How long a push waits for the broker's publisher confirm before it is answered 503.
    #[arg(long, env = "WXPIPE_PUBLISH_TIMEOUT_MS", default_value_t = 2000)]
    pub publish_timeout_ms: u64,
    /// Largest accepted request body; larger ones are answered 413.
    #[arg(long, env = "WXPIPE_MAX_BODY_BYTES", default_value_t = 64 * 1024)]
    pub max_body_bytes: usize,
    /// A push whose `timestamp` is further than this from our clock is refused as stale.
    #[arg(long, env = "WXPIPE_TIMESTAMP_WINDOW_SECS", default_value_t = 300)]
    pub timestamp_window_secs: u64,
    /// Confirm-mode channels the publishes are spread over.
    #[arg(long, env = "WXPIPE_PUBLISH_CHANNELS", default_value_t = 2)]
    pub publish_channels: usize,
    #[command(flatten)]
    pub edge: common::edge::EdgeArgs,
    /// On SIGTERM, how long in-flight pushes may take to finish before the process exits.
    #[arg(long, env = "WXPIPE_SHUTDOWN_GRACE_SECS", default_value_t = 10)]
    pub shutdown_grace_secs: u64,
    #[command(flatten)]
    pub wechat: common::config::WechatArgs,
    /// Where WeChat's authorization pages live.
    #[arg(
        long,
        env = "WXPIPE_WECHAT_PAGE_BASE",
        default_value = "https://mp.weixin.qq.com"
    )]
    pub wechat_page_base: String,
    /// Where WeChat's web-login page lives (`/connect/oauth2/authorize`, on a different host
    /// from the authorization pages).
    #[arg(
        long,
        env = "WXPIPE_WECHAT_OPEN_BASE",
        default_value = "https://open.weixin.qq.com"
    )]
    pub wechat_open_base: String,
    /// This platform's public base URL, as WeChat's authorization page redirects back to it
    /// (`{base}/auth/callback`); its host is the "authorization initiation domain".
    #[arg(
        long,
        env = "WXPIPE_PUBLIC_BASE_URL",
        default_value = "http://127.0.0.1:8080"
    )]
    pub public_base_url: String,
    /// Appids whose pushes wait for a passive reply produced downstream (comma-separated;
    /// default: the ten full-network test accounts; empty: none).
    #[arg(long, env = "WXPIPE_SYNC_REPLY_APPIDS")]
    pub sync_reply_appids: Option<String>,
    /// How long such a push waits for its reply, in all (WeChat gives up after 5 s).
    #[arg(long, env = "WXPIPE_SYNC_REPLY_TIMEOUT_MS", default_value_t = 4500)]
    pub sync_reply_timeout_ms: u64,
    /// Authorizations one client may start per minute (each costs a pre_auth_code).
    #[arg(long, env = "WXPIPE_AUTH_START_PER_CLIENT", default_value_t = 10)]
    pub auth_start_per_client: u64,
    /// Authorizations all clients together may start per minute.
    #[arg(long, env = "WXPIPE_AUTH_START_PER_MINUTE", default_value_t = 120)]
    pub auth_start_per_minute: u64,
    /// The platform's name, at the top of the authorization pages.
    #[arg(long, env = "WXPIPE_PLATFORM_NAME", default_value = "wxpipe")]
    pub platform_name: String,
    /// A short line on the authorization pages saying what the platform does with the account.
    #[arg(long, env = "WXPIPE_AUTH_PAGE_NOTE", default_value = "")]
    pub auth_page_note: String,
    /// Identify clients by the last `X-Forwarded-For` entry (set it behind your own reverse
    /// proxy only: otherwise clients could pick their identity).
    #[arg(long, env = "WXPIPE_TRUST_FORWARDED_FOR", default_value_t = false)]
    pub trust_forwarded_for: bool,
    /// Print the ingress's configuration reference (Markdown) and exit.
    #[arg(long)]
    pub config_reference: bool,
}

/// Validated settings. `Debug` shows the broker and Redis URLs without their passwords.
#[derive(Clone)]
pub struct IngressConfig {
    pub crypt: MsgCrypt,
    pub namespace: Namespace,
    /// `WXPIPE_RAW_SHARDS`.
    pub raw_shards: common::amqp::RawShards,
    pub amqp_urls: Vec<String>,
    pub redis_url: String,
    pub addr: SocketAddr,
    pub publish_timeout: Duration,
    pub max_body_bytes: usize,
    pub timestamp_window: Duration,
    pub publish_channels: usize,
    pub shutdown_grace: Duration,
    pub wechat_api_base: String,
    pub wechat_page_base: String,
    pub wechat_open_base: String,
    pub public_base_url: String,
    /// The AppSecret, if configured (lets the ingress refresh the component token itself).
    pub component_secret: Option<secrecy::SecretString>,
    pub refresh_margin: Duration,
    pub sync_reply_appids: std::collections::HashSet<String>,
    pub sync_reply_timeout: Duration,
    /// The public edge's limits.
    pub limits: common::edge::Limits,
    /// The authorization pages' limits.
    pub auth: crate::routes::auth::AuthLimits,
    /// The authorization pages' configurable texts.
    pub auth_texts: crate::routes::auth_page::AuthTexts,
}

impl std::fmt::Debug for IngressConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let urls: Vec<String> = self.amqp_urls.iter().map(|u| redact_url(u)).collect();
        f.debug_struct("IngressConfig")
            .field("crypt", &self.crypt)
            .field("namespace", &self.namespace)
            .field("raw_shards", &self.raw_shards)
            .field("amqp_urls", &urls)
            .field("redis_url", &redact_url(&self.redis_url))
            .field("addr", &self.addr)
            .field("publish_timeout", &self.publish_timeout)
            .field("max_body_bytes", &self.max_body_bytes)
            .field("timestamp_window", &self.timestamp_window)
            .field("publish_channels", &self.publish_channels)
            .field("shutdown_grace", &self.shutdown_grace)
            .field("wechat_api_base", &self.wechat_api_base)
            .field("wechat_page_base", &self.wechat_page_base)
            .field("wechat_open_base", &self.wechat_open_base)
            .field("public_base_url", &self.public_base_url)
            .field("component_secret", &self.component_secret)
            .field("refresh_margin", &self.refresh_margin)
            .field("sync_reply_appids", &self.sync_reply_appids)
            .field("sync_reply_timeout", &self.sync_reply_timeout)
            .field("limits", &self.limits)
            .field("auth", &self.auth)
            .field("auth_texts", &self.auth_texts)
            .finish()
    }
}

impl IngressArgs {
    pub fn validate(&self) -> Result<IngressConfig, ConfigError> {
        use common::config::positive;
        Ok(IngressConfig {
            crypt: self.service.platform.crypt()?,
            namespace: self.service.namespace.namespace()?,
            raw_shards: self.service.namespace.raw_shards()?,
            amqp_urls: self.service.amqp.urls()?,
            redis_url: self.service.redis.redis_url.clone(),
            addr: self.addr,
            publish_timeout: Duration::from_millis(positive(
                "WXPIPE_PUBLISH_TIMEOUT_MS",
                self.publish_timeout_ms,
            )?),
            max_body_bytes: positive("WXPIPE_MAX_BODY_BYTES", self.max_body_bytes as u64)? as usize,
            timestamp_window: Duration::from_secs(self.timestamp_window_secs),
            publish_channels: positive("WXPIPE_PUBLISH_CHANNELS", self.publish_channels as u64)?
                as usize,
            shutdown_grace: Duration::from_secs(self.shutdown_grace_secs),
            wechat_api_base: self.wechat.api_base()?,
            wechat_page_base: http_url("WXPIPE_WECHAT_PAGE_BASE", &self.wechat_page_base)?,
            wechat_open_base: http_url("WXPIPE_WECHAT_OPEN_BASE", &self.wechat_open_base)?,
            public_base_url: http_url("WXPIPE_PUBLIC_BASE_URL", &self.public_base_url)?,
            component_secret: self.service.platform.component_secret().ok(),
            refresh_margin: self.wechat.refresh_margin()?,
            sync_reply_appids: sync_reply_appids(self.sync_reply_appids.as_deref())?,
            sync_reply_timeout: Duration::from_millis(self.sync_reply_timeout_ms.clamp(100, 4800)),
            limits: self.edge.limits()?,
            auth: crate::routes::auth::AuthLimits {
                starts_per_client: positive(
                    "WXPIPE_AUTH_START_PER_CLIENT",
                    self.auth_start_per_client,
                )?,
                starts_per_minute: positive(
                    "WXPIPE_AUTH_START_PER_MINUTE",
                    self.auth_start_per_minute,
                )?,
                trust_forwarded_for: self.trust_forwarded_for,
            },
            auth_texts: crate::routes::auth_page::AuthTexts {
                platform_name: self.platform_name.trim().chars().take(64).collect(),
                note: self.auth_page_note.trim().chars().take(300).collect(),
            },
        })
    }
}

/// `WXPIPE_SYNC_REPLY_APPIDS`: unset means the full-network test accounts.
fn sync_reply_appids(
    value: Option<&str>,
) -> Result<std::collections::HashSet<String>, ConfigError> {
    let Some(value) = value else {
        return Ok(crate::sync_reply::release_test_appids());
    };
    value
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            if common::ids::AppId::is_valid(s) {
                Ok(s.to_owned())
            } else {
                Err(ConfigError::Invalid {
                    var: "WXPIPE_SYNC_REPLY_APPIDS",
                    reason: format!("{s:?} is not an appid"),
                })
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_validated_config_never_shows_a_secret() {
        use clap::Parser;
        let args = IngressArgs::parse_from([
            "ingress",
            "--component-appid",
            "wx134c8103faa5a59e",
            "--component-secret",
            "app-secret-value",
            "--token",
            "msgtoken",
            "--encoding-aes-key",
            "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
            "--amqp-url",
            "amqp://user:broker-password@127.0.0.1:5672/%2f",
            "--redis-url",
            "redis://:redis-password@127.0.0.1:6379/0",
        ]);
        let shown = format!("{:?}", args.validate().unwrap());
        for secret in [
            "app-secret-value",
            "msgtoken",
            "AAAAAAAAAAAAAAAAAAAAAAAA",
            "broker-password",
            "redis-password",
        ] {
            assert!(!shown.contains(secret), "{secret} in {shown}");
        }
        assert!(shown.contains("127.0.0.1:5672"));
    }
}
