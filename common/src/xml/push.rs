//! Typed views of decrypted pushes (protocol.md §3 and §4).
//!
//! Each model keeps the complete document (`fields`) beside the typed fields it knows, so that
//! a field, InfoType or MsgType this code has never heard of passes through untouched.

use super::{Document, FieldSource, XmlError, field_str, required_i64, required_str};

/// A decrypted push: a platform event from the authorization-event URL, or an authorizer's
/// message or event from the message URL.
#[derive(Debug, Clone, PartialEq)]
pub enum Push {
    Component(ComponentEvent),
    Authorizer(AuthorizerMessage),
}

impl Push {
    /// Parses a decrypted plaintext (borrowed, or given to the push to keep). A document with
    /// `InfoType` is a component event, one with `MsgType` an authorizer message; anything else
    /// is refused.
    pub fn parse(plaintext: impl Into<String>) -> Result<Self, XmlError> {
        let fields = Document::parse(plaintext)?;
        if fields.has("InfoType") {
            ComponentEvent::from_fields(fields).map(Push::Component)
        } else if fields.has("MsgType") {
            AuthorizerMessage::from_fields(fields).map(Push::Authorizer)
        } else {
            Err(XmlError::MissingField("InfoType or MsgType"))
        }
    }

    /// `CreateTime` of the push, seconds since the epoch.
    pub fn create_time(&self) -> i64 {
        match self {
            Push::Component(e) => e.create_time,
            Push::Authorizer(m) => m.create_time,
        }
    }

    /// Every field of the push (see [`Document`]).
    pub fn fields(&self) -> &Document {
        match self {
            Push::Component(e) => &e.fields,
            Push::Authorizer(m) => &m.fields,
        }
    }
}

/// A push to the authorization-event URL (protocol.md §3).
#[derive(Debug, Clone, PartialEq)]
pub struct ComponentEvent {
    /// `AppId`: the component appid.
    pub appid: String,
    pub create_time: i64,
    /// `InfoType` exactly as sent (matched case-insensitively into `kind`).
    pub info_type: String,
    pub kind: InfoType,
    pub fields: Document,
}

/// The InfoTypes the platform acts on; every other one is `Other` and still carried in full.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InfoType {
    ComponentVerifyTicket {
        ticket: String,
    },
    Authorized(AuthorizationChange),
    UpdateAuthorized(AuthorizationChange),
    Unauthorized {
        authorizer_appid: String,
    },
    /// Fast registration of a mini program (`notify_third_fasteregister`).
    NotifyThirdFasteregister {
        appid: Option<String>,
        status: Option<i64>,
        auth_code: Option<String>,
        msg: Option<String>,
    },
    Other,
}

/// The fields of `authorized` and `updateauthorized`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthorizationChange {
    pub authorizer_appid: String,
    pub authorization_code: String,
    /// `AuthorizationCodeExpiredTime` as sent; protocol.md: don't rely on its meaning.
    pub authorization_code_expired_time: Option<i64>,
    pub pre_auth_code: Option<String>,
}

/// The `InfoType`s of protocol.md §3 that wxpipe models (lowercase, as they become event types).
pub mod info_type {
    pub const COMPONENT_VERIFY_TICKET: &str = "component_verify_ticket";
    pub const AUTHORIZED: &str = "authorized";
    pub const UPDATE_AUTHORIZED: &str = "updateauthorized";
    pub const UNAUTHORIZED: &str = "unauthorized";
    pub const NOTIFY_THIRD_FASTEREGISTER: &str = "notify_third_fasteregister";
}

impl ComponentEvent {
    pub fn from_fields(fields: Document) -> Result<Self, XmlError> {
        let appid = required_str(&fields, "AppId")?.to_owned();
        let create_time = required_i64(&fields, "CreateTime")?;
        let info_type = required_str(&fields, "InfoType")?.to_owned();
        let kind = match info_type.to_ascii_lowercase().as_str() {
            info_type::COMPONENT_VERIFY_TICKET => InfoType::ComponentVerifyTicket {
                ticket: required_str(&fields, "ComponentVerifyTicket")?.to_owned(),
            },
            info_type::AUTHORIZED => {
                InfoType::Authorized(AuthorizationChange::from_fields(&fields)?)
            }
            info_type::UPDATE_AUTHORIZED => {
                InfoType::UpdateAuthorized(AuthorizationChange::from_fields(&fields)?)
            }
            info_type::UNAUTHORIZED => InfoType::Unauthorized {
                authorizer_appid: required_str(&fields, "AuthorizerAppid")?.to_owned(),
            },
            info_type::NOTIFY_THIRD_FASTEREGISTER => InfoType::NotifyThirdFasteregister {
                appid: field_str(&fields, "appid").map(str::to_owned),
                status: field_str(&fields, "status").and_then(|s| s.trim().parse().ok()),
                auth_code: field_str(&fields, "auth_code").map(str::to_owned),
                msg: field_str(&fields, "msg").map(str::to_owned),
            },
            _ => InfoType::Other,
        };
        Ok(Self {
            appid,
            create_time,
            info_type,
            kind,
            fields,
        })
    }
}

