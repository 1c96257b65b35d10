//! Reading the first `n` dead letters without taking them, in memory that does not grow with
//! the queue. Each letter is delivered *unacknowledged*, handed to the caller and dropped; the
//! broker holds what was read (unacknowledged letters are delivered to no one else), so every
//! letter is seen once, and [`Reader::give_back`] returns all those the caller did not settle
//! (a replay acks each one after its republish is confirmed).
//!
//! How, on RabbitMQ 3.10's quorum queues (each measured):
//! * `basic.get` is a consensus round per letter: ≈ 850 letters/s at best here, on one channel
//!   or on 128 at once (200,000 letters: 4 to 5 minutes);
//! * a consumer is fast (200,000 letters in ≈ 7 s), but holds at most its prefetch
//!   unacknowledged (2,000 when the prefetch is 0, "unlimited"), and a letter handed back with
//!   `nack` while it consumes is delivered to it again at once;
//! * so the reader consumes on a chain of channels: each consumer's prefetch is [`window`]
//!   letters; when every consumer holds its window unacknowledged, the next channel starts a
//!   consumer, which the broker hands the next letters. Deliveries of all the consumers are
//!   read as they come, up to `n` in all. The process holds at most one window of letters in
//!   lapin's buffers (the broker sends no consumer more than its prefetch), whatever `n` is.
//! * the end: each consumer is cancelled (its answer comes after the queue applied the acks sent
//!   before it), each channel's unsettled letters are handed back with one
//!   `basic.nack(multiple, requeue)`, and the reader waits until the queue counts them ready
//!   again, so that the next count sees them.
//!
//! Order: letters come out in the queue's order. What the broker does with the ones handed back:
//! they go behind the letters not read, in an order of its own — in order for the first few
//! dozen, shuffled after (1,200 letters, returned one nack each or one for all). So a letter's
//! position is where it is now; each read keeps every letter, once, not its place.

use super::letters::DlqError;
use futures::StreamExt;
use futures::stream::SelectAll;
use lapin::message::Delivery;
use lapin::options::{
    BasicCancelOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions, QueueDeclareOptions,
};
use lapin::{Channel, Connection, Consumer};
use std::time::Duration;

/// The smallest prefetch per consumer (as many as RabbitMQ's "unlimited" gives a quorum queue
/// consumer).
const MIN_WINDOW: u16 = 2_000;
/// Channels a reader opens at most: the window grows so that `n` letters fit in them.
const MAX_CHANNELS: usize = 1_000;
/// A reader that gets no letter for this long looks at the queue: with none ready, it ends (the
/// queue held fewer letters than counted); else it waits on, up to [`STALL`].
const QUIET: Duration = Duration::from_secs(2);
/// A broker that delivers nothing for this long while letters are ready fails the read.
const STALL: Duration = Duration::from_secs(120);

/// Each consumer's prefetch for reading `n` letters: [`MIN_WINDOW`], or more when `n` letters
/// would need over [`MAX_CHANNELS`] channels (at most 65,535: 65 million letters).
pub fn window(n: usize) -> u16 {
    let needed = n.div_ceil(MAX_CHANNELS);
    u16::try_from(needed).unwrap_or(u16::MAX).max(MIN_WINDOW)
}

/// A pass over the first letters of a queue; see the module's documentation.
pub struct Reader<'a> {
    conn: &'a Connection,
    queue: String,
    window: u16,
    /// Letters still to read.
    left: usize,
    /// Every consumer's channel and tag, in the order they started.
    channels: Vec<(Channel, String)>,
    deliveries: SelectAll<Consumer>,
    /// Letters read and not settled by the caller.
    held: usize,
    /// Letters ready in the queue when the caller counted them.
    counted: usize,
    /// Letters the caller settled (acknowledged: they are gone).
    settled: usize,
}

impl<'a> Reader<'a> {
    /// A reader of at most `max` letters of `queue`, which held `counted` ready letters when
    /// the caller looked, on channels of its own on `conn`.
    pub fn new(conn: &'a Connection, queue: &str, max: usize, counted: usize) -> Self {
        Self {
            conn,
            queue: queue.to_owned(),
            // No more than it reads: `show 1` is sent one letter, not a window.
            window: window(max).min(u16::try_from(max.max(1)).unwrap_or(u16::MAX)),
            left: max,
            channels: Vec::new(),
            deliveries: SelectAll::new(),
            held: 0,
            counted,
            settled: 0,
        }
    }

    /// Starts one more consumer, with a prefetch of one window, on a channel of its own.
    async fn open(&mut self) -> Result<(), DlqError> {
        let ch = self.conn.create_channel().await?;
        let tag = format!("wxpipe-dlq-read-{}", uuid::Uuid::new_v4().simple());
        let started = async {
            ch.basic_qos(self.window, BasicQosOptions::default())
                .await?;
            ch.basic_consume(
                self.queue.as_str().into(),
                tag.as_str().into(),
                BasicConsumeOptions::default(),
                Default::default(),
            )
            .await
        }
        .await;
        match started {
            Ok(consumer) => {
                self.deliveries.push(consumer);
                self.channels.push((ch, tag));
                Ok(())
            }
            Err(e) => {
                close(ch).await;
                Err(e.into())
            }
        }
    }

