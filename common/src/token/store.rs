//! The tokens and accounts in Redis (design.md's Redis section; keys in [`crate::redis::Keys`]).
//!
//! Writes of tokens are fenced: each is one Lua script that first checks the writer still holds
//! the token's lock (`KEYS[1]`, `ARGV[1]`), so a stalled replica can never overwrite a newer
//! token with an older one.

use crate::redis::claim;
use crate::redis::lock::Lock;
use crate::redis::{Keys, RedisError, conn, failed};
use crate::secret::Token;
use deadpool_redis::redis::{AsyncCommands, Script, cmd};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

/// A token and when it expires (unix seconds).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredToken {
    pub access_token: Token,
    pub expires_at: i64,
}

/// An account's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AuthorizerStatus {
    Active,
    /// The account removed the platform (`unauthorized`, or 61003).
    Revoked,
    /// The refresh token was refused (61023) or refreshing keeps failing; see `last_error`.
    RefreshFailing,
}

impl AuthorizerStatus {
    fn parse(s: &str) -> Self {
        match s {
            "revoked" => Self::Revoked,
            "refresh_failing" => Self::RefreshFailing,
            _ => Self::Active,
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Revoked => "revoked",
            Self::RefreshFailing => "refresh_failing",
        }
    }
}

/// Consecutive failures of the component token (shared by every replica and caller).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FailureState {
    pub failures: u64,
    /// No attempt before this (ms since the epoch).
    pub next_at_ms: i64,
    pub last_at_ms: i64,
    pub last_error: String,
}

/// Everything stored about one account.
#[derive(Debug, Clone, Serialize)]
pub struct AuthorizerRecord {
    pub appid: String,
    pub status: AuthorizerStatus,
    #[serde(skip)]
    pub refresh_token: Option<Token>,
    #[serde(skip)]
    pub access_token: Option<Token>,
    pub expires_at: Option<i64>,
    pub last_refresh: Option<i64>,
    pub last_error: Option<String>,
    pub nick_name: Option<String>,
    pub user_name: Option<String>,
    pub authorized_at: Option<i64>,
    pub refreshes: u64,
    pub has_refresh_token: bool,
}

/// Writes `ARGV[2]` to `KEYS[2]` expiring at `ARGV[3]` (unix ms), if `KEYS[1]` holds `ARGV[1]`.
const SET_IF_HELD: &str = r"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[2], ARGV[2], 'PXAT', ARGV[3])
return 1
";

/// Deletes `KEYS[1]` if its JSON's `access_token` is still `ARGV[1]` (compare-and-invalidate).
const DEL_IF_TOKEN: &str = r"
local v = redis.call('GET', KEYS[1])
if not v then return 0 end
local ok, t = pcall(cjson.decode, v)
if ok and t['access_token'] == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
";

/// Records a failure of the component token: `KEYS[1]` = failures hash; `ARGV` = now (ms),
/// base delay (ms), cap (ms), the error (one line, no secret). Returns the next attempt time.
const RECORD_COMPONENT_FAILURE: &str = r"
local n = redis.call('HINCRBY', KEYS[1], 'failures', 1)
local delay = math.min(tonumber(ARGV[2]) * 2 ^ math.min(n - 1, 30), tonumber(ARGV[3]))
local next_at = tonumber(ARGV[1]) + math.floor(delay)
redis.call('HSET', KEYS[1], 'next_at_ms', next_at, 'last_error', ARGV[4], 'last_at_ms', ARGV[1])
return next_at
";

/// Restores a refresh token learnt from the list: `KEYS` = record, known set; `ARGV` = appid,
/// refresh token. Never replaces a working refresh token (`HSETNX`), never restores the one
/// WeChat refused (61023); a restored account that was `refresh_failing` is active again.
const RESTORE_REFRESH_TOKEN: &str = r"
redis.call('HSETNX', KEYS[1], 'appid', ARGV[1])
redis.call('SADD', KEYS[2], ARGV[1])
if redis.call('HGET', KEYS[1], 'refused_refresh_token') == ARGV[2] then return 0 end
if redis.call('HSETNX', KEYS[1], 'refresh_token', ARGV[2]) == 0 then return 0 end
if redis.call('HGET', KEYS[1], 'status') == 'refresh_failing' then
  redis.call('HSET', KEYS[1], 'status', 'active')
end
redis.call('HDEL', KEYS[1], 'refused_refresh_token')
return 1
";

