//! WXBizMsgCrypt, WeChat's "safe mode" message crypto (protocol.md §1).
//!
//! * Signatures are SHA-1 over the byte-wise sorted, concatenated parts, in lowercase hex:
//!   `signature = sha1(sort[token, timestamp, nonce])`, and
//!   `msg_signature = sha1(sort[token, timestamp, nonce, Encrypt])`.
//! * The key is `base64(EncodingAESKey + "=")` (32 bytes); the IV is its first 16 bytes.
//! * The plaintext is `random(16) ‖ u32be(len(msg)) ‖ msg ‖ appid`, PKCS#7-padded to a multiple
//!   of **32** (not the AES block size), AES-256-CBC encrypted without library padding, and
//!   base64-encoded with `=` padding.
//!
//! Decryption is strict: every step that a sloppy SDK skips (length a multiple of 32, every pad
//! byte checked, the length field within bounds, the trailing appid equal to ours) is an error
//! here, with its own [`CryptoError`] variant. Nothing in an error names a secret.

use aes::Aes256;
use aes::cipher::{BlockDecryptMut, BlockEncryptMut, KeyIvInit, block_padding::NoPadding};
use base64::Engine as _;
use base64::alphabet::STANDARD;
use base64::engine::DecodePaddingMode;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};
use rand::Rng;
use rand::distr::Alphanumeric;
use secrecy::{ExposeSecret, SecretString};
use sha1::{Digest, Sha1};
use std::fmt;
use subtle::ConstantTimeEq;

/// Length of the random prefix of every plaintext.
pub const RANDOM_LEN: usize = 16;
/// WeChat's PKCS#7 block size (twice the AES block size).
const PAD_BLOCK: usize = 32;

/// Standard alphabet, `=` padding required on encode and accepted-or-absent on decode, and
/// trailing bits allowed: the 43rd character of a real EncodingAESKey carries two extra bits
/// which are non-zero in many real keys, and the default engine rejects them.
const KEY_ENGINE: GeneralPurpose = GeneralPurpose::new(
    &STANDARD,
    GeneralPurposeConfig::new()
        .with_decode_allow_trailing_bits(true)
        .with_decode_padding_mode(DecodePaddingMode::Indifferent),
);
/// The engine for `Encrypt` payloads: standard, padded, strict.
const PAYLOAD_ENGINE: GeneralPurpose = base64::engine::general_purpose::STANDARD;

type Aes256CbcEnc = cbc::Encryptor<Aes256>;
type Aes256CbcDec = cbc::Decryptor<aes::Aes256Dec>;

/// Everything that can go wrong verifying or decrypting a push. No variant carries a secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CryptoError {
    #[error("the EncodingAESKey must be 43 base64 characters (got {0} characters)")]
    KeyLength(usize),
    #[error("the EncodingAESKey is not valid base64")]
    KeyBase64,
    #[error("signature input has an empty part ({0})")]
    EmptyPart(&'static str),
    #[error("signature mismatch")]
    BadSignature,
    #[error("Encrypt is not valid base64")]
    BadBase64,
    #[error("ciphertext length {0} is not a positive multiple of 32")]
    BadLength(usize),
    #[error("PKCS#7 padding is invalid")]
    BadPadding,
    #[error("message length field is out of bounds")]
    BadMessageLength,
    #[error("decrypted message is not UTF-8")]
    NotUtf8,
    #[error("trailing appid {found:?} does not match the component appid {expected:?}")]
    AppIdMismatch { expected: String, found: String },
}

/// The 32-byte AES key derived from a 43-character EncodingAESKey. Its `Debug` is redacted.
#[derive(Clone)]
pub struct AesKey([u8; 32]);

