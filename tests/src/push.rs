//! Pushes built exactly as WeChat sends them: the query string with `signature`, `timestamp`,
//! `nonce`, `encrypt_type=aes` and `msg_signature` (and `openid` on user messages), and the
//! encrypted envelope as the body.

use common::crypto::{MsgCrypt, sha1_sorted};
use common::xml::envelope::{authorizer_envelope, component_envelope};
use secrecy::SecretString;

/// A push ready to POST: `path?query` and body.
#[derive(Debug, Clone)]
pub struct SignedPush {
    pub query: String,
    pub body: String,
}

impl SignedPush {
    /// The headers the ingress stores a message-URL push with: its signed query's pairs and
    /// the `appid` of its path.
    pub fn raw_headers(&self, appid: &str) -> lapin::types::FieldTable {
        let query: Vec<(String, String)> = url::form_urlencoded::parse(self.query.as_bytes())
            .into_owned()
            .collect();
        crate::broker::headers(
            query
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .chain([("appid", appid)]),
        )
    }
}

/// Signs and encrypts pushes with a platform's credentials.
#[derive(Clone)]
pub struct PushBuilder {
    token: String,
    crypt: MsgCrypt,
}

impl PushBuilder {
    pub fn new(token: &str, encoding_aes_key: &str, component_appid: &str) -> Self {
        Self {
            token: token.to_owned(),
            crypt: MsgCrypt::new(SecretString::from(token), encoding_aes_key, component_appid)
                .expect("test credentials are valid"),
        }
    }

    /// The builder for [`crate::test_platform`].
    pub fn test_platform() -> Self {
        use crate::test_platform::*;
        Self::new(TOKEN, ENCODING_AES_KEY, COMPONENT_APPID)
    }

    pub fn crypt(&self) -> &MsgCrypt {
        &self.crypt
    }

    /// A push to the authorization-event URL.
    pub fn component(&self, plaintext: &str, timestamp: i64, nonce: &str) -> SignedPush {
        let encrypt = self.crypt.encrypt(plaintext);
        let body = component_envelope(self.crypt.appid(), &encrypt);
        SignedPush {
            query: self.query(timestamp, nonce, &encrypt, None),
            body,
        }
    }

    /// A push to the message URL from follower `openid` of account `gh_id`.
    pub fn authorizer(
        &self,
        gh_id: &str,
        openid: &str,
        plaintext: &str,
        timestamp: i64,
        nonce: &str,
    ) -> SignedPush {
        let encrypt = self.crypt.encrypt(plaintext);
        let body = authorizer_envelope(gh_id, &encrypt);
        SignedPush {
            query: self.query(timestamp, nonce, &encrypt, Some(openid)),
            body,
        }
    }

    fn query(&self, timestamp: i64, nonce: &str, encrypt: &str, openid: Option<&str>) -> String {
        let ts = timestamp.to_string();
        let signature = sha1_sorted(&[&self.token, &ts, nonce]);
        let msg_signature = sha1_sorted(&[&self.token, &ts, nonce, encrypt]);
        let mut q = url::form_urlencoded::Serializer::new(String::new());
        q.append_pair("signature", &signature);
        q.append_pair("timestamp", &ts);
        q.append_pair("nonce", nonce);
        if let Some(openid) = openid {
            q.append_pair("openid", openid);
        }
        q.append_pair("encrypt_type", "aes");
        q.append_pair("msg_signature", &msg_signature);
        q.finish()
    }
}

/// A text message from `openid` to `gh_id` (protocol.md §4).
pub fn text_message(
    gh_id: &str,
    openid: &str,
    create_time: i64,
    content: &str,
    msg_id: u64,
) -> String {
    format!(
        "<xml><ToUserName><![CDATA[{gh_id}]]></ToUserName><FromUserName><![CDATA[{openid}]]></FromUserName><CreateTime>{create_time}</CreateTime><MsgType><![CDATA[text]]></MsgType><Content><![CDATA[{content}]]></Content><MsgId>{msg_id}</MsgId></xml>"
    )
}

/// A `component_verify_ticket` push (protocol.md §3).
pub fn ticket_event(component_appid: &str, create_time: i64, ticket: &str) -> String {
    format!(
        "<xml><AppId><![CDATA[{component_appid}]]></AppId><CreateTime>{create_time}</CreateTime><InfoType><![CDATA[component_verify_ticket]]></InfoType><ComponentVerifyTicket><![CDATA[{ticket}]]></ComponentVerifyTicket></xml>"
    )
}
