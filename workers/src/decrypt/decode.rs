//! Turning a raw message back into a push: its headers (the signed query the ingress kept),
//! its envelope, the signature, the decryption and the XML. Every failure here is permanent —
//! the same bytes fail the same way on every try — so each is a dead-letter reason.

use common::crypto::{CryptoError, MsgCrypt};
use common::xml::envelope::Envelope;
use common::xml::push::Push;
use lapin::BasicProperties;
use lapin::message::Delivery;
use lapin::types::AMQPValue;

/// A push decoded from `{ns}.raw`.
#[derive(Debug, Clone)]
pub struct Decoded {
    pub push: Push,
    /// The message URL's `{appid}` (authorizer pushes only).
    pub authorizer_appid: Option<String>,
    /// When the ingress received it (ms since the epoch), if known.
    pub received_at: Option<i64>,
    /// Where the ingress waits for a passive reply, if it does.
    pub reply_to: Option<String>,
    pub correlation_id: Option<String>,
}

/// Why a raw message can never be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Poison {
    #[error("header {0} is missing")]
    MissingHeader(&'static str),
    #[error("envelope: {0}")]
    Envelope(String),
    #[error("msg_signature does not match")]
    BadSignature,
    #[error("the trailing appid is not the component appid")]
    AppIdMismatch,
    #[error("cannot decrypt: {0}")]
    Undecryptable(String),
    #[error("plaintext: {0}")]
    Unparseable(String),
}

impl Poison {
    /// The dead-letter reason.
    pub fn reason(&self) -> &'static str {
        match self {
            Poison::MissingHeader(_) => "bad_headers",
            Poison::Envelope(_) => "bad_envelope",
            Poison::BadSignature => "bad_signature",
            Poison::AppIdMismatch => "appid_mismatch",
            Poison::Undecryptable(_) => "undecryptable",
            Poison::Unparseable(_) => "unparseable",
        }
    }
}

/// A text header of a delivery.
pub fn header<'a>(delivery: &'a Delivery, name: &str) -> Option<std::borrow::Cow<'a, str>> {
    prop_header(&delivery.properties, name)
}

fn prop_header<'a>(props: &'a BasicProperties, name: &str) -> Option<std::borrow::Cow<'a, str>> {
    let headers = props.headers().as_ref()?;
    match headers.inner().get(name)? {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes())),
        AMQPValue::ShortString(s) => Some(std::borrow::Cow::Borrowed(s.as_str())),
        _ => None,
    }
}

fn header_i64(props: &BasicProperties, name: &str) -> Option<i64> {
    match props.headers().as_ref()?.inner().get(name)? {
        AMQPValue::LongLongInt(v) => Some(*v),
        AMQPValue::LongInt(v) => Some(i64::from(*v)),
        _ => None,
    }
}

/// Verifies and decrypts one raw message.
pub fn decode(crypt: &MsgCrypt, delivery: &Delivery) -> Result<Decoded, Poison> {
    decode_parts(
        crypt,
        delivery.routing_key.as_str(),
        &delivery.properties,
        &delivery.data,
    )
}

/// [`decode`] of a raw message given by its parts (its routing key on `{ns}.raw`, its
/// properties and its body), for tools that read it from elsewhere.
pub fn decode_parts(
    crypt: &MsgCrypt,
    routing_key: &str,
    props: &BasicProperties,
    body: &[u8],
) -> Result<Decoded, Poison> {
    let timestamp = prop_header(props, "timestamp").ok_or(Poison::MissingHeader("timestamp"))?;
    let nonce = prop_header(props, "nonce").ok_or(Poison::MissingHeader("nonce"))?;
    let msg_signature =
        prop_header(props, "msg_signature").ok_or(Poison::MissingHeader("msg_signature"))?;
    let authorizer_appid = prop_header(props, "appid").map(|a| a.into_owned());
    if routing_key == common::amqp::topology::RAW_AUTHORIZER && authorizer_appid.is_none() {
        return Err(Poison::MissingHeader("appid"));
    }
    let envelope = Envelope::parse(body).map_err(|e| Poison::Envelope(e.to_string()))?;
    let plaintext = crypt
        .verify_and_decrypt(&timestamp, &nonce, &envelope.encrypt, &msg_signature)
        .map_err(|e| match e {
            CryptoError::BadSignature | CryptoError::EmptyPart(_) => Poison::BadSignature,
            CryptoError::AppIdMismatch { .. } => Poison::AppIdMismatch,
            other => Poison::Undecryptable(other.to_string()),
        })?;
    let push = Push::parse(&plaintext).map_err(|e| Poison::Unparseable(e.to_string()))?;
    Ok(Decoded {
        push,
        authorizer_appid,
        received_at: header_i64(props, "received_at"),
        reply_to: props.reply_to().as_ref().map(|r| r.to_string()),
        correlation_id: props.correlation_id().as_ref().map(|c| c.to_string()),
    })
}
