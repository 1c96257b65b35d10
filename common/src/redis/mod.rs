//! Redis: the connection pool and the key layout. Every key lives under
//! `{ns}:{component_appid}:` so that platforms, environments and tests never collide.
//!
//! # Slots (Redis Cluster)
//!
//! A Lua script's keys must share a slot, and no slot should hold every account. So the
//! accounts are spread over [`BUCKETS`] buckets by [`bucket`] of their appid, and every key of
//! one bucket carries the hash tag `{aNN}`: the account's record, its token lock, and the
//! bucket's share of the account set, the `due` schedule and its attempts
//! (`…:{a07}:authorizer:wx…`, `…:{a07}:due`). The component token and its lock carry `{p}`.
//! Other keys are used one at a time and carry no tag. On a single server the tags change
//! nothing but the names ([`migrate`] moves an older layout's keys).

use crate::ids::Namespace;

/// A Redis failure, with what was being done.
#[derive(Debug, thiserror::Error)]
pub enum RedisError {
    #[error("invalid WXPIPE_REDIS_URL: {0}")]
    Config(String),
    #[error("Redis unavailable while {what}: {detail}")]
    Unavailable { what: &'static str, detail: String },
}

pub mod pool;
pub use pool::{Connection, Pool};

/// A pool for `WXPIPE_REDIS_URL` (one server, a Redis Cluster or Sentinel: [`pool`]). Nothing
/// connects until the first use, so a process starts while Redis is down.
pub fn pool(url: &str) -> Result<Pool, RedisError> {
    Pool::new(url)
}

pub mod migrate;

/// How many buckets the accounts are spread over (fixed: it is part of every account key's
/// name, and the unit the scheduler replicas divide among themselves).
pub const BUCKETS: u16 = 64;

/// The bucket of an appid: FNV-1a (32-bit) of its bytes, modulo [`BUCKETS`]. Stable forever
/// (stored names depend on it).
pub fn bucket(appid: &str) -> u16 {
    let mut h: u32 = 0x811c_9dc5;
    for b in appid.as_bytes() {
        h ^= u32::from(*b);
        h = h.wrapping_mul(0x0100_0193);
    }
    (h % u32::from(BUCKETS)) as u16
}

/// The key layout of one platform.
#[derive(Debug, Clone)]
pub struct Keys {
    prefix: String,
}

impl Keys {
    pub fn new(ns: &Namespace, component_appid: &str) -> Self {
        Self {
            prefix: ns.redis_prefix(component_appid),
        }
    }

    /// The common prefix, `{ns}:{component_appid}:`.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// `…:dedup:{event id}`: the dedup state of one push (see the decrypt worker).
    pub fn dedup(&self, event_id: &str) -> String {
        format!("{}dedup:{event_id}", self.prefix)
    }
}

pub mod claim;
pub mod lock;

impl Keys {
    /// `…:ticket`: the latest `component_verify_ticket` (12 h TTL).
    pub fn ticket(&self) -> String {
        format!("{}ticket", self.prefix)
    }

    /// `…:ticket:last`: the last good ticket, kept without TTL (it keeps working if pushes stop).
    pub fn last_ticket(&self) -> String {
        format!("{}ticket:last", self.prefix)
    }

    /// `…:ticket:at`: when the last ticket was pushed (ms since the epoch).
    pub fn ticket_at(&self) -> String {
        format!("{}ticket:at", self.prefix)
    }

    /// `…:{p}:component_token`: `{"token","expires_at"}`, expiring with the token.
    pub fn component_token(&self) -> String {
        format!("{}{{p}}:component_token", self.prefix)
    }

    /// `…:{p}:lock:component_token`: the lock of the component token's refresh (in the token's
    /// slot: the fenced write checks it).
    pub fn component_lock(&self) -> String {
        format!("{}{{p}}:lock:component_token", self.prefix)
    }

    /// `…:{aNN}:` — the prefix of bucket `b`'s keys (one slot).
    fn in_bucket(&self, b: u16) -> String {
        format!("{}{{a{b:02}}}:", self.prefix)
    }

    /// `…:{aNN}:authorizer:{appid}`: a hash with the account's status, tokens and profile.
    pub fn authorizer(&self, appid: &str) -> String {
        format!("{}authorizer:{appid}", self.in_bucket(bucket(appid)))
    }

