//! The loop every consuming role shares: receive, handle, acknowledge.
//!
//! [`run`] keeps a consumer alive: it connects (nodes in turn, jittered backoff), declares the
//! topology, sets the prefetch, consumes, and hands each delivery to the role's [`Handler`] in
//! its own task (so up to `prefetch` deliveries are handled at once). The handler's
//! [`Disposition`] decides the ending:
//!
//! * `Ack` — done.
//! * `DeadLetter` — published to `{ns}.dlx` (hence `{ns}.dead`) with headers naming the reason,
//!   the source queue and the original exchange and routing key, **confirmed**, then acked. If
//!   that publish fails the delivery is requeued: a message is never dropped.
//! * `Requeue` — nacked back to the queue (the quorum queue's delivery limit dead-letters a
//!   message that keeps coming back).
//!
//! A lost connection is noticed by the delivery stream ending; unacked deliveries go back to the
//! queue on the broker's side, and the loop reconnects. On shutdown the consumer is cancelled
//! and in-flight deliveries are finished before the connection closes.

use super::publisher::DeclareFn;
use super::{AmqpError, ConfirmedPublisher, connect_any};
use crate::ids::Namespace;
use futures::StreamExt;
use lapin::BasicProperties;
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions};
use lapin::types::{AMQPValue, FieldTable, LongString};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinSet;

/// Header naming why a message was dead-lettered (`bad_signature`, `redis_unavailable`, …).
pub const H_DEAD_REASON: &str = "x-wxpipe-dead-reason";
/// Header with a one-line detail of the failure (never a secret).
pub const H_DEAD_DETAIL: &str = "x-wxpipe-dead-detail";
/// Header naming the queue the message was consumed from.
pub const H_SOURCE_QUEUE: &str = "x-wxpipe-source-queue";
/// Header with the exchange the message was first published to.
pub const H_ORIGINAL_EXCHANGE: &str = "x-wxpipe-original-exchange";
/// Header with the routing key the message was first published with.
pub const H_ORIGINAL_ROUTING_KEY: &str = "x-wxpipe-original-routing-key";
/// Header with the time it was dead-lettered, ms since the epoch.
pub const H_DEAD_AT: &str = "x-wxpipe-dead-at";

/// How a delivery ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Disposition {
    Ack,
    DeadLetter {
        reason: &'static str,
        detail: String,
    },
    Requeue,
}

/// A role's per-delivery logic.
pub trait Handler: Send + Sync + 'static {
    fn handle(&self, delivery: &Delivery) -> impl Future<Output = Disposition> + Send;
}

/// Settings of a consumer.
#[derive(Clone)]
pub struct ConsumerOptions {
    pub urls: Vec<String>,
    pub namespace: Namespace,
    pub queue: String,
    pub connection_name: String,
    pub prefetch: u16,
    pub declare: DeclareFn,
}

/// Consumes `opts.queue` until `shutdown` becomes true, reconnecting as needed. `dead_letters`
/// publishes the dead letters (a confirmed publisher on its own connection).
pub async fn run<H: Handler>(
    opts: ConsumerOptions,
    handler: Arc<H>,
    dead_letters: ConfirmedPublisher,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut backoff = super::reconnect_backoff();
    let mut start = 0usize;
    let name = opts.connection_name.clone();
    loop {
        if *shutdown.borrow() {
            return;
        }
        match consume_once(&opts, start, &handler, &dead_letters, &mut shutdown).await {
            Ok(Ended::Shutdown) => return,
            Ok(Ended::Lost) => {
                backoff = super::reconnect_backoff();
                tracing::warn!(consumer = %name, "consumer connection lost; reconnecting");
                metrics::counter!("wxpipe_amqp_reconnects_total", "connection" => name.clone())
                    .increment(1);
            }
            Err(e) => {
                let delay = backoff.next().unwrap_or(Duration::from_secs(5));
                tracing::warn!(consumer = %name, error = %e, retry_in = ?delay, "cannot consume");
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = shutdown.changed() => {}
                }
            }
        }
        // Next time, start with the next node: the one we were on may be the one that is gone.
        start = start.wrapping_add(1);
    }
}

enum Ended {
    Shutdown,
    Lost,
}

