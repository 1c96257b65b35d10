//! Turning a raw message back into a push: its headers (the signed query the ingress kept),
//! its envelope, the signature, the decryption and the XML. Every failure here is permanent —
//! the same bytes fail the same way on every try — so each is a dead-letter reason.

use common::crypto::{CryptoError, MsgCrypt};
use common::event::EventAddress;
use common::wire::event::{ReplyAddress, reply_address};
use common::wire::raw::{RawHeaderError, RawPush};
use common::xml::envelope::Envelope;
use common::xml::push::Push;
use lapin::BasicProperties;
use lapin::message::Delivery;

/// A push decoded from `{ns}.raw`.
#[derive(Debug, Clone)]
pub struct Decoded {
    pub push: Push,
    /// The raw message's headers (the signed query, the URL's appid, the reception time).
    pub raw: RawPush,
    /// Where the ingress waits for a passive reply, if it does.
    pub reply: Option<ReplyAddress>,
}

/// Why a raw message can never be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Poison {
    #[error("{0}")]
    Headers(#[from] RawHeaderError),
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
            Poison::Headers(_) => "bad_headers",
            Poison::Envelope(_) => "bad_envelope",
            Poison::BadSignature => "bad_signature",
            Poison::AppIdMismatch => "appid_mismatch",
            Poison::Undecryptable(_) => "undecryptable",
            Poison::Unparseable(_) => "unparseable",
        }
    }
}

/// The event of a decoded push: its address (id, routing key, type) and its CloudEvent JSON.
pub fn event(decoded: &Decoded, component_appid: &str) -> Result<(EventAddress, Vec<u8>), Poison> {
    let reply = decoded
        .reply
        .as_ref()
        .map(|r| (r.reply_to.as_str(), r.correlation_id.as_str()));
    common::event::encode(
        &decoded.push,
        component_appid,
        decoded.raw.appid.as_deref(),
        reply,
    )
    .map_err(|e| Poison::Unparseable(e.to_string()))
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
    let raw = RawPush::from_properties(routing_key, props)?;
    let envelope = Envelope::parse(body).map_err(|e| Poison::Envelope(e.to_string()))?;
    let plaintext = crypt
        .verify_and_decrypt(
            &raw.timestamp,
            &raw.nonce,
            envelope.encrypt(),
            &raw.msg_signature,
        )
        .map_err(|e| match e {
            CryptoError::BadSignature | CryptoError::EmptyPart(_) => Poison::BadSignature,
            CryptoError::AppIdMismatch { .. } => Poison::AppIdMismatch,
            other => Poison::Undecryptable(other.to_string()),
        })?;
    let push = Push::parse(plaintext).map_err(|e| Poison::Unparseable(e.to_string()))?;
    Ok(Decoded {
        push,
        raw,
        reply: reply_address(props),
    })
}
