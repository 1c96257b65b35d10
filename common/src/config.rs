//! Settings shared by every role, read from environment variables (with a command-line flag of
//! the same meaning for each, so `--help` documents them all with their defaults).
//!
//! Credentials are read as optional strings and validated afterwards by [`PlatformArgs::crypt`]
//! and friends, so that a missing or malformed value stops the process with one line naming the
//! variable, never echoing a secret.

use crate::crypto::{CryptoError, MsgCrypt};
use crate::ids::{AppId, Namespace};
use secrecy::SecretString;
use std::fmt;

/// A configuration problem found at start. Its text names the variable and never its value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("{0} is not set")]
    Missing(&'static str),
    #[error("{var} is invalid: {reason}")]
    Invalid { var: &'static str, reason: String },
}

/// What every service reads alike: the platform's credentials, the broker, Redis and the
/// namespace.
#[derive(clap::Args, Debug, Clone)]
pub struct ServiceArgs {
    #[command(flatten)]
    pub platform: PlatformArgs,
    #[command(flatten)]
    pub amqp: AmqpArgs,
    #[command(flatten)]
    pub redis: RedisArgs,
    #[command(flatten)]
    pub namespace: NamespaceArgs,
}

/// The platform's credentials, as entered in the WeChat Open Platform console.
#[derive(clap::Args, Clone, Default)]
pub struct PlatformArgs {
    /// The third-party platform's appid (`wx` + 16 hex digits).
    #[arg(long, env = "WXPIPE_COMPONENT_APPID")]
    pub component_appid: Option<String>,
    /// The platform's AppSecret (needed by the workers that call WeChat's API).
    #[arg(long, env = "WXPIPE_COMPONENT_SECRET", hide_env_values = true)]
    pub component_secret: Option<String>,
    /// The message-verification Token.
    #[arg(long, env = "WXPIPE_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// The 43-character EncodingAESKey.
    #[arg(long, env = "WXPIPE_ENCODING_AES_KEY", hide_env_values = true)]
    pub encoding_aes_key: Option<String>,
}

impl fmt::Debug for PlatformArgs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PlatformArgs")
            .field("component_appid", &self.component_appid)
            .field(
                "component_secret",
                &self.component_secret.as_ref().map(|_| "[redacted]"),
            )
            .field("token", &self.token.as_ref().map(|_| "[redacted]"))
            .field(
                "encoding_aes_key",
                &self.encoding_aes_key.as_ref().map(|_| "[redacted]"),
            )
            .finish()
    }
}

impl PlatformArgs {
    pub fn component_appid(&self) -> Result<AppId, ConfigError> {
        let raw = required(&self.component_appid, "WXPIPE_COMPONENT_APPID")?;
        raw.parse()
            .map_err(|e: crate::ids::IdError| ConfigError::Invalid {
                var: "WXPIPE_COMPONENT_APPID",
                reason: e.to_string(),
            })
    }

    pub fn component_secret(&self) -> Result<SecretString, ConfigError> {
        required(&self.component_secret, "WXPIPE_COMPONENT_SECRET").map(SecretString::from)
    }

    /// The platform's WXBizMsgCrypt, built from the appid, the Token and the EncodingAESKey.
    pub fn crypt(&self) -> Result<MsgCrypt, ConfigError> {
        let appid = self.component_appid()?;
        let token = required(&self.token, "WXPIPE_TOKEN")?;
        if token.len() > 64 || !token.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(ConfigError::Invalid {
                var: "WXPIPE_TOKEN",
                reason: "expected up to 64 printable ASCII characters".into(),
            });
        }
        let key = required(&self.encoding_aes_key, "WXPIPE_ENCODING_AES_KEY")?;
        MsgCrypt::new(SecretString::from(token), &key, appid.as_str()).map_err(|e| {
            ConfigError::Invalid {
                var: "WXPIPE_ENCODING_AES_KEY",
                reason: match e {
                    CryptoError::KeyLength(n) => format!("expected 43 characters, got {n}"),
                    _ => "not valid base64".into(),
                },
            }
        })
    }
}

