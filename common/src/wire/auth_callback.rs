//! The event the ingress publishes for `GET /auth/callback`: the authorization code the
//! administrator's browser brought back, handed to the business workers (which exchange it
//! exactly once, even when the `authorized` push races it).
//!
//! It is a CloudEvent like the decoded pushes, with `data` shaped like a component push
//! (`AppId`, `CreateTime`, `InfoType`, `AuthorizationCode`, `ExpiresIn`), so a downstream team
//! reads both the same way.

use super::event::EventProperties;
use crate::event::CloudEvent;
use serde_json::json;

/// `InfoType` of the event's data.
pub const INFO_TYPE: &str = "auth_callback";
/// The CloudEvents `type`.
pub fn event_type() -> String {
    crate::event::component_event_type(INFO_TYPE)
}

/// Its routing key on `{ns}.events`.
pub fn routing_key() -> String {
    crate::event::component_routing_key(INFO_TYPE)
}

/// One authorization code from the callback.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthCallback {
    pub component_appid: String,
    pub code: String,
    /// `expires_in` of the callback's query, as given (may be empty).
    pub expires_in: String,
    /// When the callback was received, unix seconds.
    pub at: i64,
}

impl AuthCallback {
    /// The event id: one per code, so a reloaded callback page is one event.
    pub fn id(&self) -> String {
        format!("component:{INFO_TYPE}:{}", self.code)
    }

    pub fn to_event(&self) -> CloudEvent {
        let mut data = crate::xml::Fields::new();
        data.insert("AppId".into(), json!(self.component_appid));
        data.insert("CreateTime".into(), json!(self.at.to_string()));
        data.insert("InfoType".into(), json!(INFO_TYPE));
        data.insert("AuthorizationCode".into(), json!(self.code));
        data.insert("ExpiresIn".into(), json!(self.expires_in));
        CloudEvent {
            specversion: "1.0".into(),
            id: self.id(),
            source: crate::event::component_source(&self.component_appid),
            event_type: event_type(),
            time: crate::event::rfc3339(self.at),
            datacontenttype: "application/json".into(),
            data,
            reply_to: None,
            correlation_id: None,
        }
    }

    pub fn properties(&self) -> EventProperties {
        EventProperties {
            id: self.id(),
            event_type: event_type(),
            received_at_ms: Some(self.at * 1000),
            reply: None,
        }
    }

    /// Reads the callback back from its event; `None` when it is not one.
    pub fn from_event(event: &CloudEvent) -> Option<Self> {
        if event.event_type != event_type() {
            return None;
        }
        let s = |k: &str| {
            event
                .data
                .get(k)
                .and_then(|v| v.as_str())
                .map(str::to_owned)
        };
        Some(Self {
            component_appid: s("AppId")?,
            code: s("AuthorizationCode").filter(|c| !c.trim().is_empty())?,
            expires_in: s("ExpiresIn").unwrap_or_default(),
            at: s("CreateTime").and_then(|t| t.parse().ok()).unwrap_or(0),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let cb = AuthCallback {
            component_appid: "wx0123456789abcdef".into(),
            code: "queryauthcode@@@abc".into(),
            expires_in: "3600".into(),
            at: 1_700_000_000,
        };
        let event = cb.to_event();
        assert_eq!(event.id, "component:auth_callback:queryauthcode@@@abc");
        assert_eq!(event.source, "/wechat/component/wx0123456789abcdef");
        let json = serde_json::to_vec(&event).unwrap();
        let back: CloudEvent = serde_json::from_slice(&json).unwrap();
        assert_eq!(AuthCallback::from_event(&back), Some(cb.clone()));
        let props = EventProperties::from_properties(&cb.properties().to_properties());
        assert_eq!(props.id, event.id);
        assert_eq!(props.event_type, "wechat.component.auth_callback");
        assert_eq!(routing_key(), "component.auth_callback");
    }
}
