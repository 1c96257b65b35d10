//! A dead letter on `{ns}.dead`: the original message, its original properties, and headers
//! saying why it died, where from, and where it first went — written by every consumer
//! ([`crate::amqp::consumer`]) with [`DeadLetter::apply`], read by `workers dlq` with
//! [`DeadLetter::from_properties`], which falls back on the broker's own `x-death` record for
//! letters the broker dead-lettered by itself (a rejection, the quorum delivery limit).

use super::{headers_of, int_header, set_int, set_text, text_header, text_value};
use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable};

/// Header: why it was dead-lettered (`bad_signature`, `redis_unavailable`, …).
pub const H_REASON: &str = "x-wxpipe-dead-reason";
/// Header: a one-line detail of the failure (never a secret).
pub const H_DETAIL: &str = "x-wxpipe-dead-detail";
/// Header: the queue it was consumed from.
pub const H_SOURCE_QUEUE: &str = "x-wxpipe-source-queue";
/// Header: the exchange it was first published to.
pub const H_ORIGINAL_EXCHANGE: &str = "x-wxpipe-original-exchange";
/// Header: the routing key it was first published with.
pub const H_ORIGINAL_ROUTING_KEY: &str = "x-wxpipe-original-routing-key";
/// Header: when it was dead-lettered, ms since the epoch.
pub const H_DEAD_AT: &str = "x-wxpipe-dead-at";
/// Prefix of every header wxpipe adds to a dead letter.
const OUR_PREFIX: &str = "x-wxpipe-";
/// Headers the broker adds when it dead-letters by itself.
const BROKER_PREFIXES: [&str; 3] = ["x-death", "x-first-death", "x-last-death"];

/// Why a letter died and where it first went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    pub source_queue: String,
    pub reason: String,
    pub detail: String,
    pub original_exchange: String,
    pub original_routing_key: String,
    /// When it was dead-lettered, ms since the epoch (0 when unknown).
    pub dead_at_ms: i64,
}

impl DeadLetter {
    /// The properties a dead letter is published with: the original ones (persistent) plus our
    /// headers. A letter dead-lettered again after a replay keeps its first origin.
    pub fn apply(&self, original: &BasicProperties) -> BasicProperties {
        let mut h = headers_of(original);
        set_text(&mut h, H_REASON, &self.reason);
        set_text(&mut h, H_DETAIL, &self.detail);
        set_text(&mut h, H_SOURCE_QUEUE, &self.source_queue);
        if !h.contains_key(H_ORIGINAL_EXCHANGE) {
            set_text(&mut h, H_ORIGINAL_EXCHANGE, &self.original_exchange);
            set_text(&mut h, H_ORIGINAL_ROUTING_KEY, &self.original_routing_key);
        }
        set_int(&mut h, H_DEAD_AT, self.dead_at_ms);
        original.clone().with_headers(h).with_delivery_mode(2)
    }

    /// Reads a letter's record: ours where we wrote it, the broker's `x-death` otherwise, `?`
    /// where neither says.
    pub fn from_properties(props: &BasicProperties) -> Self {
        let h = headers_of(props);
        // The broker's own record: the first (most recent) x-death entry.
        let death: Option<FieldTable> = match h.inner().get("x-death") {
            Some(AMQPValue::FieldArray(a)) => a.as_slice().first().and_then(|e| match e {
                AMQPValue::FieldTable(t) => Some(t.clone()),
                _ => None,
            }),
            _ => None,
        };
        let from_death = |k: &str| death.as_ref().and_then(|t| text_header(t, k));
        let death_key = death
            .as_ref()
            .and_then(|t| t.inner().get("routing-keys"))
            .and_then(|v| match v {
                AMQPValue::FieldArray(a) => a.as_slice().first().and_then(text_value),
                _ => None,
            });
        Self {
            source_queue: text_header(&h, H_SOURCE_QUEUE)
                .or_else(|| from_death("queue"))
                .unwrap_or_else(|| "?".into()),
            reason: text_header(&h, H_REASON)
                .or_else(|| from_death("reason"))
                .unwrap_or_else(|| "?".into()),
            detail: text_header(&h, H_DETAIL).unwrap_or_default(),
            original_exchange: text_header(&h, H_ORIGINAL_EXCHANGE)
                .or_else(|| from_death("exchange"))
                .unwrap_or_default(),
            original_routing_key: text_header(&h, H_ORIGINAL_ROUTING_KEY)
                .or(death_key)
                .unwrap_or_default(),
            dead_at_ms: int_header(&h, H_DEAD_AT)
                .or_else(|| death.as_ref().and_then(|t| int_header(t, "time")))
                .unwrap_or(0),
        }
    }