fn required(value: &Option<String>, var: &'static str) -> Result<String, ConfigError> {
    match value.as_deref().map(str::trim) {
        Some(v) if !v.is_empty() => Ok(v.to_owned()),
        _ => Err(ConfigError::Missing(var)),
    }
}

/// RabbitMQ connection settings.
#[derive(clap::Args, Clone)]
pub struct AmqpArgs {
    /// RabbitMQ URL; a comma-separated list names the nodes of a cluster, tried in turn
    /// whenever a connection is (re)established.
    #[arg(
        long = "amqp-url",
        env = "WXPIPE_AMQP_URL",
        default_value = "amqp://guest:guest@127.0.0.1:5672/%2f",
        hide_env_values = true
    )]
    pub amqp_url: String,
}

impl AmqpArgs {
    /// The node URLs, in the order they are tried.
    pub fn urls(&self) -> Result<Vec<String>, ConfigError> {
        let urls: Vec<String> = self
            .amqp_url
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect();
        if urls.is_empty() {
            return Err(ConfigError::Missing("WXPIPE_AMQP_URL"));
        }
        for url in &urls {
            url.parse::<lapin::uri::AMQPUri>()
                .map_err(|_| ConfigError::Invalid {
                    var: "WXPIPE_AMQP_URL",
                    reason: format!("{} is not an amqp:// or amqps:// URL", redact_url(url)),
                })?;
        }
        Ok(urls)
    }
}

impl fmt::Debug for AmqpArgs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let shown: Vec<String> = self.amqp_url.split(',').map(redact_url).collect();
        f.debug_struct("AmqpArgs")
            .field("amqp_url", &shown)
            .finish()
    }
}

/// Redis connection settings.
#[derive(clap::Args, Clone)]
pub struct RedisArgs {
    /// Redis URL.
    #[arg(
        long = "redis-url",
        env = "WXPIPE_REDIS_URL",
        default_value = "redis://127.0.0.1:6379/0",
        hide_env_values = true
    )]
    pub redis_url: String,
}

impl fmt::Debug for RedisArgs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisArgs")
            .field("redis_url", &redact_url(&self.redis_url))
            .finish()
    }
}

/// The namespace of every exchange, queue and Redis key.
#[derive(clap::Args, Clone, Debug)]
pub struct NamespaceArgs {
    /// Prefix of every exchange, queue and Redis key.
    #[arg(long, env = "WXPIPE_NAMESPACE", default_value = "wxpipe")]
    pub namespace: String,
    /// Quorum queues the intake is split into: 1 keeps the one queue `{ns}.raw`; K > 1 makes
    /// `{ns}.raw` a consistent-hash exchange over `{ns}.raw.0 … {ns}.raw.{K-1}` by appid (needs
    /// the broker's rabbitmq_consistent_hash_exchange plugin). Every role must agree.
    #[arg(long, env = "WXPIPE_RAW_SHARDS", default_value_t = 1)]
    pub raw_shards: u16,
}

impl NamespaceArgs {
    pub fn namespace(&self) -> Result<Namespace, ConfigError> {
        self.namespace
            .parse()
            .map_err(|e: crate::ids::IdError| ConfigError::Invalid {
                var: "WXPIPE_NAMESPACE",
                reason: e.to_string(),
            })
    }

    pub fn raw_shards(&self) -> Result<crate::amqp::RawShards, ConfigError> {
        crate::amqp::RawShards::new(self.raw_shards).map_err(|e| ConfigError::Invalid {
            var: "WXPIPE_RAW_SHARDS",
            reason: e.to_string(),
        })
    }
}

/// Where WeChat's API is and how early tokens are refreshed.
#[derive(clap::Args, Clone, Debug)]
pub struct WechatArgs {
    /// WeChat's API (point it at wechat-sim for tests and demos).
    #[arg(
        long,
        env = "WXPIPE_WECHAT_API_BASE",
        default_value = "https://api.weixin.qq.com"
    )]
    pub wechat_api_base: String,
    /// Tokens are refreshed this long before they expire.
    #[arg(long, env = "WXPIPE_REFRESH_MARGIN_SECS", default_value_t = 600)]
    pub refresh_margin_secs: u64,
}

