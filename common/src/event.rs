//! The event envelope downstream teams code against (design.md): one CloudEvents 1.0
//! structured-mode JSON document per decoded push, published to `{ns}.events`.
//!
//! Defined once here; the decrypt workers build it, the business workers and every downstream
//! consumer read it.

use crate::xml::push::{ComponentEvent, InfoType, Push};
use crate::xml::{Document, FieldSource, Fields};
use serde::{Deserialize, Serialize};

/// `content_type` of every message on `{ns}.events`.
pub use crate::wire::event::CONTENT_TYPE;

/// Every CloudEvents `type` of a platform event starts with this…
pub const COMPONENT_TYPE_PREFIX: &str = "wechat.component.";
/// …and of an account's message or event with this.
pub const AUTHORIZER_TYPE_PREFIX: &str = "wechat.authorizer.";

/// The CloudEvents `type` of the platform event with (lowercase) `InfoType` `info`.
pub fn component_event_type(info: &str) -> String {
    format!("{COMPONENT_TYPE_PREFIX}{info}")
}

/// The routing key on `{ns}.events` of the platform event with (lowercase) `InfoType` `info`.
pub fn component_routing_key(info: &str) -> String {
    format!("component.{info}")
}

/// The routing-key pattern of everything of one account on `{ns}.events`.
pub fn authorizer_pattern(appid: &str) -> String {
    format!("authorizer.{appid}.#")
}

/// `source` of the platform's own events.
pub fn component_source(component_appid: &str) -> String {
    format!("/wechat/component/{component_appid}")
}

/// `source` of an account's messages and events.
pub fn authorizer_source(appid: &str) -> String {
    ["/wechat/authorizers/", appid].concat()
}

/// A decoded push, as published to `{ns}.events`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CloudEvent {
    /// Always `"1.0"`.
    pub specversion: String,
    /// The dedup key: WeChat's retries of one push, and a redelivery after a crash, carry the
    /// same `id`, so a consumer that remembers ids never handles a push twice.
    pub id: String,
    /// `/wechat/component/{component_appid}` or `/wechat/authorizers/{authorizer_appid}`.
    pub source: String,
    /// `wechat.component.<info_type>` or `wechat.authorizer.<msg_type>[.<event>]`, lowercase.
    #[serde(rename = "type")]
    pub event_type: String,
    /// `CreateTime` of the push, RFC 3339 UTC.
    pub time: String,
    /// Always `"application/json"`.
    pub datacontenttype: String,
    /// Every field of the decrypted XML by its WeChat name (leaves are strings, nested elements
    /// objects, repeated elements arrays).
    pub data: Fields,
    /// Where a passive reply is awaited (RabbitMQ direct reply-to), if one is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply_to: Option<String>,
    /// Correlates the passive reply with the waiting request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub correlation_id: Option<String>,
}

/// The identity of a decoded push on the events exchange.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventAddress {
    pub id: String,
    pub routing_key: String,
    pub event_type: String,
    pub source: String,
}

/// Lowercases a routing-key word and keeps it one word (`.` would split it, `*`/`#` are
/// wildcards, spaces are unwelcome).
fn word(s: &str) -> String {
    let mut w = String::with_capacity(s.len());
    push_word(&mut w, s);
    w
}

/// [`word`], written at the end of `out`.
fn push_word(out: &mut String, s: &str) {
    let s = s.trim();
    if s.is_empty() {
        out.push('_');
        return;
    }
    let start = out.len();
    out.push_str(s);
    out[start..].make_ascii_lowercase();
    let splits = |c: char| matches!(c, '.' | '*' | '#' | ' ' | '\t' | '\n' | '\r');
    if out[start..].contains(splits) {
        // Rare: only ASCII characters are replaced, by an ASCII one.
        let replaced = out[start..].replace(splits, "_");
        out.truncate(start);
        out.push_str(&replaced);
    }
}

/// Events whose `{FromUserName}:{CreateTime}:{Event}` already names one push: a follower can
/// only (un)subscribe once per state change.
const SELF_NAMING_EVENTS: [&str; 2] = ["subscribe", "unsubscribe"];

