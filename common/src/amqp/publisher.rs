//! A publisher whose every publish is confirmed by the broker, with the connection kept alive
//! by a supervisor task.
//!
//! * Publishes are never serialized: each caller publishes on one of a few confirm-mode channels
//!   (round-robin) and awaits its own confirm, so many confirms are in flight at once.
//! * [`ConfirmedPublisher::publish`] is *mandatory*: a message that no queue takes (a missing
//!   queue or binding) comes back as [`PublishError::Unroutable`], never as a confirm, so a
//!   caller never acknowledges upstream what nobody stored. [`Routing::AnyQueues`]
//!   ([`ConfirmedPublisher::publish_routed`]) is for the events exchange, where a routing key
//!   nobody subscribed to is normal.
//! * When there is no connection, [`ConfirmedPublisher::publish`] fails at once with
//!   [`PublishError::Unavailable`]; a confirm that does not arrive within the deadline is
//!   [`PublishError::Timeout`]. Callers answer 503 on either, so nothing unconfirmed is ever
//!   acknowledged, and no caller waits past the deadline.
//! * The supervisor notices a lost connection (the connection's error event, a failed publish,
//!   or a periodic status check), withdraws the link, reconnects to the configured nodes in turn
//!   with jittered exponential backoff (`backon`), declares the topology again and puts the new
//!   link in place. Nobody has to restart the process.
//! * A channel the broker keeps refusing (nacks going on for half a second: a quorum queue's
//!   leader changed under it, see [`super::stuck`]) is replaced by a new channel on the same
//!   connection; its publishes still in flight finish on the old one, which is then closed.
//! * A node that answers no publish for twice the confirm deadline while publishes time out
//!   (frozen, or cut off from its peers under `pause_minority`, with its socket still open) is
//!   left like a lost connection: the supervisor connects to the next node.

use super::stuck::NackStreak;
use super::{AmqpError, connect_any};
use crate::ids::Namespace;
use futures::StreamExt;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::{BasicProperties, Channel, Confirmation, Connection};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};
use tokio::sync::{Notify, watch};

/// How often the supervisor checks the connection's status besides listening for its errors.
const HEALTH_CHECK_EVERY: Duration = Duration::from_millis(250);

/// Why a publish was not confirmed. Every variant means: the message may not be stored, so the
/// caller must not acknowledge it upstream.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("no connection to RabbitMQ")]
    Unavailable,
    #[error("no publisher confirm within {0:?}")]
    Timeout(Duration),
    #[error("the broker refused the message (nack)")]
    Nacked,
    /// A mandatory publish matched no queue: the broker returned it, nothing is stored.
    #[error("no queue is bound for routing key {routing_key:?} on exchange {exchange:?}")]
    Unroutable {
        exchange: String,
        routing_key: String,
    },
    #[error("publish failed: {0}")]
    Broker(#[from] lapin::Error),
}

/// Settings of a [`ConfirmedPublisher`].
#[derive(Clone)]
pub struct PublisherConfig {
    pub urls: Vec<String>,
    pub namespace: Namespace,
    /// Shown by the broker as the connection's name.
    pub connection_name: String,
    /// Confirm-mode channels publishes are spread over.
    pub channels: usize,
    /// How long a publish may wait for its confirm.
    pub confirm_timeout: Duration,
    /// What to declare on every (re)connect.
    pub declare: super::topology::Part,
}

struct Link {
    conn: Connection,
    slots: Vec<Slot>,
    next: AtomicUsize,
    /// When the broker last answered a publish on this link (ack, nack or return), or when the
    /// link was made.
    answered: Mutex<Instant>,
    /// Set when publishes time out and nothing has been answered for twice the confirm
    /// deadline: the node is not answering (frozen, partitioned) though its socket is open.
    silent: AtomicBool,
}

/// One confirm channel of a link, replaced when the broker keeps refusing it.
struct Slot {
    channel: RwLock<Arc<ConfirmChannel>>,
    nacks: Mutex<NackStreak>,
    replacing: AtomicBool,
}

impl Slot {
    fn new(channel: Channel) -> Self {
        Self {
            channel: RwLock::new(Arc::new(ConfirmChannel::new(channel))),
            nacks: Mutex::new(NackStreak::default()),
            replacing: AtomicBool::new(false),
        }
    }

