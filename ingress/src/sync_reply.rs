//! Passive replies produced downstream (design.md): for appids in `WXPIPE_SYNC_REPLY_APPIDS`
//! the ingress publishes the push with `reply_to` = RabbitMQ's direct reply-to and a
//! `correlation_id`, waits (under WeChat's 5 s) for a reply, and returns it encrypted.
//!
//! A reply is a message on the direct reply-to pseudo-queue whose body is the plaintext reply
//! XML (empty: no reply, answer `success`). The decrypt worker carries `reply_to` and
//! `correlation_id` into the event; whoever handles the event publishes the reply to the
//! default exchange with `reply_to` as routing key. The full-network release test uses it, and
//! a downstream team can use it for its own accounts.
//!
//! Direct reply-to needs the requests published on the channel that consumes the replies, so
//! this has its own connection and channel, kept alive by a small supervisor (the shared
//! jittered reconnect backoff). If it is down, pushes fall back to the plain path (`success`,
//! no passive reply): nothing is lost.
//!
//! Each waiting request is one entry in a map, removed when its [`ReplyWait`] is dropped —
//! answered, timed out or abandoned — and all at once when the channel is lost (its replies
//! can no longer arrive); `wxpipe_ingress_reply_waiters` shows how many wait.

use common::amqp::publisher::{ConfirmChannel, Routing, publish_on};
use common::amqp::stuck::NackStreak;
use common::amqp::topology::Part;
use common::amqp::{AmqpError, PublishError, connect_any};
use common::ids::Namespace;
use futures::StreamExt;
use lapin::options::{BasicConsumeOptions, ConfirmSelectOptions};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{oneshot, watch};

/// The default sync-reply appids: the full-network release test's accounts (protocol.md §5).
pub fn release_test_appids() -> HashSet<String> {
    common::wechat::RELEASE_TEST_ACCOUNTS
        .iter()
        .map(|(_, appid)| appid.to_string())
        .collect()
}

const REPLY_TO: &str = "amq.rabbitmq.reply-to";

/// How often the run-time set of sync-reply accounts is re-read from Redis.
pub const FOLLOW_EVERY: Duration = Duration::from_secs(2);

type Pending = Arc<Mutex<HashMap<String, oneshot::Sender<Vec<u8>>>>>;

/// Publishes with a reply address and waits for replies.
#[derive(Clone)]
pub struct SyncReplier {
    appids: Arc<HashSet<String>>,
    /// The run-time set (admin API, Redis), re-read every [`FOLLOW_EVERY`]; `*` for all.
    runtime: Arc<std::sync::RwLock<HashSet<String>>>,
    channel: watch::Receiver<Option<Arc<ConfirmChannel>>>,
    pending: Pending,
    confirm_timeout: Duration,
    /// Nacks on the reply channel: one the broker keeps refusing is closed, and the supervisor
    /// opens another (`common::amqp::stuck`).
    nacks: Arc<Mutex<NackStreak>>,
}

impl SyncReplier {
    /// Starts the supervisor of the reply channel.
    pub fn start(
        urls: Vec<String>,
        ns: Namespace,
        appids: HashSet<String>,
        declare: Part,
        confirm_timeout: Duration,
    ) -> Self {
        let (tx, rx) = watch::channel(None);
        let pending: Pending = Arc::default();
        tokio::spawn(supervise(urls, ns, declare, tx, pending.clone()));
        Self {
            appids: Arc::new(appids),
            runtime: Arc::default(),
            channel: rx,
            pending,
            confirm_timeout,
            nacks: Arc::default(),
        }
    }

    /// Follows the run-time set of sync-reply accounts in Redis (edited through the admin API)
    /// until `shutdown`: a change is seen within [`FOLLOW_EVERY`]. When Redis cannot be read the
    /// last set read stays in force.
    pub fn follow(&self, store: common::token::TokenStore, shutdown: watch::Receiver<bool>) {
        let runtime = self.runtime.clone();
        tokio::spawn(async move {
            let mut every = common::shutdown::every(FOLLOW_EVERY, shutdown);
            while every.tick().await {
                match store.sync_reply_appids().await {
                    Ok(v) => {
                        let set: HashSet<String> = v.into_iter().collect();
                        if let Ok(mut r) = runtime.write()
                            && *r != set
                        {
                            tracing::info!(accounts = ?set, "sync-reply accounts changed");
                            *r = set;
                        }
                    }
                    Err(e) => tracing::debug!(error = %e, "sync-reply accounts not re-read"),
                }
            }
        });
    }

    /// Whether pushes for `appid` wait for a passive reply (whether or not the channel is up:
    /// [`Self::publish`] says when it is not).
    pub fn wants(&self, appid: &str) -> bool {
        self.appids.contains(appid)
            || self
                .runtime
                .read()
                .is_ok_and(|r| r.contains(appid) || r.contains("*"))
    }

    /// Whether the reply channel is up (part of the ingress's readiness).
    pub fn is_connected(&self) -> bool {
        self.channel.borrow().as_ref().is_some_and(channel_up)
    }

