//! The loop every consuming role shares: receive, handle, acknowledge.
//!
//! [`run`] keeps a consumer alive: it connects (nodes in turn, jittered backoff), declares the
//! topology, sets the prefetch, consumes, and hands each delivery to the role's [`Handler`] in
//! its own task (so up to `prefetch` deliveries are handled at once). The handler's
//! [`Disposition`] decides the ending:
//!
//! * `Ack` — acknowledged together with the deliveries before it, in one `basic.ack(multiple)`
//!   a couple of milliseconds later ([`super::acks`]). A delivery that takes minutes (retrying)
//!   holds back the acknowledgements behind it only for [`super::acks::STUCK`]; after that they
//!   go one by one, so it occupies one slot of the prefetch window, not all of them.
//! * `DeadLetter` — published to `{ns}.dlx` (hence `{ns}.dead`) with the headers of
//!   [`crate::wire::dead::DeadLetter`], **confirmed** (and routed), then acked. If that publish
//!   fails the delivery is requeued: a message is never dropped.
//! * `Requeue` — nacked back to the queue (the quorum queue's delivery limit dead-letters a
//!   message that keeps coming back).
//!
//! A role may consume several queues (the shards of a sharded intake) on one connection: one
//! channel per queue, each with its own prefetch, their deliveries merged into one loop.
//!
//! **Batches and linger.** The loop takes every delivery already received at once. With
//! [`ConsumerConfig::linger`] set, fewer than a quarter of the prefetch (deliveries arriving one
//! or two at a time) do not start their handlers at once: the loop waits that long, then takes
//! every delivery that has arrived meanwhile and starts them together. While it sleeps the
//! client's I/O thread hands deliveries over without waking anyone; then the handlers' Redis
//! operations share one pipeline, their publishes one wake-up of the publisher's I/O thread,
//! and their confirms come back together: one wake-up of each thread per batch instead of per
//! delivery. That costs each delivery up to `linger` of latency and saves CPU whenever
//! deliveries arrive a few at a time (docs/performance.md). A backlog, arriving in batches as
//! acks free the prefetch window, does not wait. Each batch is counted
//! (`wxpipe_amqp_delivery_batches_total`).
//!
//! A lost connection is noticed by the delivery stream ending; unacked deliveries go back to the
//! queue on the broker's side, and the loop reconnects once every in-flight handler has
//! finished (so no handler of the old connection runs beside the new one's). Every
//! acknowledgement is bounded in time ([`SETTLE_TIMEOUT`]): one that fails or never completes
//! makes the loop reconnect too, so a handler can never wait on its channel forever. On shutdown the
//! consumer is cancelled and in-flight deliveries are finished before the connection closes.

use super::acks::{AckFrame, Acks};
use super::{AmqpError, ConfirmedPublisher, connect_any};
use crate::ids::Namespace;
use crate::wire::dead::DeadLetter;
use futures::{FutureExt, StreamExt};
use lapin::BasicProperties;
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions};
use lapin::types::FieldTable;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinSet;

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
pub struct ConsumerConfig {
    pub urls: Vec<String>,
    pub namespace: Namespace,
    /// The queues consumed (one channel each); never empty.
    pub queues: Vec<String>,
    pub connection_name: String,
    pub prefetch: u16,
    /// What to declare on every (re)connect.
    pub declare: super::topology::Part,
    /// How long a batch of fewer than a quarter of the prefetch waits for more deliveries to
    /// start with it (see "Batches and linger" above); zero starts each batch at once.
    pub linger: Duration,
}