/// Computes the dedup key, routing key, type and source of a push (design.md, issue 3).
///
/// An id must never merge two distinct pushes, and WeChat's retries of one push must share it.
/// So each id is the push's natural key where it has one, and otherwise ends with a digest of
/// the decrypted fields (a retry carries the same plaintext; two distinct pushes do not):
///
/// * authorizer message with `MsgId`: `authorizer:{appid}:msg:{MsgId}`;
/// * `subscribe`/`unsubscribe`: `authorizer:{appid}:{FromUserName}:{CreateTime}:{Event}`;
/// * other events with `MsgID`/`MsgId` (`TEMPLATESENDJOBFINISH`, `MASSSENDJOBFINISH`, …):
///   `authorizer:{appid}:{FromUserName}:{CreateTime}:{Event}:msg:{MsgID}`;
/// * other authorizer pushes: `authorizer:{appid}:{FromUserName}:{CreateTime}[:{Event}]:{digest}`;
/// * `component_verify_ticket`: `component:component_verify_ticket:{ticket}:{CreateTime}`;
/// * `authorized`, `updateauthorized`, `unauthorized`:
///   `component:{InfoType}:{AuthorizerAppid}:{CreateTime}`;
/// * other component pushes: `component:{InfoType}:{AuthorizerAppid or appid or -}:{CreateTime}:{digest}`.
///
/// `{digest}` is the first 16 hex digits of the SHA-1 of the fields as JSON.
/// `authorizer_appid` is the `{appid}` of the message URL the push arrived on.
pub fn address(push: &Push, component_appid: &str, authorizer_appid: Option<&str>) -> EventAddress {
    address_with(push, component_appid, authorizer_appid, || {
        digest(push.fields())
    })
}

/// [`address`] with the digest of the fields given (computed only when the id needs one).
fn address_with(
    push: &Push,
    component_appid: &str,
    authorizer_appid: Option<&str>,
    digest: impl FnOnce() -> Digest,
) -> EventAddress {
    match push {
        Push::Component(e) => {
            let info = word(&e.info_type);
            let (subject, natural) = component_subject(e);
            let subject = if subject.is_empty() {
                "-".to_owned()
            } else {
                subject
            };
            let mut id = format!("component:{info}:{subject}:{}", e.create_time);
            if !natural {
                id = format!("{id}:{}", digest().as_str());
            }
            EventAddress {
                id,
                routing_key: component_routing_key(&info),
                event_type: component_event_type(&info),
                source: component_source(component_appid),
            }
        }
        Push::Authorizer(m) => {
            let appid = authorizer_appid.unwrap_or(&m.to_user_name);
            let is_event = m.msg_type == "event";
            let event = m.fields.leaf("Event").filter(|_| is_event);
            let msg_id = ["MsgId", "MsgID"]
                .iter()
                .find_map(|k| m.fields.leaf(k))
                .map(str::trim)
                .filter(|v| !v.is_empty());
            // Joined, not `format!`ted: this runs once per push (issue 11's codec path). The
            // `{FromUserName}:{CreateTime}` head goes straight into the ids that have it.
            let mut time = itoa::Buffer::new();
            let time = time.format(m.create_time);
            let head = ["authorizer:", appid, ":", &m.from_user_name, ":", time];
            let with_head = |tail: &[&str]| {
                // Sized once: collecting the pieces grew the string several times per push.
                let pieces = || head.iter().chain(tail);
                let mut id = String::with_capacity(pieces().map(|p| p.len()).sum());
                pieces().for_each(|p| id.push_str(p));
                id
            };
            let id = match (event, msg_id) {
                (None, Some(msg_id)) => ["authorizer:", appid, ":msg:", msg_id].concat(),
                (Some(ev), _) if SELF_NAMING_EVENTS.contains(&ev) => with_head(&[":", ev]),
                (Some(ev), Some(msg_id)) => with_head(&[":", ev, ":msg:", msg_id]),
                (Some(ev), None) => with_head(&[":", ev, ":", digest().as_str()]),
                (None, None) => with_head(&[":", digest().as_str()]),
            };
            // `authorizer.{appid}.{msg_type}[.{event}]`, and the type from its tail: one
            // string each, the words written straight into them.
            let mut routing_key = String::with_capacity(64);
            routing_key.push_str("authorizer.");
            push_word(&mut routing_key, appid);
            routing_key.push('.');
            let suffix_at = routing_key.len();
            push_word(&mut routing_key, &m.msg_type);
            if let Some(ev) = event {
                routing_key.push('.');
                push_word(&mut routing_key, ev);
            }
            let event_type = [AUTHORIZER_TYPE_PREFIX, &routing_key[suffix_at..]].concat();
            EventAddress {
                id,
                routing_key,
                event_type,
                source: authorizer_source(appid),
            }
        }
    }
}