impl AesKey {
    /// Parses an EncodingAESKey (43 characters, as shown in the WeChat console).
    pub fn from_encoding_aes_key(encoding_aes_key: &str) -> Result<Self, CryptoError> {
        let trimmed = encoding_aes_key.trim();
        if trimmed.len() != 43 {
            return Err(CryptoError::KeyLength(trimmed.chars().count()));
        }
        let bytes = KEY_ENGINE
            .decode(format!("{trimmed}="))
            .map_err(|_| CryptoError::KeyBase64)?;
        let key: [u8; 32] = bytes.try_into().map_err(|_| CryptoError::KeyBase64)?;
        Ok(Self(key))
    }

    fn iv(&self) -> &[u8] {
        &self.0[..16]
    }
}

impl fmt::Debug for AesKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AesKey([redacted])")
    }
}

/// SHA-1 over the byte-wise sorted, concatenated parts, in lowercase hex.
pub fn sha1_sorted(parts: &[&str]) -> String {
    hex::encode(sha1_sorted_digest(parts))
}

/// [`sha1_sorted`] as the 20 bytes of the digest (no allocation for up to 8 parts).
fn sha1_sorted_digest(parts: &[&str]) -> [u8; 20] {
    let mut on_stack = [""; 8];
    let mut on_heap;
    let sorted: &mut [&str] = if parts.len() <= on_stack.len() {
        on_stack[..parts.len()].copy_from_slice(parts);
        &mut on_stack[..parts.len()]
    } else {
        on_heap = parts.to_vec();
        &mut on_heap
    };
    sorted.sort_unstable_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
    let mut hasher = Sha1::new();
    for part in sorted.iter() {
        hasher.update(part.as_bytes());
    }
    hasher.finalize().into()
}

/// Compares a received signature (hex, either case, surrounding spaces ignored) with the
/// expected digest in constant time, without allocating.
fn signature_matches(expected: &[u8; 20], received: &str) -> bool {
    let mut hex_expected = [0u8; 40];
    // Cannot fail: 20 bytes are 40 hex digits.
    if hex::encode_to_slice(expected, &mut hex_expected).is_err() {
        return false;
    }
    let received = received.trim().as_bytes();
    if received.len() != hex_expected.len() {
        return false;
    }
    let mut lower = [0u8; 40];
    for (l, r) in lower.iter_mut().zip(received) {
        *l = r.to_ascii_lowercase();
    }
    hex_expected.ct_eq(&lower).into()
}

/// One platform's WXBizMsgCrypt: its Token, its AES key and the component appid that every
/// plaintext must end with (protocol.md §1.1: authorizer messages use the component's too).
#[derive(Clone)]
pub struct MsgCrypt {
    token: SecretString,
    key: AesKey,
    /// The decryption key schedule, expanded once (not per push).
    decrypt_key: aes::Aes256Dec,
    appid: String,
}

impl fmt::Debug for MsgCrypt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MsgCrypt")
            .field("token", &"[redacted]")
            .field("key", &self.key)
            .field("appid", &self.appid)
            .finish()
    }
}

impl MsgCrypt {
    pub fn new(
        token: SecretString,
        encoding_aes_key: &str,
        appid: impl Into<String>,
    ) -> Result<Self, CryptoError> {
        let key = AesKey::from_encoding_aes_key(encoding_aes_key)?;
        let decrypt_key = <aes::Aes256Dec as aes::cipher::KeyInit>::new_from_slice(&key.0)
            .map_err(|_| CryptoError::KeyBase64)?;
        Ok(Self {
            token,
            key,
            decrypt_key,
            appid: appid.into(),
        })
    }

    pub fn appid(&self) -> &str {
        &self.appid
    }

    /// `signature` of the URL verification and of every push's query.
    pub fn signature(&self, timestamp: &str, nonce: &str) -> String {
        sha1_sorted(&[self.token.expose_secret(), timestamp, nonce])
    }

    /// `msg_signature` over the `Encrypt` text exactly as sent.
    pub fn msg_signature(&self, timestamp: &str, nonce: &str, encrypt: &str) -> String {
        sha1_sorted(&[self.token.expose_secret(), timestamp, nonce, encrypt])
    }

