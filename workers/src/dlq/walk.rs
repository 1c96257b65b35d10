//! Reading `{ns}.dead` with memory that does not grow with the queue: a *walk* takes the
//! first `n` letters, at most [`WINDOW`] unacknowledged at a time, and settles each as it goes —
//! kept letters are republished to the tail of `{ns}.dead` (marked with the walk's id), replayed
//! ones to the exchange they first had, deleted ones only acknowledged. A letter is acknowledged
//! only after its republish is confirmed: a crash in between can leave a letter twice, never
//! lose one.
//!
//! Measured on RabbitMQ 3.10's quorum queues, and what the walk does about it:
//! * a letter handed back with `nack` goes to the queue's tail, so the walk never hands letters
//!   back to read them again;
//! * `basic.cancel` hands a consumer's unacknowledged letters back at once, and the
//!   acknowledgements sent after it are lost (those letters stayed, twice); so can
//!   acknowledgements sent just before a channel closes, under load. So the walk cancels its
//!   consumer only after its last acknowledgement and waits for the answer — which comes after
//!   the queue applied them — before it closes;
//! * the order of the letters is not kept: a walk alone keeps it, but walks beside other load
//!   left 1,200 letters shuffled. A walk promises each letter once, not its place.
//!
//! A walk that meets a letter it put back itself (others took letters meanwhile) stops there.

use super::letters::DlqError;
use common::wire::dead::DeadLetter;
use futures::StreamExt;
use lapin::Connection;
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions,
};
use lapin::{Confirmation, PublisherConfirm};
use std::collections::VecDeque;
use std::time::Duration;

/// Letters in flight at most (delivered, being republished, not yet acknowledged): the
/// consumer's prefetch.
pub const WINDOW: u16 = 512;
/// Letters settled at a time once half the window is in flight (one round trip of
/// acknowledgements brings that many new deliveries).
const BATCH: usize = WINDOW as usize / 4;
/// A walk that gets no letter for this long looks at the queue: with none ready, it ends (the
/// queue held fewer letters than counted); else it waits on, up to [`STALL`].
pub const QUIET: Duration = Duration::from_secs(2);
/// A broker that delivers nothing for this long while letters are ready fails the walk.
pub const STALL: Duration = Duration::from_secs(120);

/// What a walk does with one letter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Back to the tail of the dead-letter queue, unchanged.
    Keep,
    /// To `exchange` with `routing_key`, without our dead-letter headers (a replay).
    Republish {
        exchange: String,
        routing_key: String,
    },
    /// Acknowledged and gone (a purge).
    Delete,
}

/// How a letter's step ended.
#[derive(Debug)]
pub enum Settled {
    Done,
    /// Not done; the letter stays in the queue (returned when the walk ends).
    Failed(String),
}

/// What a walk did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Walked {
    /// Letters taken.
    pub seen: usize,
    /// Letters whose step failed (they are still in the queue).
    pub failed: usize,
}

/// How long one republish may wait for its confirm. A confirm that never comes leaves the
/// letter unacknowledged (it returns to the queue): if the broker did store the republish after
/// all, the letter is then there twice. Long, so that a busy broker does not make duplicates.
const CONFIRM_WITHIN: Duration = Duration::from_secs(60);

/// A letter whose step is under way: its republish sent, its confirm awaited.
struct InFlight {
    position: usize,
    step: Step,
    delivery: Delivery,
    confirm: Option<PublisherConfirm>,
}