/// Consumes `opts.queue` until `shutdown` becomes true, reconnecting as needed. `dead_letters`
/// publishes the dead letters (a confirmed publisher on its own connection).
pub async fn run<H: Handler>(
    opts: ConsumerConfig,
    handler: Arc<H>,
    dead_letters: ConfirmedPublisher,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut backoff = super::reconnect_backoff();
    let mut start = 0usize;
    let name = opts.connection_name.clone();
    crate::health::set_connected(&name, false);
    loop {
        if *shutdown.borrow() {
            crate::health::forget_connection(&name);
            return;
        }
        match consume_once(&opts, start, &handler, &dead_letters, &mut shutdown).await {
            Ok(Ended::Shutdown) => {
                crate::health::forget_connection(&name);
                return;
            }
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
    opts: &ConsumerConfig,
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
    super::topology::declare(&conn, &opts.namespace, &opts.declare).await?;
    let mut channels = Vec::with_capacity(opts.queues.len());
    let mut streams = Vec::with_capacity(opts.queues.len());
    for (i, queue) in opts.queues.iter().enumerate() {
        let ch = conn
            .create_channel()
            .await
            .map_err(AmqpError::broker("opening a channel"))?;
        ch.basic_qos(opts.prefetch, BasicQosOptions::default())
            .await
            .map_err(AmqpError::broker("setting the prefetch"))?;
        let consumer = ch
            .basic_consume(
                queue.as_str().into(),
                opts.connection_name.as_str().into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(AmqpError::broker(format!("consuming {queue}")))?;
        channels.push(ch);
        // Each stream says when it ends, so that one closed channel is noticed.
        let ended = futures::stream::once(async move { (i, None) });
        streams.push(consumer.map(move |d| (i, Some(d))).chain(ended).boxed());
    }
    let mut deliveries = futures::stream::select_all(streams);
    crate::health::set_connected(&opts.connection_name, true);
    tracing::info!(queues = ?opts.queues, prefetch = opts.prefetch, "consuming");

    // Named once, not per delivery (they only matter to a dead letter).
    let queues: Vec<Arc<str>> = opts.queues.iter().map(|q| Arc::from(q.as_str())).collect();
    let dlx: Arc<str> = Arc::from(opts.namespace.dlx());
    let mut in_flight = JoinSet::new();
    let mut running = std::collections::HashMap::new();
    let mut acks: Vec<Acks> = opts
        .queues
        .iter()
        .map(|_| Acks::new(opts.prefetch))
        .collect();
    // Fires when some channel's waiting acknowledgements fall due (see `super::acks`).
    let ack_timer = tokio::time::sleep(Duration::from_secs(3600));
    tokio::pin!(ack_timer);
    let mut ack_timer_at: Option<std::time::Instant> = None;
    // A batch smaller than this waits the linger: a quarter of the prefetch, as for the acks
    // (at least two, so that a lone delivery lingers even at a tiny prefetch).
    let linger_below = super::acks::quarter(opts.prefetch).max(2);
    let ended = loop {
        tokio::select! {
            changed = shutdown.changed() => {
                if changed.is_err() || *shutdown.borrow() {
                    break Ended::Shutdown;
                }
            }
            // Any queue's stream failing or ending means the connection is no longer whole:
            // start over (in-flight handlers finish first).
            next = deliveries.next() => {
                let mut batch = vec![next];
                if matches!(batch[0], Some((_, Some(Ok(_))))) {
                    take_ready(&mut deliveries, &mut batch);
                    // A few: wait for company. A backlog's batch is there without waiting.
                    if batch.len() < linger_below && !opts.linger.is_zero() {
                        tokio::time::sleep(opts.linger).await;
                        take_ready(&mut deliveries, &mut batch);
                    }
                }
                metrics::counter!("wxpipe_amqp_delivery_batches_total").increment(1);
                let mut lost = false;
                for next in batch {
                    match next {
                        Some((i, Some(Ok(delivery)))) => {
                            let (handler, dead) = (handler.clone(), dead_letters.clone());
                            let (queue, dlx) = (queues[i].clone(), dlx.clone());
                            let tag = delivery.delivery_tag;
                            acks[i].delivered(tag, std::time::Instant::now());
                            // Boxed: a handler's future is large, and the runtime would
                            // otherwise copy all of it into the task and again when the task's
                            // stage changes.
                            let task = in_flight.spawn(Box::pin(async move {
                                let disposition = handler.handle(&delivery).await;
                                settle(delivery, disposition, &dead, &queue, &dlx).await
                            }));
                            running.insert(task.id(), (i, tag));
                        }
                        Some((i, Some(Err(e)))) => {
                            tracing::warn!(queue = %opts.queues[i], error = %e, "delivery stream error");
                            lost = true;
                        }
                        Some((i, None)) => {
                            tracing::warn!(queue = %opts.queues[i], "delivery stream ended");
                            lost = true;
                        }
                        None => lost = true,
                    }
                }
                if lost {
                    break Ended::Lost;
                }
            }
            Some(done) = in_flight.join_next_with_id(), if !in_flight.is_empty() => {
                if finished(done, &mut running, &channels, &mut acks, Flush::Due).await == Settled::No {
                    // An acknowledgement that failed or never completed: the channel cannot
                    // be trusted with the deliveries it holds. Closing the connection gives
                    // them back to the queue.
                    tracing::warn!(consumer = %opts.connection_name, "a delivery could not be settled; reconnecting");
                    break Ended::Lost;
                }
            }
            () = &mut ack_timer, if ack_timer_at.is_some() => {
                let now = std::time::Instant::now();
                if flush_channels(&channels, &mut acks, now, false).await == Settled::No {
                    tracing::warn!(consumer = %opts.connection_name, "acknowledgements could not be sent; reconnecting");
                    break Ended::Lost;
                }
            }
        }
        // The timer follows the earliest deadline of any channel's waiting acknowledgements.
        let due = acks.iter().filter_map(Acks::deadline).min();
        if let Some(at) = due
            && ack_timer_at != Some(at)
        {
            ack_timer.as_mut().reset(tokio::time::Instant::from_std(at));
        }
        ack_timer_at = due;
    };
    crate::health::set_connected(&opts.connection_name, false);
    if matches!(ended, Ended::Shutdown) {
        // Stop new deliveries, finish the ones in hand, then close.
        for ch in &channels {
            let _ = tokio::time::timeout(
                SETTLE_TIMEOUT,
                ch.basic_cancel(opts.connection_name.as_str().into(), Default::default()),
            )
            .await;
        }
    }
    // Finish the handlers in hand. Shutting down, every acknowledgement is sent; on a lost (or
    // distrusted) connection none is: closing it gives those messages back to the queue.
    let flush = match ended {
        Ended::Shutdown => Flush::All,
        Ended::Lost => Flush::Never,
    };
    while let Some(done) = in_flight.join_next_with_id().await {
        finished(done, &mut running, &channels, &mut acks, flush).await;
    }
    if flush == Flush::All {
        flush_channels(&channels, &mut acks, std::time::Instant::now(), true).await;
    }
    let _ = tokio::time::timeout(Duration::from_secs(2), conn.close(200, "bye".into())).await;
    Ok(ended)
}

/// One item of the merged delivery streams: the queue's index and a delivery, an error, or
/// `None` when that queue's stream ended.
type Item = (usize, Option<Result<Delivery, lapin::Error>>);

/// Moves every delivery already received (at most the prefetch windows) into `batch`, up to and
/// including the first item that is not a delivery (an error, a stream's end).
fn take_ready(
    deliveries: &mut futures::stream::SelectAll<futures::stream::BoxStream<'static, Item>>,
    batch: &mut Vec<Option<Item>>,
) {
    while let Some(more) = deliveries.next().now_or_never() {
        let delivery = matches!(more, Some((_, Some(Ok(_)))));
        batch.push(more);
        if !delivery {
            break;
        }
    }
}

/// Whether a delivery was settled (acknowledged, rejected or requeued) on its channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Settled {
    Yes,
    No,
}

/// How long an acknowledgement (or a cancel) may take. A broker answers in milliseconds; one
/// that never completes — seen with a node killed mid-acknowledgement: the client's promise
/// was never resolved — must not hold its task, and with it the consumer's reconnect, forever.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(5);

/// Runs one acknowledgement, bounded by [`SETTLE_TIMEOUT`]. `Ok(false)` from lapin means the
/// channel is closed or errored: nothing was sent.
async fn bounded(
    what: &'static str,
    op: impl Future<Output = Result<bool, lapin::Error>>,
) -> Settled {
    let failure = match tokio::time::timeout(SETTLE_TIMEOUT, op).await {
        Ok(Ok(true)) => return Settled::Yes,
        Ok(Ok(false)) => "the channel is closed".to_owned(),
        Ok(Err(e)) => e.to_string(),
        Err(_) => format!("no completion within {SETTLE_TIMEOUT:?}"),
    };
    // The broker gives the delivery back to the queue once the channel is gone.
    tracing::warn!(what, error = %failure, "could not settle a delivery (it will be redelivered)");
    metrics::counter!("wxpipe_amqp_settle_failures_total", "what" => what).increment(1);
    Settled::No
}

/// How a delivery's task ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Finished {
    /// Its handler said `Ack`: the consumer loop acknowledges it (coalesced, [`super::acks`]).
    AckLater,
    /// It was settled by the task itself (requeued, or acked after its dead letter), or not.
    Settled(Settled),
}

/// Which waiting acknowledgements [`finished`] sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flush {
    /// Those due ([`Acks::flush`]).
    Due,
    /// All of them (shutting down).
    All,
    /// None (the connection is lost or distrusted).
    Never,
}