    /// Publishes `body` with a reply address; once confirmed, returns the wait for the reply.
    /// [`PublishError::Unavailable`] while the reply channel is down.
    pub async fn publish(
        &self,
        exchange: &str,
        routing_key: &str,
        body: &[u8],
        properties: BasicProperties,
    ) -> Result<ReplyWait, PublishError> {
        let channel = self
            .channel
            .borrow()
            .clone()
            .filter(channel_up)
            .ok_or(PublishError::Unavailable)?;
        let id = uuid::Uuid::new_v4().simple().to_string();
        let (tx, rx) = oneshot::channel();
        let wait = ReplyWait {
            rx,
            id: id.clone(),
            pending: self.pending.clone(),
        };
        {
            let mut map = lock(&self.pending);
            map.insert(id.clone(), tx);
            waiters_gauge(map.len());
        }
        let props = properties
            .with_reply_to(REPLY_TO.into())
            .with_correlation_id(id.as_str().into());
        // On failure `wait` is dropped here, which removes its entry.
        let result = publish_on(
            &channel,
            exchange,
            routing_key,
            body,
            props,
            Routing::Mandatory,
            self.confirm_timeout,
        )
        .await;
        if matches!(result, Err(PublishError::Nacked)) {
            let mut nacks = self.nacks.lock().unwrap_or_else(|p| p.into_inner());
            if nacks.nacked(std::time::Instant::now()) {
                nacks.reset();
                metrics::counter!("wxpipe_amqp_channels_replaced_total", "connection" => "sync-reply")
                    .increment(1);
                tracing::warn!(
                    "the broker kept refusing the sync-reply channel's messages; reopening it"
                );
                // Its consumer ends with it, and the supervisor opens a new connection.
                tokio::spawn(async move {
                    let _ = channel
                        .channel()
                        .close(200, "its publishes kept being refused".into())
                        .await;
                });
            }
        }
        result.map(|()| wait)
    }
}

/// A request waiting for its reply; dropping it forgets the request.
pub struct ReplyWait {
    rx: oneshot::Receiver<Vec<u8>>,
    id: String,
    pending: Pending,
}

impl ReplyWait {
    /// The reply, or `None` when none came within `timeout` (or the channel was lost).
    pub async fn reply(mut self, timeout: Duration) -> Option<Vec<u8>> {
        tokio::time::timeout(timeout, &mut self.rx).await.ok()?.ok()
    }
}

impl Drop for ReplyWait {
    fn drop(&mut self) {
        let mut map = lock(&self.pending);
        map.remove(&self.id);
        waiters_gauge(map.len());
    }
}

fn lock(pending: &Pending) -> std::sync::MutexGuard<'_, HashMap<String, oneshot::Sender<Vec<u8>>>> {
    pending
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Whether the reply channel can take a publish: readiness and [`SyncReplier::publish`] ask the
/// same question.
fn channel_up(channel: &Arc<ConfirmChannel>) -> bool {
    channel.channel().status().connected()
}

fn waiters_gauge(n: usize) {
    metrics::gauge!("wxpipe_ingress_reply_waiters").set(n as f64);
}

async fn supervise(
    urls: Vec<String>,
    ns: Namespace,
    declare: Part,
    tx: watch::Sender<Option<Arc<ConfirmChannel>>>,
    pending: Pending,
) {
    let name = format!("wxpipe-ingress {ns} pid {} replies", std::process::id());
    let mut start = 0usize;
    let mut backoff = common::amqp::reconnect_backoff();
    loop {
        match open(&urls, start, &ns, &declare, &name).await {
            Ok((conn, channel, mut replies)) => {
                backoff = common::amqp::reconnect_backoff();
                tx.send_replace(Some(Arc::new(ConfirmChannel::new(channel))));
                tracing::info!("sync-reply channel ready");
                while let Some(Ok(delivery)) = replies.next().await {
                    let Some(id) = delivery
                        .properties
                        .correlation_id()
                        .as_ref()
                        .map(|c| c.to_string())
                    else {
                        continue;
                    };
                    let waiter = lock(&pending).remove(&id);
                    match waiter {
                        Some(w) => {
                            let _ = w.send(delivery.data);
                        }
                        None => metrics::counter!("wxpipe_ingress_late_replies_total").increment(1),
                    }
                }
                tx.send_replace(None);
                // Replies to this channel can no longer arrive: release every waiter now.
                lock(&pending).clear();
                waiters_gauge(0);
                let _ = conn.close(320, "reconnecting".into()).await;
                tracing::warn!("sync-reply channel lost; reconnecting");
            }
            Err(e) => tracing::warn!(error = %e, "sync-reply channel unavailable"),
        }
        start = start.wrapping_add(1);
        tokio::time::sleep(backoff.next().unwrap_or(Duration::from_secs(5))).await;
    }
}

async fn open(
    urls: &[String],
    start: usize,
    ns: &Namespace,
    declare: &Part,
    name: &str,
) -> Result<(lapin::Connection, Channel, lapin::Consumer), AmqpError> {
    let conn = connect_any(urls, start, name).await?;
    common::amqp::topology::declare(&conn, ns, declare).await?;
    let ch = conn
        .create_channel()
        .await
        .map_err(|source| AmqpError::Broker {
            what: "opening the reply channel".into(),
            source,
        })?;
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .map_err(|source| AmqpError::Broker {
            what: "enabling confirms on the reply channel".into(),
            source,
        })?;
    let consumer = ch
        .basic_consume(
            REPLY_TO.into(),
            "wxpipe-replies".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .map_err(|source| AmqpError::Broker {
            what: "consuming direct reply-to".into(),
            source,
        })?;
    Ok((conn, ch, consumer))
}
