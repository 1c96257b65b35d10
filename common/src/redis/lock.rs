//! Distributed locks: `SET key value NX PX lease` with a random value, released by a
//! compare-and-delete script, with bounded waiting — and fencing: a write guarded by a lock is
//! one script that checks the lock still holds our value and writes, so a replica that stalled
//! past its lease (GC pause, network partition, SIGSTOP) can never overwrite what the next
//! holder wrote.

use super::{RedisError, conn, failed};
use deadpool_redis::redis::{Script, cmd};
use std::time::Duration;

/// Deletes the lock only if it still holds our value.
const RELEASE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
";

/// A held lock. Dropping it without [`Lock::release`] lets the lease expire.
#[derive(Debug)]
pub struct Lock {
    pool: deadpool_redis::Pool,
    key: String,
    value: String,
}

impl Lock {
    /// Tries to take `key` for `lease`, waiting at most `wait` (0: one try). `None`: another
    /// holder kept it all along.
    pub async fn acquire(
        pool: &deadpool_redis::Pool,
        key: &str,
        lease: Duration,
        wait: Duration,
    ) -> Result<Option<Lock>, RedisError> {
        let value = uuid::Uuid::new_v4().simple().to_string();
        let deadline = tokio::time::Instant::now() + wait;
        let mut pause = Duration::from_millis(10);
        loop {
            let mut c = conn(pool, "taking a lock").await?;
            let taken: Option<String> = cmd("SET")
                .arg(key)
                .arg(&value)
                .arg("NX")
                .arg("PX")
                .arg(lease.as_millis() as u64)
                .query_async(&mut c)
                .await
                .map_err(failed("taking a lock"))?;
            if taken.is_some() {
                return Ok(Some(Lock {
                    pool: pool.clone(),
                    key: key.to_owned(),
                    value,
                }));
            }
            if tokio::time::Instant::now() >= deadline {
                return Ok(None);
            }
            // Jittered, growing pauses: waiters do not stampede when the lock frees.
            let jitter = Duration::from_millis(u64::from(rand::random::<u8>() % 10));
            tokio::time::sleep((pause + jitter).min(deadline - tokio::time::Instant::now())).await;
            pause = (pause * 2).min(Duration::from_millis(200));
        }
    }

    pub fn key(&self) -> &str {
        &self.key
    }

    /// The random value that proves ownership (for fenced scripts: `KEYS[1]` = [`Lock::key`],
    /// `ARGV[1]` = this).
    pub fn value(&self) -> &str {
        &self.value
    }

    /// Whether we still hold it (informational: writes must use a fenced script instead).
    pub async fn still_held(&self) -> Result<bool, RedisError> {
        let mut c = conn(&self.pool, "checking a lock").await?;
        let v: Option<String> = cmd("GET")
            .arg(&self.key)
            .query_async(&mut c)
            .await
            .map_err(failed("checking a lock"))?;
        Ok(v.as_deref() == Some(self.value.as_str()))
    }

    /// Releases the lock if it is still ours; returns whether it was.
    pub async fn release(self) -> Result<bool, RedisError> {
        let mut c = conn(&self.pool, "releasing a lock").await?;
        let n: i64 = Script::new(RELEASE)
            .key(&self.key)
            .arg(&self.value)
            .invoke_async(&mut c)
            .await
            .map_err(failed("releasing a lock"))?;
        Ok(n == 1)
    }
}