/// Forgets a finished task: a delivery to acknowledge joins its channel's waiting
/// acknowledgements, sent as `flush` says; the delivery of a handler that panicked is given
/// back rather than held forever. Says whether everything it had to send was sent.
async fn finished(
    done: Result<(tokio::task::Id, Finished), tokio::task::JoinError>,
    running: &mut std::collections::HashMap<tokio::task::Id, (usize, u64)>,
    channels: &[lapin::Channel],
    acks: &mut [Acks],
    flush: Flush,
) -> Settled {
    let (task, outcome) = match done {
        Ok((task, outcome)) => (task, Some(outcome)),
        Err(e) => (e.id(), None),
    };
    let Some((channel, tag)) = running.remove(&task) else {
        return Settled::Yes;
    };
    match outcome {
        Some(Finished::AckLater) => {
            let now = std::time::Instant::now();
            let due = acks[channel].ready(tag, now);
            match flush {
                Flush::Never => Settled::Yes,
                Flush::Due if !due => Settled::Yes,
                _ => {
                    let frames = acks[channel].flush(now, flush == Flush::All);
                    send_acks(&channels[channel], frames).await
                }
            }
        }
        Some(Finished::Settled(settled)) => {
            acks[channel].settled(tag, std::time::Instant::now());
            settled
        }
        None => {
            acks[channel].settled(tag, std::time::Instant::now());
            tracing::error!(tag, "a handler panicked; requeueing its delivery");
            metrics::counter!("wxpipe_handler_panics_total").increment(1);
            let nack = channels[channel].basic_nack(
                tag,
                BasicNackOptions {
                    requeue: true,
                    ..Default::default()
                },
            );
            bounded("nack", async { nack.await.map(|()| true) }).await
        }
    }
}

