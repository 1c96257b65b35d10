//! Accounts in Redis: each authorizer's record (status, tokens, refresh token, profile), the
//! set of known appids, the `due` schedule and its backoff — every token write fenced. The set,
//! the schedule and the backoff are split into [`BUCKETS`] buckets (one slot each on a Redis
//! Cluster, [`crate::redis`]); an account's keys all live in its bucket.

use super::scripts::*;
use super::*;
use crate::ids::AppId;
use crate::redis::{BUCKETS, bucket, conn, failed};
use deadpool_redis::redis::{AsyncCommands, Script, cmd};

/// An account's record from its hash (`None` for an empty hash: no such account).
fn record(appid: &AppId, h: HashMap<String, String>) -> Option<AuthorizerRecord> {
    if h.is_empty() {
        return None;
    }
    let int = |k: &str| h.get(k).and_then(|v| v.parse::<i64>().ok());
    let text = |k: &str| h.get(k).filter(|v| !v.is_empty()).cloned();
    Some(AuthorizerRecord {
        appid: appid.clone(),
        status: AuthorizerStatus::parse(h.get("status").map(String::as_str).unwrap_or("active")),
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
        profile: text("profile"),
    })
}

impl TokenStore {
    /// One account's record.
    pub async fn authorizer(&self, appid: &AppId) -> Result<Option<AuthorizerRecord>, RedisError> {
        let mut c = conn(&self.pool, "reading an authorizer").await?;
        let h: HashMap<String, String> = c
            .hgetall(self.keys.authorizer(appid))
            .await
            .map_err(failed("reading an authorizer"))?;
        Ok(record(appid, h))
    }

    /// The records of `appids` (those that have one), in order, read in pipelined batches
    /// rather than one round trip each.
    pub async fn authorizers(&self, appids: &[AppId]) -> Result<Vec<AuthorizerRecord>, RedisError> {
        let mut c = conn(&self.pool, "reading authorizers").await?;
        let mut out = Vec::with_capacity(appids.len());
        for batch in appids.chunks(500) {
            let mut p = deadpool_redis::redis::pipe();
            for appid in batch {
                p.hgetall(self.keys.authorizer(appid));
            }
            let hashes: Vec<HashMap<String, String>> = p
                .query_async(&mut c)
                .await
                .map_err(failed("reading authorizers"))?;
            out.extend(
                batch
                    .iter()
                    .zip(hashes)
                    .filter_map(|(appid, h)| record(appid, h)),
            );
        }
        Ok(out)
    }

    /// The status and token expiry of each of `appids`, pipelined (for the gauges: cheaper than
    /// whole records).
    pub async fn statuses(
        &self,
        appids: &[AppId],
    ) -> Result<Vec<(AuthorizerStatus, Option<i64>)>, RedisError> {
        let mut c = conn(&self.pool, "reading account states").await?;
        let mut out = Vec::with_capacity(appids.len());
        for batch in appids.chunks(1000) {
            let mut p = deadpool_redis::redis::pipe();
            for appid in batch {
                p.cmd("HMGET")
                    .arg(self.keys.authorizer(appid))
                    .arg("status")
                    .arg("expires_at");
            }
            let rows: Vec<(Option<String>, Option<i64>)> = p
                .query_async(&mut c)
                .await
                .map_err(failed("reading account states"))?;
            out.extend(rows.into_iter().map(|(status, expires)| {
                (
                    AuthorizerStatus::parse(status.as_deref().unwrap_or("active")),
                    expires,
                )
            }));
        }
        Ok(out)
    }

    /// Every known appid, sorted.
    pub async fn authorizer_appids(&self) -> Result<Vec<AppId>, RedisError> {
        let all: Vec<u16> = (0..BUCKETS).collect();
        self.authorizer_appids_in(&all).await
    }

    /// The known appids of `buckets`, sorted (one pipeline: on a cluster, one round trip per
    /// node).
    pub async fn authorizer_appids_in(&self, buckets: &[u16]) -> Result<Vec<AppId>, RedisError> {
        let mut c = conn(&self.pool, "listing authorizers").await?;
        let mut p = deadpool_redis::redis::pipe();
        for b in buckets {
            p.smembers(self.keys.authorizers(*b));
        }
        let sets: Vec<Vec<String>> = p
            .query_async(&mut c)
            .await
            .map_err(failed("listing authorizers"))?;
        let mut v = appids(sets.into_iter().flatten().collect(), "authorizers");
        v.sort_unstable();
        Ok(v)
    }

    /// Takes the appids of `buckets` whose refresh is due now, at most `limit` in all,
    /// rescheduling each after a backoff (`retry` doubling per attempt up to `cap`) before
    /// anything is tried: see [`TAKE_DUE`]. A success reschedules it properly. Buckets are
    /// visited from a rotating start, so a large bucket cannot starve the others.
    pub async fn take_due(
        &self,
        buckets: &[u16],
        limit: usize,
        retry: std::time::Duration,
        cap: std::time::Duration,
    ) -> Result<Vec<AppId>, RedisError> {
        let k = &self.keys;
        self.take_from(
            (|b| k.due(b), |b| k.due_attempts(b)),
            buckets,
            limit,
            (retry, cap),
        )
        .await
    }

