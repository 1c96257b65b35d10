//! The AMQP properties of an event on `{ns}.events` (design.md): persistent CloudEvents JSON,
//! `message_id` = the event id, `type` = the event type, `received_at` (when the ingress took
//! the push, so consumers can measure end-to-end latency), and — when the ingress waits for a
//! passive reply — `reply_to` and `correlation_id`.
//!
//! Written by the decrypt workers and by the ingress (`/auth/callback`), read by the business
//! workers and downstream teams.

use super::{header_table, int_header, set_int};
use lapin::BasicProperties;
use lapin::types::FieldTable;

/// `content_type` of every message on `{ns}.events`.
pub const CONTENT_TYPE: &str = "application/cloudevents+json";
/// `app_id` of every message wxpipe publishes.
pub const APP_ID: &str = "wxpipe";
/// Header: when the ingress received the push, ms since the epoch.
pub const H_RECEIVED_AT: &str = super::raw::H_RECEIVED_AT;

/// Where a passive reply is awaited: RabbitMQ direct reply-to and the request's id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplyAddress {
    pub reply_to: String,
    pub correlation_id: String,
}

/// The properties of one event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventProperties {
    /// The event id (the dedup key), as `message_id`.
    pub id: String,
    /// The CloudEvents `type`, as the AMQP `type`.
    pub event_type: String,
    /// When the ingress received the push, ms since the epoch.
    pub received_at_ms: Option<i64>,
    /// Set when the ingress waits for a passive reply.
    pub reply: Option<ReplyAddress>,
}

impl EventProperties {
    pub fn to_properties(&self) -> BasicProperties {
        let mut h = FieldTable::default();
        if let Some(t) = self.received_at_ms {
            set_int(&mut h, H_RECEIVED_AT, t);
        }
        let mut props = BasicProperties::default()
            .with_delivery_mode(2)
            .with_content_type(CONTENT_TYPE.into())
            .with_message_id(self.id.as_str().into())
            .with_type(self.event_type.as_str().into())
            .with_timestamp(crate::unix_now() as u64)
            .with_app_id(APP_ID.into())
            .with_headers(h);
        if let Some(r) = &self.reply {
            props = props
                .with_reply_to(r.reply_to.as_str().into())
                .with_correlation_id(r.correlation_id.as_str().into());
        }
        props
    }

    /// Reads an event's properties (missing `message_id`/`type` read as empty).
    pub fn from_properties(props: &BasicProperties) -> Self {
        let s = |v: &Option<lapin::types::ShortString>| {
            v.as_ref().map(|s| s.to_string()).unwrap_or_default()
        };
        Self {
            id: s(props.message_id()),
            event_type: s(props.kind()),
            received_at_ms: int_header(header_table(props), H_RECEIVED_AT),
            reply: reply_address(props),
        }
    }
}

/// The reply address a message carries, if it carries both halves.
pub fn reply_address(props: &BasicProperties) -> Option<ReplyAddress> {
    match (props.reply_to(), props.correlation_id()) {
        (Some(r), Some(c)) => Some(ReplyAddress {
            reply_to: r.to_string(),
            correlation_id: c.to_string(),
        }),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        for reply in [
            None,
            Some(ReplyAddress {
                reply_to: "amq.rabbitmq.reply-to.g2dk".into(),
                correlation_id: "c1".into(),
            }),
        ] {
            let p = EventProperties {
                id: "authorizer:wx1:msg:42".into(),
                event_type: "wechat.authorizer.text".into(),
                received_at_ms: Some(1_700_000_000_000),
                reply,
            };
            let props = p.to_properties();
            assert_eq!(
                props.content_type().as_ref().unwrap().as_str(),
                CONTENT_TYPE
            );
            assert_eq!(props.delivery_mode(), &Some(2));
            assert_eq!(EventProperties::from_properties(&props), p);
        }
    }
}
