//! Building and running the ingress: the publisher, the Redis pool, the router, and graceful
//! shutdown (stop accepting, let in-flight pushes finish their confirms, close the broker
//! connection).

use crate::config::IngressConfig;
use crate::routes::router;
use crate::state::AppState;
use common::amqp::topology::Part;
use common::amqp::{ConfirmedPublisher, PublisherConfig};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::TcpListener;

/// Why the ingress could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("invalid WXPIPE_REDIS_URL: {0}")]
    Redis(String),
    #[error("cannot set up the WeChat API client: {0}")]
    Wechat(String),
}

/// Binds `config.addr` and serves until `shutdown` completes.
pub async fn run(
    config: IngressConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let listener = TcpListener::bind(config.addr)
        .await
        .map_err(|source| ServeError::Bind {
            addr: config.addr,
            source,
        })?;
    serve(listener, config, shutdown).await
}

/// Serves on an already bound listener (tests bind port 0) until `shutdown` completes.
pub async fn serve(
    listener: TcpListener,
    config: IngressConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let redis =
        common::redis::pool(&config.redis_url).map_err(|e| ServeError::Redis(e.to_string()))?;
    let client = common::wechat::WechatClient::new(
        &config.wechat_api_base,
        config.crypt.appid(),
        config.component_secret.clone(),
    )
    .map_err(|e| ServeError::Wechat(e.to_string()))?;
    let tokens = common::token::TokenService {
        store: common::token::TokenStore::new(
            redis.clone(),
            common::redis::Keys::new(&config.namespace, config.crypt.appid()),
        ),
        client,
        margin: config.refresh_margin,
    };
    // Raw pushes, and the events exchange with the business queue for /auth/callback (the
    // business workers add their own bindings).
    let declare = Part::everything(config.raw_shards);
    let replier = crate::sync_reply::SyncReplier::start(
        config.amqp_urls.clone(),
        config.namespace.clone(),
        config.sync_reply_appids.clone(),
        declare.clone(),
        config.publish_timeout,
    );
    let publisher = ConfirmedPublisher::start(PublisherConfig {
        urls: config.amqp_urls.clone(),
        namespace: config.namespace.clone(),
        connection_name: format!(
            "wxpipe-ingress {} pid {}",
            config.namespace,
            std::process::id()
        ),
        channels: config.publish_channels,
        confirm_timeout: config.publish_timeout,
        declare,
    });
    let logins = common::web_login::WebLogins::new(redis.clone(), tokens.store.keys.clone());
    let team_keys = common::team_keys::KeyStore::new(redis.clone(), tokens.store.keys.clone());
    let state = Arc::new(AppState {
        crypt: config.crypt.clone(),
        publisher: publisher.clone(),
        raw_exchange: config.namespace.raw(),
        max_body_bytes: config.max_body_bytes,
        timestamp_window: config.timestamp_window,
        redis,
        metrics: common::telemetry::metrics_handle(),
        tokens,
        namespace: config.namespace.clone(),
        wechat_page_base: config.wechat_page_base.clone(),
        public_base_url: config.public_base_url.clone(),
        replier,
        sync_reply_timeout: config.sync_reply_timeout,
        auth_limits: config.auth,
        auth_texts: config.auth_texts.clone(),
        wechat_open_base: config.wechat_open_base.clone(),
        logins,
        team_keys,
    });
    let local = listener.local_addr().ok();
    tracing::info!(addr = ?local, namespace = %config.namespace, "ingress listening");

    let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
    state
        .replier
        .follow(state.tokens.store.clone(), stop_rx.clone());
    common::beacon::spawn(
        state.redis.clone(),
        common::redis::Keys::new(&config.namespace, config.crypt.appid()),
        "ingress",
        stop_rx.clone(),
    );
    let server = common::edge::serve(
        listener,
        router(state),
        config.limits,
        common::edge::INGRESS,
        async move {
            shutdown.await;
            tracing::info!("shutting down: finishing in-flight pushes");
            stop_tx.send_replace(true);
        },
    );
    let grace = config.shutdown_grace;
    let grace_expired = async move {
        let _ = stop_rx.wait_for(|stopping| *stopping).await;
        tokio::time::sleep(grace).await;
    };
    let result = tokio::select! {
        () = server => Ok(()),
        _ = grace_expired => {
            tracing::warn!(?grace, "in-flight pushes did not finish within the grace period");
            Ok(())
        }
    };
    publisher.close().await;
    tracing::info!("ingress stopped");
    result
}
