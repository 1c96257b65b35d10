//! The platform's own state in Redis: the ticket, the component token and its failures, the
//! daily quotas, authorization codes and flows, and cross-replica rate limits.

use super::scripts::*;
use super::*;
use crate::redis::claim;
use crate::redis::{conn, failed};
use deadpool_redis::redis::{AsyncCommands, Script, cmd};

impl TokenStore {
    /// Stores a pushed ticket: 12 h TTL, and as the last good one.
    pub async fn save_ticket(&self, ticket: &str) -> Result<(), RedisError> {
        let mut c = conn(&self.pool, "storing the ticket").await?;
        deadpool_redis::redis::pipe()
            .cmd("SET")
            .arg(self.keys.ticket())
            .arg(ticket)
            .arg("EX")
            .arg(12 * 3600)
            .ignore()
            .cmd("SET")
            .arg(self.keys.last_ticket())
            .arg(ticket)
            .ignore()
            .cmd("SET")
            .arg(self.keys.ticket_at())
            .arg(crate::unix_now_ms())
            .ignore()
            .query_async::<()>(&mut c)
            .await
            .map_err(failed("storing the ticket"))
    }

    /// When the last ticket was pushed (ms), if known.
    pub async fn ticket_at(&self) -> Result<Option<i64>, RedisError> {
        let mut c = conn(&self.pool, "reading the ticket's time").await?;
        c.get(self.keys.ticket_at())
            .await
            .map_err(failed("reading the ticket's time"))
    }

    /// The latest ticket, else the last good one.
    pub async fn ticket(&self) -> Result<Option<String>, RedisError> {
        let mut c = conn(&self.pool, "reading the ticket").await?;
        let (fresh, last): (Option<String>, Option<String>) = deadpool_redis::redis::pipe()
            .get(self.keys.ticket())
            .get(self.keys.last_ticket())
            .query_async(&mut c)
            .await
            .map_err(failed("reading the ticket"))?;
        Ok(fresh.or(last))
    }

    /// The component token, if there is one that has not expired.
    pub async fn component_token(&self) -> Result<Option<StoredToken>, RedisError> {
        let mut c = conn(&self.pool, "reading the component token").await?;
        let v: Option<String> = c
            .get(self.keys.component_token())
            .await
            .map_err(failed("reading the component token"))?;
        Ok(v.and_then(|v| serde_json::from_str::<StoredToken>(&v).ok())
            .filter(|t| t.expires_at > crate::unix_now()))
    }

    /// Writes the component token if `lock` (its lock) is still held; false otherwise.
    pub async fn write_component_token(
        &self,
        lock: &Lock,
        token: &StoredToken,
    ) -> Result<bool, RedisError> {
        const WHAT: &str = "writing the component token";
        let json = serde_json::to_string(token).unwrap_or_default();
        let n = self
            .durable_script(WHAT, SET_IF_HELD, |s| {
                s.key(lock.key())
                    .key(self.keys.component_token())
                    .arg(lock.value())
                    .arg(&json)
                    .arg(token.expires_at * 1000);
            })
            .await?;
        Ok(n == 1)
    }

    /// Deletes the component token only if it is still `token` (after WeChat refused it).
    pub async fn invalidate_component_token(&self, token: &str) -> Result<bool, RedisError> {
        let mut c = conn(&self.pool, "invalidating the component token").await?;
        let n: i64 = Script::new(DEL_IF_TOKEN)
            .key(self.keys.component_token())
            .arg(token)
            .invoke_async(&mut c)
            .await
            .map_err(failed("invalidating the component token"))?;
        Ok(n == 1)
    }

    /// Until when (ms) WeChat's daily quota of `api` is known to be used up, if it is.
    pub async fn quota_closed_until(&self, api: &str) -> Result<Option<i64>, RedisError> {
        let mut c = conn(&self.pool, "reading a quota").await?;
        c.get(self.keys.quota(api))
            .await
            .map_err(failed("reading a quota"))
    }

    /// Records that `api`'s daily quota is used up until `until_ms`.
    pub async fn close_quota(&self, api: &str, until_ms: i64) -> Result<(), RedisError> {
        let mut c = conn(&self.pool, "closing a quota").await?;
        cmd("SET")
            .arg(self.keys.quota(api))
            .arg(until_ms)
            .arg("PXAT")
            .arg(until_ms)
            .query_async::<()>(&mut c)
            .await
            .map_err(failed("closing a quota"))
    }

    /// Forgets every used-up quota and the component token's failures (after an operator
    /// cleared the quota at WeChat); returns how many quotas were open again.
    pub async fn clear_quotas(&self, apis: &[&str]) -> Result<usize, RedisError> {
        let mut c = conn(&self.pool, "clearing quotas").await?;
        let keys: Vec<String> = apis.iter().map(|a| self.keys.quota(a)).collect();
        let n: usize = cmd("DEL")
            .arg(&keys)
            .query_async(&mut c)
            .await
            .map_err(failed("clearing quotas"))?;
        self.clear_component_failures().await?;
        Ok(n)
    }

    /// The component token's consecutive failures, if any.
    pub async fn component_failures(&self) -> Result<Option<FailureState>, RedisError> {
        let mut c = conn(&self.pool, "reading component failures").await?;
        let h: HashMap<String, String> = c
            .hgetall(self.keys.component_failures())
            .await
            .map_err(failed("reading component failures"))?;
        if h.is_empty() {
            return Ok(None);
        }
        let int = |k: &str| h.get(k).and_then(|v| v.parse::<i64>().ok()).unwrap_or(0);
        Ok(Some(FailureState {
            failures: int("failures").max(0) as u64,
            next_at_ms: int("next_at_ms"),
            last_at_ms: int("last_at_ms"),
            last_error: h.get("last_error").cloned().unwrap_or_default(),
        }))
    }

