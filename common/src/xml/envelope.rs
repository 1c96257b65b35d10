//! The outer, still-encrypted push envelopes (protocol.md §1.4).
//!
//! * authorizer messages: `<xml><ToUserName>gh_…</ToUserName><Encrypt>…</Encrypt></xml>`
//! * component events: `<xml><AppId>component appid</AppId><Encrypt>…</Encrypt></xml>`
//!
//! Only `Encrypt` matters for verification and decryption; the other field is kept for logs.

use super::{Document, XmlError, field_str, required_str};

/// A parsed push envelope: the document, read once; its fields are read from it in place
/// (the ingress and the decrypt worker parse one per push).
#[derive(Debug, Clone, PartialEq)]
pub struct Envelope {
    fields: Document,
}

impl Envelope {
    /// Parses a raw POST body. Non-UTF-8, non-XML, DOCTYPE, entities and a missing
    /// `Encrypt` are refused.
    pub fn parse(body: &[u8]) -> Result<Self, XmlError> {
        let fields = Document::parse_bytes(body)?;
        required_str(&fields, "Encrypt")?;
        Ok(Self { fields })
    }

    /// The base64 ciphertext exactly as sent (it is part of `msg_signature`).
    pub fn encrypt(&self) -> &str {
        // Checked present and non-empty by `parse`.
        field_str(&self.fields, "Encrypt").unwrap_or_default()
    }

    /// `ToUserName` (authorizer messages) or `AppId` (component events), when present.
    pub fn addressee(&self) -> Option<&str> {
        field_str(&self.fields, "ToUserName").or_else(|| field_str(&self.fields, "AppId"))
    }
}

/// Builds an authorizer-message envelope (used by tests and `wechat-sim`).
pub fn authorizer_envelope(to_user_name: &str, encrypt: &str) -> String {
    format!(
        "<xml><ToUserName><![CDATA[{to_user_name}]]></ToUserName><Encrypt><![CDATA[{encrypt}]]></Encrypt></xml>"
    )
}

/// Builds a component-event envelope (used by tests and `wechat-sim`).
pub fn component_envelope(component_appid: &str, encrypt: &str) -> String {
    format!(
        "<xml><AppId><![CDATA[{component_appid}]]></AppId><Encrypt><![CDATA[{encrypt}]]></Encrypt></xml>"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_envelopes_parse() {
        let e = Envelope::parse(authorizer_envelope("gh_1", "QUJD").as_bytes()).unwrap();
        assert_eq!(e.encrypt(), "QUJD");
        assert_eq!(e.addressee(), Some("gh_1"));
        let e = Envelope::parse(component_envelope("wx1", "QUJD").as_bytes()).unwrap();
        assert_eq!(e.addressee(), Some("wx1"));
        // whitespace between elements, as WeChat sends it
        let e = Envelope::parse(
            b"<xml>\n  <ToUserName>gh_1</ToUserName>\n  <Encrypt>QUJD</Encrypt>\n</xml>",
        )
        .unwrap();
        assert_eq!(e.encrypt(), "QUJD");
    }

    #[test]
    fn bad_bodies_are_refused() {
        assert_eq!(Envelope::parse(b""), Err(XmlError::Empty));
        assert_eq!(Envelope::parse(b"\xff\xfe<xml/>"), Err(XmlError::NotUtf8));
        assert_eq!(
            Envelope::parse(b"<xml><ToUserName>x</ToUserName></xml>"),
            Err(XmlError::MissingField("Encrypt"))
        );
        assert!(matches!(
            Envelope::parse(b"not xml at all"),
            Err(XmlError::Malformed(_))
        ));
        assert!(matches!(
            Envelope::parse(b"<xml><Encrypt>abc</Encrypt>"),
            Err(XmlError::Malformed(_))
        ));
        assert!(matches!(
            Envelope::parse(b"<xml><Encrypt>abc</Wrong></xml>"),
            Err(XmlError::Malformed(_))
        ));
        let xxe = br#"<?xml version="1.0"?><!DOCTYPE x [<!ENTITY e SYSTEM "file:///etc/passwd">]><xml><Encrypt>&e;</Encrypt></xml>"#;
        assert_eq!(Envelope::parse(xxe), Err(XmlError::DocType));
        assert_eq!(
            Envelope::parse(b"<xml><Encrypt>&e;</Encrypt></xml>"),
            Err(XmlError::Entity("e".into()))
        );
        assert_eq!(
            Envelope::parse(b"<xml><Encrypt>a</Encrypt></xml><xml/>"),
            Err(XmlError::TrailingContent)
        );
    }
}
