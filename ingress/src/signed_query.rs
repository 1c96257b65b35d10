//! The query string WeChat signs: `signature, timestamp, nonce, encrypt_type, msg_signature`
//! (plus `openid` on user messages), or `signature, timestamp, nonce, echostr` on a GET.
//!
//! Parsing checks shape only (present, bounded, hex where hex is due); the freshness window and
//! the signatures are checked by the handler.

use std::time::Duration;

/// Longest value accepted for any parameter (WeChat's are far shorter).
const MAX_VALUE_LEN: usize = 128;
/// Longest `echostr` accepted.
const MAX_ECHOSTR_LEN: usize = 512;

/// A refused query, with a one-line reason safe to send back.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QueryError {
    #[error("query parameter {0} is missing")]
    Missing(&'static str),
    #[error("query parameter {0} is malformed")]
    Malformed(&'static str),
    #[error("query parameter {0} is given twice")]
    Duplicate(&'static str),
    #[error("encrypt_type must be aes (only safe mode is supported)")]
    NotSafeMode,
}

/// The signed parameters of a push or of a URL verification.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SignedQuery {
    pub timestamp: String,
    pub nonce: String,
    pub signature: Option<String>,
    pub msg_signature: Option<String>,
    pub encrypt_type: Option<String>,
    pub openid: Option<String>,
    pub echostr: Option<String>,
}

impl SignedQuery {
    pub fn parse(raw: Option<&str>) -> Result<Self, QueryError> {
        let mut q = SignedQuery::default();
        let (mut timestamp, mut nonce) = (None, None);
        for (key, value) in url::form_urlencoded::parse(raw.unwrap_or_default().as_bytes()) {
            let (slot, name, limit): (&mut Option<String>, &'static str, usize) = match key.as_ref()
            {
                "timestamp" => (&mut timestamp, "timestamp", MAX_VALUE_LEN),
                "nonce" => (&mut nonce, "nonce", MAX_VALUE_LEN),
                "signature" => (&mut q.signature, "signature", MAX_VALUE_LEN),
                "msg_signature" => (&mut q.msg_signature, "msg_signature", MAX_VALUE_LEN),
                "encrypt_type" => (&mut q.encrypt_type, "encrypt_type", MAX_VALUE_LEN),
                "openid" => (&mut q.openid, "openid", MAX_VALUE_LEN),
                "echostr" => (&mut q.echostr, "echostr", MAX_ECHOSTR_LEN),
                _ => continue,
            };
            if slot.is_some() {
                return Err(QueryError::Duplicate(name));
            }
            if value.is_empty() || value.len() > limit || value.chars().any(char::is_control) {
                return Err(QueryError::Malformed(name));
            }
            *slot = Some(value.into_owned());
        }
        q.timestamp = timestamp.ok_or(QueryError::Missing("timestamp"))?;
        q.nonce = nonce.ok_or(QueryError::Missing("nonce"))?;
        if q.timestamp.len() > 12 || !q.timestamp.bytes().all(|b| b.is_ascii_digit()) {
            return Err(QueryError::Malformed("timestamp"));
        }
        for (name, sig) in [
            ("signature", &q.signature),
            ("msg_signature", &q.msg_signature),
        ] {
            if let Some(sig) = sig
                && (sig.len() != 40 || !sig.bytes().all(|b| b.is_ascii_hexdigit()))
            {
                return Err(QueryError::Malformed(name));
            }
        }
        if let Some(t) = &q.encrypt_type
            && !t.eq_ignore_ascii_case("aes")
        {
            return Err(QueryError::NotSafeMode);
        }
        Ok(q)
    }

    /// The timestamp as seconds (it is all digits, at most 12 of them).
    pub fn timestamp_secs(&self) -> i64 {
        self.timestamp.parse().unwrap_or(i64::MAX)
    }

    /// True when the timestamp is within `window` of `now`.
    pub fn is_fresh(&self, now: i64, window: Duration) -> bool {
        self.timestamp_secs().abs_diff(now) <= window.as_secs()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SIG: &str = "cc0c594499c1634947d5b502f158ee518947db27";

    #[test]
    fn official_example_parses() {
        let raw = format!(
            "signature={SIG}&timestamp=1715943329&nonce=1590219412&openid=o9Ag&encrypt_type=aes&msg_signature={SIG}"
        );
        let q = SignedQuery::parse(Some(&raw)).unwrap();
        assert_eq!(q.timestamp, "1715943329");
        assert_eq!(q.openid.as_deref(), Some("o9Ag"));
        assert_eq!(q.msg_signature.as_deref(), Some(SIG));
        assert!(q.is_fresh(1715943329 + 300, Duration::from_secs(300)));
        assert!(!q.is_fresh(1715943329 + 301, Duration::from_secs(300)));
        assert!(!q.is_fresh(1715943329 - 301, Duration::from_secs(300)));
    }

    #[test]
    fn malformed_queries_are_refused() {
        assert_eq!(
            SignedQuery::parse(None),
            Err(QueryError::Missing("timestamp"))
        );
        assert_eq!(
            SignedQuery::parse(Some("timestamp=1")),
            Err(QueryError::Missing("nonce"))
        );
        assert_eq!(
            SignedQuery::parse(Some("timestamp=1x&nonce=2")),
            Err(QueryError::Malformed("timestamp"))
        );
        assert_eq!(
            SignedQuery::parse(Some("timestamp=1&nonce=2&msg_signature=abc")),
            Err(QueryError::Malformed("msg_signature"))
        );
        assert_eq!(
            SignedQuery::parse(Some("timestamp=1&nonce=2&encrypt_type=raw")),
            Err(QueryError::NotSafeMode)
        );
        assert_eq!(
            SignedQuery::parse(Some("timestamp=1&timestamp=2&nonce=2")),
            Err(QueryError::Duplicate("timestamp"))
        );
        assert_eq!(
            SignedQuery::parse(Some("timestamp=1&nonce=")),
            Err(QueryError::Malformed("nonce"))
        );
        let long = "n".repeat(200);
        assert_eq!(
            SignedQuery::parse(Some(&format!("timestamp=1&nonce={long}"))),
            Err(QueryError::Malformed("nonce"))
        );
        assert_eq!(
            SignedQuery::parse(Some("timestamp=99999999999999999999&nonce=1")),
            Err(QueryError::Malformed("timestamp"))
        );
    }
}