    /// Checks `signature` in constant time. Empty parts are refused, as WxJava does.
    pub fn verify_signature(
        &self,
        timestamp: &str,
        nonce: &str,
        signature: &str,
    ) -> Result<(), CryptoError> {
        non_empty(&[
            ("timestamp", timestamp),
            ("nonce", nonce),
            ("signature", signature),
        ])?;
        let expected = sha1_sorted_digest(&[self.token.expose_secret(), timestamp, nonce]);
        if signature_matches(&expected, signature) {
            Ok(())
        } else {
            Err(CryptoError::BadSignature)
        }
    }

    /// Checks `msg_signature` in constant time. Empty parts are refused.
    pub fn verify_msg_signature(
        &self,
        timestamp: &str,
        nonce: &str,
        encrypt: &str,
        msg_signature: &str,
    ) -> Result<(), CryptoError> {
        non_empty(&[
            ("timestamp", timestamp),
            ("nonce", nonce),
            ("Encrypt", encrypt),
            ("msg_signature", msg_signature),
        ])?;
        let expected = sha1_sorted_digest(&[self.token.expose_secret(), timestamp, nonce, encrypt]);
        if signature_matches(&expected, msg_signature) {
            Ok(())
        } else {
            Err(CryptoError::BadSignature)
        }
    }

    /// Verifies `msg_signature`, then decrypts. The usual entry point for a push.
    pub fn verify_and_decrypt(
        &self,
        timestamp: &str,
        nonce: &str,
        encrypt: &str,
        msg_signature: &str,
    ) -> Result<String, CryptoError> {
        self.verify_msg_signature(timestamp, nonce, encrypt, msg_signature)?;
        self.decrypt(encrypt)
    }

    /// Strict decrypt of an `Encrypt` value; the trailing appid must be ours.
    pub fn decrypt(&self, encrypt: &str) -> Result<String, CryptoError> {
        self.open(encrypt, |msg, appid| {
            if appid != self.appid {
                return Err(CryptoError::AppIdMismatch {
                    expected: self.appid.clone(),
                    found: printable_prefix(appid),
                });
            }
            Ok(msg.to_owned())
        })
    }

    /// Decrypts and returns `(message, trailing appid)` without comparing the appid: for support
    /// tools that need to show what a push was encrypted for. Every other check still applies.
    pub fn decrypt_unchecked_appid(&self, encrypt: &str) -> Result<(String, String), CryptoError> {
        self.open(encrypt, |msg, appid| Ok((msg.to_owned(), appid.to_owned())))
    }

    /// Decodes, decrypts and splits an `Encrypt` value, then hands `(message, trailing appid)`
    /// to `take` while they are still borrowed from the one buffer.
    fn open<T>(
        &self,
        encrypt: &str,
        take: impl FnOnce(&str, &str) -> Result<T, CryptoError>,
    ) -> Result<T, CryptoError> {
        let mut buf = base64_simd::STANDARD
            .decode_to_vec(encrypt.trim().as_bytes())
            .map_err(|_| CryptoError::BadBase64)?;
        if buf.is_empty() || buf.len() % PAD_BLOCK != 0 {
            return Err(CryptoError::BadLength(buf.len()));
        }
        let len = buf.len();
        let plain = <Aes256CbcDec as aes::cipher::InnerIvInit>::inner_iv_slice_init(
            self.decrypt_key.clone(),
            self.key.iv(),
        )
        .map_err(|_| CryptoError::KeyBase64)?
        .decrypt_padded_mut::<NoPadding>(&mut buf)
        .map_err(|_| CryptoError::BadLength(len))?;
        let unpadded = strip_pkcs7(plain)?;
        if unpadded.len() < RANDOM_LEN + 4 {
            return Err(CryptoError::BadMessageLength);
        }
        let mut len_bytes = [0u8; 4];
        len_bytes.copy_from_slice(&unpadded[RANDOM_LEN..RANDOM_LEN + 4]);
        let msg_len = u32::from_be_bytes(len_bytes) as usize;
        let body = &unpadded[RANDOM_LEN + 4..];
        if msg_len > body.len() {
            return Err(CryptoError::BadMessageLength);
        }
        let (msg, appid) = body.split_at(msg_len);
        let msg = std::str::from_utf8(msg).map_err(|_| CryptoError::NotUtf8)?;
        let appid = std::str::from_utf8(appid).map_err(|_| CryptoError::NotUtf8)?;
        take(msg, appid)
    }