    fn channel(&self) -> Arc<ConfirmChannel> {
        self.channel
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// A publish on this slot was nacked: whether this caller is the one to replace it.
    fn nacked(&self) -> bool {
        let stuck = self
            .nacks
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .nacked(Instant::now());
        stuck && !self.replacing.swap(true, Ordering::AcqRel)
    }
}

impl Link {
    fn healthy(&self) -> bool {
        !self.silent.load(Ordering::Acquire)
            && self.conn.status().connected()
            && self
                .slots
                .iter()
                .all(|s| s.channel().channel().status().connected())
    }

    fn slot(&self) -> usize {
        self.next.fetch_add(1, Ordering::Relaxed) % self.slots.len()
    }
}

/// Opens a channel on `conn` in confirm mode.
async fn confirm_channel(conn: &Connection) -> Result<Channel, AmqpError> {
    let ch = conn
        .create_channel()
        .await
        .map_err(AmqpError::broker("opening a publish channel"))?;
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .map_err(AmqpError::broker("enabling publisher confirms"))?;
    Ok(ch)
}

/// Puts a new confirm channel in slot `i` of `link`; the old one is closed once the publishes in
/// flight on it are settled (at most 5 s).
async fn replace_channel(shared: Arc<Shared>, link: Arc<Link>, i: usize) {
    let slot = &link.slots[i];
    match confirm_channel(&link.conn).await {
        Ok(fresh) => {
            let old = std::mem::replace(
                &mut *slot
                    .channel
                    .write()
                    .unwrap_or_else(|poisoned| poisoned.into_inner()),
                Arc::new(ConfirmChannel::new(fresh)),
            );
            slot.nacks
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .reset();
            metrics::counter!("wxpipe_amqp_channels_replaced_total", "connection" => shared.connection_name.clone())
                .increment(1);
            tracing::warn!(
                connection = %shared.connection_name,
                channel = old.channel().id(),
                "the broker kept refusing this publish channel's messages; replaced it"
            );
            tokio::spawn(async move {
                let old = old.channel();
                let _ = tokio::time::timeout(Duration::from_secs(5), old.wait_for_confirms()).await;
                let _ = old
                    .close(200, "replaced: its publishes kept being refused".into())
                    .await;
            });
        }
        Err(e) => {
            tracing::warn!(connection = %shared.connection_name, error = %e, "could not replace a refused publish channel");
            shared.kick.notify_one();
        }
    }
    slot.replacing.store(false, Ordering::Release);
}

struct Shared {
    link: watch::Sender<Option<Arc<Link>>>,
    kick: Notify,
    shutdown: watch::Sender<bool>,
    confirm_timeout: Duration,
    connection_name: String,
}

/// A cloneable handle; all clones share one connection and one supervisor.
#[derive(Clone)]
pub struct ConfirmedPublisher {
    shared: Arc<Shared>,
    supervisor: Arc<tokio::sync::Mutex<Option<tokio::task::JoinHandle<()>>>>,
}

impl ConfirmedPublisher {
    /// Starts the supervisor, which connects in the background: the caller does not wait for
    /// the broker (a process starts, and reports not-ready, while RabbitMQ is down).
    pub fn start(opts: PublisherConfig) -> Self {
        let (link, _) = watch::channel(None);
        let (shutdown, _) = watch::channel(false);
        let shared = Arc::new(Shared {
            link,
            kick: Notify::new(),
            shutdown,
            confirm_timeout: opts.confirm_timeout,
            connection_name: opts.connection_name.clone(),
        });
        crate::health::set_connected(&opts.connection_name, false);
        let handle = tokio::spawn(supervise(shared.clone(), opts));
        Self {
            shared,
            supervisor: Arc::new(tokio::sync::Mutex::new(Some(handle))),
        }
    }

    /// True while a connection with open confirm channels is in place.
    pub fn is_connected(&self) -> bool {
        self.shared
            .link
            .borrow()
            .as_ref()
            .is_some_and(|l| l.healthy())
    }