/// Takes the due accounts: every appid of `KEYS[1]` (due set) due at `ARGV[1]` (now, ms), at
/// most `ARGV[2]`, is rescheduled *before* it is refreshed, at now + `ARGV[3]` · 2^(attempts−1)
/// capped at `ARGV[4]` (ms), counting attempts in `KEYS[2]`. Whatever the refresh then does —
/// succeed (its fenced write sets the real due time and clears the attempts), fail, or never
/// finish — the account has left the head of the set: a failing account cannot hold back the
/// others, and each is taken by one replica per backoff window.
const TAKE_DUE: &str = r"
local ids = redis.call('ZRANGE', KEYS[1], '-inf', ARGV[1], 'BYSCORE', 'LIMIT', 0, ARGV[2])
for _, id in ipairs(ids) do
  local n = redis.call('HINCRBY', KEYS[2], id, 1)
  local delay = math.min(tonumber(ARGV[3]) * 2 ^ math.min(n - 1, 30), tonumber(ARGV[4]))
  redis.call('ZADD', KEYS[1], tonumber(ARGV[1]) + math.floor(delay), id)
end
return ids
";

/// Fenced write of an authorizer's tokens: `KEYS` = lock, record, due set, known set, attempts;
/// `ARGV` = lock value, appid, access token, expires_at, refresh token ('' keeps the old one),
/// now, due (ms), the refresh token the grant was obtained with ('' for a fresh authorization).
/// Returns 0 when the lock is no longer ours, -1 when the account changed under the call —
/// revoked (its refresh token deleted), re-authorized (a new refresh token) or its token
/// refused — so a refresh in flight can never bring a revoked account back or overwrite a
/// newer refresh token; 1 when written.
const WRITE_AUTHORIZER_IF_HELD: &str = r"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
if ARGV[8] ~= '' and redis.call('HGET', KEYS[2], 'refresh_token') ~= ARGV[8] then return -1 end
if redis.call('HGET', KEYS[2], 'status') == 'revoked' then return -1 end
redis.call('HSET', KEYS[2], 'appid', ARGV[2], 'status', 'active', 'access_token', ARGV[3],
  'expires_at', ARGV[4], 'last_refresh', ARGV[6])
redis.call('HDEL', KEYS[2], 'last_error')
if ARGV[5] ~= '' then redis.call('HSET', KEYS[2], 'refresh_token', ARGV[5]) end
redis.call('HINCRBY', KEYS[2], 'refreshes', 1)
redis.call('ZADD', KEYS[3], ARGV[7], ARGV[2])
redis.call('SADD', KEYS[4], ARGV[2])
redis.call('HDEL', KEYS[5], ARGV[2])
return 1
";

/// Sets an account's status and last error (`KEYS[1]` = record; `ARGV` = appid, status,
/// error), unless it is revoked: only an authorization brings a revoked account back.
const MARK_UNLESS_REVOKED: &str = r"
if redis.call('HGET', KEYS[1], 'status') == 'revoked' then return 0 end
redis.call('HSET', KEYS[1], 'appid', ARGV[1], 'status', ARGV[2], 'last_error', ARGV[3])
return 1
";

/// 61023 for the refresh token `ARGV[1]`: set it aside, unless the account has another one by
/// now (`KEYS` = record, due set, attempts; `ARGV` = refused token, appid, error).
const REFUSE_REFRESH_TOKEN: &str = r"
if redis.call('HGET', KEYS[1], 'refresh_token') ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'status', 'refresh_failing', 'last_error', ARGV[3],
  'refused_refresh_token', ARGV[1])
redis.call('HDEL', KEYS[1], 'refresh_token')
redis.call('ZREM', KEYS[2], ARGV[2])
redis.call('HDEL', KEYS[3], ARGV[2])
return 1
";

/// What a fenced write of tokens did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Written {
    Yes,
    /// The lock expired before the write: nothing written.
    LostLock,
    /// The account was revoked, re-authorized or its refresh token refused meanwhile:
    /// nothing written.
    Superseded,
}

/// Deletes the access token if it is still `ARGV[1]` (`KEYS[1]` = record).
const INVALIDATE_AUTHORIZER_TOKEN: &str = r"
if redis.call('HGET', KEYS[1], 'access_token') == ARGV[1] then
  redis.call('HDEL', KEYS[1], 'access_token', 'expires_at')
  return 1
end
return 0
";

