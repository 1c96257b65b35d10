//! Deleting exactly the dead letters an operator counted: the first `n` letters the queue
//! hands out are acknowledged, and no letter beyond them — one that died after the count — is
//! ever delivered to be deleted. (`queue.purge` would delete whatever the queue holds by then.)
//!
//! Measured on RabbitMQ 3.10's quorum queues, and what this does about it: a consumer is sent
//! at most its prefetch of unacknowledged letters, so acknowledging nothing past the
//! `n - prefetch`th until the `n`th has arrived keeps the broker from sending the `n + 1`th;
//! `basic.cancel` hands a consumer's unacknowledged letters back at once and acknowledgements
//! sent after it are lost, and so can acknowledgements sent just before a channel closes, under
//! load (those letters stayed). So the consumer is cancelled only after the last
//! acknowledgement, and its answer — which comes after the queue applied them — is awaited
//! before the channel closes. Memory: at most the prefetch of letters.

use super::letters::DlqError;
use futures::StreamExt;
use lapin::Connection;
use lapin::options::{BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicQosOptions};
use std::time::Duration;

/// Letters delivered and not yet acknowledged, at most.
pub const PREFETCH: u16 = 512;
/// A queue that sends nothing for this long holds fewer letters than counted.
pub const QUIET: Duration = Duration::from_secs(3);

/// Deletes the first `n` letters of `queue`; returns how many it deleted (fewer when the queue
/// held fewer).
pub async fn first(conn: &Connection, queue: &str, n: usize) -> Result<usize, DlqError> {
    if n == 0 {
        return Ok(0);
    }
    let ch = conn.create_channel().await?;
    let prefetch = PREFETCH.min(u16::try_from(n).unwrap_or(PREFETCH));
    ch.basic_qos(prefetch, BasicQosOptions::default()).await?;
    let tag = format!("wxpipe-dlq-purge-{}", uuid::Uuid::new_v4().simple());
    let mut consumer = ch
        .basic_consume(
            queue.into(),
            tag.as_str().into(),
            BasicConsumeOptions::default(),
            Default::default(),
        )
        .await?;
    // Acknowledging the kth letter lets the broker send the (k + prefetch)th.
    let free_until = n.saturating_sub(usize::from(prefetch));
    let mut held = Vec::new();
    let mut deleted = 0;
    let mut result = Ok(());
    for position in 1..=n {
        let d = match tokio::time::timeout(QUIET, consumer.next()).await {
            Ok(Some(Ok(d))) => d,
            Ok(Some(Err(e))) => {
                result = Err(DlqError::Broker(e));
                break;
            }
            // Fewer letters than counted (someone else took some).
            Ok(None) | Err(_) => break,
        };
        if position <= free_until {
            d.ack(BasicAckOptions::default()).await?;
            deleted += 1;
        } else {
            held.push(d);
        }
    }
    for d in held {
        if d.ack(BasicAckOptions::default()).await.is_ok() {
            deleted += 1;
        }
    }
    let cancelled = ch.basic_cancel(tag.as_str().into(), BasicCancelOptions::default());
    if !matches!(
        tokio::time::timeout(Duration::from_secs(60), cancelled).await,
        Ok(Ok(()))
    ) {
        tracing::warn!(
            queue,
            "the queue did not confirm a purge's acknowledgements"
        );
    }
    drop(consumer);
    let _ = tokio::time::timeout(Duration::from_secs(5), ch.close(200, "purged".into())).await;
    result.map(|()| deleted)
}
