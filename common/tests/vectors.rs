//! Every known-good vector of `shared/vectors/crypto.json`, byte for byte, in both directions
//! where the random prefix is known.

use common::crypto::MsgCrypt;
use common::xml::FieldSource;
use common::xml::envelope::Envelope;
use secrecy::SecretString;
use serde_json::Value;
use std::path::PathBuf;

fn manifest_path(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(rel)
}

/// The vectors committed beside this test (a copy of `../shared/vectors/crypto.json`, so a
/// clone without `shared/` still runs them).
fn vectors() -> Vec<Value> {
    let text = std::fs::read_to_string(manifest_path("tests/data/crypto.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn s<'a>(v: &'a Value, key: &str) -> &'a str {
    v[key]
        .as_str()
        .unwrap_or_else(|| panic!("vector field {key}"))
}

#[test]
fn committed_copy_matches_shared_when_present() {
    let shared = manifest_path("../../shared/vectors/crypto.json");
    if let Ok(text) = std::fs::read_to_string(&shared) {
        let shared: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(
            shared,
            Value::Array(vectors()),
            "update common/tests/data/crypto.json"
        );
    }
}

#[test]
fn every_vector_passes() {
    let all = vectors();
    assert_eq!(
        all.len(),
        4,
        "expected the four vectors of protocol.md §1.5"
    );
    for v in &all {
        let name = s(v, "name");
        let crypt = MsgCrypt::new(
            SecretString::from(s(v, "token")),
            s(v, "encoding_aes_key"),
            s(v, "appid"),
        )
        .unwrap();
        let (ts, nonce, encrypt) = (s(v, "timestamp"), s(v, "nonce"), s(v, "encrypt"));

        // msg_signature, both computed and verified
        assert_eq!(
            crypt.msg_signature(ts, nonce, encrypt),
            s(v, "msg_signature"),
            "{name}"
        );
        if let Some(sig) = v["signature"].as_str() {
            assert_eq!(crypt.signature(ts, nonce), sig, "{name}");
            crypt.verify_signature(ts, nonce, sig).unwrap();
        }

        // decrypt direction
        let plain = crypt
            .verify_and_decrypt(ts, nonce, encrypt, s(v, "msg_signature"))
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(plain, s(v, "plaintext"), "{name}");

        // encrypt direction, byte for byte
        if let Some(random) = v["random"].as_str() {
            let random: [u8; 16] = random.as_bytes().try_into().unwrap();
            assert_eq!(
                crypt.encrypt_with_random(s(v, "plaintext"), &random),
                encrypt,
                "{name}"
            );
            let reply = crypt.encrypt_reply_with_random(s(v, "plaintext"), ts, nonce, &random);
            let parsed = common::xml::parse_fields(&reply).unwrap();
            assert_eq!(parsed["Encrypt"], encrypt);
            assert_eq!(parsed["MsgSignature"], s(v, "msg_signature"));
            assert_eq!(parsed["TimeStamp"], ts);
            assert_eq!(parsed["Nonce"], nonce);
        }
    }
}

#[test]
fn official_component_push_through_its_envelope() {
    let all = vectors();
    let v = all
        .iter()
        .find(|v| v["name"] == "official-message-push-component")
        .unwrap();
    // The URL names the authorizer, but the plaintext ends with the component appid.
    let body = common::xml::envelope::authorizer_envelope(s(v, "to_user_name"), s(v, "encrypt"));
    let env = Envelope::parse(body.as_bytes()).unwrap();
    let crypt = MsgCrypt::new(
        SecretString::from(s(v, "token")),
        s(v, "encoding_aes_key"),
        s(v, "appid"),
    )
    .unwrap();
    let plain = crypt
        .verify_and_decrypt(
            s(v, "timestamp"),
            s(v, "nonce"),
            env.encrypt(),
            s(v, "msg_signature"),
        )
        .unwrap();
    let push = common::xml::push::Push::parse(&plain).unwrap();
    assert_eq!(push.fields().leaf("Event"), Some("debug_demo"));
    assert_eq!(push.fields().leaf("debug_str"), Some("hello world"));
    // An authorizer-appid crypt must refuse it.
    let wrong = MsgCrypt::new(
        SecretString::from(s(v, "token")),
        s(v, "encoding_aes_key"),
        s(v, "authorizer_appid_in_url"),
    )
    .unwrap();
    assert!(wrong.decrypt(env.encrypt()).is_err());
}
