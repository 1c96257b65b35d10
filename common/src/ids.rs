//! Validated identifiers: parse, don't validate. An [`AppId`] or a [`Namespace`] can only exist
//! if it is well-formed, so code that holds one never checks again.

use std::fmt;
use std::str::FromStr;

/// Why an identifier was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("an appid is `wx` followed by 16 lowercase hex digits")]
    AppId,
    #[error(
        "a namespace is 1 to 48 characters of a-z, 0-9, '-' and '_', starting with a letter or digit"
    )]
    Namespace,
}

/// A WeChat appid: `wx` followed by 16 lowercase hex digits.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AppId(String);

impl AppId {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// True when `s` has the shape of an appid.
    pub fn is_valid(s: &str) -> bool {
        s.len() == 18
            && s.starts_with("wx")
            && s.as_bytes()[2..]
                .iter()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(b))
    }
}

/// An `AppId` reads as the `str` it is (known to be well-formed), so it goes wherever a `&str`
/// does: a Redis key, a URL, a log field.
impl std::ops::Deref for AppId {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl serde::Serialize for AppId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl deadpool_redis::redis::ToRedisArgs for AppId {
    fn write_redis_args<W>(&self, out: &mut W)
    where
        W: ?Sized + deadpool_redis::redis::RedisWrite,
    {
        self.0.write_redis_args(out)
    }
}

impl deadpool_redis::redis::ToSingleRedisArg for AppId {}

impl FromStr for AppId {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if Self::is_valid(s) {
            Ok(Self(s.to_owned()))
        } else {
            Err(IdError::AppId)
        }
    }
}

impl fmt::Display for AppId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// `WXPIPE_NAMESPACE`: the prefix of every exchange, queue and Redis key, so that several
/// platforms, environments or parallel tests share one broker and one Redis.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Namespace(String);

impl Namespace {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// `{ns}.raw`: the exchange and the quorum queue of still-encrypted pushes.
    pub fn raw(&self) -> String {
        format!("{}.raw", self.0)
    }

    /// `{ns}.events`: the topic exchange of decoded events.
    pub fn events(&self) -> String {
        format!("{}.events", self.0)
    }

    /// `{ns}.business`: the queue of the platform's own handlers.
    pub fn business(&self) -> String {
        format!("{}.business", self.0)
    }

    /// `{ns}.releases`: audit results for the releases role (`weapp_audit_*` events).
    pub fn releases(&self) -> String {
        format!("{}.releases", self.0)
    }

    /// `{ns}.dlx`: the dead-letter exchange of every consumed queue.
    pub fn dlx(&self) -> String {
        format!("{}.dlx", self.0)
    }

    /// `{ns}.dead`: where dead letters wait for `workers dlq`.
    pub fn dead(&self) -> String {
        format!("{}.dead", self.0)
    }

    /// `{ns}:{component_appid}:` — the prefix of every Redis key of one platform.
    pub fn redis_prefix(&self, component_appid: &str) -> String {
        format!("{}:{}:", self.0, component_appid)
    }
}

impl FromStr for Namespace {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let ok = (1..=48).contains(&s.len())
            && s.as_bytes()[0].is_ascii_alphanumeric()
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
        if ok {
            Ok(Self(s.to_owned()))
        } else {
            Err(IdError::Namespace)
        }
    }
}

impl fmt::Display for Namespace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn appids() {
        assert!("wx134c8103faa5a59e".parse::<AppId>().is_ok());
        for bad in [
            "",
            "wx134c8103faa5a59",
            "wx134c8103faa5a59eX",
            "wx134C8103FAA5A59E",
            "gh_134c8103faa5a5",
            "wx134c8103faa5a59g",
            "../etc/passwd",
        ] {
            assert_eq!(bad.parse::<AppId>(), Err(IdError::AppId), "{bad}");
        }
    }

    #[test]
    fn namespaces() {
        let ns: Namespace = "wxpipe".parse().unwrap();
        assert_eq!(ns.raw(), "wxpipe.raw");
        assert_eq!(ns.redis_prefix("wx1"), "wxpipe:wx1:");
        for bad in ["", "-x", "A", "a.b", "a b", &"a".repeat(49)] {
            assert!(bad.parse::<Namespace>().is_err(), "{bad}");
        }
    }
}
