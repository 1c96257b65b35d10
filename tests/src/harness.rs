//! A real ingress, started in-process on a random loopback port.

use crate::creds;
use common::config::PlatformArgs;
use common::ids::Namespace;
use ingress::IngressConfig;
use ingress::server::ServeError;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::oneshot;

pub struct IngressHandle {
    pub addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<Result<(), ServeError>>,
}

/// The ingress configuration of the test platform on `ns`, talking to `amqp_urls`.
pub fn test_config(ns: &Namespace, amqp_urls: Vec<String>) -> IngressConfig {
    let platform = PlatformArgs {
        component_appid: Some(creds::COMPONENT_APPID.into()),
        component_secret: None,
        token: Some(creds::TOKEN.into()),
        encoding_aes_key: Some(creds::ENCODING_AES_KEY.into()),
    };
    IngressConfig {
        crypt: platform.crypt().expect("test credentials are valid"),
        namespace: ns.clone(),
        amqp_urls,
        redis_url: crate::redis_url(),
        addr: "127.0.0.1:0".parse().expect("literal address"),
        publish_timeout: Duration::from_secs(2),
        max_body_bytes: 64 * 1024,
        timestamp_window: Duration::from_secs(300),
        publish_channels: 4,
        shutdown_grace: Duration::from_secs(10),
    }
}

impl IngressHandle {
    /// Starts an ingress with `config` on a random port (its `addr` is ignored).
    pub async fn start(config: IngressConfig) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind loopback");
        let addr = listener.local_addr().expect("local addr");
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(ingress::server::serve(listener, config, async move {
            let _ = rx.await;
        }));
        Self {
            addr,
            stop: Some(tx),
            task,
        }
    }

    pub fn url(&self, path_and_query: &str) -> String {
        format!("http://{}{}", self.addr, path_and_query)
    }

    /// Waits until `/readyz` answers 200, at most `timeout`.
    pub async fn wait_ready(&self, timeout: Duration) -> bool {
        let client = reqwest::Client::new();
        let deadline = tokio::time::Instant::now() + timeout;
        while tokio::time::Instant::now() < deadline {
            if let Ok(r) = client.get(self.url("/readyz")).send().await
                && r.status() == 200
            {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        false
    }

    /// Graceful shutdown, as on SIGTERM; returns the server's result.
    pub async fn stop(mut self) -> Result<(), ServeError> {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        (&mut self.task).await.expect("ingress task panicked")
    }
}