impl WechatArgs {
    /// The API base URL, checked.
    pub fn api_base(&self) -> Result<String, ConfigError> {
        http_url("WXPIPE_WECHAT_API_BASE", &self.wechat_api_base)
    }

    /// The refresh margin, checked (tokens live 7200 s).
    pub fn refresh_margin(&self) -> Result<std::time::Duration, ConfigError> {
        if self.refresh_margin_secs == 0 || self.refresh_margin_secs >= 7000 {
            return Err(ConfigError::Invalid {
                var: "WXPIPE_REFRESH_MARGIN_SECS",
                reason: "must be between 1 and 6999 (tokens live 7200 s)".into(),
            });
        }
        Ok(std::time::Duration::from_secs(self.refresh_margin_secs))
    }
}

/// `v`, a setting (`var`) that must be at least 1.
pub fn positive(var: &'static str, v: u64) -> Result<u64, ConfigError> {
    if v == 0 {
        Err(ConfigError::Invalid {
            var,
            reason: "must be at least 1".into(),
        })
    } else {
        Ok(v)
    }
}

/// An http(s) URL (for `var`), without its trailing slash.
pub fn http_url(var: &'static str, value: &str) -> Result<String, ConfigError> {
    match url::Url::parse(value.trim()) {
        Ok(u) if matches!(u.scheme(), "http" | "https") && u.host_str().is_some() => {
            Ok(value.trim().trim_end_matches('/').to_owned())
        }
        _ => Err(ConfigError::Invalid {
            var,
            reason: "expected an http:// or https:// URL".into(),
        }),
    }
}

/// A URL with its password replaced, for logs and error messages.
pub fn redact_url(url: &str) -> String {
    match url::Url::parse(url.trim()) {
        Ok(mut parsed) => {
            if parsed.password().is_some() {
                let _ = parsed.set_password(Some("***"));
            }
            parsed.to_string()
        }
        Err(_) => "<unparseable URL>".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn platform(appid: &str, token: &str, key: &str) -> PlatformArgs {
        PlatformArgs {
            component_appid: Some(appid.into()),
            component_secret: None,
            token: Some(token.into()),
            encoding_aes_key: Some(key.into()),
        }
    }

    #[test]
    fn errors_name_the_variable_and_never_the_secret() {
        let key = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG";
        assert!(platform("wx134c8103faa5a59e", "tok", key).crypt().is_ok());
        let e = platform("wx134c8103faa5a59e", "tok", "secret-but-short")
            .crypt()
            .unwrap_err();
        assert!(
            e.to_string()
                .starts_with("WXPIPE_ENCODING_AES_KEY is invalid")
        );
        assert!(!e.to_string().contains("secret-but-short"));
        let e = platform("nope", "tok", key).crypt().unwrap_err();
        assert!(
            e.to_string()
                .starts_with("WXPIPE_COMPONENT_APPID is invalid")
        );
        let e = PlatformArgs::default().crypt().unwrap_err();
        assert_eq!(e, ConfigError::Missing("WXPIPE_COMPONENT_APPID"));
        let shown = format!("{:?}", platform("wx134c8103faa5a59e", "tok-secret", key));
        assert!(!shown.contains("tok-secret") && !shown.contains(key));
    }

    #[test]
    fn amqp_urls_split_and_redact() {
        let args = AmqpArgs {
            amqp_url: "amqp://u:pw@a:5672/%2f, amqp://u:pw@b:5672/%2f".into(),
        };
        assert_eq!(args.urls().unwrap().len(), 2);
        assert!(!format!("{args:?}").contains("pw"));
        let bad = AmqpArgs {
            amqp_url: "http://u:pw@x".into(),
        };
        let e = bad.urls().unwrap_err().to_string();
        assert!(e.contains("WXPIPE_AMQP_URL") && !e.contains("pw"), "{e}");
    }
}
