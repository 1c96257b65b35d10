//! The one Redis claim primitive: a key taken with `SET key <our value> NX PX lease`, which its
//! holder later *settles* into a value (fenced: only while it still holds the claim) or
//! *releases* (compare-and-delete). Everyone else sees it held, settled, or absent again once
//! the lease runs out (a dead holder never blocks anyone for longer than its lease).
//!
//! Three things are built on it:
//! * the distributed locks ([`super::lock`]): a claim that waits, is never settled, and guards
//!   fenced writes of other keys (`KEYS[1]` = [`Claim::key`], `ARGV[1]` = [`Claim::value`]);
//! * the authorization-code exchange: claim `authcode:{code}`, exchange, settle `done:<appid>`;
//! * the decrypt workers' dedup: claim `dedup:{id}`, publish, settle `done` — batched into
//!   pipelines with [`push_set_nx`] (and a `GET` only when that is not won) and [`outcome`],
//!   argued in `workers/src/decrypt/dedup.rs`.

use super::{RedisError, conn, failed};
use deadpool_redis::redis::{Pipeline, Script, Value, cmd, from_redis_value};
use std::time::Duration;

/// Deletes `KEYS[1]` only if it still holds `ARGV[1]`.
pub const RELEASE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
";

/// Sets `KEYS[1]` to `ARGV[2]` for `ARGV[3]` ms only if it still holds `ARGV[1]`.
const SETTLE: &str = r"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
return 1
";

/// Extends `KEYS[1]`'s lease to `ARGV[2]` ms only if it still holds `ARGV[1]`.
const EXTEND: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
";

/// What a key was found to be when we tried to claim it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// We hold it now.
    Won,
    /// Someone settled it into this value.
    Settled(String),
    /// Someone else holds it (or it was freed between our two commands: try again later).
    Held,
}

/// Appends a claim attempt to a pipeline: `SET key value NX PX lease`, then `GET key`. Read the
/// two answers with [`outcome`]. Claim values start with `claim:`, settled values never do.
pub fn push_take(pipe: &mut Pipeline, key: &str, value: &str, lease: Duration) {
    push_set_nx(pipe, key, value, lease);
    pipe.cmd("GET").arg(key);
}

/// The first half of [`push_take`], for callers that read the key only when the claim was not
/// won ([`is_ok`] of this answer), in a later round trip: the two commands of a pipeline are not
/// atomic either, so [`outcome`] of the two answers means the same whenever the `GET` is sent.
pub fn push_set_nx(pipe: &mut Pipeline, key: &str, value: &str, lease: Duration) {
    pipe.cmd("SET")
        .arg(key)
        .arg(value)
        .arg("NX")
        .arg("PX")
        .arg(lease.as_millis() as u64);
}

/// The outcome of the two answers of [`push_take`] (or of [`push_set_nx`] and a `GET`).
pub fn outcome(set: Option<Value>, current: Option<Value>) -> Outcome {
    if set.as_ref().is_some_and(is_ok) {
        return Outcome::Won;
    }
    let current: Option<String> = current.and_then(|v| from_redis_value(v).ok());
    match current {
        Some(v) if !v.starts_with(CLAIM_PREFIX) => Outcome::Settled(v),
        _ => Outcome::Held,
    }
}

/// Whether a reply is `OK`.
pub fn is_ok(v: &Value) -> bool {
    matches!(v, Value::Okay) || matches!(v, Value::SimpleString(s) if s == "OK")
}

const CLAIM_PREFIX: &str = "claim:";

/// A fresh claim value: `claim:` and 128 random bits.
pub fn new_value() -> String {
    format!("{CLAIM_PREFIX}{}", uuid::Uuid::new_v4().simple())
}

/// A claim we hold. Dropping it without settling or releasing lets the lease expire.
#[derive(Debug)]
pub struct Claim {
    pool: crate::redis::Pool,
    key: String,
    value: String,
    /// The task extending the lease while we work, if [`Claim::keep_alive`] started one.
    renewal: Option<tokio::task::JoinHandle<()>>,
}

