//! A TCP proxy on loopback that can take its upstream away: [`Proxy::sever`] drops every
//! proxied connection and refuses new ones until [`Proxy::restore`]. Pointing one process at
//! the broker through it simulates a broker outage for that process alone.

use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

pub struct Proxy {
    pub addr: SocketAddr,
    severed: Arc<watch::Sender<bool>>,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    /// Listens on a random loopback port and forwards to `upstream`.
    pub async fn start(upstream: SocketAddr) -> std::io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let severed = Arc::new(watch::channel(false).0);
        let state = severed.clone();
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                if *state.borrow() {
                    drop(client); // refused: closed at once
                    continue;
                }
                let mut cut = state.subscribe();
                tokio::spawn(async move {
                    let Ok(mut server) = TcpStream::connect(upstream).await else {
                        return;
                    };
                    let mut client = client;
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                        _ = cut.wait_for(|s| *s) => {}
                    }
                });
            }
        });
        Ok(Self {
            addr,
            severed,
            task,
        })
    }

    /// Drops every proxied connection and refuses new ones.
    pub fn sever(&self) {
        self.severed.send_replace(true);
    }

    /// Accepts and forwards connections again.
    pub fn restore(&self) {
        self.severed.send_replace(false);
    }

    /// An AMQP URL through this proxy (guest/guest, default vhost).
    pub fn amqp_url(&self) -> String {
        format!("amqp://guest:guest@{}/%2f", self.addr)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.sever();
        self.task.abort();
    }
}