    /// Encrypts `msg` with a fresh random prefix (16 alphanumeric characters, as the SDKs do).
    pub fn encrypt(&self, msg: &str) -> String {
        self.encrypt_with_random(msg, &random_prefix())
    }

    /// Encrypts `msg` with the given 16-byte random prefix: reproducible output for tests.
    pub fn encrypt_with_random(&self, msg: &str, random: &[u8; RANDOM_LEN]) -> String {
        let body_len = RANDOM_LEN + 4 + msg.len() + self.appid.len();
        let pad = PAD_BLOCK - body_len % PAD_BLOCK;
        let mut buf = Vec::with_capacity(body_len + pad);
        buf.extend_from_slice(random);
        buf.extend_from_slice(&(msg.len() as u32).to_be_bytes());
        buf.extend_from_slice(msg.as_bytes());
        buf.extend_from_slice(self.appid.as_bytes());
        buf.resize(body_len + pad, pad as u8);
        let total = buf.len();
        // Cannot fail: the buffer length is a multiple of 32, hence of the AES block size.
        let cipher = Aes256CbcEnc::new_from_slices(&self.key.0, self.key.iv())
            .expect("AES-256 key is 32 bytes and IV 16")
            .encrypt_padded_mut::<NoPadding>(&mut buf, total)
            .expect("buffer is block-aligned");
        PAYLOAD_ENGINE.encode(cipher)
    }

    /// The complete encrypted passive reply (protocol.md §1.4), signed over its own
    /// TimeStamp, Nonce and Encrypt.
    pub fn encrypt_reply(&self, msg: &str, timestamp: &str, nonce: &str) -> String {
        self.encrypt_reply_with_random(msg, timestamp, nonce, &random_prefix())
    }

    /// [`Self::encrypt_reply`] with a fixed random prefix.
    pub fn encrypt_reply_with_random(
        &self,
        msg: &str,
        timestamp: &str,
        nonce: &str,
        random: &[u8; RANDOM_LEN],
    ) -> String {
        let encrypt = self.encrypt_with_random(msg, random);
        let signature = self.msg_signature(timestamp, nonce, &encrypt);
        crate::xml::reply::encrypted_reply_xml(&encrypt, &signature, timestamp, nonce)
    }
}