/// The first 16 hex digits of the SHA-1 of `fields` as JSON: equal for WeChat's retries of one
/// push (same plaintext), different for two distinct pushes.
fn digest(fields: &Document) -> Digest {
    digest_of_json(&serde_json::to_vec(fields).unwrap_or_default())
}

/// [`digest`] of fields already serialized (compact JSON, as `serde_json` writes it).
fn digest_of_json(json: &[u8]) -> Digest {
    use sha1::Digest as _;
    let mut hex = [0u8; 16];
    // Cannot fail: 8 bytes are 16 hex digits. Into a buffer, not `hex::encode`, which builds
    // a string a character at a time (the codec path computes one per push).
    let _ = hex::encode_to_slice(&sha1::Sha1::digest(json)[..8], &mut hex);
    Digest(hex)
}

/// An id's digest: 16 lowercase hex digits, kept on the stack until written into the id.
struct Digest([u8; 16]);

impl Digest {
    fn as_str(&self) -> &str {
        // Hex digits are ASCII; an empty digest could only come from a bug, never from input.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }
}

/// The subject of a component push, and whether subject + `CreateTime` name one push.
fn component_subject(e: &ComponentEvent) -> (String, bool) {
    match &e.kind {
        InfoType::ComponentVerifyTicket { ticket } => (ticket.clone(), true),
        InfoType::Authorized(c) | InfoType::UpdateAuthorized(c) => {
            (c.authorizer_appid.clone(), true)
        }
        InfoType::Unauthorized { authorizer_appid } => (authorizer_appid.clone(), true),
        InfoType::NotifyThirdFasteregister { appid, .. } => {
            (appid.clone().unwrap_or_default(), false)
        }
        InfoType::Other => (
            e.fields
                .leaf("AuthorizerAppid")
                .unwrap_or_default()
                .to_owned(),
            false,
        ),
    }
}

impl CloudEvent {
    /// The envelope of `push` at `address`.
    pub fn new(push: &Push, address: &EventAddress) -> Self {
        Self {
            specversion: "1.0".into(),
            id: address.id.clone(),
            source: address.source.clone(),
            event_type: address.event_type.clone(),
            time: rfc3339(push.create_time()),
            datacontenttype: "application/json".into(),
            data: push.fields().to_fields(),
            reply_to: None,
            correlation_id: None,
        }
    }
}

/// A [`CloudEvent`] on its way out, up to `datacontenttype`: the same JSON, but borrowing the
/// address instead of copying it (the decrypt worker serializes one per push).
#[derive(Debug, Serialize)]
struct OutgoingHead<'a> {
    specversion: &'static str,
    id: &'a str,
    source: &'a str,
    #[serde(rename = "type")]
    event_type: &'a str,
    time: String,
    datacontenttype: &'static str,
}

/// The members of an outgoing [`CloudEvent`] after `data`, when a passive reply is awaited.
#[derive(Debug, Serialize)]
struct OutgoingTail<'a> {
    reply_to: &'a str,
    correlation_id: &'a str,
}