    /// `…:{aNN}:lock:authorizer:{appid}`: the lock of the account's token refresh (in its
    /// record's slot: the fenced write checks it).
    pub fn authorizer_lock(&self, appid: &str) -> String {
        format!("{}lock:authorizer:{appid}", self.in_bucket(bucket(appid)))
    }

    /// `…:{aNN}:authorizers`: bucket `b`'s share of the set of known authorizer appids.
    pub fn authorizers(&self, b: u16) -> String {
        format!("{}authorizers", self.in_bucket(b))
    }

    /// `…:{aNN}:due`: bucket `b`'s appids by the time (ms) their token should be refreshed.
    pub fn due(&self, b: u16) -> String {
        format!("{}due", self.in_bucket(b))
    }

    /// `…:{aNN}:due:attempts`: bucket `b`'s appid → refresh attempts taken from `due` since
    /// the last success (the backoff of a failing account).
    pub fn due_attempts(&self, b: u16) -> String {
        format!("{}due:attempts", self.in_bucket(b))
    }

    /// `…:{aNN}:tickets:{appid}`: a hash with the account's JS-SDK tickets (`jsapi`,
    /// `wx_card`), each with when it was first seen, when it really expires and when it was
    /// last fetched (`{kind}_first_seen`, `{kind}_expires_at`, `{kind}_fetched_at`).
    pub fn tickets(&self, appid: &str) -> String {
        format!("{}tickets:{appid}", self.in_bucket(bucket(appid)))
    }

    /// `…:{aNN}:lock:tickets:{appid}`: the lock of the account's ticket refresh (in its
    /// tickets' slot: the fenced write checks it).
    pub fn tickets_lock(&self, appid: &str) -> String {
        format!("{}lock:tickets:{appid}", self.in_bucket(bucket(appid)))
    }

    /// `…:{aNN}:ticket_due`: bucket `b`'s appids by the time (ms) their tickets should be
    /// fetched.
    pub fn ticket_due(&self, b: u16) -> String {
        format!("{}ticket_due", self.in_bucket(b))
    }

    /// `…:{aNN}:ticket_due:attempts`: bucket `b`'s appid → ticket attempts since the last
    /// success (the backoff of a failing account).
    pub fn ticket_due_attempts(&self, b: u16) -> String {
        format!("{}ticket_due:attempts", self.in_bucket(b))
    }

    /// `…:schedulers`: the live scheduler replicas by when they last announced themselves (ms).
    pub fn schedulers(&self) -> String {
        format!("{}schedulers", self.prefix)
    }

    /// `…:{aNN}:lease`: which scheduler replica holds bucket `b` (see the scheduler's
    /// partitioning).
    pub fn bucket_lease(&self, b: u16) -> String {
        format!("{}lease", self.in_bucket(b))
    }

    /// `…:quota:{api}`: WeChat's daily quota of `api` is used up (45009) until this expires
    /// (Beijing midnight) or an operator clears it.
    pub fn quota(&self, api: &str) -> String {
        format!("{}quota:{api}", self.prefix)
    }

    /// `…:component_token:failures`: consecutive failures of the component token and when the
    /// next attempt may be made (shared by every replica and caller).
    pub fn component_failures(&self) -> String {
        format!("{}component_token:failures", self.prefix)
    }

    /// `…:lock:{name}`: a distributed lock.
    pub fn lock(&self, name: &str) -> String {
        format!("{}lock:{name}", self.prefix)
    }

    /// `…:authcode:{code}`: the exchange-once state of an authorization code.
    pub fn auth_code(&self, code: &str) -> String {
        format!("{}authcode:{code}", self.prefix)
    }

    /// `…:authstate:{state}`: an authorization flow started on our page (single use).
    pub fn auth_state(&self, state: &str) -> String {
        format!("{}authstate:{state}", self.prefix)
    }

    /// `…:oauth:state:{state}`: a web login started on the ingress, until WeChat sends the
    /// user back (single use, 10 minutes).
    pub fn oauth_state(&self, state: &str) -> String {
        format!("{}oauth:state:{state}", self.prefix)
    }

    /// `…:oauth:result:{code}`: who logged in, until the team redeems the one-time code
    /// (single use, 5 minutes).
    pub fn oauth_result(&self, code: &str) -> String {
        format!("{}oauth:result:{code}", self.prefix)
    }