    /// Records one more failure of the component token; returns when the next attempt may be.
    pub async fn record_component_failure(
        &self,
        error: &str,
        base: std::time::Duration,
        cap: std::time::Duration,
    ) -> Result<i64, RedisError> {
        let mut c = conn(&self.pool, "recording a component failure").await?;
        Script::new(RECORD_COMPONENT_FAILURE)
            .key(self.keys.component_failures())
            .arg(crate::unix_now_ms())
            .arg(base.as_millis() as u64)
            .arg(cap.as_millis() as u64)
            .arg(error)
            .invoke_async(&mut c)
            .await
            .map_err(failed("recording a component failure"))
    }

    /// The component token works again.
    pub async fn clear_component_failures(&self) -> Result<(), RedisError> {
        let mut c = conn(&self.pool, "clearing component failures").await?;
        c.del(self.keys.component_failures())
            .await
            .map_err(failed("clearing component failures"))
    }

    /// One attempt at claiming the exchange of authorization code `code`.
    pub async fn take_auth_code(
        &self,
        code: &str,
        lease: std::time::Duration,
    ) -> Result<claim::Taken, RedisError> {
        claim::Claim::take(&self.pool, &self.keys.auth_code(code), lease).await
    }

    /// The raw state of code `code`'s exchange (a claim, or what it settled into).
    pub async fn auth_code_state(&self, code: &str) -> Result<Option<String>, RedisError> {
        let mut c = conn(&self.pool, "reading an auth code").await?;
        c.get(self.keys.auth_code(code))
            .await
            .map_err(failed("reading an auth code"))
    }

    /// Counts one more event of `name` in the current `window_secs` window (across replicas);
    /// true while the count is within `limit`.
    pub async fn within_limit(
        &self,
        name: &str,
        limit: u64,
        window_secs: u64,
    ) -> Result<bool, RedisError> {
        let mut c = conn(&self.pool, "counting for a rate limit").await?;
        let key = self.keys.rate_limit(name);
        let (n,): (u64,) = deadpool_redis::redis::pipe()
            .cmd("INCR")
            .arg(&key)
            .cmd("EXPIRE")
            .arg(&key)
            .arg(window_secs)
            .arg("NX")
            .ignore()
            .query_async(&mut c)
            .await
            .map_err(failed("counting for a rate limit"))?;
        Ok(n <= limit)
    }

    /// The accounts whose pushes wait for a passive reply, as set at run time (`*`: every one).
    pub async fn sync_reply_appids(&self) -> Result<Vec<String>, RedisError> {
        let mut c = conn(&self.pool, "reading the sync-reply accounts").await?;
        let mut v: Vec<String> = c
            .smembers(self.keys.sync_reply_appids())
            .await
            .map_err(failed("reading the sync-reply accounts"))?;
        v.sort_unstable();
        Ok(v)
    }

    /// Adds (`add`) or removes accounts of the run-time sync-reply set.
    pub async fn edit_sync_reply_appids(
        &self,
        appids: &[String],
        add: bool,
    ) -> Result<(), RedisError> {
        if appids.is_empty() {
            return Ok(());
        }
        let mut c = conn(&self.pool, "editing the sync-reply accounts").await?;
        let key = self.keys.sync_reply_appids();
        let r: Result<i64, _> = if add {
            c.sadd(key, appids).await
        } else {
            c.srem(key, appids).await
        };
        r.map(|_| ())
            .map_err(failed("editing the sync-reply accounts"))
    }

    /// Remembers an authorization flow's `state` for `ttl_secs`.
    pub async fn issue_auth_state(&self, state: &str, ttl_secs: u64) -> Result<(), RedisError> {
        let mut c = conn(&self.pool, "storing an authorization state").await?;
        cmd("SET")
            .arg(self.keys.auth_state(state))
            .arg(1)
            .arg("EX")
            .arg(ttl_secs)
            .query_async::<()>(&mut c)
            .await
            .map_err(failed("storing an authorization state"))
    }

    /// Uses up an authorization flow's `state`: true only the first time, within its TTL.
    pub async fn take_auth_state(&self, state: &str) -> Result<bool, RedisError> {
        let mut c = conn(&self.pool, "checking an authorization state").await?;
        let v: Option<String> = cmd("GETDEL")
            .arg(self.keys.auth_state(state))
            .query_async(&mut c)
            .await
            .map_err(failed("checking an authorization state"))?;
        Ok(v.is_some())
    }

    /// Starts `name`'s rate-limit window of one anew, for `secs` from now: a job that just ran
    /// postpones its next run by a full window, whatever window it was started under.
    pub async fn hold_rate_limit(&self, name: &str, secs: u64) -> Result<(), RedisError> {
        let mut c = conn(&self.pool, "holding a rate limit").await?;
        cmd("SET")
            .arg(self.keys.rate_limit(name))
            .arg(1)
            .arg("EX")
            .arg(secs.max(1))
            .query_async::<()>(&mut c)
            .await
            .map_err(failed("holding a rate limit"))
    }

    /// True the first time within `secs` (a cross-replica rate limit of one).
    pub async fn rate_limit(&self, name: &str, secs: u64) -> Result<bool, RedisError> {
        self.within_limit(name, 1, secs).await
    }
}