async fn consume_once<H: Handler>(
    opts: &ConsumerOptions,
    start: usize,
    handler: &Arc<H>,
    dead_letters: &ConfirmedPublisher,
    shutdown: &mut watch::Receiver<bool>,
) -> Result<Ended, AmqpError> {
    // Without its publisher a role can neither publish nor dead-letter: consuming then would
    // only bounce deliveries back to the queue. Wait for it first.
    if !dead_letters.wait_connected(Duration::from_secs(30)).await {
        return Err(AmqpError::Connect {
            tried: opts.urls.len(),
            last: "the role's publisher is not connected yet".into(),
        });
    }
    let conn = connect_any(&opts.urls, start, &opts.connection_name).await?;
    let ch = conn
        .create_channel()
        .await
        .map_err(AmqpError::broker("opening a channel"))?;
    (opts.declare)(ch.clone(), opts.namespace.clone()).await?;
    ch.basic_qos(opts.prefetch, BasicQosOptions::default())
        .await
        .map_err(AmqpError::broker("setting the prefetch"))?;
    let mut consumer = ch
        .basic_consume(
            opts.queue.as_str().into(),
            opts.connection_name.as_str().into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(AmqpError::broker(format!("consuming {}", opts.queue)))?;
    metrics::gauge!("wxpipe_amqp_connected", "connection" => opts.connection_name.clone()).set(1.0);
    tracing::info!(queue = %opts.queue, prefetch = opts.prefetch, "consuming");

    let mut in_flight = JoinSet::new();
    let mut acks = AckBatcher::default();
    let mut flush = tokio::time::interval(ACK_FLUSH_EVERY);
    let ended = loop {
        tokio::select! {
            changed = shutdown.changed() => {
                if changed.is_err() || *shutdown.borrow() {
                    break Ended::Shutdown;
                }
            }
            next = consumer.next() => match next {
                Some(Ok(delivery)) => {
                    let (handler, dead, queue) = (handler.clone(), dead_letters.clone(), opts.queue.clone());
                    let dlx = opts.namespace.dlx();
                    let tag = delivery.delivery_tag;
                    let task = in_flight.spawn(async move {
                        let disposition = handler.handle(&delivery).await;
                        settle(delivery, disposition, &dead, &queue, &dlx).await
                    });
                    acks.started(task.id(), tag);
                }
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "delivery stream error");
                    break Ended::Lost;
                }
                None => break Ended::Lost,
            },
            Some(done) = in_flight.join_next_with_id(), if !in_flight.is_empty() => {
                acks.finished(done, &ch).await;
                if acks.pending_len() >= ACK_BATCH {
                    acks.flush().await;
                }
            }
            _ = flush.tick() => acks.flush().await,
        }
    };
    metrics::gauge!("wxpipe_amqp_connected", "connection" => opts.connection_name.clone()).set(0.0);
    if matches!(ended, Ended::Shutdown) {
        // Stop new deliveries, finish the ones in hand, then close.
        let _ = ch
            .basic_cancel(opts.connection_name.as_str().into(), Default::default())
            .await;
    }
    while let Some(done) = in_flight.join_next_with_id().await {
        acks.finished(done, &ch).await;
    }
    acks.flush().await;
    let _ = tokio::time::timeout(Duration::from_secs(2), conn.close(200, "bye".into())).await;
    Ok(ended)
}

/// How often acknowledgements are flushed at the latest.
const ACK_FLUSH_EVERY: Duration = Duration::from_millis(5);
/// Flush as soon as this many acknowledgements wait.
const ACK_BATCH: usize = 64;

/// What a delivery's task ended with.
enum Settled {
    /// To be acknowledged (batched by [`AckBatcher`]).
    Ack(lapin::Acker),
    /// Already settled by the task (nacked, or dead-lettered and acked).
    Done,
}

/// Coalesces acknowledgements: deliveries finish out of order, so one `basic.ack` with
/// `multiple` is sent for the highest tag below which nothing is still being handled. A
/// delivery is therefore never acknowledged before its own handler said so, and the broker
/// handles one ack frame for many messages. Pending acks that are lost with the connection
/// only mean redeliveries, which the handlers' dedup absorbs.
#[derive(Default)]
struct AckBatcher {
    /// Tags whose handler is still running, by task.
    running: std::collections::HashMap<tokio::task::Id, u64>,
    in_flight: std::collections::BTreeSet<u64>,
    pending: std::collections::BTreeMap<u64, lapin::Acker>,
}

impl AckBatcher {
    fn started(&mut self, task: tokio::task::Id, tag: u64) {
        self.running.insert(task, tag);
        self.in_flight.insert(tag);
    }

    async fn finished(
        &mut self,
        done: Result<(tokio::task::Id, Settled), tokio::task::JoinError>,
        ch: &lapin::Channel,
    ) {
        let (task, settled) = match done {
            Ok((task, settled)) => (task, Some(settled)),
            Err(e) => (e.id(), None),
        };
        let Some(tag) = self.running.remove(&task) else {
            return;
        };
        self.in_flight.remove(&tag);
        match settled {
            Some(Settled::Ack(acker)) => {
                self.pending.insert(tag, acker);
            }
            Some(Settled::Done) => {}
            None => {
                // The handler panicked: give the message back rather than hold it forever.
                tracing::error!(tag, "a handler panicked; requeueing its delivery");
                metrics::counter!("wxpipe_handler_panics_total").increment(1);
                let _ = ch
                    .basic_nack(
                        tag,
                        BasicNackOptions {
                            requeue: true,
                            ..Default::default()
                        },
                    )
                    .await;
            }
        }
    }