    /// The properties a replayed letter is published with: the original ones without the
    /// dead-letter bookkeeping (ours and the broker's), so it flows like a new message.
    pub fn strip(props: &BasicProperties) -> BasicProperties {
        let kept: std::collections::BTreeMap<_, _> = headers_of(props)
            .inner()
            .iter()
            .filter(|(k, _)| {
                let k = k.as_str();
                !k.starts_with(OUR_PREFIX) && !BROKER_PREFIXES.iter().any(|p| k.starts_with(p))
            })
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        props.clone().with_headers(kept.into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lapin::types::FieldArray;

    fn letter() -> DeadLetter {
        DeadLetter {
            source_queue: "wxpipe.raw".into(),
            reason: "bad_signature".into(),
            detail: "msg_signature does not match".into(),
            original_exchange: "wxpipe.raw".into(),
            original_routing_key: "authorizer".into(),
            dead_at_ms: 1_700_000_000_000,
        }
    }

    #[test]
    fn round_trip_and_strip() {
        let original = crate::wire::raw::RawPush {
            route: crate::wire::raw::RawRoute::Component,
            timestamp: "1".into(),
            nonce: "n".into(),
            msg_signature: "s".into(),
            signature: None,
            encrypt_type: None,
            openid: None,
            appid: None,
            received_at_ms: Some(5),
        }
        .to_properties();
        let dead = letter().apply(&original);
        assert_eq!(DeadLetter::from_properties(&dead), letter());
        // Stripped, it is the original again.
        assert_eq!(DeadLetter::strip(&dead), original);
    }

    #[test]
    fn a_second_death_keeps_the_first_origin() {
        let first = letter().apply(&BasicProperties::default());
        let mut again = letter();
        again.source_queue = "wxpipe.business".into();
        again.original_exchange = "wxpipe.events".into();
        let second = DeadLetter::from_properties(&again.apply(&first));
        assert_eq!(second.source_queue, "wxpipe.business");
        assert_eq!(second.original_exchange, "wxpipe.raw");
    }

    #[test]
    fn the_brokers_record_fills_in() {
        let mut death = FieldTable::default();
        set_text(&mut death, "queue", "wxpipe.raw");
        set_text(&mut death, "reason", "delivery_limit");
        set_text(&mut death, "exchange", "wxpipe.raw");
        death.insert(
            "routing-keys".into(),
            AMQPValue::FieldArray(FieldArray::from(vec![AMQPValue::LongString(
                "component".into(),
            )])),
        );
        death.insert("time".into(), AMQPValue::Timestamp(1_700_000_000));
        let mut h = FieldTable::default();
        h.insert(
            "x-death".into(),
            AMQPValue::FieldArray(FieldArray::from(vec![AMQPValue::FieldTable(death)])),
        );
        let l = DeadLetter::from_properties(&BasicProperties::default().with_headers(h));
        assert_eq!(l.reason, "delivery_limit");
        assert_eq!(l.original_routing_key, "component");
        assert_eq!(l.dead_at_ms, 1_700_000_000_000);
        assert!(
            DeadLetter::strip(&BasicProperties::default())
                .headers()
                .as_ref()
                .unwrap()
                .inner()
                .is_empty()
        );
    }
}