/// Sends, channel by channel, the acknowledgements due at `now` (with `all`, every waiting one).
/// Says whether every frame was sent.
async fn flush_channels(
    channels: &[lapin::Channel],
    acks: &mut [Acks],
    now: std::time::Instant,
    all: bool,
) -> Settled {
    let mut settled = Settled::Yes;
    for (channel, waiting) in channels.iter().zip(acks) {
        if (all || waiting.deadline().is_some_and(|d| d <= now))
            && send_acks(channel, waiting.flush(now, all)).await == Settled::No
        {
            settled = Settled::No;
        }
    }
    settled
}

/// Sends acknowledgement frames on `channel`, in order and one after the other: a `multiple`
/// ack must never reach the broker after a later one, which would already have settled its tag
/// (an unknown tag closes the channel).
async fn send_acks(channel: &lapin::Channel, frames: Vec<AckFrame>) -> Settled {
    for frame in frames {
        let (tag, multiple, kind) = match frame {
            AckFrame::UpTo(tag) => (tag, true, "multiple"),
            AckFrame::One(tag) => (tag, false, "single"),
        };
        metrics::counter!("wxpipe_amqp_ack_frames_total", "kind" => kind).increment(1);
        let ack = channel.basic_ack(tag, BasicAckOptions { multiple });
        if bounded("ack", async { ack.await.map(|()| true) }).await == Settled::No {
            return Settled::No;
        }
    }
    Settled::Yes
}

