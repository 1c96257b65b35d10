//! A raw push on `{ns}.raw` (design.md): the POST body unchanged; headers = the signed query
//! parameters, the URL's `{appid}` and `received_at`; routing key = the URL it arrived on.
//!
//! The ingress writes it with [`RawPush::to_properties`]; the decrypt worker and `workers dlq
//! show` read it with [`RawPush::from_properties`] and verify the push exactly as the ingress
//! did.

use super::{header_table, int_value, set_int, set_text, text_value};
use lapin::BasicProperties;
use lapin::types::FieldTable;

/// Header: the query's `timestamp`.
pub const H_TIMESTAMP: &str = "timestamp";
/// Header: the query's `nonce`.
pub const H_NONCE: &str = "nonce";
/// Header: the query's `msg_signature`.
pub const H_MSG_SIGNATURE: &str = "msg_signature";
/// Header: the query's `signature` (the plain signature WeChat also sends).
pub const H_SIGNATURE: &str = "signature";
/// Header: the query's `encrypt_type`.
pub const H_ENCRYPT_TYPE: &str = "encrypt_type";
/// Header: the query's `openid` (user messages).
pub const H_OPENID: &str = "openid";
/// Header: the message URL's `{appid}` (authorizer pushes only).
pub const H_APPID: &str = "appid";
/// Header: what a sharded `{ns}.raw` hashes (crate::amqp::shards): the appid of an authorizer's
/// push, [`COMPONENT_SHARD_KEY`] for the platform's own.
pub const H_SHARD: &str = "shard";
/// The shard key of every component push (the platform has one component appid: one key).
pub const COMPONENT_SHARD_KEY: &str = "component";
/// Header: when the ingress received the push, ms since the epoch.
pub const H_RECEIVED_AT: &str = "received_at";
/// `content_type` of a raw push.
pub const CONTENT_TYPE: &str = "application/xml";

/// Which URL a push arrived on; its routing key on `{ns}.raw`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RawRoute {
    /// `POST /wechat/component`, the authorization-event URL.
    Component,
    /// `POST /wechat/authorizers/{appid}`, the message URL.
    Authorizer,
}

impl RawRoute {
    /// Both routes, for bindings.
    pub const ALL: [RawRoute; 2] = [RawRoute::Component, RawRoute::Authorizer];

    /// The routing key on `{ns}.raw` (also the route's metric label).
    pub fn routing_key(self) -> &'static str {
        match self {
            RawRoute::Component => "component",
            RawRoute::Authorizer => "authorizer",
        }
    }

    /// The route of a routing key.
    pub fn from_routing_key(key: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.routing_key() == key)
    }
}

/// Why a raw message's headers cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RawHeaderError {
    #[error("header {0} is missing")]
    Missing(&'static str),
    #[error("routing key {0:?} is neither component nor authorizer")]
    UnknownRoute(String),
}

/// The headers of one raw push.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawPush {
    pub route: RawRoute,
    pub timestamp: String,
    pub nonce: String,
    pub msg_signature: String,
    pub signature: Option<String>,
    pub encrypt_type: Option<String>,
    pub openid: Option<String>,
    /// The message URL's `{appid}`; always present on [`RawRoute::Authorizer`].
    pub appid: Option<String>,
    /// When the ingress received it, ms since the epoch.
    pub received_at_ms: Option<i64>,
}

impl RawPush {
    /// Persistent XML with every header; `timestamp` = the reception time in seconds.
    pub fn to_properties(&self) -> BasicProperties {
        let mut h = FieldTable::default();
        set_text(&mut h, H_TIMESTAMP, &self.timestamp);
        set_text(&mut h, H_NONCE, &self.nonce);
        set_text(&mut h, H_MSG_SIGNATURE, &self.msg_signature);
        for (name, value) in [
            (H_SIGNATURE, &self.signature),
            (H_ENCRYPT_TYPE, &self.encrypt_type),
            (H_OPENID, &self.openid),
            (H_APPID, &self.appid),
        ] {
            if let Some(v) = value {
                set_text(&mut h, name, v);
            }
        }
        set_text(&mut h, H_SHARD, self.shard_key());
        let mut props = BasicProperties::default()
            .with_delivery_mode(2)
            .with_content_type(CONTENT_TYPE.into());
        if let Some(ms) = self.received_at_ms {
            set_int(&mut h, H_RECEIVED_AT, ms);
            props = props.with_timestamp((ms / 1000).max(0) as u64);
        }
        props.with_headers(h)
    }

    /// What a sharded intake hashes: the authorizer's appid, or [`COMPONENT_SHARD_KEY`].
    pub fn shard_key(&self) -> &str {
        match (self.route, &self.appid) {
            (RawRoute::Authorizer, Some(appid)) => appid,
            _ => COMPONENT_SHARD_KEY,
        }
    }