    /// The next letter, or `None` when `max` were read or the queue has no more ready.
    pub async fn next(&mut self) -> Result<Option<Delivery>, DlqError> {
        if self.left == 0 {
            return Ok(None);
        }
        // Every consumer holds its window: the next letters go to a new one.
        if self.held >= usize::from(self.window) * self.channels.len() {
            self.open().await?;
        }
        let mut waited = Duration::ZERO;
        loop {
            match tokio::time::timeout(QUIET, self.deliveries.next()).await {
                Ok(Some(Ok(d))) => {
                    self.left -= 1;
                    self.held += 1;
                    return Ok(Some(d));
                }
                Ok(Some(Err(e))) => return Err(e.into()),
                Ok(None) => return Ok(None),
                Err(_) => {
                    waited += QUIET;
                    // Fewer letters than counted (someone else took some).
                    if self.depth().await? == 0 {
                        self.left = 0;
                        return Ok(None);
                    }
                    if waited >= STALL {
                        return Err(DlqError::Invalid(format!(
                            "{} sent no letter for {} s while it holds ready ones",
                            self.queue,
                            waited.as_secs()
                        )));
                    }
                }
            }
        }
    }

    /// Tells the reader the caller acknowledged one letter it read (it is not given back).
    pub fn settled(&mut self) {
        self.held = self.held.saturating_sub(1);
        self.settled += 1;
    }

    /// Ready letters in the queue now, asked on the first consumer's channel (a channel of
    /// its own only before there is one).
    async fn depth(&self) -> Result<u32, DlqError> {
        if let Some((ch, _)) = self.channels.first() {
            return depth(ch, &self.queue).await;
        }
        let ch = self.conn.create_channel().await?;
        let n = depth(&ch, &self.queue).await;
        close(ch).await;
        n
    }

    /// Hands every letter read and not settled back to the queue (each consumer cancelled
    /// first, then one nack for all of its channel's), waits (up to 10 s) until the queue counts
    /// ready again every letter it held when counted but those settled, and closes the channels.
    pub async fn give_back(mut self) {
        for (ch, tag) in &self.channels {
            let cancelled = ch.basic_cancel(tag.as_str().into(), BasicCancelOptions::default());
            if !matches!(
                tokio::time::timeout(Duration::from_secs(30), cancelled).await,
                Ok(Ok(()))
            ) {
                tracing::warn!(queue = %self.queue, "a dead-letter reader's consumer was not cancelled in time");
            }
            let all = BasicNackOptions {
                multiple: true,
                requeue: true,
            };
            // Tag 0 with `multiple`: every unacknowledged delivery of the channel. Whatever
            // this misses, the channel's close hands back.
            if let Err(e) = ch.basic_nack(0, all).await {
                tracing::warn!(error = %e, "could not hand dead letters back with a nack; the channel's close will");
            }
        }
        // Dropped only now: dropping an active consumer cancels it without waiting for the answer.
        drop(std::mem::take(&mut self.deliveries));
        // Not the letters held alone: the queue's count already includes the letters not read.
        let expected = self.counted.saturating_sub(self.settled);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while self.held > 0 && tokio::time::Instant::now() < deadline {
            match self.depth().await {
                Ok(n) if n as usize >= expected => break,
                Ok(_) => tokio::time::sleep(Duration::from_millis(20)).await,
                Err(_) => break,
            }
        }
        for (ch, _) in self.channels {
            close(ch).await;
        }
    }
}

/// Ready messages in `queue` (passive declare).
pub async fn depth(ch: &Channel, queue: &str) -> Result<u32, DlqError> {
    let q = ch
        .queue_declare(
            queue.into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            Default::default(),
        )
        .await
        .map_err(|e| DlqError::NoQueue {
            queue: queue.to_owned(),
            detail: e.to_string(),
        })?;
    Ok(q.message_count())
}

/// Closes a channel, bounded: lapin 4.12 can leave a close's promise unresolved when its I/O
/// loop ends first.
pub async fn close(ch: Channel) {
    let _ = tokio::time::timeout(Duration::from_secs(2), ch.close(200, "done".into())).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_window_fits_any_queue_in_the_channels_allowed() {
        assert_eq!(window(0), MIN_WINDOW);
        assert_eq!(window(200_000), MIN_WINDOW);
        assert_eq!(window(2_000_000), MIN_WINDOW);
        assert_eq!(window(2_000_001), 2_001);
        assert_eq!(window(10_000_000), 10_000);
        assert_eq!(window(usize::MAX), u16::MAX);
    }
}
