//! Redis: the connection pool and the key layout. Every key lives under
//! `{ns}:{component_appid}:` so that platforms, environments and tests never collide.

use crate::ids::Namespace;

/// A Redis failure, with what was being done.
#[derive(Debug, thiserror::Error)]
pub enum RedisError {
    #[error("invalid WXPIPE_REDIS_URL: {0}")]
    Config(String),
    #[error("Redis unavailable while {what}: {detail}")]
    Unavailable { what: &'static str, detail: String },
}

/// A pool of multiplexed connections. Nothing connects until the first use, so a process starts
/// while Redis is down.
pub fn pool(url: &str) -> Result<deadpool_redis::Pool, RedisError> {
    deadpool_redis::Config::from_url(url)
        .create_pool(Some(deadpool_redis::Runtime::Tokio1))
        .map_err(|e| RedisError::Config(e.to_string()))
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

    /// `…:component_token`: `{"token","expires_at"}`, expiring with the token.
    pub fn component_token(&self) -> String {
        format!("{}component_token", self.prefix)
    }

    /// `…:authorizer:{appid}`: a hash with the account's status, tokens and profile.
    pub fn authorizer(&self, appid: &str) -> String {
        format!("{}authorizer:{appid}", self.prefix)
    }

    /// `…:authorizers`: the set of every known authorizer appid.
    pub fn authorizers(&self) -> String {
        format!("{}authorizers", self.prefix)
    }

    /// `…:due`: authorizer appids by the time (ms) their token should be refreshed.
    pub fn due(&self) -> String {
        format!("{}due", self.prefix)
    }

    /// `…:due:attempts`: a hash of appid → refresh attempts taken from `due` since the last
    /// success (the backoff of a failing account).
    pub fn due_attempts(&self) -> String {
        format!("{}due:attempts", self.prefix)
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

    /// `…:ratelimit:{name}`: a rate-limit marker.
    pub fn rate_limit(&self, name: &str) -> String {
        format!("{}ratelimit:{name}", self.prefix)
    }
}

/// Gets a pooled connection within 2 s.
pub async fn conn(
    pool: &deadpool_redis::Pool,
    what: &'static str,
) -> Result<deadpool_redis::Connection, RedisError> {
    match tokio::time::timeout(std::time::Duration::from_secs(2), pool.get()).await {
        Ok(Ok(c)) => Ok(c),
        Ok(Err(e)) => Err(RedisError::Unavailable {
            what,
            detail: e.to_string(),
        }),
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