    /// Waits until connected, at most `timeout`; returns whether it is.
    pub async fn wait_connected(&self, timeout: Duration) -> bool {
        let mut rx = self.shared.link.subscribe();
        tokio::time::timeout(timeout, rx.wait_for(|l| l.is_some()))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// Publishes one message that must reach a queue and waits for the broker's confirm, at
    /// most the configured deadline. `Ok` means a queue has taken responsibility for it.
    pub async fn publish(
        &self,
        exchange: &str,
        routing_key: &str,
        body: &[u8],
        properties: BasicProperties,
    ) -> Result<(), PublishError> {
        self.publish_routed(exchange, routing_key, body, properties, Routing::Mandatory)
            .await
    }

    /// Publishes with the given [`Routing`]: [`Routing::AnyQueues`] for events on a topic
    /// exchange, where no subscriber for a routing key is normal (`Ok` then means every bound
    /// queue has it).
    pub async fn publish_routed(
        &self,
        exchange: &str,
        routing_key: &str,
        body: &[u8],
        properties: BasicProperties,
        routing: Routing,
    ) -> Result<(), PublishError> {
        let link = self
            .shared
            .link
            .borrow()
            .clone()
            .ok_or(PublishError::Unavailable)?;
        let i = link.slot();
        let result = publish_on(
            &link.slots[i].channel(),
            exchange,
            routing_key,
            body,
            properties,
            routing,
            self.shared.confirm_timeout,
        )
        .await;
        match &result {
            Ok(()) | Err(PublishError::Nacked | PublishError::Unroutable { .. }) => {
                *link
                    .answered
                    .lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner()) = Instant::now();
            }
            Err(PublishError::Timeout(_)) => {
                let quiet = link
                    .answered
                    .lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner())
                    .elapsed();
                if quiet >= self.shared.confirm_timeout * 2
                    && !link.silent.swap(true, Ordering::AcqRel)
                {
                    tracing::warn!(
                        connection = %self.shared.connection_name,
                        quiet = ?quiet,
                        "the broker node answers no publish; connecting to another node"
                    );
                }
            }
            Err(_) => {}
        }
        if matches!(
            result,
            Err(PublishError::Broker(_) | PublishError::Timeout(_))
        ) {
            // Let the supervisor check the connection now rather than at its next tick.
            self.shared.kick.notify_one();
        }
        if matches!(result, Err(PublishError::Nacked)) && link.slots[i].nacked() {
            tokio::spawn(replace_channel(self.shared.clone(), link, i));
        }
        result
    }

    /// Stops reconnecting and closes the connection. Call after in-flight publishes have
    /// finished (the ingress drains its HTTP requests first).
    pub async fn close(&self) {
        self.shared.shutdown.send_replace(true);
        if let Some(handle) = self.supervisor.lock().await.take() {
            let _ = handle.await;
        }
    }
}

/// A channel in confirm mode, with what keeps its confirms matched to its publishes.
///
/// lapin (4.12) gives a publish its delivery tag and queues its frames in two steps, under two
/// different locks, in the first poll of `basic_publish`; the broker numbers publishes in the
/// order their frames arrive. Two threads publishing on one channel at once could be numbered
/// in one order and sent in the other, and the broker's ack for one would then settle the
/// other's confirm — harmless while every publish is acked, a lost message when one is nacked
/// (issue 38; `tests/tests/confirm_order.rs`). [`publish_on`] therefore takes `order` for
/// that first poll only: the tag and the frames go in together, and waiting for the frames to
/// be written and for the confirm is not serialized.
pub struct ConfirmChannel {
    channel: Channel,
    order: tokio::sync::Mutex<()>,
}

impl ConfirmChannel {
    /// `channel` must already be in confirm mode.
    pub fn new(channel: Channel) -> Self {
        Self {
            channel,
            order: tokio::sync::Mutex::new(()),
        }
    }

    pub fn channel(&self) -> &Channel {
        &self.channel
    }
}

/// Whether a publish must reach at least one queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Routing {
    /// `mandatory`: an unroutable message is returned and reported as
    /// [`PublishError::Unroutable`].
    Mandatory,
    /// No queue for the routing key is fine (a topic exchange's events nobody subscribed to).
    AnyQueues,
}

/// Publishes one message on `channel` (in confirm mode) and waits for the broker's confirm, at
/// most `deadline`. `Ok` means the broker has taken responsibility for the message (and, with
/// [`Routing::Mandatory`], that a queue took it). Every confirmed publish of wxpipe goes
/// through here.
pub async fn publish_on(
    channel: &ConfirmChannel,
    exchange: &str,
    routing_key: &str,
    body: &[u8],
    properties: BasicProperties,
    routing: Routing,
    deadline: Duration,
) -> Result<(), PublishError> {
    let attempt = async {
        let mut publish = std::pin::pin!(channel.channel.basic_publish(
            exchange.into(),
            routing_key.into(),
            BasicPublishOptions {
                mandatory: routing == Routing::Mandatory,
                ..Default::default()
            },
            body,
            properties,
        ));
        let sent = {
            let _numbered_in_order = channel.order.lock().await;
            futures::poll!(publish.as_mut())
        };
        let confirm = match sent {
            std::task::Poll::Ready(confirm) => confirm?,
            std::task::Poll::Pending => publish.await?,
        };
        confirm.await
    };
    match tokio::time::timeout(deadline, attempt).await {
        Ok(Ok(Confirmation::Ack(Some(_)) | Confirmation::Nack(Some(_)))) => {
            metrics::counter!("wxpipe_amqp_unroutable_total", "exchange" => exchange.to_owned())
                .increment(1);
            Err(PublishError::Unroutable {
                exchange: exchange.to_owned(),
                routing_key: routing_key.to_owned(),
            })
        }
        Ok(Ok(Confirmation::Ack(None))) => Ok(()),
        Ok(Ok(Confirmation::Nack(_))) => Err(PublishError::Nacked),
        // Channels are put in confirm mode before use, so this cannot be a success; treat it
        // as the broker failing us.
        Ok(Ok(Confirmation::NotRequested)) => Err(PublishError::Nacked),
        Ok(Err(e)) => Err(PublishError::Broker(e)),
        Err(_) => Err(PublishError::Timeout(deadline)),
    }
}