impl Drop for Claim {
    fn drop(&mut self) {
        if let Some(r) = self.renewal.take() {
            r.abort();
        }
    }
}

/// What one attempt at claiming a key gave.
#[derive(Debug)]
pub enum Taken {
    /// We hold it now.
    Won(Claim),
    /// Someone settled it into this value.
    Settled(String),
    /// Someone else holds it.
    Held,
}

impl Claim {
    /// One attempt at claiming `key` for `lease`.
    pub async fn take(
        pool: &crate::redis::Pool,
        key: &str,
        lease: Duration,
    ) -> Result<Taken, RedisError> {
        Self::take_value(pool, key, lease, new_value()).await
    }

    /// [`Claim::take`] with a value that names its holder (`claim:{holder}:{random}`), for
    /// claims an operator or a test wants to attribute (the scheduler's bucket leases).
    pub async fn take_as(
        pool: &crate::redis::Pool,
        key: &str,
        lease: Duration,
        holder: &str,
    ) -> Result<Taken, RedisError> {
        let value = format!("claim:{holder}:{}", &new_value()["claim:".len()..]);
        Self::take_value(pool, key, lease, value).await
    }

    async fn take_value(
        pool: &crate::redis::Pool,
        key: &str,
        lease: Duration,
        value: String,
    ) -> Result<Taken, RedisError> {
        let mut pipe = deadpool_redis::redis::pipe();
        push_take(&mut pipe, key, &value, lease);
        let mut c = conn(pool, "claiming a key").await?;
        let answers: Vec<Value> = pipe
            .query_async(&mut c)
            .await
            .map_err(failed("claiming a key"))?;
        let mut answers = answers.into_iter();
        let won = outcome(answers.next(), answers.next());
        // A claim that a failover could forget is no claim: with replicas, it counts once a
        // replica has it; when none confirmed it (or the master went away) it is let go, and
        // the caller finds it held.
        if won == Outcome::Won && !matches!(c.replicated("taking a claim").await, Ok(true)) {
            let _ = release(pool, key, &value).await;
            return Ok(Taken::Held);
        }
        Ok(match won {
            Outcome::Won => Taken::Won(Claim {
                pool: pool.clone(),
                key: key.to_owned(),
                value,
                renewal: None,
            }),
            Outcome::Settled(v) => Taken::Settled(v),
            Outcome::Held => Taken::Held,
        })
    }

    /// Claims `key`, waiting at most `wait` (0: one try) with jittered, growing pauses so that
    /// waiters do not stampede. `None`: it stayed held or settled all along.
    pub async fn acquire(
        pool: &crate::redis::Pool,
        key: &str,
        lease: Duration,
        wait: Duration,
    ) -> Result<Option<Claim>, RedisError> {
        let deadline = tokio::time::Instant::now() + wait;
        let mut pause = Duration::from_millis(10);
        loop {
            if let Taken::Won(claim) = Self::take(pool, key, lease).await? {
                return Ok(Some(claim));
            }
            if tokio::time::Instant::now() >= deadline {
                return Ok(None);
            }
            let jitter = Duration::from_millis(u64::from(rand::random::<u8>() % 10));
            tokio::time::sleep((pause + jitter).min(deadline - tokio::time::Instant::now())).await;
            pause = (pause * 2).min(Duration::from_millis(200));
        }
    }