fn non_empty(parts: &[(&'static str, &str)]) -> Result<(), CryptoError> {
    match parts.iter().find(|(_, v)| v.is_empty()) {
        Some((name, _)) => Err(CryptoError::EmptyPart(name)),
        None => Ok(()),
    }
}

/// Removes WeChat's PKCS#7 padding (block 32), checking every pad byte.
fn strip_pkcs7(plain: &[u8]) -> Result<&[u8], CryptoError> {
    let pad = *plain.last().ok_or(CryptoError::BadPadding)? as usize;
    if pad == 0 || pad > PAD_BLOCK || pad > plain.len() {
        return Err(CryptoError::BadPadding);
    }
    let (body, padding) = plain.split_at(plain.len() - pad);
    if padding.iter().any(|&b| b as usize != pad) {
        return Err(CryptoError::BadPadding);
    }
    Ok(body)
}

/// 16 random alphanumeric bytes.
pub fn random_prefix() -> [u8; RANDOM_LEN] {
    let mut out = [0u8; RANDOM_LEN];
    let mut rng = rand::rng();
    for b in &mut out {
        *b = rng.sample(Alphanumeric);
    }
    out
}

/// At most 32 printable characters of an untrusted string, for error messages.
fn printable_prefix(s: &str) -> String {
    s.chars().filter(|c| !c.is_control()).take(32).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn crypt(token: &str, key: &str, appid: &str) -> MsgCrypt {
        MsgCrypt::new(SecretString::from(token), key, appid).unwrap()
    }

    #[test]
    fn sorted_sha1_check_value() {
        // silenceper util/signature_test.go
        assert_eq!(
            sha1_sorted(&["a", "b", "c"]),
            "a9993e364706816aba3e25717850c26c9cd0d89d"
        );
        assert_eq!(sha1_sorted(&["c", "a", "b"]), sha1_sorted(&["a", "b", "c"]));
    }

    #[test]
    fn key_with_nonzero_trailing_bits_is_accepted() {
        assert!(
            AesKey::from_encoding_aes_key("abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG").is_ok()
        );
        assert_eq!(
            AesKey::from_encoding_aes_key("short").unwrap_err(),
            CryptoError::KeyLength(5)
        );
        assert_eq!(
            AesKey::from_encoding_aes_key(&"!".repeat(43)).unwrap_err(),
            CryptoError::KeyBase64
        );
    }

    #[test]
    fn debug_never_shows_secrets() {
        let c = crypt("sekrit-token", &"A".repeat(43), "wx134c8103faa5a59e");
        let shown = format!("{c:?}");
        assert!(!shown.contains("sekrit"));
        assert!(shown.contains("redacted"));
    }

    #[test]
    fn strict_checks() {
        let c = crypt("t", &"A".repeat(43), "wx134c8103faa5a59e");
        assert_eq!(
            c.decrypt("not base64!!").unwrap_err(),
            CryptoError::BadBase64
        );
        assert_eq!(c.decrypt("").unwrap_err(), CryptoError::BadLength(0));
        // 16 bytes: a valid AES block but not a multiple of 32.
        let sixteen = PAYLOAD_ENGINE.encode([0u8; 16]);
        assert_eq!(c.decrypt(&sixteen).unwrap_err(), CryptoError::BadLength(16));
        // Another platform's ciphertext decrypts to garbage padding or a wrong appid.
        let other = crypt("t", &"B".repeat(43), "wx134c8103faa5a59e");
        let foreign = other.encrypt("hello");
        assert!(c.decrypt(&foreign).is_err());
        // Same key, other appid.
        let other_app = crypt("t", &"A".repeat(43), "wx0000000000000000");
        let err = c.decrypt(&other_app.encrypt("hello")).unwrap_err();
        assert!(matches!(err, CryptoError::AppIdMismatch { .. }), "{err:?}");
        let (msg, appid) = c
            .decrypt_unchecked_appid(&other_app.encrypt("hello"))
            .unwrap();
        assert_eq!(
            (msg.as_str(), appid.as_str()),
            ("hello", "wx0000000000000000")
        );
    }

    #[test]
    fn bad_padding_and_length_field_are_refused() {
        let c = crypt("t", &"A".repeat(43), "wxapp");
        let encrypt_raw = |plain: &[u8]| {
            let mut buf = plain.to_vec();
            let n = buf.len();
            let ct = Aes256CbcEnc::new_from_slices(&c.key.0, c.key.iv())
                .unwrap()
                .encrypt_padded_mut::<NoPadding>(&mut buf, n)
                .unwrap()
                .to_vec();
            PAYLOAD_ENGINE.encode(ct)
        };
        // pad byte 0
        assert_eq!(
            c.decrypt(&encrypt_raw(&[0u8; 32])).unwrap_err(),
            CryptoError::BadPadding
        );
        // pad byte 33
        assert_eq!(
            c.decrypt(&encrypt_raw(&[33u8; 32])).unwrap_err(),
            CryptoError::BadPadding
        );
        // last byte says 2 but the one before is not 2
        let mut p = [7u8; 32];
        p[31] = 2;
        p[30] = 3;
        assert_eq!(
            c.decrypt(&encrypt_raw(&p)).unwrap_err(),
            CryptoError::BadPadding
        );
        // length field larger than the body
        let mut p = vec![b'r'; 16];
        p.extend_from_slice(&1000u32.to_be_bytes());
        p.extend_from_slice(b"hi");
        let pad = 32 - p.len() % 32;
        p.resize(p.len() + pad, pad as u8);
        assert_eq!(
            c.decrypt(&encrypt_raw(&p)).unwrap_err(),
            CryptoError::BadMessageLength
        );
        // a whole block of padding leaves fewer than 20 bytes
        assert_eq!(
            c.decrypt(&encrypt_raw(&[32u8; 32])).unwrap_err(),
            CryptoError::BadMessageLength
        );
    }

    #[test]
    fn signatures_refuse_empty_parts_and_mismatches() {
        let c = crypt("tok", &"A".repeat(43), "wxapp");
        let good = c.signature("1", "2");
        assert!(c.verify_signature("1", "2", &good).is_ok());
        assert!(c.verify_signature("1", "2", &good.to_uppercase()).is_ok());
        assert_eq!(
            c.verify_signature("1", "3", &good),
            Err(CryptoError::BadSignature)
        );
        assert_eq!(
            c.verify_signature("", "2", &good),
            Err(CryptoError::EmptyPart("timestamp"))
        );
        assert_eq!(
            c.verify_msg_signature("1", "2", "", "x"),
            Err(CryptoError::EmptyPart("Encrypt"))
        );
    }

    proptest! {
        #[test]
        fn round_trip(msg in ".{0,600}", random in proptest::array::uniform16(any::<u8>())) {
            let c = crypt("tok", "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG", "wxb11529c136998cb6");
            let enc = c.encrypt_with_random(&msg, &random);
            prop_assert_eq!(c.decrypt(&enc).unwrap(), msg.clone());
            let sig = c.msg_signature("123", "n", &enc);
            prop_assert_eq!(c.verify_and_decrypt("123", "n", &enc, &sig).unwrap(), msg);
        }

        /// `Encrypt` is decoded with `base64-simd`; it must accept exactly what the `base64`
        /// crate's strict standard engine accepts (padding required, canonical last symbol, no
        /// whitespace), and decode it to the same bytes.
        #[test]
        fn payload_base64_as_strict_as_the_base64_crate(
            s in "[A-Za-z0-9+/]{0,70}={0,3}[A-Za-z0-9+/= \n.]{0,2}"
        ) {
            let simd = base64_simd::STANDARD.decode_to_vec(s.as_bytes()).ok();
            let strict = PAYLOAD_ENGINE.decode(s.as_bytes()).ok();
            prop_assert_eq!(simd, strict);
        }

        /// The same on real encodings, as they are and with one character replaced.
        #[test]
        fn payload_base64_agrees_on_encodings(
            bytes in proptest::collection::vec(any::<u8>(), 0..600),
            at in any::<proptest::sample::Index>(),
            with in proptest::sample::select(b"AQRgw+/=. \n".to_vec()),
            mutate in any::<bool>(),
        ) {
            let mut enc = PAYLOAD_ENGINE.encode(&bytes).into_bytes();
            if mutate && !enc.is_empty() {
                let i = at.index(enc.len());
                enc[i] = with;
            }
            let simd = base64_simd::STANDARD.decode_to_vec(&enc).ok();
            let strict = PAYLOAD_ENGINE.decode(&enc).ok();
            prop_assert_eq!(simd, strict);
        }

        #[test]
        fn arbitrary_input_never_panics(s in ".{0,200}") {
            let c = crypt("tok", &"A".repeat(43), "wxapp");
            let _ = c.decrypt(&s);
        }
    }
}
