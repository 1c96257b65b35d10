//! Teams' API keys for the gateway: each limited to appid patterns and API-path patterns, with a
//! request rate, stored hashed (SHA-256) in Redis, created, listed and revoked through the admin
//! API. The key itself is shown once, when it is created. A key also names where the team's web
//! pages live (`return_to` prefixes): the ingress's web login sends users back only there.
//! Shared by the gateway (which checks keys), the scheduler's admin API (which manages them)
//! and the ingress (web login).
//!
//! Patterns are globs where `*` matches any run of characters (`/` included): `*`,
//! `wx12ab*`, `cgi-bin/message/custom/send`, `wxa/*`. The component's own APIs
//! (`/v1/wechat/component/…`) count as the appid `component`, which `*` does not match: a team
//! reaches them only when its key names `component`.

use crate::redis::{Keys, RedisError, conn, failed};
use deadpool_redis::redis::AsyncCommands;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// What a key may do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Scope {
    /// Who uses it (a label in metrics and logs).
    pub team: String,
    /// Appid patterns; `component` for the component's own APIs.
    pub appids: Vec<String>,
    /// API-path patterns, without the leading `/` (`cgi-bin/message/custom/send`, `wxa/*`).
    pub paths: Vec<String>,
    /// Requests per second, across gateway replicas.
    pub rate_per_sec: u32,
    /// May read its accounts' raw `authorizer_access_token` (`GET /v1/tokens/{appid}`) and
    /// JS-SDK tickets (`GET /v1/tickets/{appid}/{type}`).
    #[serde(default)]
    pub raw_tokens: bool,
    /// Where web login may send users back (`/oauth/{appid}/start?return_to=`): URL prefixes,
    /// each `http(s)://host[:port]/path/` (ending in `/`, no query, no user info).
    #[serde(default)]
    pub return_to: Vec<String>,
}

/// A stored key: its scope, id and creation time (never the key).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyRecord {
    /// The first 12 hex digits of the key's hash: names it in the API, metrics and logs.
    pub id: String,
    #[serde(flatten)]
    pub scope: Scope,
    pub created_at: i64,
}