    /// [`Self::take_due`] for a schedule named by `keys` (its due set and attempts of a
    /// bucket): the token schedule, or the tickets'.
    pub(super) async fn take_from(
        &self,
        keys: (impl Fn(u16) -> String, impl Fn(u16) -> String),
        buckets: &[u16],
        limit: usize,
        (retry, cap): (std::time::Duration, std::time::Duration),
    ) -> Result<Vec<AppId>, RedisError> {
        let mut c = conn(&self.pool, "taking due refreshes").await?;
        let mut out = Vec::new();
        let now = crate::unix_now_ms();
        let start = (now / 1000) as usize;
        for i in 0..buckets.len() {
            if out.len() >= limit {
                break;
            }
            let b = buckets[(start + i) % buckets.len()];
            let taken: Vec<String> = Script::new(TAKE_DUE)
                .key(keys.0(b))
                .key(keys.1(b))
                .arg(now)
                .arg(limit - out.len())
                .arg(retry.as_millis() as u64)
                .arg(cap.as_millis() as u64)
                .invoke_async(&mut c)
                .await
                .map_err(failed("taking due refreshes"))?;
            out.extend(appids(taken, "due"));
        }
        Ok(out)
    }

    /// How many accounts are known (one `SCARD` per bucket, pipelined).
    pub async fn known_count(&self) -> Result<u64, RedisError> {
        let mut c = conn(&self.pool, "counting authorizers").await?;
        let mut p = deadpool_redis::redis::pipe();
        for b in 0..BUCKETS {
            p.scard(self.keys.authorizers(b));
        }
        let counts: Vec<u64> = p
            .query_async(&mut c)
            .await
            .map_err(failed("counting authorizers"))?;
        Ok(counts.iter().sum())
    }

    /// How many accounts each of `buckets` schedules (for the partitioning's gauges and tests).
    pub async fn scheduled_in(&self, buckets: &[u16]) -> Result<Vec<u64>, RedisError> {
        let mut c = conn(&self.pool, "counting scheduled accounts").await?;
        let mut p = deadpool_redis::redis::pipe();
        for b in buckets {
            p.zcard(self.keys.due(*b));
        }
        p.query_async(&mut c)
            .await
            .map_err(failed("counting scheduled accounts"))
    }

    /// Attempts taken from `due` since `appid`'s last successful refresh.
    pub async fn due_attempts(&self, appid: &AppId) -> Result<u64, RedisError> {
        let mut c = conn(&self.pool, "reading refresh attempts").await?;
        let n: Option<u64> = c
            .hget(self.keys.due_attempts(bucket(appid.as_str())), appid)
            .await
            .map_err(failed("reading refresh attempts"))?;
        Ok(n.unwrap_or(0))
    }

    /// Forgets an appid that has no record any more (dropped from `due` and `ticket_due`).
    pub async fn unschedule(&self, appid: &AppId) -> Result<(), RedisError> {
        let mut c = conn(&self.pool, "unscheduling").await?;
        let b = bucket(appid.as_str());
        deadpool_redis::redis::pipe()
            .zrem(self.keys.due(b), appid)
            .ignore()
            .hdel(self.keys.due_attempts(b), appid)
            .ignore()
            .zrem(self.keys.ticket_due(b), appid)
            .ignore()
            .hdel(self.keys.ticket_due_attempts(b), appid)
            .ignore()
            .query_async::<()>(&mut c)
            .await
            .map_err(failed("unscheduling"))
    }

    /// When `appid` is due (ms), if scheduled.
    pub async fn due_at(&self, appid: &AppId) -> Result<Option<i64>, RedisError> {
        self.score(
            self.keys.due(bucket(appid.as_str())),
            appid,
            "reading a due time",
        )
        .await
    }

    /// `appid`'s time (ms) in the schedule `key`, if it is there.
    pub(super) async fn score(
        &self,
        key: String,
        appid: &AppId,
        what: &'static str,
    ) -> Result<Option<i64>, RedisError> {
        let mut c = conn(&self.pool, what).await?;
        let v: Option<f64> = c.zscore(key, appid).await.map_err(failed(what))?;
        Ok(v.map(|v| v as i64))
    }