/// The Redis side of tokens and accounts of one platform.
#[derive(Clone)]
pub struct TokenStore {
    pool: deadpool_redis::Pool,
    pub keys: Keys,
}

impl TokenStore {
    pub fn new(pool: deadpool_redis::Pool, keys: Keys) -> Self {
        Self { pool, keys }
    }

    pub fn pool(&self) -> &deadpool_redis::Pool {
        &self.pool
    }

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
            .query_async::<()>(&mut c)
            .await
            .map_err(failed("storing the ticket"))
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
        let mut c = conn(&self.pool, "writing the component token").await?;
        let json = serde_json::to_string(token).unwrap_or_default();
        let n: i64 = Script::new(SET_IF_HELD)
            .key(lock.key())
            .key(self.keys.component_token())
            .arg(lock.value())
            .arg(json)
            .arg(token.expires_at * 1000)
            .invoke_async(&mut c)
            .await
            .map_err(failed("writing the component token"))?;
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

    /// One account's record.
    pub async fn authorizer(&self, appid: &str) -> Result<Option<AuthorizerRecord>, RedisError> {
        let mut c = conn(&self.pool, "reading an authorizer").await?;
        let h: HashMap<String, String> = c
            .hgetall(self.keys.authorizer(appid))
            .await
            .map_err(failed("reading an authorizer"))?;
        if h.is_empty() {
            return Ok(None);
        }
        let int = |k: &str| h.get(k).and_then(|v| v.parse::<i64>().ok());
        let text = |k: &str| h.get(k).filter(|v| !v.is_empty()).cloned();
        Ok(Some(AuthorizerRecord {
            appid: appid.to_owned(),
            status: AuthorizerStatus::parse(
                h.get("status").map(String::as_str).unwrap_or("active"),
            ),
            has_refresh_token: text("refresh_token").is_some(),
            refresh_token: text("refresh_token").map(Token::from),
            access_token: text("access_token").map(Token::from),
            expires_at: int("expires_at"),
            last_refresh: int("last_refresh"),
            last_error: text("last_error"),
            nick_name: text("nick_name"),
            user_name: text("user_name"),
            authorized_at: int("authorized_at"),
            refreshes: int("refreshes").unwrap_or(0) as u64,
        }))
    }

    /// Every known appid, sorted.
    pub async fn authorizer_appids(&self) -> Result<Vec<String>, RedisError> {
        let mut c = conn(&self.pool, "listing authorizers").await?;
        let mut v: Vec<String> = c
            .smembers(self.keys.authorizers())
            .await
            .map_err(failed("listing authorizers"))?;
        v.sort_unstable();
        Ok(v)
    }

    /// Takes the appids whose refresh is due now, at most `limit`, rescheduling each after a
    /// backoff (`retry` doubling per attempt up to `cap`) before anything is tried: see
    /// [`TAKE_DUE`]. A success reschedules it properly.
    pub async fn take_due(
        &self,
        limit: usize,
        retry: std::time::Duration,
        cap: std::time::Duration,
    ) -> Result<Vec<String>, RedisError> {
        let mut c = conn(&self.pool, "taking due refreshes").await?;
        Script::new(TAKE_DUE)
            .key(self.keys.due())
            .key(self.keys.due_attempts())
            .arg(crate::unix_now_ms())
            .arg(limit)
            .arg(retry.as_millis() as u64)
            .arg(cap.as_millis() as u64)
            .invoke_async(&mut c)
            .await
            .map_err(failed("taking due refreshes"))
    }

    /// Attempts taken from `due` since `appid`'s last successful refresh.
    pub async fn due_attempts(&self, appid: &str) -> Result<u64, RedisError> {
        let mut c = conn(&self.pool, "reading refresh attempts").await?;
        let n: Option<u64> = c
            .hget(self.keys.due_attempts(), appid)
            .await
            .map_err(failed("reading refresh attempts"))?;
        Ok(n.unwrap_or(0))
    }

    /// Forgets an appid that has no record any more (dropped from `due`).
    pub async fn unschedule(&self, appid: &str) -> Result<(), RedisError> {
        let mut c = conn(&self.pool, "unscheduling").await?;
        deadpool_redis::redis::pipe()
            .zrem(self.keys.due(), appid)
            .ignore()
            .hdel(self.keys.due_attempts(), appid)
            .ignore()
            .query_async::<()>(&mut c)
            .await
            .map_err(failed("unscheduling"))
    }

