//! Bad input never panics (issue 9): every parser that takes bytes from the network, the
//! broker or WeChat gets arbitrary input here — random bytes, mutations of real pushes, nesting
//! deeper than the limit, huge attributes — and must answer with a value or a typed error.
//!
//! The test command runs `WXPIPE_FUZZ_CASES` cases per target (default 256); `scripts/fuzz`
//! runs many more, bounded in time, and prints the counts.

use common::crypto::MsgCrypt;
use common::event;
use common::wire::dead::DeadLetter;
use common::wire::raw::RawPush;
use common::xml::envelope::Envelope;
use common::xml::push::Push;
use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable};
use proptest::prelude::*;

fn cases() -> u32 {
    std::env::var("WXPIPE_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256)
}

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: cases(),
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

fn crypt() -> MsgCrypt {
    MsgCrypt::new(
        "AAAAA".to_owned().into(),
        &"A".repeat(43),
        "wx134c8103faa5a59e",
    )
    .unwrap()
}

const TEXT: &str = "<xml><ToUserName><![CDATA[gh_1]]></ToUserName><FromUserName><![CDATA[o1]]></FromUserName><CreateTime>1700000000</CreateTime><MsgType><![CDATA[text]]></MsgType><Content><![CDATA[hi]]></Content><MsgId>42</MsgId></xml>";
const TICKET: &str = "<xml><AppId>wx134c8103faa5a59e</AppId><CreateTime>7</CreateTime><InfoType>component_verify_ticket</InfoType><ComponentVerifyTicket>T</ComponentVerifyTicket></xml>";

/// A real document with some bytes replaced, inserted or removed.
fn mutated(base: &'static str) -> impl Strategy<Value = Vec<u8>> {
    (
        proptest::collection::vec((any::<usize>(), any::<u8>(), 0u8..3), 1..8),
        Just(base),
    )
        .prop_map(|(edits, base)| {
            let mut b = base.as_bytes().to_vec();
            for (at, byte, kind) in edits {
                let i = at % (b.len() + 1);
                match kind {
                    0 if i < b.len() => b[i] = byte,
                    1 => b.insert(i, byte),
                    _ if i < b.len() => {
                        b.remove(i);
                    }
                    _ => {}
                }
            }
            b
        })
}

/// Every step a decrypt worker takes on a plaintext; none may panic.
fn through_the_pipeline(plain: &str) {
    if let Ok(push) = Push::parse(plain) {
        let a = event::address(&push, "wx134c8103faa5a59e", Some("wx0123456789abcdef"));
        let e = event::CloudEvent::new(&push, &a);
        let _ = serde_json::to_vec(&e);
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn envelopes_of_random_bytes(body in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = Envelope::parse(&body);
    }

    #[test]
    fn envelopes_mutated(body in mutated("<xml><ToUserName><![CDATA[gh_1]]></ToUserName><Encrypt><![CDATA[abc]]></Encrypt></xml>")) {
        let _ = Envelope::parse(&body);
    }

    #[test]
    fn plaintexts_mutated(body in prop_oneof![mutated(TEXT), mutated(TICKET)]) {
        through_the_pipeline(&String::from_utf8_lossy(&body));
    }

    #[test]
    fn plaintexts_of_random_text(s in "\\PC{0,300}") {
        through_the_pipeline(&s);
    }

    #[test]
    fn nesting_deeper_than_the_limit(depth in 0usize..200, leaf in "[a-z]{0,8}") {
        let mut xml = String::from("<xml>");
        for i in 0..depth { xml.push_str(&format!("<A{i}>")); }
        xml.push_str(&leaf);
        for i in (0..depth).rev() { xml.push_str(&format!("</A{i}>")); }
        xml.push_str("</xml>");
        let parsed = common::xml::parse_fields(&xml);
        if depth >= 16 { prop_assert!(parsed.is_err()); }
        through_the_pipeline(&xml);
    }

    #[test]
    fn huge_attributes_and_values(n in 0usize..200_000, c in "[a-zA-Z0-9&<>\"' ]") {
        let big = c.repeat(n.min(200_000));
        let xml = format!("<xml a=\"{big}\"><MsgType b='{big}'>text</MsgType><Content>{big}</Content></xml>");
        through_the_pipeline(&xml);
        let _ = Envelope::parse(xml.as_bytes());
    }

    #[test]
    fn ciphertexts_of_random_text(s in "[A-Za-z0-9+/=]{0,400}", sig in "[0-9a-f]{0,40}") {
        let c = crypt();
        let _ = c.decrypt(&s);
        let _ = c.verify_and_decrypt("1700000000", "n", &s, &sig);
    }

    #[test]
    fn ciphertexts_of_mutated_pushes(edits in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..6)) {
        let c = crypt();
        let mut enc = c.encrypt(TEXT).into_bytes();
        for (at, b) in edits {
            let i = at % enc.len();
            enc[i] = b;
        }
        let s = String::from_utf8_lossy(&enc);
        if let Ok(plain) = c.decrypt(&s) {
            through_the_pipeline(&plain);
        }
    }

    #[test]
    fn raw_headers_of_random_tables(
        entries in proptest::collection::vec(("[a-z_]{1,16}", "\\PC{0,40}", any::<i64>(), any::<bool>()), 0..12),
        key in "[a-z]{0,12}",
    ) {
        let mut t = FieldTable::default();
        for (k, v, n, text) in entries {
            let value = if text { AMQPValue::LongString(v.as_str().into()) } else { AMQPValue::LongLongInt(n) };
            t.insert(k.as_str().into(), value);
        }
        let props = BasicProperties::default().with_headers(t);
        let _ = RawPush::from_properties(&key, &props);
        let _ = RawPush::from_properties("authorizer", &props);
        let letter = DeadLetter::from_properties(&props);
        let _ = DeadLetter::strip(&letter.apply(&props));
    }
}