impl AuthorizationChange {
    fn from_fields(fields: &Document) -> Result<Self, XmlError> {
        Ok(Self {
            authorizer_appid: required_str(fields, "AuthorizerAppid")?.to_owned(),
            authorization_code: required_str(fields, "AuthorizationCode")?.to_owned(),
            authorization_code_expired_time: field_str(fields, "AuthorizationCodeExpiredTime")
                .and_then(|s| s.trim().parse().ok()),
            pre_auth_code: field_str(fields, "PreAuthCode").map(str::to_owned),
        })
    }
}

/// A message or event pushed to the message URL on behalf of an authorizer (protocol.md §4).
#[derive(Debug, Clone, PartialEq)]
pub struct AuthorizerMessage {
    /// `ToUserName`: the account's original id (`gh_…`).
    pub to_user_name: String,
    /// `FromUserName`: the follower's openid.
    pub from_user_name: String,
    pub create_time: i64,
    /// `MsgType` exactly as sent.
    pub msg_type: String,
    pub kind: MessageKind,
    pub fields: Document,
}

/// The message kinds of protocol.md §4; unknown MsgTypes are `Other`, still carried in full.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MessageKind {
    Text {
        content: String,
        msg_id: Option<String>,
    },
    Image {
        pic_url: Option<String>,
        media_id: Option<String>,
        msg_id: Option<String>,
    },
    Voice {
        media_id: Option<String>,
        format: Option<String>,
        recognition: Option<String>,
        msg_id: Option<String>,
    },
    /// `video` and `shortvideo`.
    Video {
        media_id: Option<String>,
        thumb_media_id: Option<String>,
        msg_id: Option<String>,
    },
    Location {
        location_x: Option<String>,
        location_y: Option<String>,
        scale: Option<String>,
        label: Option<String>,
        msg_id: Option<String>,
    },
    Link {
        title: Option<String>,
        description: Option<String>,
        url: Option<String>,
        msg_id: Option<String>,
    },
    /// `event`: `Event` is case-sensitive (`subscribe`, `SCAN`, `LOCATION`, …).
    Event {
        event: String,
        event_key: Option<String>,
    },
    Other,
}