    /// When `appid` is due (ms), if scheduled.
    pub async fn due_at(&self, appid: &str) -> Result<Option<i64>, RedisError> {
        let mut c = conn(&self.pool, "reading a due time").await?;
        let v: Option<f64> = c
            .zscore(self.keys.due(), appid)
            .await
            .map_err(failed("reading a due time"))?;
        Ok(v.map(|v| v as i64))
    }

    /// Schedules `appid` for a refresh at `due_ms` (and remembers it).
    pub async fn schedule(&self, appid: &str, due_ms: i64) -> Result<(), RedisError> {
        let mut c = conn(&self.pool, "scheduling a refresh").await?;
        deadpool_redis::redis::pipe()
            .zadd(self.keys.due(), appid, due_ms)
            .ignore()
            .sadd(self.keys.authorizers(), appid)
            .ignore()
            .query_async::<()>(&mut c)
            .await
            .map_err(failed("scheduling a refresh"))
    }

    /// Fenced write of fresh tokens for `appid` (see [`WRITE_AUTHORIZER_IF_HELD`]);
    /// `refresh_token` `None` keeps the stored one; `used` is the refresh token the grant was
    /// obtained with (`None` for a fresh authorization).
    #[allow(clippy::too_many_arguments)]
    pub async fn write_authorizer_tokens(
        &self,
        lock: &Lock,
        appid: &str,
        token: &StoredToken,
        refresh_token: Option<&str>,
        used: Option<&str>,
        due_ms: i64,
    ) -> Result<Written, RedisError> {
        let mut c = conn(&self.pool, "writing authorizer tokens").await?;
        let n: i64 = Script::new(WRITE_AUTHORIZER_IF_HELD)
            .key(lock.key())
            .key(self.keys.authorizer(appid))
            .key(self.keys.due())
            .key(self.keys.authorizers())
            .key(self.keys.due_attempts())
            .arg(lock.value())
            .arg(appid)
            .arg(token.access_token.expose())
            .arg(token.expires_at)
            .arg(refresh_token.unwrap_or(""))
            .arg(crate::unix_now())
            .arg(due_ms)
            .arg(used.unwrap_or(""))
            .invoke_async(&mut c)
            .await
            .map_err(failed("writing authorizer tokens"))?;
        Ok(match n {
            1 => Written::Yes,
            0 => Written::LostLock,
            _ => Written::Superseded,
        })
    }

    /// Deletes `appid`'s access token only if it is still `token`.
    pub async fn invalidate_authorizer_token(
        &self,
        appid: &str,
        token: &str,
    ) -> Result<bool, RedisError> {
        let mut c = conn(&self.pool, "invalidating an authorizer token").await?;
        let n: i64 = Script::new(INVALIDATE_AUTHORIZER_TOKEN)
            .key(self.keys.authorizer(appid))
            .arg(token)
            .invoke_async(&mut c)
            .await
            .map_err(failed("invalidating an authorizer token"))?;
        Ok(n == 1)
    }

    /// Stores a refresh token learnt from the authorizer list unless the account already has
    /// one, or it is the one WeChat refused (see [`RESTORE_REFRESH_TOKEN`]); returns whether it
    /// stored it.
    pub async fn restore_refresh_token(
        &self,
        appid: &str,
        refresh_token: &str,
    ) -> Result<bool, RedisError> {
        let mut c = conn(&self.pool, "restoring a refresh token").await?;
        let n: i64 = Script::new(RESTORE_REFRESH_TOKEN)
            .key(self.keys.authorizer(appid))
            .key(self.keys.authorizers())
            .arg(appid)
            .arg(refresh_token)
            .invoke_async(&mut c)
            .await
            .map_err(failed("restoring a refresh token"))?;
        Ok(n == 1)
    }

