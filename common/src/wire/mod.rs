//! Every message on the wire, one type each, used by its producer and by its consumer.
//!
//! | message | producer | consumer | type |
//! |---|---|---|---|
//! | a raw push on `{ns}.raw` | ingress | decrypt workers, `dlq show` | [`raw::RawPush`] |
//! | an event's AMQP properties on `{ns}.events` | decrypt workers, ingress (`/auth/callback`) | business workers, downstream teams | [`event::EventProperties`] |
//! | the `/auth/callback` event | ingress | business workers | [`auth_callback::AuthCallback`] |
//! | a dead letter's headers on `{ns}.dead` | every consumer, the broker (`x-death`) | `workers dlq` | [`dead::DeadLetter`] |
//!
//! The body of an event is [`crate::event::CloudEvent`]. Each type here has
//! `to_properties` and `from_properties` (or `from_delivery`) and a round-trip test, so a
//! header name, routing key or event type is spelled once.

pub mod auth_callback;
pub mod dead;
pub mod event;
pub mod raw;

use lapin::types::{AMQPValue, FieldTable, LongString};

/// A text header (long or short string), if present.
pub fn text_header(headers: &FieldTable, name: &str) -> Option<String> {
    text_value(headers.inner().get(name)?)
}

/// A text value of a header table or array.
pub fn text_value(v: &AMQPValue) -> Option<String> {
    match v {
        AMQPValue::LongString(s) => Some(match std::str::from_utf8(s.as_bytes()) {
            Ok(text) => text.to_owned(),
            Err(_) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
        }),
        AMQPValue::ShortString(s) => Some(s.to_string()),
        _ => None,
    }
}

/// An integer header, if present (a timestamp counts as ms).
pub fn int_header(headers: &FieldTable, name: &str) -> Option<i64> {
    int_value(headers.inner().get(name)?)
}

/// An integer value of a header table (a timestamp counts as ms).
pub fn int_value(v: &AMQPValue) -> Option<i64> {
    match v {
        AMQPValue::LongLongInt(i) => Some(*i),
        AMQPValue::LongInt(i) => Some(i64::from(*i)),
        AMQPValue::ShortInt(i) => Some(i64::from(*i)),
        AMQPValue::Timestamp(t) => Some(*t as i64 * 1000),
        _ => None,
    }
}

/// Sets a text header.
pub fn set_text(headers: &mut FieldTable, name: &str, value: &str) {
    headers.insert(name.into(), AMQPValue::LongString(LongString::from(value)));
}

/// Sets an integer header.
pub fn set_int(headers: &mut FieldTable, name: &str, value: i64) {
    headers.insert(name.into(), AMQPValue::LongLongInt(value));
}

/// The header table of `props` (empty when it has none).
/// The headers of `props` to read (borrowed; an empty table when there are none).
pub fn header_table(props: &lapin::BasicProperties) -> &FieldTable {
    static EMPTY: std::sync::LazyLock<FieldTable> = std::sync::LazyLock::new(FieldTable::default);
    props.headers().as_ref().unwrap_or(&EMPTY)
}

pub fn headers_of(props: &lapin::BasicProperties) -> FieldTable {
    props.headers().clone().unwrap_or_default()
}