/// Why a scope cannot be stored.
#[derive(Debug, thiserror::Error)]
pub enum ScopeError {
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Redis(#[from] RedisError),
}

impl Scope {
    /// Checks what an administrator sent.
    pub fn validate(&self) -> Result<(), ScopeError> {
        let bad = |m: &str| Err(ScopeError::Invalid(m.into()));
        let label = |s: &str| {
            !s.is_empty()
                && s.len() <= 64
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        };
        if !label(&self.team) {
            return bad("team: 1-64 characters of [A-Za-z0-9-_.]");
        }
        if self.appids.is_empty() || self.paths.is_empty() {
            return bad("appids and paths: at least one pattern each");
        }
        let pattern = |p: &String| {
            !p.is_empty()
                && p.len() <= 200
                && !p.starts_with('/')
                && !p.contains("..")
                && p.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_./*".contains(c))
        };
        if !self.appids.iter().chain(&self.paths).all(pattern) {
            return bad("patterns: [A-Za-z0-9-_./*], no leading '/', no '..'");
        }
        if self.rate_per_sec == 0 || self.rate_per_sec > 100_000 {
            return bad("rate_per_sec: 1 to 100000");
        }
        if self.return_to.len() > 20 {
            return bad("return_to: at most 20 prefixes");
        }
        for p in &self.return_to {
            if let Err(e) = return_to_prefix(p) {
                return Err(ScopeError::Invalid(format!("return_to {p:?}: {e}")));
            }
        }
        Ok(())
    }

    /// The first of this key's `return_to` prefixes that `url` (already parsed and
    /// re-serialised: what the browser will be sent to) starts with.
    pub fn return_to_matching(&self, url: &url::Url) -> Option<&str> {
        let sent = url.as_str();
        self.return_to
            .iter()
            .find(|p| return_to_prefix(p).is_ok_and(|prefix| sent.starts_with(prefix.as_str())))
            .map(String::as_str)
    }

    /// May this key call `path` for `appid` (`component` for the component's APIs)?
    pub fn allows(&self, appid: &str, path: &str) -> bool {
        self.matching(appid, path).is_some()
    }

    /// The first path pattern that lets this key call `path` for `appid`, if any.
    pub fn matching(&self, appid: &str, path: &str) -> Option<&str> {
        let appid_ok = if appid == "component" {
            self.appids.iter().any(|p| p == "component")
        } else {
            self.appids.iter().any(|p| glob(p, appid))
        };
        if !appid_ok {
            return None;
        }
        self.paths
            .iter()
            .find(|p| glob(p, path))
            .map(String::as_str)
    }
}

/// A `return_to` prefix as stored: an absolute `http`/`https` URL with a host, no user info, no
/// query or fragment, its path ending in `/` (so `https://h5.example/` never matches
/// `https://h5.example.evil.com/`); returned re-serialised, as URLs are compared.
pub fn return_to_prefix(p: &str) -> Result<url::Url, &'static str> {
    if p.len() > 500 || p.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err("at most 500 characters, no spaces or control characters");
    }
    let u = url::Url::parse(p).map_err(|_| "not an absolute URL")?;
    if !matches!(u.scheme(), "https" | "http") || u.host_str().is_none_or(str::is_empty) {
        return Err("must be http(s)://host/…");
    }
    if !u.username().is_empty() || u.password().is_some() {
        return Err("must not carry user info");
    }
    if u.query().is_some() || u.fragment().is_some() {
        return Err("must not have a query or fragment");
    }
    if !u.path().ends_with('/') {
        return Err("its path must end with '/'");
    }
    Ok(u)
}

/// `*` matches any run of characters; everything else matches itself.
pub fn glob(pattern: &str, text: &str) -> bool {
    let (p, t) = (pattern.as_bytes(), text.as_bytes());
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && p[pi] == b'*' {
            star = Some((pi, ti));
            pi += 1;
        } else if pi < p.len() && p[pi] == t[ti] {
            pi += 1;
            ti += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == b'*')
}

fn hash(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

/// The keys of one platform in Redis.
#[derive(Clone)]
pub struct KeyStore {
    pool: crate::redis::Pool,
    keys: Keys,
}

impl KeyStore {
    pub fn new(pool: crate::redis::Pool, keys: Keys) -> Self {
        Self { pool, keys }
    }

    /// Stores a new key with `scope`; returns the key (shown this once) and its record.
    pub async fn create(&self, scope: Scope) -> Result<(String, KeyRecord), ScopeError> {
        scope.validate()?;
        let key = format!("wxpk_{}", hex::encode(rand::random::<[u8; 24]>()));
        let h = hash(&key);
        let record = KeyRecord {
            id: h[..12].to_owned(),
            scope,
            created_at: crate::unix_now(),
        };
        let mut c = conn(&self.pool, "storing an API key").await?;
        // The two keys live in different slots of a Redis Cluster, so no command writes both at
        // once: the index first, then the record that makes the key work. A failure between
        // them leaves an index entry with no record — listed as nothing, revocable, useless —
        // never a working key that no list shows and no revoke can find.
        let _: () = c
            .hset(self.keys.gateway_keys(), &record.id, &h)
            .await
            .map_err(failed("storing an API key"))?;
        let _: () = c
            .set(
                self.keys.gateway_key(&h),
                serde_json::to_string(&record).unwrap_or_default(),
            )
            .await
            .map_err(failed("storing an API key"))?;
        Ok((key, record))
    }

    /// Every key's record, by team then id.
    pub async fn list(&self) -> Result<Vec<KeyRecord>, RedisError> {
        let mut c = conn(&self.pool, "listing API keys").await?;
        let index: std::collections::HashMap<String, String> = c
            .hgetall(self.keys.gateway_keys())
            .await
            .map_err(failed("listing API keys"))?;
        if index.is_empty() {
            return Ok(Vec::new());
        }
        let stored: Vec<Option<String>> = deadpool_redis::redis::cmd("MGET")
            .arg(
                index
                    .values()
                    .map(|h| self.keys.gateway_key(h))
                    .collect::<Vec<_>>(),
            )
            .query_async(&mut c)
            .await
            .map_err(failed("listing API keys"))?;
        let mut out: Vec<KeyRecord> = stored
            .into_iter()
            .flatten()
            .filter_map(|s| serde_json::from_str(&s).ok())
            .collect();
        out.sort_by(|a, b| (&a.scope.team, &a.id).cmp(&(&b.scope.team, &b.id)));
        Ok(out)
    }

    /// Revokes the key `id`; false if there was none.
    pub async fn revoke(&self, id: &str) -> Result<bool, RedisError> {
        let mut c = conn(&self.pool, "revoking an API key").await?;
        let h: Option<String> = c
            .hget(self.keys.gateway_keys(), id)
            .await
            .map_err(failed("revoking an API key"))?;
        let Some(h) = h else { return Ok(false) };
        // The record first (it is what makes the key work), then the index entry: a failure
        // between them leaves a listed key that no longer works, and revoking it again finishes.
        let _: () = c
            .del(self.keys.gateway_key(&h))
            .await
            .map_err(failed("revoking an API key"))?;
        let _: () = c
            .hdel(self.keys.gateway_keys(), id)
            .await
            .map_err(failed("revoking an API key"))?;
        Ok(true)
    }

    /// The record of a presented key, if it is one.
    pub async fn find(&self, key: &str) -> Result<Option<KeyRecord>, RedisError> {
        if !key.starts_with("wxpk_") || key.len() > 128 {
            return Ok(None);
        }
        let mut c = conn(&self.pool, "checking an API key").await?;
        let stored: Option<String> = c
            .get(self.keys.gateway_key(&hash(key)))
            .await
            .map_err(failed("checking an API key"))?;
        Ok(stored.and_then(|s| serde_json::from_str(&s).ok()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        assert!(glob("*", "wx1234"));
        assert!(glob("wxa/*", "wxa/commit"));
        assert!(glob("wxa/*", "wxa/sec/order"));
        assert!(!glob("wxa/*", "wxa"));
        assert!(glob(
            "cgi-bin/message/custom/send",
            "cgi-bin/message/custom/send"
        ));
        assert!(!glob(
            "cgi-bin/message/custom/send",
            "cgi-bin/message/custom/sendx"
        ));
        assert!(glob("wx12*", "wx12abcd"));
        assert!(!glob("wx12*", "wx13abcd"));
        assert!(glob("cgi-bin/*/get", "cgi-bin/media/get"));
        assert!(glob("a*b*c", "aXXbYYc"));
        assert!(!glob("a*b*c", "aXXbYY"));
    }

    fn scope() -> Scope {
        Scope {
            team: "crm".into(),
            appids: vec!["*".into()],
            paths: vec!["cgi-bin/message/custom/send".into(), "wxa/*".into()],
            rate_per_sec: 10,
            raw_tokens: false,
            return_to: vec![],
        }
    }

    #[test]
    fn scopes_allow_what_they_name_and_the_component_only_by_name() {
        let s = scope();
        assert!(s.allows("wx1111222233334444", "cgi-bin/message/custom/send"));
        assert!(s.allows("wx1111222233334444", "wxa/commit"));
        assert!(!s.allows("wx1111222233334444", "cgi-bin/menu/create"));
        assert!(
            !s.allows("component", "wxa/commit"),
            "* is not the component"
        );
        let c = Scope {
            appids: vec!["component".into()],
            paths: vec!["sns/component/jscode2session".into()],
            ..scope()
        };
        assert!(c.allows("component", "sns/component/jscode2session"));
        assert!(!c.allows("wx1111222233334444", "sns/component/jscode2session"));
    }

    #[test]
    fn invalid_scopes_are_refused() {
        assert!(scope().validate().is_ok());
        for bad in [
            Scope {
                team: "".into(),
                ..scope()
            },
            Scope {
                team: "a b".into(),
                ..scope()
            },
            Scope {
                appids: vec![],
                ..scope()
            },
            Scope {
                paths: vec!["/cgi-bin/x".into()],
                ..scope()
            },
            Scope {
                paths: vec!["cgi-bin/../x".into()],
                ..scope()
            },
            Scope {
                rate_per_sec: 0,
                ..scope()
            },
        ] {
            assert!(bad.validate().is_err(), "{bad:?}");
        }
    }
}