    /// WeChat refused `appid`'s refresh token (61023): never retried with it. The account is
    /// `refresh_failing` with `error`, the token is kept aside (so the list cannot restore
    /// it), and the account leaves `due` until a new refresh token arrives (the list or a
    /// re-authorization).
    pub async fn refuse_refresh_token(
        &self,
        appid: &str,
        refused: &str,
        error: &str,
    ) -> Result<(), RedisError> {
        let mut c = conn(&self.pool, "refusing a refresh token").await?;
        Script::new(REFUSE_REFRESH_TOKEN)
            .key(self.keys.authorizer(appid))
            .key(self.keys.due())
            .key(self.keys.due_attempts())
            .arg(refused)
            .arg(appid)
            .arg(error)
            .invoke_async::<i64>(&mut c)
            .await
            .map(|_| ())
            .map_err(failed("refusing a refresh token"))
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

    /// A newly authorized (or re-authorized) account: active, with this refresh token.
    pub async fn authorized(
        &self,
        appid: &str,
        refresh_token: Option<&str>,
    ) -> Result<(), RedisError> {
        let mut c = conn(&self.pool, "recording an authorization").await?;
        let key = self.keys.authorizer(appid);
        let mut p = deadpool_redis::redis::pipe();
        p.cmd("HSET")
            .arg(&key)
            .arg("appid")
            .arg(appid)
            .arg("status")
            .arg("active")
            .arg("authorized_at")
            .arg(crate::unix_now())
            .ignore();
        p.cmd("HDEL").arg(&key).arg("last_error").ignore();
        if let Some(rt) = refresh_token {
            p.cmd("HSET")
                .arg(&key)
                .arg("refresh_token")
                .arg(rt)
                .ignore();
        }
        p.sadd(self.keys.authorizers(), appid).ignore();
        p.query_async::<()>(&mut c)
            .await
            .map_err(failed("recording an authorization"))
    }

    /// Stores the profile from `api_get_authorizer_info`.
    pub async fn save_profile(
        &self,
        appid: &str,
        profile: &serde_json::Value,
    ) -> Result<(), RedisError> {
        let mut c = conn(&self.pool, "storing a profile").await?;
        let info = &profile["authorizer_info"];
        let s = |k: &str| info[k].as_str().unwrap_or_default().to_owned();
        cmd("HSET")
            .arg(self.keys.authorizer(appid))
            .arg("nick_name")
            .arg(s("nick_name"))
            .arg("user_name")
            .arg(s("user_name"))
            .arg("profile")
            .arg(profile.to_string())
            .query_async::<()>(&mut c)
            .await
            .map_err(failed("storing a profile"))
    }

    /// Marks an account's status with a reason (`RefreshFailing`, …) unless it is revoked;
    /// revocation uses [`Self::revoke`].
    pub async fn mark(
        &self,
        appid: &str,
        status: AuthorizerStatus,
        error: &str,
    ) -> Result<(), RedisError> {
        let mut c = conn(&self.pool, "marking an authorizer").await?;
        Script::new(MARK_UNLESS_REVOKED)
            .key(self.keys.authorizer(appid))
            .arg(appid)
            .arg(status.as_str())
            .arg(error)
            .invoke_async::<i64>(&mut c)
            .await
            .map(|_| ())
            .map_err(failed("marking an authorizer"))
    }

    /// The account removed the platform: revoked, tokens deleted, no more refreshes.
    pub async fn revoke(&self, appid: &str) -> Result<(), RedisError> {
        let mut c = conn(&self.pool, "revoking an authorizer").await?;
        let key = self.keys.authorizer(appid);
        deadpool_redis::redis::pipe()
            .cmd("HSET")
            .arg(&key)
            .arg("appid")
            .arg(appid)
            .arg("status")
            .arg("revoked")
            .arg("revoked_at")
            .arg(crate::unix_now())
            .ignore()
            .cmd("HDEL")
            .arg(&key)
            .arg("access_token")
            .arg("expires_at")
            .arg("refresh_token")
            .ignore()
            .zrem(self.keys.due(), appid)
            .ignore()
            .hdel(self.keys.due_attempts(), appid)
            .ignore()
            .sadd(self.keys.authorizers(), appid)
            .ignore()
            .query_async::<()>(&mut c)
            .await
            .map_err(failed("revoking an authorizer"))
    }

    /// One attempt at claiming the exchange of authorization code `code`.
    pub async fn take_auth_code(
        &self,
        code: &str,
        lease: std::time::Duration,
    ) -> Result<(claim::Outcome, Option<claim::Claim>), RedisError> {
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

    /// `SET key 1 NX EX secs`: true the first time within `secs` (a cross-replica rate limit).
    pub async fn rate_limit(&self, name: &str, secs: u64) -> Result<bool, RedisError> {
        let mut c = conn(&self.pool, "rate limiting").await?;
        let v: Option<String> = cmd("SET")
            .arg(self.keys.rate_limit(name))
            .arg(1)
            .arg("NX")
            .arg("EX")
            .arg(secs)
            .query_async(&mut c)
            .await
            .map_err(failed("rate limiting"))?;
        Ok(v.is_some())
    }
}
