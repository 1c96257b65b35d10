//! # wxpipe-common
//!
//! The building blocks every wxpipe role shares. Read in this order:
//!
//! * [`crypto`] — WXBizMsgCrypt: signatures, strict AES-256-CBC decrypt, encrypt, passive replies.
//! * [`xml`] — the push envelopes, the decrypted messages and events as typed views over a map
//!   of every field, and reply builders. DOCTYPE and entities are refused.
//! * [`ids`] — validated [`ids::AppId`] and [`ids::Namespace`] (the prefix of every exchange,
//!   queue and Redis key).
//! * [`config`] — settings from environment variables, with one-line errors that never echo a
//!   secret; [`reference`] the configuration reference generated from them.
//! * [`amqp`] — connecting to a RabbitMQ cluster, the declared topology, and a confirmed,
//!   self-reconnecting publisher.
//! * [`event`] — the CloudEvents envelope of `{ns}.events`, its ids and routing keys.
//! * [`wire`] — every message on the wire as one type (raw push headers, event properties,
//!   the auth-callback event, dead-letter headers), used by its producer and its consumer.
//! * [`redis`] — the pool and the key layout (`{ns}:{component_appid}:…`).
//! * [`token`] — tokens and accounts in Redis: locks, fencing, refreshes, code exchange.
//! * [`wechat`] — the WeChat API client and its error codes.
//! * [`telemetry`] — logging and the Prometheus recorder.
//! * [`beacon`] — each process announces its role and counters in Redis (the console reads them).
//! * [`team_keys`] — teams' API keys (scopes, rates, web-login return prefixes).
//! * [`jssdk`] — JS-SDK signatures for pages on the platform's web domains.
//! * [`web_login`] — web login on behalf of accounts: single-use states and result codes.
//! * [`releases`] — mini-program fleet releases: job specs, each account's state machine, the
//!   jobs in Redis.

pub mod amqp;
pub mod beacon;
pub mod config;
pub mod crypto;
pub mod edge;
pub mod event;
pub mod health;
pub mod i18n;
pub mod ids;
pub mod jssdk;
pub mod metrics_catalog;
pub mod redis;
pub mod reference;
pub mod releases;
pub mod secret;
pub mod shutdown;
pub mod team_keys;
pub mod telemetry;
pub mod token;
pub mod web_login;
pub mod wechat;
pub mod wire;
pub mod xml;

/// Milliseconds since the Unix epoch.
pub fn unix_now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}