/// The address and the CloudEvent JSON of `push` (awaiting a passive reply at `reply`, if one
/// waits): the decrypt worker's path. The fields are serialized once, for both the id's digest
/// and the event's `data`, into a buffer sized from the XML; the event is that JSON between its
/// head's members and its tail's, byte for byte what serializing a [`CloudEvent`] writes.
pub fn encode(
    push: &Push,
    component_appid: &str,
    authorizer_appid: Option<&str>,
    reply: Option<(&str, &str)>,
) -> Result<(EventAddress, Vec<u8>), serde_json::Error> {
    let fields = push.fields();
    let mut data = Vec::with_capacity(fields.text_len() + 32);
    serde_json::to_writer(&mut data, fields)?;
    let address = address_with(push, component_appid, authorizer_appid, || {
        digest_of_json(&data)
    });
    let head = OutgoingHead {
        specversion: "1.0",
        id: &address.id,
        source: &address.source,
        event_type: &address.event_type,
        time: rfc3339(push.create_time()),
        datacontenttype: "application/json",
    };
    let tail = match reply {
        Some((reply_to, correlation_id)) => serde_json::to_vec(&OutgoingTail {
            reply_to,
            correlation_id,
        })?,
        None => Vec::new(),
    };
    let mut out = Vec::with_capacity(256 + data.len() + tail.len());
    serde_json::to_writer(&mut out, &head)?;
    // `{…head…}` + `{…tail…}` → `{…head…,"data":…data…,…tail…}`: compact JSON objects, so
    // each ends with its `}` and the tail starts with its `{` (no tail: nothing after data).
    out.pop();
    out.extend_from_slice(b",\"data\":");
    out.extend_from_slice(&data);
    if let [b'{', members @ .., b'}'] = tail.as_slice()
        && !members.is_empty()
    {
        out.push(b',');
        out.extend_from_slice(members);
    }
    out.push(b'}');
    Ok((address, out))
}