    /// `…:procs`: live processes by when they last announced themselves (ms), see
    /// [`crate::beacon`].
    pub fn procs(&self) -> String {
        format!("{}procs", self.prefix)
    }

    /// `…:proc:{id}`: one process's last announcement (its role and counters), short-lived.
    pub fn proc(&self, id: &str) -> String {
        format!("{}proc:{id}", self.prefix)
    }

    /// `…:gateway:key:{sha256 of the key}`: a team's API key for the gateway (its scope).
    pub fn gateway_key(&self, hash: &str) -> String {
        format!("{}gateway:key:{hash}", self.prefix)
    }

    /// `…:gateway:keys`: key id → the hash its record is stored under.
    pub fn gateway_keys(&self) -> String {
        format!("{}gateway:keys", self.prefix)
    }

    /// `…:sync_reply:appids`: accounts whose pushes wait for a passive reply, set at run time
    /// (`*` for every account).
    pub fn sync_reply_appids(&self) -> String {
        format!("{}sync_reply:appids", self.prefix)
    }

    /// `…:gauges`: the accounts' summary one scheduler replica makes per gauge interval for
    /// every replica's gauges (`token::store::summary`).
    pub fn gauges(&self) -> String {
        format!("{}gauges", self.prefix)
    }

    /// `…:ratelimit:{name}`: a rate-limit marker.
    pub fn rate_limit(&self, name: &str) -> String {
        format!("{}ratelimit:{name}", self.prefix)
    }
}

/// Gets a pooled connection within 2 s.
pub async fn conn(
    pool: &crate::redis::Pool,
    what: &'static str,
) -> Result<crate::redis::Connection, RedisError> {
    match tokio::time::timeout(std::time::Duration::from_secs(2), pool.get()).await {
        Ok(Ok(c)) => Ok(c),
        Ok(Err(detail)) => Err(RedisError::Unavailable { what, detail }),
        Err(_) => Err(RedisError::Unavailable {
            what,
            detail: "no connection within 2 s".into(),
        }),
    }
}

/// Maps a command error.
pub fn failed(what: &'static str) -> impl FnOnce(deadpool_redis::redis::RedisError) -> RedisError {
    move |e| RedisError::Unavailable {
        what,
        detail: e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_stable_and_spread() {
        // Stored key names depend on these values: they must never change.
        let fixed: Vec<u16> = [
            "wx0000000000000000",
            "wx570bc396a51b8ff8",
            "wxba5fad812f8e6fb9",
            "wx0123456789abcdef",
            "wx134c8103faa5a59e",
        ]
        .iter()
        .map(|a| bucket(a))
        .collect();
        assert_eq!(fixed, FIXED);
        let mut counts = vec![0u32; BUCKETS as usize];
        for i in 0..64_000u64 {
            counts[bucket(&format!("wx{:016x}", i * 7_919)) as usize] += 1;
        }
        let (lo, hi) = (counts.iter().min().unwrap(), counts.iter().max().unwrap());
        assert!(*lo > 800 && *hi < 1200, "{lo}..{hi}");
    }

    // FNV-1a 32 mod 64, computed independently (Python: h = 0x811c9dc5; per byte h ^= b,
    // h = h * 0x01000193 mod 2^32; h % 64).
    const FIXED: [u16; 5] = [10, 60, 52, 26, 30];

    #[test]
    fn account_keys_share_their_bucket_tag() {
        let keys = Keys::new(&"wxpipe".parse().unwrap(), "wx134c8103faa5a59e");
        let appid = "wx570bc396a51b8ff8";
        // Its bucket is 60 (FIXED above): the tag is spelled out, not derived from `bucket`.
        let tag = "{a60}";
        let b = 60;
        for k in [
            keys.authorizer(appid),
            keys.authorizer_lock(appid),
            keys.due(b),
            keys.due_attempts(b),
            keys.authorizers(b),
            keys.bucket_lease(b),
            keys.tickets(appid),
            keys.tickets_lock(appid),
            keys.ticket_due(b),
            keys.ticket_due_attempts(b),
        ] {
            assert!(k.starts_with("wxpipe:wx134c8103faa5a59e:"), "{k}");
            assert!(k.contains(tag), "{k}");
        }
        assert!(keys.component_token().contains("{p}"));
        assert!(keys.component_lock().contains("{p}"));
    }
}