    /// Reads the headers of a raw push that arrived with `routing_key`.
    pub fn from_properties(
        routing_key: &str,
        props: &BasicProperties,
    ) -> Result<Self, RawHeaderError> {
        let route = RawRoute::from_routing_key(routing_key)
            .ok_or_else(|| RawHeaderError::UnknownRoute(routing_key.to_owned()))?;
        // One pass over the table (issue 11's codec path: a lookup per header cost a B-tree
        // descent of string comparisons each); its names are unique, so this reads what a
        // lookup per name would.
        let (mut timestamp, mut nonce, mut msg_signature) = (None, None, None);
        let (mut signature, mut encrypt_type, mut openid, mut appid) = (None, None, None, None);
        let mut received_at_ms = None;
        for (name, value) in header_table(props).inner() {
            let slot = match name.as_str() {
                H_TIMESTAMP => &mut timestamp,
                H_NONCE => &mut nonce,
                H_MSG_SIGNATURE => &mut msg_signature,
                H_SIGNATURE => &mut signature,
                H_ENCRYPT_TYPE => &mut encrypt_type,
                H_OPENID => &mut openid,
                H_APPID => &mut appid,
                H_RECEIVED_AT => {
                    received_at_ms = int_value(value);
                    continue;
                }
                _ => continue,
            };
            *slot = text_value(value);
        }
        if route == RawRoute::Authorizer && appid.is_none() {
            return Err(RawHeaderError::Missing(H_APPID));
        }
        let required = |v: Option<String>, name| v.ok_or(RawHeaderError::Missing(name));
        Ok(Self {
            route,
            timestamp: required(timestamp, H_TIMESTAMP)?,
            nonce: required(nonce, H_NONCE)?,
            msg_signature: required(msg_signature, H_MSG_SIGNATURE)?,
            signature,
            encrypt_type,
            openid,
            appid,
            received_at_ms,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(route: RawRoute, appid: Option<&str>) -> RawPush {
        RawPush {
            route,
            timestamp: "1700000000".into(),
            nonce: "n1".into(),
            msg_signature: "a".repeat(40),
            signature: Some("b".repeat(40)),
            encrypt_type: Some("aes".into()),
            openid: None,
            appid: appid.map(str::to_owned),
            received_at_ms: Some(1_700_000_000_123),
        }
    }

    #[test]
    fn round_trip() {
        for raw in [
            sample(RawRoute::Component, None),
            sample(RawRoute::Authorizer, Some("wx0123456789abcdef")),
        ] {
            let props = raw.to_properties();
            assert_eq!(props.delivery_mode(), &Some(2));
            assert_eq!(props.timestamp(), &Some(1_700_000_000));
            let back = RawPush::from_properties(raw.route.routing_key(), &props).unwrap();
            assert_eq!(back, raw);
        }
    }

    #[test]
    fn refusals_name_the_header() {
        let mut raw = sample(RawRoute::Component, None);
        let props = raw.to_properties();
        assert_eq!(
            RawPush::from_properties("authorizer", &props),
            Err(RawHeaderError::Missing(H_APPID))
        );
        assert!(matches!(
            RawPush::from_properties("other", &props),
            Err(RawHeaderError::UnknownRoute(_))
        ));
        raw.received_at_ms = None;
        let mut h = crate::wire::headers_of(&raw.to_properties())
            .inner()
            .clone();
        h.remove(H_NONCE);
        let props = BasicProperties::default().with_headers(h.into());
        assert_eq!(
            RawPush::from_properties("component", &props),
            Err(RawHeaderError::Missing(H_NONCE))
        );
    }

    #[test]
    fn reads_short_strings_ignores_other_headers_and_refuses_a_number_for_text() {
        use lapin::types::{AMQPValue, ShortString};
        let raw = sample(RawRoute::Authorizer, Some("wx0123456789abcdef"));
        let mut h = crate::wire::headers_of(&raw.to_properties())
            .inner()
            .clone();
        h.insert("x-unrelated".into(), AMQPValue::LongInt(7));
        h.insert(
            H_NONCE.into(),
            AMQPValue::ShortString(ShortString::from("n1")),
        );
        let props = BasicProperties::default().with_headers(h.clone().into());
        assert_eq!(RawPush::from_properties("authorizer", &props), Ok(raw));
        h.insert(H_TIMESTAMP.into(), AMQPValue::LongInt(1_700_000_000));
        let props = BasicProperties::default().with_headers(h.into());
        assert_eq!(
            RawPush::from_properties("authorizer", &props),
            Err(RawHeaderError::Missing(H_TIMESTAMP))
        );
    }
}
