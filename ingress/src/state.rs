//! What every request handler shares.

use common::amqp::ConfirmedPublisher;
use common::crypto::MsgCrypt;
use metrics_exporter_prometheus::PrometheusHandle;
use std::sync::Arc;
use std::time::Duration;

/// Shared, read-only state (the publisher and the pool are internally synchronised).
pub struct AppState {
    pub crypt: MsgCrypt,
    pub publisher: ConfirmedPublisher,
    /// `{ns}.raw`.
    pub raw_exchange: String,
    pub max_body_bytes: usize,
    pub timestamp_window: Duration,
    pub redis: common::redis::Pool,
    pub metrics: PrometheusHandle,
    /// Tokens and authorization codes (the authorization pages).
    pub tokens: common::token::TokenService,
    pub namespace: common::ids::Namespace,
    pub wechat_page_base: String,
    pub public_base_url: String,
    pub replier: crate::sync_reply::SyncReplier,
    pub sync_reply_timeout: Duration,
    pub auth_limits: crate::routes::auth::AuthLimits,
    pub auth_texts: crate::routes::auth_page::AuthTexts,
    /// Where WeChat's web-login page lives (`WXPIPE_WECHAT_OPEN_BASE`).
    pub wechat_open_base: String,
    /// Web logins' states and result codes.
    pub logins: common::web_login::WebLogins,
    /// Teams' keys (their `return_to` prefixes).
    pub team_keys: common::team_keys::KeyStore,
}

pub type SharedState = Arc<AppState>;
