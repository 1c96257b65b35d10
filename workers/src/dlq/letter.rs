//! One dead letter: where it came from, why it died, and where it first went — read from the
//! headers the workers add ([`common::amqp::consumer`]) or, for letters the broker dead-lettered
//! by itself (a rejection, the quorum delivery limit), from its `x-death` header.

use common::amqp::consumer::{
    H_DEAD_AT, H_DEAD_DETAIL, H_DEAD_REASON, H_ORIGINAL_EXCHANGE, H_ORIGINAL_ROUTING_KEY,
    H_SOURCE_QUEUE,
};
use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable};

/// What `workers dlq` shows and filters on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LetterInfo {
    pub source: String,
    pub reason: String,
    pub detail: String,
    pub exchange: String,
    pub routing_key: String,
    /// When it was dead-lettered, ms since the epoch (0 when unknown).
    pub dead_at_ms: i64,
}

fn text(v: &AMQPValue) -> Option<String> {
    match v {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.to_string()),
        _ => None,
    }
}

fn int(v: &AMQPValue) -> Option<i64> {
    match v {
        AMQPValue::LongLongInt(i) => Some(*i),
        AMQPValue::LongInt(i) => Some(i64::from(*i)),
        AMQPValue::Timestamp(t) => Some(*t as i64 * 1000),
        _ => None,
    }
}

impl LetterInfo {
    pub fn from_properties(props: &BasicProperties) -> Self {
        let empty = FieldTable::default();
        let headers = props.headers().as_ref().unwrap_or(&empty).inner();
        let ours = |k: &str| headers.get(k).and_then(text);
        // The broker's own record: the first (most recent) x-death entry.
        let death: Option<FieldTable> = headers.get("x-death").and_then(|v| match v {
            AMQPValue::FieldArray(a) => a.as_slice().first().and_then(|e| match e {
                AMQPValue::FieldTable(t) => Some(t.clone()),
                _ => None,
            }),
            _ => None,
        });
        let from_death = |k: &str| death.as_ref().and_then(|t| t.inner().get(k)).and_then(text);
        let death_key = death
            .as_ref()
            .and_then(|t| t.inner().get("routing-keys"))
            .and_then(|v| match v {
                AMQPValue::FieldArray(a) => a.as_slice().first().and_then(text),
                _ => None,
            });
        Self {
            source: ours(H_SOURCE_QUEUE)
                .or_else(|| from_death("queue"))
                .unwrap_or_else(|| "?".into()),
            reason: ours(H_DEAD_REASON)
                .or_else(|| from_death("reason"))
                .unwrap_or_else(|| "?".into()),
            detail: ours(H_DEAD_DETAIL).unwrap_or_default(),
            exchange: ours(H_ORIGINAL_EXCHANGE)
                .or_else(|| from_death("exchange"))
                .unwrap_or_default(),
            routing_key: ours(H_ORIGINAL_ROUTING_KEY)
                .or(death_key)
                .unwrap_or_default(),
            dead_at_ms: headers
                .get(H_DEAD_AT)
                .and_then(int)
                .or_else(|| {
                    death
                        .as_ref()
                        .and_then(|t| t.inner().get("time"))
                        .and_then(int)
                })
                .unwrap_or(0),
        }
    }
}

/// The properties a replayed message is published with: the original ones without the
/// dead-letter bookkeeping, so it flows through the pipeline like a new message.
pub fn replay_properties(props: &BasicProperties) -> BasicProperties {
    let mut headers = FieldTable::default();
    if let Some(h) = props.headers() {
        for (k, v) in h.inner() {
            let k = k.as_str();
            if k.starts_with("x-wxpipe-")
                || k.starts_with("x-death")
                || k.starts_with("x-first-death")
                || k.starts_with("x-last-death")
            {
                continue;
            }
            headers.insert(k.into(), v.clone());
        }
    }
    props.clone().with_headers(headers)
}