async fn supervise(shared: Arc<Shared>, opts: PublisherConfig) {
    let mut shutdown = shared.shutdown.subscribe();
    let name = shared.connection_name.clone();
    let mut start = 0usize;
    let mut backoff = super::reconnect_backoff();
    loop {
        if *shutdown.borrow() {
            crate::health::forget_connection(&name);
            return;
        }
        match establish(&opts, start).await {
            Ok(link) => {
                backoff = super::reconnect_backoff();
                let link = Arc::new(link);
                shared.link.send_replace(Some(link.clone()));
                crate::health::set_connected(&name, true);
                let stopping = wait_until_broken(&shared, &link, &mut shutdown).await;
                shared.link.send_replace(None);
                crate::health::set_connected(&name, false);
                if stopping {
                    for slot in &link.slots {
                        let ch = slot.channel();
                        let ch = ch.channel();
                        let _ =
                            tokio::time::timeout(Duration::from_secs(5), ch.wait_for_confirms())
                                .await;
                    }
                    let _ = tokio::time::timeout(
                        Duration::from_secs(2),
                        link.conn.close(200, "shutting down".into()),
                    )
                    .await;
                    tracing::info!(connection = %name, "RabbitMQ connection closed");
                    crate::health::forget_connection(&name);
                    return;
                }
                tracing::warn!(connection = %name, "RabbitMQ connection lost; reconnecting");
                metrics::counter!("wxpipe_amqp_reconnects_total", "connection" => name.clone())
                    .increment(1);
                let _ = tokio::time::timeout(
                    Duration::from_millis(500),
                    link.conn.close(320, "reconnecting".into()),
                )
                .await;
                // Try the next node first: the one we were on may be the one that is gone.
                start = start.wrapping_add(1);
            }
            Err(e) => {
                let delay = backoff.next().unwrap_or(Duration::from_secs(5));
                tracing::warn!(connection = %name, error = %e, retry_in = ?delay, "RabbitMQ not available");
                start = start.wrapping_add(1);
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = shutdown.changed() => {}
                }
            }
        }
    }
}

/// Connects, declares the topology and opens the confirm channels.
async fn establish(opts: &PublisherConfig, start: usize) -> Result<Link, AmqpError> {
    let conn = connect_any(&opts.urls, start, &opts.connection_name).await?;
    super::topology::declare(&conn, &opts.namespace, &opts.declare).await?;
    let mut slots = Vec::with_capacity(opts.channels.max(1));
    for _ in 0..opts.channels.max(1) {
        slots.push(Slot::new(confirm_channel(&conn).await?));
    }
    Ok(Link {
        conn,
        slots,
        next: AtomicUsize::new(0),
        answered: Mutex::new(Instant::now()),
        silent: AtomicBool::new(false),
    })
}

/// Returns when the link is broken (false) or shutdown was requested (true).
async fn wait_until_broken(
    shared: &Shared,
    link: &Link,
    shutdown: &mut watch::Receiver<bool>,
) -> bool {
    let mut events = link.conn.events_listener();
    let mut tick = tokio::time::interval(HEALTH_CHECK_EVERY);
    loop {
        tokio::select! {
            changed = shutdown.changed() => {
                if changed.is_err() || *shutdown.borrow() {
                    return true;
                }
            }
            event = events.next() => match event {
                Some(lapin::Event::Error(e)) => {
                    tracing::warn!(error = %e, "RabbitMQ connection error");
                    return false;
                }
                None => return false,
                Some(_) => {}
            },
            _ = shared.kick.notified() => {
                if !link.healthy() {
                    return false;
                }
            }
            _ = tick.tick() => {
                if !link.healthy() {
                    return false;
                }
            }
        }
    }
}