/// Walks the first `n` letters of `queue` (1 = the first the queue hands out). `decide` chooses each letter's step
/// from its position and delivery; `settled` hears how each ended, in order of position.
/// Republishes are sent in the order the letters were taken, on one confirm-mode channel
/// (mandatory), and each letter is acknowledged once its republish is confirmed; at most
/// [`WINDOW`] letters are in flight.
pub async fn walk(
    conn: &Connection,
    queue: &str,
    n: usize,
    mut decide: impl FnMut(usize, &Delivery) -> Step,
    mut settled: impl FnMut(usize, &Step, &Settled),
) -> Result<Walked, DlqError> {
    let mut walked = Walked::default();
    if n == 0 {
        return Ok(walked);
    }
    let publish = conn.create_channel().await?;
    publish
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    let take = conn.create_channel().await?;
    // Never more in flight than the walk will take.
    let prefetch = WINDOW.min(u16::try_from(n).unwrap_or(WINDOW));
    take.basic_qos(prefetch, BasicQosOptions::default()).await?;
    // Names the walk's consumer and marks the letters it puts back.
    let tag = format!("wxpipe-dlq-walk-{}", uuid::Uuid::new_v4().simple());
    let mut consumer = take
        .basic_consume(
            queue.into(),
            tag.as_str().into(),
            BasicConsumeOptions::default(),
            Default::default(),
        )
        .await?;
    // Acknowledging the kth letter lets the broker send the (k + prefetch)th: settle freely only
    // up to the (n - prefetch)th, so that few letters past the nth are sent.
    let free_until = n.saturating_sub(usize::from(prefetch));
    let mut window: VecDeque<InFlight> = VecDeque::with_capacity(usize::from(WINDOW));
    let mut result = Ok(());
    for position in 1..=n {
        let delivery = match next(&mut consumer, &take, queue).await {
            Ok(Some(d)) => d,
            // The queue held fewer letters than counted (someone else took some).
            Ok(None) => break,
            Err(e) => {
                result = Err(e);
                break;
            }
        };
        // Our own mark: every letter there was has been walked (others took some meanwhile).
        // Unacknowledged, it goes back to the head when the channel closes.
        if DeadLetter::walk_of(&delivery.properties).as_deref() == Some(tag.as_str()) {
            break;
        }
        let step = decide(position, &delivery);
        let sent = match &step {
            Step::Keep => Some(
                publish
                    .basic_publish(
                        "".into(),
                        queue.into(),
                        mandatory(),
                        &delivery.data,
                        DeadLetter::mark_walk(&delivery.properties, &tag),
                    )
                    .await,
            ),
            Step::Republish {
                exchange,
                routing_key,
            } => Some(
                publish
                    .basic_publish(
                        exchange.as_str().into(),
                        routing_key.as_str().into(),
                        mandatory(),
                        &delivery.data,
                        DeadLetter::strip(&delivery.properties),
                    )
                    .await,
            ),
            Step::Delete => None,
        };
        let confirm = match sent {
            None => None,
            Some(Ok(c)) => Some(c),
            Some(Err(e)) => {
                // The publishing channel is gone: nothing more can be settled. This letter and
                // every one in flight stay unacknowledged and return to the queue.
                settled(position, &step, &Settled::Failed(format!("not sent: {e}")));
                walked.seen += 1;
                walked.failed += 1;
                result = Err(DlqError::Broker(e));
                break;
            }
        };
        window.push_back(InFlight {
            position,
            step,
            delivery,
            confirm,
        });
        if window.len() >= usize::from(prefetch) / 2 {
            for _ in 0..BATCH {
                match window.front() {
                    Some(f) if f.position <= free_until => {
                        finish(window.pop_front(), &mut walked, &mut settled).await
                    }
                    _ => break,
                }
            }
        }
    }
    // `basic.cancel` only after the last acknowledgements: on a quorum queue (3.10) it hands the
    // consumer's unacknowledged letters back at once, and acknowledgements after it are lost.
    while let Some(f) = window.pop_front() {
        finish(Some(f), &mut walked, &mut settled).await;
    }
    // Acknowledgements have no answer, and a channel closed right after them can lose some
    // (measured under load: those letters stayed in the queue, twice); the cancel's answer comes
    // after the queue applied them.
    settle_before_closing(&take, &tag, queue).await;
    drop(consumer);
    // Letters whose step failed go back to the queue (at its tail).
    for ch in [take, publish] {
        let _ =
            tokio::time::timeout(Duration::from_secs(5), ch.close(200, "walk done".into())).await;
    }
    result.map(|()| walked)
}

/// The next letter; `None` when none comes for [`QUIET`] and the queue holds none ready.
async fn next(
    consumer: &mut lapin::Consumer,
    ch: &lapin::Channel,
    queue: &str,
) -> Result<Option<Delivery>, DlqError> {
    let mut quiet = Duration::ZERO;
    loop {
        match tokio::time::timeout(QUIET, consumer.next()).await {
            Ok(Some(Ok(d))) => return Ok(Some(d)),
            Ok(Some(Err(e))) => return Err(DlqError::Broker(e)),
            Ok(None) => return Ok(None),
            Err(_) => {
                quiet += QUIET;
                if super::letters::depth(ch, queue).await? == 0 {
                    return Ok(None);
                }
                if quiet >= STALL {
                    return Err(DlqError::Invalid(format!(
                        "the broker delivered no letter of {queue} for {STALL:?} while it held some; nothing was lost, run it again"
                    )));
                }
            }
        }
    }
}

/// Cancels the walk's consumer once every acknowledgement was sent: the queue answers only
/// after it applied what the channel sent before, and hands back the letters sent past the
/// `n`th.
async fn settle_before_closing(ch: &lapin::Channel, tag: &str, queue: &str) {
    let cancelled = ch.basic_cancel(tag.into(), BasicCancelOptions::default());
    match tokio::time::timeout(STALL, cancelled).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            tracing::warn!(queue, error = %e, "could not confirm that the queue applied a walk's acknowledgements")
        }
        Err(_) => tracing::warn!(
            queue,
            "the queue did not confirm a walk's acknowledgements in time"
        ),
    }
}

fn mandatory() -> BasicPublishOptions {
    BasicPublishOptions {
        mandatory: true,
        ..Default::default()
    }
}

/// Awaits one letter's confirm, acknowledges the letter when it was confirmed and routed.
async fn finish(
    f: Option<InFlight>,
    walked: &mut Walked,
    settled: &mut impl FnMut(usize, &Step, &Settled),
) {
    let Some(f) = f else { return };
    let confirmed = match f.confirm {
        None => Ok(()),
        Some(c) => match tokio::time::timeout(CONFIRM_WITHIN, c).await {
            Ok(Ok(Confirmation::Ack(None))) => Ok(()),
            Ok(Ok(Confirmation::Ack(Some(_)) | Confirmation::Nack(Some(_)))) => {
                Err("no queue took it (is its queue gone?)".to_owned())
            }
            Ok(Ok(Confirmation::Nack(None) | Confirmation::NotRequested)) => {
                Err("the broker refused it (nack)".to_owned())
            }
            Ok(Err(e)) => Err(format!("the broker failed: {e}")),
            Err(_) => Err(format!("no confirm within {CONFIRM_WITHIN:?}")),
        },
    };
    let outcome = match confirmed {
        // Unacknowledged, it returns to the queue when the walk's channel closes.
        Err(e) => Settled::Failed(e),
        Ok(()) => match f.delivery.ack(BasicAckOptions::default()).await {
            Ok(_) => Settled::Done,
            // Done but not removed: it will be seen again (at least once).
            Err(e) => Settled::Failed(format!("done, but could not be removed: {e}")),
        },
    };
    walked.seen += 1;
    if matches!(outcome, Settled::Failed(_)) {
        walked.failed += 1;
    }
    settled(f.position, &f.step, &outcome);
}