/// Applies a disposition. Never drops: when a dead letter cannot be published, the delivery is
/// requeued instead.
async fn settle(
    delivery: Delivery,
    disposition: Disposition,
    dead: &ConfirmedPublisher,
    queue: &str,
    dlx: &str,
) -> Finished {
    let requeue = BasicNackOptions {
        requeue: true,
        ..Default::default()
    };
    match disposition {
        Disposition::Ack => Finished::AckLater,
        Disposition::Requeue => Finished::Settled(bounded("requeue", delivery.nack(requeue)).await),
        Disposition::DeadLetter { reason, detail } => {
            let props = dead_letter_properties(&delivery, reason, &detail, queue);
            match publish_dead_letter(dead, dlx, &delivery, props).await {
                Ok(()) => {
                    metrics::counter!("wxpipe_dead_letters_total", "queue" => queue.to_owned(), "reason" => reason)
                        .increment(1);
                    tracing::warn!(queue, reason, %detail, "dead-lettered");
                    Finished::Settled(
                        bounded("ack", delivery.ack(BasicAckOptions::default())).await,
                    )
                }
                Err(e) => {
                    tracing::warn!(queue, reason, error = %e, "could not dead-letter; requeueing");
                    Finished::Settled(bounded("requeue", delivery.nack(requeue)).await)
                }
            }
        }
    }
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

/// The original properties, plus the [`DeadLetter`] headers saying why, from where, and where
/// it first went.
pub fn dead_letter_properties(
    delivery: &Delivery,
    reason: &str,
    detail: &str,
    queue: &str,
) -> BasicProperties {
    DeadLetter {
        source_queue: queue.to_owned(),
        reason: reason.to_owned(),
        detail: detail.to_owned(),
        original_exchange: delivery.exchange.to_string(),
        original_routing_key: delivery.routing_key.to_string(),
        dead_at_ms: crate::unix_now_ms(),
    }
    .apply(&delivery.properties)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn an_acknowledgement_that_never_completes_is_given_up_after_the_timeout() {
        let started = tokio::time::Instant::now();
        let never = std::future::pending::<Result<bool, lapin::Error>>();
        assert_eq!(bounded("ack", never).await, Settled::No);
        assert_eq!(started.elapsed(), SETTLE_TIMEOUT);
    }

    #[tokio::test]
    async fn only_an_acknowledgement_that_was_sent_counts_as_settled() {
        assert_eq!(bounded("ack", async { Ok(true) }).await, Settled::Yes);
        // lapin's answer for a closed or errored channel: nothing was sent.
        assert_eq!(bounded("ack", async { Ok(false) }).await, Settled::No);
        let closed = lapin::Error::from(lapin::ErrorKind::InvalidChannelState(
            lapin::ChannelState::Closed,
            "basic.ack",
        ));
        assert_eq!(bounded("ack", async { Err(closed) }).await, Settled::No);
    }
}