    /// Extends the lease to `lease` every `lease / 3` while this claim lives, so work that
    /// takes longer than one lease (a WeChat call retried with backoff) keeps it — as long as
    /// this process runs: a process that stalls (SIGSTOP, a long pause) stops renewing, the
    /// lease runs out, and the fenced writes refuse whatever it writes when it wakes up.
    pub fn keep_alive(&mut self, lease: Duration) {
        let (pool, key, value) = (self.pool.clone(), self.key.clone(), self.value.clone());
        let every = (lease / 3).max(Duration::from_millis(10));
        self.renewal = Some(tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                match extend(&pool, &key, &value, lease).await {
                    Ok(true) => {}
                    Ok(false) => return, // no longer ours
                    Err(e) => tracing::debug!(error = %e, "could not extend a claim"),
                }
            }
        }));
    }

    /// Extends the lease to `lease` once, if we still hold the claim; returns whether we do.
    pub async fn extend(&self, lease: Duration) -> Result<bool, RedisError> {
        extend(&self.pool, &self.key, &self.value, lease).await
    }

    pub fn key(&self) -> &str {
        &self.key
    }

    /// The random value that proves ownership (for fenced scripts).
    pub fn value(&self) -> &str {
        &self.value
    }

    /// Whether we still hold it (informational: writes must use a fenced script instead).
    pub async fn still_held(&self) -> Result<bool, RedisError> {
        let mut c = conn(&self.pool, "checking a claim").await?;
        let v: Option<String> = cmd("GET")
            .arg(&self.key)
            .query_async(&mut c)
            .await
            .map_err(failed("checking a claim"))?;
        Ok(v.as_deref() == Some(self.value.as_str()))
    }

    /// Settles the claim into `value` for `ttl`, if we still hold it; returns whether we did.
    pub async fn settle(mut self, value: &str, ttl: Duration) -> Result<bool, RedisError> {
        if let Some(r) = self.renewal.take() {
            r.abort();
        }
        let mut c = conn(&self.pool, "settling a claim").await?;
        let n: i64 = Script::new(SETTLE)
            .key(&self.key)
            .arg(&self.value)
            .arg(value)
            .arg(ttl.as_millis() as u64)
            .invoke_async(&mut c)
            .await
            .map_err(failed("settling a claim"))?;
        Ok(n == 1)
    }

    /// Releases the claim if it is still ours. On a Redis error the claim is handed back, still
    /// renewable and releasable: Redis may still hold it for us.
    pub async fn release_or_keep(self) -> Result<(), (Claim, RedisError)> {
        // Dropped once released: its renewal, if any, stops with it.
        match release(&self.pool, &self.key, &self.value).await {
            Ok(_) => Ok(()),
            Err(e) => Err((self, e)),
        }
    }

    /// Releases the claim if it is still ours; returns whether it was.
    pub async fn release(mut self) -> Result<bool, RedisError> {
        if let Some(r) = self.renewal.take() {
            r.abort();
        }
        release(&self.pool, &self.key, &self.value).await
    }
}

/// Extends `key`'s lease to `lease` if it still holds `value`.
async fn extend(
    pool: &crate::redis::Pool,
    key: &str,
    value: &str,
    lease: Duration,
) -> Result<bool, RedisError> {
    let mut c = conn(pool, "extending a claim").await?;
    let n: i64 = Script::new(EXTEND)
        .key(key)
        .arg(value)
        .arg(lease.as_millis() as u64)
        .invoke_async(&mut c)
        .await
        .map_err(failed("extending a claim"))?;
    Ok(n == 1)
}

/// Deletes `key` if it still holds `value` (for claims held by value, like the dedup's).
pub async fn release(
    pool: &crate::redis::Pool,
    key: &str,
    value: &str,
) -> Result<bool, RedisError> {
    let mut c = conn(pool, "releasing a claim").await?;
    let n: i64 = Script::new(RELEASE)
        .key(key)
        .arg(value)
        .invoke_async(&mut c)
        .await
        .map_err(failed("releasing a claim"))?;
    Ok(n == 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes() {
        let ok = Some(Value::Okay);
        let nil = Some(Value::Nil);
        let s = |v: &str| Some(Value::BulkString(v.as_bytes().to_vec()));
        assert_eq!(outcome(ok, s("claim:x")), Outcome::Won);
        assert_eq!(outcome(nil.clone(), s("claim:other")), Outcome::Held);
        assert_eq!(
            outcome(nil.clone(), s("done")),
            Outcome::Settled("done".into())
        );
        assert_eq!(outcome(nil.clone(), nil), Outcome::Held);
        assert!(new_value().starts_with("claim:"));
    }
}
