//! Passive replies (protocol.md §1.4).

use quick_xml::escape::escape;

/// The encrypted passive-reply envelope. `encrypt` is base64 and `signature` hex, so neither
/// needs escaping; timestamp and nonce are echoed as given and are escaped for safety.
pub fn encrypted_reply_xml(
    encrypt: &str,
    msg_signature: &str,
    timestamp: &str,
    nonce: &str,
) -> String {
    format!(
        "<xml><Encrypt><![CDATA[{encrypt}]]></Encrypt><MsgSignature><![CDATA[{msg_signature}]]></MsgSignature><TimeStamp>{}</TimeStamp><Nonce><![CDATA[{}]]></Nonce></xml>",
        escape(timestamp),
        cdata_safe(nonce)
    )
}

/// The inner text reply to a user message. `to_user` is the request's FromUserName (the
/// follower's openid) and `from_user` the request's ToUserName (the account's gh_ id): swapping
/// them is a classic mistake.
pub fn text_reply_xml(to_user: &str, from_user: &str, create_time: i64, content: &str) -> String {
    format!(
        "<xml><ToUserName><![CDATA[{}]]></ToUserName><FromUserName><![CDATA[{}]]></FromUserName><CreateTime>{create_time}</CreateTime><MsgType><![CDATA[text]]></MsgType><Content><![CDATA[{}]]></Content></xml>",
        cdata_safe(to_user),
        cdata_safe(from_user),
        cdata_safe(content)
    )
}

/// Splits any `]]>` so that a value can never close its CDATA section early.
pub fn cdata_safe(value: &str) -> std::borrow::Cow<'_, str> {
    if value.contains("]]>") {
        value.replace("]]>", "]]]]><![CDATA[>").into()
    } else {
        value.into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xml::parse_fields;

    #[test]
    fn text_reply_round_trips_even_with_cdata_terminators() {
        let xml = text_reply_xml("openid", "gh_1", 5, "a]]>b");
        let f = parse_fields(&xml).unwrap();
        assert_eq!(f["Content"], "a]]>b");
        assert_eq!(f["ToUserName"], "openid");
        assert_eq!(f["FromUserName"], "gh_1");
    }
}