/// Seconds since the epoch as RFC 3339 UTC (`1970-01-01T00:00:00Z`); out-of-range values clamp.
pub fn rfc3339(unix: i64) -> String {
    use std::fmt::Write;
    let secs = unix.clamp(0, 253_402_300_799) as u64;
    let at = std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs);
    // Sized once (`to_string` grows it three times; the codec path writes one per push).
    let mut out = String::with_capacity("1970-01-01T00:00:00Z".len());
    let _ = write!(out, "{}", humantime::format_rfc3339_seconds(at));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_encoded_event_is_the_json_of_a_cloud_event_with_the_same_address() {
        let p = parse(
            "<xml><ToUserName>gh_1</ToUserName><FromUserName>o1</FromUserName><CreateTime>1700000000</CreateTime><MsgType>event</MsgType><Event>CLICK</Event><EventKey>k \"q\" &lt;</EventKey><Nested><A>1</A></Nested></xml>",
        );
        let a = address(&p, "wxc", Some("wxa"));
        let mut owned = CloudEvent::new(&p, &a);
        let (a2, out) = encode(&p, "wxc", Some("wxa"), None).unwrap();
        assert_eq!(a2, a, "the digest of the fields is the same either way");
        assert_eq!(out, serde_json::to_vec(&owned).unwrap());
        owned.reply_to = Some("amq.rabbitmq.reply-to.x".into());
        owned.correlation_id = Some("c1".into());
        let (_, out) = encode(
            &p,
            "wxc",
            Some("wxa"),
            Some(("amq.rabbitmq.reply-to.x", "c1")),
        )
        .unwrap();
        assert_eq!(out, serde_json::to_vec(&owned).unwrap());
        let back: CloudEvent = serde_json::from_slice(&out).unwrap();
        assert_eq!(back, owned);
    }

    fn parse(xml: &str) -> Push {
        Push::parse(xml).unwrap()
    }

    #[test]
    fn text_message_with_msg_id() {
        let p = parse(
            "<xml><ToUserName>gh_1</ToUserName><FromUserName>o1</FromUserName><CreateTime>1700000000</CreateTime><MsgType>text</MsgType><Content>hi</Content><MsgId>42</MsgId></xml>",
        );
        let a = address(&p, "wxc", Some("wxa"));
        assert_eq!(a.id, "authorizer:wxa:msg:42");
        assert_eq!(a.routing_key, "authorizer.wxa.text");
        assert_eq!(a.event_type, "wechat.authorizer.text");
        let e = CloudEvent::new(&p, &a);
        assert_eq!(e.time, "2023-11-14T22:13:20Z");
        assert_eq!(e.data["Content"], "hi");
        let json = serde_json::to_value(&e).unwrap();
        assert_eq!(json["type"], "wechat.authorizer.text");
        assert!(json.get("reply_to").is_none());
    }

    #[test]
    fn events_key_on_sender_time_and_event() {
        let p = parse(
            "<xml><ToUserName>gh_1</ToUserName><FromUserName>o1</FromUserName><CreateTime>5</CreateTime><MsgType>event</MsgType><Event>SCAN</Event><EventKey>k</EventKey></xml>",
        );
        let a = address(&p, "wxc", Some("wxa"));
        assert_eq!(a.routing_key, "authorizer.wxa.event.scan");
        assert!(a.id.starts_with("authorizer:wxa:o1:5:SCAN:"), "{}", a.id);
        // The same push again (a retry) has the same id.
        assert_eq!(address(&p, "wxc", Some("wxa")).id, a.id);
        // subscribe names itself (the id README documents).
        let p = parse(
            "<xml><ToUserName>gh_1</ToUserName><FromUserName>o1</FromUserName><CreateTime>5</CreateTime><MsgType>event</MsgType><Event>subscribe</Event><EventKey></EventKey></xml>",
        );
        assert_eq!(
            address(&p, "wxc", Some("wxa")).id,
            "authorizer:wxa:o1:5:subscribe"
        );
    }

    fn template_finish(msg_id: u32) -> Push {
        parse(&format!(
            "<xml><ToUserName>gh_1</ToUserName><FromUserName>o1</FromUserName><CreateTime>5</CreateTime><MsgType>event</MsgType><Event>TEMPLATESENDJOBFINISH</Event><MsgID>{msg_id}</MsgID><Status>success</Status></xml>"
        ))
    }

    #[test]
    fn distinct_pushes_never_share_an_id() {
        // Two template-send results for one user in one second: two events.
        let (a, b) = (template_finish(9), template_finish(10));
        let (ia, ib) = (
            address(&a, "wxc", Some("wxa")).id,
            address(&b, "wxc", Some("wxa")).id,
        );
        assert_eq!(ia, "authorizer:wxa:o1:5:TEMPLATESENDJOBFINISH:msg:9");
        assert_ne!(ia, ib);
        // Two clicks of different menu entries in one second.
        let click = |key: &str| {
            parse(&format!(
                "<xml><ToUserName>gh_1</ToUserName><FromUserName>o1</FromUserName><CreateTime>5</CreateTime><MsgType>event</MsgType><Event>CLICK</Event><EventKey>{key}</EventKey></xml>"
            ))
        };
        assert_ne!(
            address(&click("a"), "wxc", Some("wxa")).id,
            address(&click("b"), "wxc", Some("wxa")).id
        );
        // Unknown InfoTypes without AuthorizerAppid, same second, different content.
        let other = |v: &str| {
            parse(&format!(
                "<xml><AppId>wxc</AppId><CreateTime>7</CreateTime><InfoType>wxa_nickname_audit</InfoType><Nickname>{v}</Nickname></xml>"
            ))
        };
        let (oa, ob) = (
            address(&other("x"), "wxc", None).id,
            address(&other("y"), "wxc", None).id,
        );
        assert!(oa.starts_with("component:wxa_nickname_audit:-:7:"), "{oa}");
        assert_ne!(oa, ob);
        assert_eq!(oa, address(&other("x"), "wxc", None).id);
    }

    #[test]
    fn component_pushes() {
        let p = parse(
            "<xml><AppId>wxc</AppId><CreateTime>7</CreateTime><InfoType>component_verify_ticket</InfoType><ComponentVerifyTicket>T1</ComponentVerifyTicket></xml>",
        );
        let a = address(&p, "wxc", None);
        assert_eq!(a.id, "component:component_verify_ticket:T1:7");
        assert_eq!(a.routing_key, "component.component_verify_ticket");
        assert_eq!(a.source, "/wechat/component/wxc");
        let p = parse(
            "<xml><AppId>wxc</AppId><CreateTime>7</CreateTime><InfoType>Authorized</InfoType><AuthorizerAppid>wxa</AuthorizerAppid><AuthorizationCode>c</AuthorizationCode></xml>",
        );
        let a = address(&p, "wxc", None);
        assert_eq!(a.id, "component:authorized:wxa:7");
        assert_eq!(a.routing_key, "component.authorized");
    }

    #[test]
    fn routing_words_are_sanitised() {
        assert_eq!(word("a.b*c#d E"), "a_b_c_d_e");
        assert_eq!(word(""), "_");
        assert_eq!(
            word(" A\tF\r\nG "),
            "a_f__g",
            "trimmed, then each splitter replaced"
        );
        assert_eq!(word("Ä.Ö"), "Ä_Ö", "only ASCII letters are lowercased");
        assert_eq!(word(" \t "), "_");
        let mut out = "authorizer.".to_owned();
        push_word(&mut out, "WX1");
        assert_eq!(out, "authorizer.wx1");
    }
}