    fn pending_len(&self) -> usize {
        self.pending.len()
    }

    async fn flush(&mut self) {
        let bound = self.in_flight.first().copied().unwrap_or(u64::MAX);
        let Some((&top, _)) = self.pending.range(..bound).next_back() else {
            return;
        };
        let rest = self.pending.split_off(&(top + 1));
        let acked = std::mem::replace(&mut self.pending, rest);
        if let Some(last) = acked.get(&top)
            && let Err(e) = last.ack(BasicAckOptions { multiple: true }).await
        {
            // The channel is gone: the broker requeues them by itself.
            tracing::debug!(error = %e, "could not acknowledge (they will be redelivered)");
        }
    }
}

/// Applies a disposition. Never drops: when a dead letter cannot be published, the delivery is
/// requeued instead. Plain acks are returned to the loop, which batches them.
async fn settle(
    delivery: Delivery,
    disposition: Disposition,
    dead: &ConfirmedPublisher,
    queue: &str,
    dlx: &str,
) -> Settled {
    let result = match disposition {
        Disposition::Ack => return Settled::Ack(delivery.acker),
        Disposition::Requeue => {
            delivery
                .nack(BasicNackOptions {
                    requeue: true,
                    ..Default::default()
                })
                .await
        }
        Disposition::DeadLetter { reason, detail } => {
            let props = dead_letter_properties(&delivery, reason, &detail, queue);
            match publish_dead_letter(dead, dlx, &delivery, props).await {
                Ok(()) => {
                    metrics::counter!("wxpipe_dead_letters_total", "queue" => queue.to_owned(), "reason" => reason)
                        .increment(1);
                    tracing::warn!(queue, reason, %detail, "dead-lettered");
                    delivery.ack(BasicAckOptions::default()).await
                }
                Err(e) => {
                    tracing::warn!(queue, reason, error = %e, "could not dead-letter; requeueing");
                    delivery
                        .nack(BasicNackOptions {
                            requeue: true,
                            ..Default::default()
                        })
                        .await
                }
            }
        }
    };
    if let Err(e) = result {
        // The channel is gone: the broker requeues the delivery by itself.
        tracing::debug!(error = %e, "could not settle a delivery (it will be redelivered)");
    }
    Settled::Done
}

/// Publishes a dead letter, riding out a short loss of the publisher's connection (a few
/// tries, waiting for the connection between them) so that a poison message is not bounced
/// back to its queue in a tight loop.
async fn publish_dead_letter(
    dead: &ConfirmedPublisher,
    dlx: &str,
    delivery: &Delivery,
    props: BasicProperties,
) -> Result<(), super::PublishError> {
    let mut last = None;
    for _ in 0..3 {
        match dead
            .publish(
                dlx,
                delivery.routing_key.as_str(),
                &delivery.data,
                props.clone(),
            )
            .await
        {
            Ok(()) => return Ok(()),
            Err(e) => last = Some(e),
        }
        dead.wait_connected(Duration::from_secs(5)).await;
    }
    Err(last.unwrap_or(super::PublishError::Unavailable))
}

/// The original properties, plus headers saying why, from where, and where it first went.
pub fn dead_letter_properties(
    delivery: &Delivery,
    reason: &str,
    detail: &str,
    queue: &str,
) -> BasicProperties {
    let mut headers = delivery.properties.headers().clone().unwrap_or_default();
    let mut set = |k: &str, v: &str| {
        headers.insert(k.into(), AMQPValue::LongString(LongString::from(v)));
    };
    set(H_DEAD_REASON, reason);
    set(H_DEAD_DETAIL, detail);
    set(H_SOURCE_QUEUE, queue);
    // Keep the first origin if this message was dead-lettered and replayed before.
    if !headers.inner().contains_key(H_ORIGINAL_EXCHANGE) {
        headers.insert(
            H_ORIGINAL_EXCHANGE.into(),
            AMQPValue::LongString(delivery.exchange.as_str().into()),
        );
        headers.insert(
            H_ORIGINAL_ROUTING_KEY.into(),
            AMQPValue::LongString(delivery.routing_key.as_str().into()),
        );
    }
    let now_ms = crate::unix_now_ms();
    headers.insert(H_DEAD_AT.into(), AMQPValue::LongLongInt(now_ms));
    delivery
        .properties
        .clone()
        .with_headers(headers)
        .with_delivery_mode(2)
}
