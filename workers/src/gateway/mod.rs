//! `workers gateway`: the one door to WeChat for every team. `ANY /v1/wechat/{appid}/{path…}`
//! forwards to `WXPIPE_WECHAT_API_BASE/{path}` with that account's `access_token` attached;
//! `/v1/wechat/component/{path…}` with the component's token (and `component_appid` where the
//! API wants it), under the name each API documents; user-token APIs (`sns/userinfo`) carry the
//! caller's own user token and none of ours ([`credential`]). Bodies and answers pass through unchanged; a token WeChat refuses
//! (40001/40014/42001) is compare-and-invalidated, refreshed once however many callers hit it,
//! and the call retried once; -1 is retried with a backoff. Callers present a team's API key
//! ([`keys`]) or the admin token. Any number of replicas: everything shared is in Redis.
//! Its own endpoints: `GET /v1/tokens/{appid}` and `GET /v1/tickets/{appid}/{type}` (raw
//! token and ticket, keys with `raw_tokens`), `GET /v1/jssdk/{appid}/config` ([`jssdk`]) and
//! `POST /v1/oauth/result` ([`web_login`]).

pub mod credential;
pub mod jssdk;
pub mod path;
pub mod proxy;
pub mod web_login;

/// Teams' API keys (in `common`: the ingress's web login reads their `return_to` prefixes).
pub use common::team_keys as keys;

use crate::args::WorkerArgs;
use axum::Router;
use axum::routing::{any, get};
use common::config::ConfigError;
use common::token::TokenService;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// Serve WeChat's API to the platform's teams, tokens attached.
#[derive(clap::Args, Clone)]
pub struct GatewayArgs {
    #[command(flatten)]
    pub worker: WorkerArgs,
    /// Where the gateway listens.
    #[arg(long, env = "WXPIPE_GATEWAY_ADDR", default_value = "127.0.0.1:8082")]
    pub addr: SocketAddr,
    /// The admin bearer token, accepted with every scope (unset: team keys only).
    #[arg(long, env = "WXPIPE_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
    /// Largest request body (media uploads), bytes.
    #[arg(long, env = "WXPIPE_GATEWAY_MAX_BODY_BYTES", default_value_t = 20 * 1024 * 1024)]
    pub max_body_bytes: usize,
    /// How long one call to WeChat may take, ms.
    #[arg(long, env = "WXPIPE_GATEWAY_TIMEOUT_MS", default_value_t = 30_000)]
    pub timeout_ms: u64,
    /// The platform's 公众号开发域名 (Official Account development domains, set in the open
    /// platform), comma-separated host names: `GET /v1/jssdk/{appid}/config` signs only pages
    /// on one of them or a subdomain (unset: it signs none).
    #[arg(long, env = "WXPIPE_WEB_DOMAINS", default_value = "")]
    pub web_domains: String,
}

impl std::fmt::Debug for GatewayArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GatewayArgs")
            .field("worker", &self.worker)
            .field("addr", &self.addr)
            .field(
                "admin_token",
                &self.admin_token.as_ref().map(|_| "[redacted]"),
            )
            .field("max_body_bytes", &self.max_body_bytes)
            .field("timeout_ms", &self.timeout_ms)
            .field("web_domains", &self.web_domains)
            .finish()
    }
}

/// Validated settings.
#[derive(Clone)]
pub struct GatewayConfig {
    pub tokens: Arc<TokenService>,
    pub api_base: String,
    pub component_appid: String,
    pub admin_token: Option<String>,
    pub max_body_bytes: usize,
    pub timeout: Duration,
    /// The gateway listener's limits (the same loop as the ingress's).
    pub limits: common::edge::Limits,
    /// See [`GatewayArgs::web_domains`].
    pub web_domains: common::jssdk::WebDomains,
}

impl GatewayArgs {
    pub fn validate(&self) -> Result<(GatewayConfig, SocketAddr), ConfigError> {
        let admin_token = match self.admin_token.as_deref().map(str::trim) {
            Some("") | None => None,
            Some(t) => Some(crate::args::admin_token(t)?),
        };
        if self.max_body_bytes < 1024 {
            return Err(ConfigError::Invalid {
                var: "WXPIPE_GATEWAY_MAX_BODY_BYTES",
                reason: "at least 1024".into(),
            });
        }
        Ok((
            GatewayConfig {
                tokens: Arc::new(self.worker.token_service()?),
                api_base: self.worker.wechat.api_base()?,
                component_appid: self.worker.service.platform.component_appid()?.to_string(),
                admin_token,
                max_body_bytes: self.max_body_bytes,
                timeout: Duration::from_millis(self.timeout_ms.max(100)),
                limits: self.worker.edge.limits()?,
                web_domains: common::jssdk::WebDomains::parse(&self.web_domains).map_err(
                    |reason| ConfigError::Invalid {
                        var: "WXPIPE_WEB_DOMAINS",
                        reason,
                    },
                )?,
            },
            self.addr,
        ))
    }
}

/// The gateway's routes (tests serve them on their own listener).
pub fn router(config: GatewayConfig) -> Result<Router, proxy::GatewayError> {
    let redis = config.tokens.store.pool().clone();
    let max = config.max_body_bytes;
    let state = Arc::new(proxy::Gateway::new(config)?);
    Ok(Router::new()
        .route("/v1/wechat/{appid}/{*path}", any(proxy::forward))
        .route("/v1/tokens/{appid}", get(proxy::raw_token))
        .route("/v1/jssdk/{appid}/config", get(jssdk::config))
        .route("/v1/tickets/{appid}/{kind}", get(jssdk::raw_ticket))
        .route("/v1/oauth/result", axum::routing::post(web_login::redeem))
        .layer(axum::extract::DefaultBodyLimit::max(max))
        .with_state(state)
        .route(
            "/metrics",
            get(|| async { common::telemetry::metrics_handle().render() }),
        )
        .merge(crate::serve::health_routes(redis)))
}

/// Serves until `shutdown` turns true.
pub async fn serve(
    listener: tokio::net::TcpListener,
    config: GatewayConfig,
    mut shutdown: watch::Receiver<bool>,
) -> std::io::Result<()> {
    let store = &config.tokens.store;
    common::beacon::spawn(
        store.pool().clone(),
        store.keys.clone(),
        "gateway",
        shutdown.clone(),
    );
    let limits = config.limits;
    let app = router(config).map_err(std::io::Error::other)?;
    tracing::info!(addr = ?listener.local_addr().ok(), "gateway listening");
    common::edge::serve(listener, app, limits, common::edge::GATEWAY, async move {
        let _ = shutdown.wait_for(|s| *s).await;
    })
    .await;
    Ok(())
}