    /// Schedules `appid` for a refresh at `due_ms` (and remembers it).
    pub async fn schedule(&self, appid: &AppId, due_ms: i64) -> Result<(), RedisError> {
        let mut c = conn(&self.pool, "scheduling a refresh").await?;
        let b = bucket(appid.as_str());
        deadpool_redis::redis::pipe()
            .zadd(self.keys.due(b), appid, due_ms)
            .ignore()
            .sadd(self.keys.authorizers(b), appid)
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
        appid: &AppId,
        token: &StoredToken,
        refresh_token: Option<&str>,
        used: Option<&str>,
        due_ms: i64,
    ) -> Result<Written, RedisError> {
        const WHAT: &str = "writing authorizer tokens";
        let b = bucket(appid.as_str());
        let n = self
            .durable_script(WHAT, WRITE_AUTHORIZER_IF_HELD, |s| {
                s.key(lock.key())
                    .key(self.keys.authorizer(appid))
                    .key(self.keys.due(b))
                    .key(self.keys.authorizers(b))
                    .key(self.keys.due_attempts(b))
                    .key(self.keys.ticket_due(b))
                    .arg(lock.value())
                    .arg(appid)
                    .arg(token.access_token.expose())
                    .arg(token.expires_at)
                    .arg(refresh_token.unwrap_or(""))
                    .arg(crate::unix_now())
                    .arg(due_ms)
                    .arg(used.unwrap_or(""));
            })
            .await?;
        Ok(match n {
            1 => Written::Yes,
            0 => Written::LostLock,
            _ => Written::Superseded,
        })
    }

    /// Deletes `appid`'s access token only if it is still `token`.
    pub async fn invalidate_authorizer_token(
        &self,
        appid: &AppId,
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

    /// Restores `appid` as the authorizer list shows it, with `refresh_token`, scheduling a
    /// refresh at `due_ms` when one is needed (see [`RESTORE_ACCOUNT`]); returns whether it
    /// stored the refresh token.
    pub async fn restore_account(
        &self,
        appid: &AppId,
        refresh_token: &str,
        due_ms: i64,
    ) -> Result<bool, RedisError> {
        let mut c = conn(&self.pool, "restoring an account").await?;
        let b = bucket(appid.as_str());
        let n: i64 = Script::new(RESTORE_ACCOUNT)
            .key(self.keys.authorizer(appid))
            .key(self.keys.authorizers(b))
            .key(self.keys.due(b))
            .arg(appid)
            .arg(refresh_token)
            .arg(due_ms)
            .invoke_async(&mut c)
            .await
            .map_err(failed("restoring an account"))?;
        if n == 1 {
            self.replicated(&mut c, "restoring an account").await?;
        }
        Ok(n == 1)
    }

    /// WeChat refused `appid`'s refresh token (61023): never retried with it. The account is
    /// `refresh_failing` with `error`, the token is kept aside (so the list cannot restore
    /// it), and the account leaves `due` until a new refresh token arrives (the list or a
    /// re-authorization).
    pub async fn refuse_refresh_token(
        &self,
        appid: &AppId,
        refused: &str,
        error: &str,
    ) -> Result<(), RedisError> {
        let mut c = conn(&self.pool, "refusing a refresh token").await?;
        let b = bucket(appid.as_str());
        Script::new(REFUSE_REFRESH_TOKEN)
            .key(self.keys.authorizer(appid))
            .key(self.keys.due(b))
            .key(self.keys.due_attempts(b))
            .arg(refused)
            .arg(appid)
            .arg(error)
            .invoke_async::<i64>(&mut c)
            .await
            .map(|_| ())
            .map_err(failed("refusing a refresh token"))
    }

    /// A newly authorized (or re-authorized) account: active, with this refresh token.
    pub async fn authorized(
        &self,
        appid: &AppId,
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
        p.sadd(self.keys.authorizers(bucket(appid.as_str())), appid)
            .ignore();
        p.query_async::<()>(&mut c)
            .await
            .map_err(failed("recording an authorization"))?;
        self.replicated(&mut c, "recording an authorization").await
    }

    /// Stores the profile from `api_get_authorizer_info`.
    pub async fn save_profile(
        &self,
        appid: &AppId,
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
        appid: &AppId,
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
    pub async fn revoke(&self, appid: &AppId) -> Result<(), RedisError> {
        let mut c = conn(&self.pool, "revoking an authorizer").await?;
        let key = self.keys.authorizer(appid);
        let b = bucket(appid.as_str());
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
            .zrem(self.keys.due(b), appid)
            .ignore()
            .hdel(self.keys.due_attempts(b), appid)
            .ignore()
            .zrem(self.keys.ticket_due(b), appid)
            .ignore()
            .hdel(self.keys.ticket_due_attempts(b), appid)
            .ignore()
            .del(self.keys.tickets(appid))
            .ignore()
            .sadd(self.keys.authorizers(b), appid)
            .ignore()
            .query_async::<()>(&mut c)
            .await
            .map_err(failed("revoking an authorizer"))
    }
}

/// The well-formed appids of a Redis answer; anything else is logged and counted, never used.
fn appids(raw: Vec<String>, from: &'static str) -> Vec<AppId> {
    raw.into_iter()
        .filter_map(|a| match a.parse() {
            Ok(appid) => Some(appid),
            Err(_) => {
                tracing::warn!(key = from, value = %a, "not an appid in Redis; ignored");
                metrics::counter!("wxpipe_redis_bad_values_total", "key" => from).increment(1);
                None
            }
        })
        .collect()
}
