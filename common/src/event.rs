//! The event envelope downstream teams code against (design.md): one CloudEvents 1.0
//! structured-mode JSON document per decoded push, published to `{ns}.events`.
//!
//! Defined once here; the decrypt workers build it, the business workers and every downstream
//! consumer read it.

use crate::xml::Fields;
use crate::xml::push::{ComponentEvent, InfoType, Push};
use serde::{Deserialize, Serialize};

/// `content_type` of every message on `{ns}.events`.
pub const CONTENT_TYPE: &str = "application/cloudevents+json";

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
    let w: String = s
        .trim()
        .chars()
        .map(|c| match c {
            '.' | '*' | '#' | ' ' | '\t' | '\n' | '\r' => '_',
            c => c.to_ascii_lowercase(),
        })
        .collect();
    if w.is_empty() { "_".to_owned() } else { w }
}

/// Computes the dedup key, routing key, type and source of a push (design.md, issue 3):
///
/// * authorizer message with `MsgId` (or `MsgID`): `authorizer:{appid}:msg:{MsgId}`;
/// * other authorizer pushes: `authorizer:{appid}:{FromUserName}:{CreateTime}[:{Event}]`;
/// * component pushes: `component:{InfoType}:{AuthorizerAppid or ticket}:{CreateTime}`.
///
/// `authorizer_appid` is the `{appid}` of the message URL the push arrived on.
pub fn address(push: &Push, component_appid: &str, authorizer_appid: Option<&str>) -> EventAddress {
    match push {
        Push::Component(e) => {
            let info = word(&e.info_type);
            let subject = component_subject(e);
            EventAddress {
                id: format!("component:{info}:{subject}:{}", e.create_time),
                routing_key: format!("component.{info}"),
                event_type: format!("wechat.component.{info}"),
                source: format!("/wechat/component/{component_appid}"),
            }
        }
        Push::Authorizer(m) => {
            let appid = authorizer_appid.unwrap_or(&m.to_user_name);
            let msg_type = word(&m.msg_type);
            let event = m.fields.get("Event").and_then(|v| v.as_str());
            let msg_id = ["MsgId", "MsgID"]
                .iter()
                .find_map(|k| m.fields.get(*k).and_then(|v| v.as_str()))
                .filter(|v| !v.trim().is_empty());
            let id = match (msg_id, event) {
                (Some(msg_id), _) if m.msg_type != "event" => {
                    format!("authorizer:{appid}:msg:{}", msg_id.trim())
                }
                (_, Some(event)) => format!(
                    "authorizer:{appid}:{}:{}:{event}",
                    m.from_user_name, m.create_time
                ),
                _ => format!("authorizer:{appid}:{}:{}", m.from_user_name, m.create_time),
            };
            let suffix = match event {
                Some(ev) if m.msg_type == "event" => format!("{msg_type}.{}", word(ev)),
                _ => msg_type,
            };
            EventAddress {
                id,
                routing_key: format!("authorizer.{}.{suffix}", word(appid)),
                event_type: format!("wechat.authorizer.{suffix}"),
                source: format!("/wechat/authorizers/{appid}"),
            }
        }
    }
}

fn component_subject(e: &ComponentEvent) -> String {
    match &e.kind {
        InfoType::ComponentVerifyTicket { ticket } => ticket.clone(),
        InfoType::Authorized(c) | InfoType::UpdateAuthorized(c) => c.authorizer_appid.clone(),
        InfoType::Unauthorized { authorizer_appid } => authorizer_appid.clone(),
        InfoType::NotifyThirdFasteregister { appid, .. } => appid.clone().unwrap_or_default(),
        InfoType::Other => e
            .fields
            .get("AuthorizerAppid")
            .and_then(|v| v.as_str())
            .unwrap_or_default()
            .to_owned(),
    }
}

impl CloudEvent {
    /// The envelope of `push` at `address`.
    pub fn new(push: &Push, address: &EventAddress) -> Self {
        let create_time = match push {
            Push::Component(e) => e.create_time,
            Push::Authorizer(m) => m.create_time,
        };
        Self {
            specversion: "1.0".into(),
            id: address.id.clone(),
            source: address.source.clone(),
            event_type: address.event_type.clone(),
            time: rfc3339(create_time),
            datacontenttype: "application/json".into(),
            data: push.fields().clone(),
            reply_to: None,
            correlation_id: None,
        }
    }
}

/// Seconds since the epoch as RFC 3339 UTC (`1970-01-01T00:00:00Z`); out-of-range values clamp.
pub fn rfc3339(unix: i64) -> String {
    let secs = unix.clamp(0, 253_402_300_799) as u64;
    humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs))
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert_eq!(a.id, "authorizer:wxa:o1:5:SCAN");
        assert_eq!(a.routing_key, "authorizer.wxa.event.scan");
        // TEMPLATESENDJOBFINISH carries MsgID but is an event: it still keys on the event.
        let p = parse(
            "<xml><ToUserName>gh_1</ToUserName><FromUserName>o1</FromUserName><CreateTime>5</CreateTime><MsgType>event</MsgType><Event>TEMPLATESENDJOBFINISH</Event><MsgID>9</MsgID></xml>",
        );
        assert_eq!(
            address(&p, "wxc", Some("wxa")).id,
            "authorizer:wxa:o1:5:TEMPLATESENDJOBFINISH"
        );
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
    }
}