impl AuthorizerMessage {
    pub fn from_fields(fields: Document) -> Result<Self, XmlError> {
        let opt = |name: &str| field_str(&fields, name).map(str::to_owned);
        let msg_id = opt("MsgId");
        let msg_type = required_str(&fields, "MsgType")?.to_owned();
        let kind = match msg_type.as_str() {
            "text" => MessageKind::Text {
                content: field_str(&fields, "Content").unwrap_or_default().to_owned(),
                msg_id,
            },
            "image" => MessageKind::Image {
                pic_url: opt("PicUrl"),
                media_id: opt("MediaId"),
                msg_id,
            },
            "voice" => MessageKind::Voice {
                media_id: opt("MediaId"),
                format: opt("Format"),
                recognition: opt("Recognition"),
                msg_id,
            },
            "video" | "shortvideo" => MessageKind::Video {
                media_id: opt("MediaId"),
                thumb_media_id: opt("ThumbMediaId"),
                msg_id,
            },
            "location" => MessageKind::Location {
                location_x: opt("Location_X"),
                location_y: opt("Location_Y"),
                scale: opt("Scale"),
                label: opt("Label"),
                msg_id,
            },
            "link" => MessageKind::Link {
                title: opt("Title"),
                description: opt("Description"),
                url: opt("Url"),
                msg_id,
            },
            "event" => MessageKind::Event {
                event: required_str(&fields, "Event")?.to_owned(),
                event_key: opt("EventKey"),
            },
            _ => MessageKind::Other,
        };
        Ok(Self {
            to_user_name: required_str(&fields, "ToUserName")?.to_owned(),
            from_user_name: required_str(&fields, "FromUserName")?.to_owned(),
            create_time: required_i64(&fields, "CreateTime")?,
            msg_type,
            kind,
            fields,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticket_push() {
        let xml = "<xml><AppId>wx1</AppId><CreateTime>1413192605</CreateTime><InfoType>component_verify_ticket</InfoType><ComponentVerifyTicket>ticket@@@x</ComponentVerifyTicket></xml>";
        let Push::Component(e) = Push::parse(xml).unwrap() else {
            panic!()
        };
        assert_eq!(
            e.kind,
            InfoType::ComponentVerifyTicket {
                ticket: "ticket@@@x".into()
            }
        );
        assert_eq!(e.create_time, 1413192605);
    }

    #[test]
    fn info_type_is_case_insensitive_and_unknown_ones_pass_through() {
        let xml = "<xml><AppId>wx1</AppId><CreateTime>1</CreateTime><InfoType>Unauthorized</InfoType><AuthorizerAppid>wxa</AuthorizerAppid></xml>";
        let Push::Component(e) = Push::parse(xml).unwrap() else {
            panic!()
        };
        assert_eq!(
            e.kind,
            InfoType::Unauthorized {
                authorizer_appid: "wxa".into()
            }
        );
        let xml = "<xml><AppId>wx1</AppId><CreateTime>1</CreateTime><InfoType>notify_new_thing</InfoType><Extra><A>1</A><A>2</A></Extra></xml>";
        let Push::Component(e) = Push::parse(xml).unwrap() else {
            panic!()
        };
        assert_eq!(e.kind, InfoType::Other);
        assert_eq!(
            e.fields.to_fields()["Extra"]["A"],
            serde_json::json!(["1", "2"])
        );
    }

    #[test]
    fn fasteregister_with_nested_info() {
        let xml = "<xml><AppId>wx1</AppId><CreateTime>1</CreateTime><InfoType>notify_third_fasteregister</InfoType><appid>wxnew</appid><status>0</status><auth_code>code</auth_code><msg>OK</msg><info><name>n</name><code>c</code></info></xml>";
        let Push::Component(e) = Push::parse(xml).unwrap() else {
            panic!()
        };
        assert_eq!(
            e.kind,
            InfoType::NotifyThirdFasteregister {
                appid: Some("wxnew".into()),
                status: Some(0),
                auth_code: Some("code".into()),
                msg: Some("OK".into())
            }
        );
        assert_eq!(e.fields.to_fields()["info"]["name"], "n");
    }

    #[test]
    fn authorized_requires_its_code() {
        let xml = "<xml><AppId>wx1</AppId><CreateTime>1</CreateTime><InfoType>authorized</InfoType><AuthorizerAppid>wxa</AuthorizerAppid></xml>";
        assert_eq!(
            Push::parse(xml),
            Err(XmlError::MissingField("AuthorizationCode"))
        );
    }

    #[test]
    fn messages_and_events() {
        let xml = "<xml><ToUserName><![CDATA[gh_1]]></ToUserName><FromUserName><![CDATA[o1]]></FromUserName><CreateTime>2</CreateTime><MsgType><![CDATA[text]]></MsgType><Content><![CDATA[a &amp; <b>]]></Content><MsgId>123</MsgId></xml>";
        let Push::Authorizer(m) = Push::parse(xml).unwrap() else {
            panic!()
        };
        assert_eq!(
            m.kind,
            MessageKind::Text {
                content: "a &amp; <b>".into(),
                msg_id: Some("123".into())
            }
        );
        let xml = "<xml><ToUserName>gh_1</ToUserName><FromUserName>o1</FromUserName><CreateTime>2</CreateTime><MsgType>event</MsgType><Event>subscribe</Event><EventKey></EventKey></xml>";
        let Push::Authorizer(m) = Push::parse(xml).unwrap() else {
            panic!()
        };
        assert_eq!(
            m.kind,
            MessageKind::Event {
                event: "subscribe".into(),
                event_key: Some(String::new())
            }
        );
        let xml = "<xml><ToUserName>gh_1</ToUserName><FromUserName>o1</FromUserName><CreateTime>2</CreateTime><MsgType>hologram</MsgType><Depth>3</Depth></xml>";
        let Push::Authorizer(m) = Push::parse(xml).unwrap() else {
            panic!()
        };
        assert_eq!(m.kind, MessageKind::Other);
        assert_eq!(m.fields.leaf("Depth"), Some("3"));
        assert_eq!(
            Push::parse("<xml><Foo>1</Foo></xml>"),
            Err(XmlError::MissingField("InfoType or MsgType"))
        );
    }

    #[test]
    fn escaped_text_and_char_refs_are_decoded() {
        let xml = "<xml><ToUserName>gh_1</ToUserName><FromUserName>o1</FromUserName><CreateTime>2</CreateTime><MsgType>text</MsgType><Content>a &lt;b&gt; &#x4e2d;</Content></xml>";
        let Push::Authorizer(m) = Push::parse(xml).unwrap() else {
            panic!()
        };
        assert_eq!(m.fields.leaf("Content"), Some("a <b> 中"));
    }
}
