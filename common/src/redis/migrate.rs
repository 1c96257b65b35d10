//! Moves the keys of the layout before buckets and hash tags (one `…:authorizers` set, one
//! `…:due` schedule, `…:authorizer:{appid}`, `…:component_token`) to today's
//! ([`super::Keys`]), so an upgraded deployment keeps every account, refresh token and token.
//!
//! The older layout only ever existed on a single Redis server (its scripts could not run on a
//! cluster), where a script may touch keys of any slot. Each account is moved by one script,
//! atomically, and leaves the old set last: an interrupted migration resumes where it stopped,
//! and a second one finds nothing to do. A record already written in the new layout (by a
//! role upgraded first) keeps its fields; the old record only fills in what it lacks.

use super::{Keys, Pool, RedisError, bucket, conn, failed};
use deadpool_redis::redis::{Script, cmd};

/// Moves one account: `KEYS` = old record, new record, old due, new due, old attempts, new
/// attempts, new set, old set; `ARGV[1]` = appid.
const MOVE_ACCOUNT: &str = r"
if redis.call('EXISTS', KEYS[1]) == 1 then
  if redis.call('EXISTS', KEYS[2]) == 0 then
    redis.call('RENAME', KEYS[1], KEYS[2])
  else
    local h = redis.call('HGETALL', KEYS[1])
    for i = 1, #h, 2 do redis.call('HSETNX', KEYS[2], h[i], h[i + 1]) end
    redis.call('DEL', KEYS[1])
  end
end
local due = redis.call('ZSCORE', KEYS[3], ARGV[1])
if due then
  redis.call('ZADD', KEYS[4], 'NX', due, ARGV[1])
  redis.call('ZREM', KEYS[3], ARGV[1])
end
local n = redis.call('HGET', KEYS[5], ARGV[1])
if n then
  redis.call('HSETNX', KEYS[6], ARGV[1], n)
  redis.call('HDEL', KEYS[5], ARGV[1])
end
redis.call('SADD', KEYS[7], ARGV[1])
redis.call('SREM', KEYS[8], ARGV[1])
return 1
";

/// Moves `KEYS[1]` to `KEYS[2]` unless `KEYS[2]` exists (then the old one is dropped).
const MOVE_KEY: &str = r"
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
if redis.call('EXISTS', KEYS[2]) == 0 then redis.call('RENAME', KEYS[1], KEYS[2]) return 1 end
redis.call('DEL', KEYS[1])
return 0
";

/// The old layout's names.
struct Old<'a>(&'a Keys);

impl Old<'_> {
    fn authorizers(&self) -> String {
        format!("{}authorizers", self.0.prefix())
    }
    fn due(&self) -> String {
        format!("{}due", self.0.prefix())
    }
    fn due_attempts(&self) -> String {
        format!("{}due:attempts", self.0.prefix())
    }
    fn authorizer(&self, appid: &str) -> String {
        format!("{}authorizer:{appid}", self.0.prefix())
    }
    fn component_token(&self) -> String {
        format!("{}component_token", self.0.prefix())
    }
}

/// Moves whatever the old layout still holds; returns how many accounts moved. A no-op (three
/// `EXISTS`) when there is nothing to move, so every scheduler runs it at start.
pub async fn run(pool: &Pool, keys: &Keys) -> Result<usize, RedisError> {
    const WHAT: &str = "moving keys of the older layout";
    if pool.is_cluster() {
        // The older layout could not run on a cluster: there is nothing to move.
        return Ok(0);
    }
    let old = Old(keys);
    let mut c = conn(pool, WHAT).await?;
    let present: u32 = cmd("EXISTS")
        .arg(old.authorizers())
        .query_async(&mut c)
        .await
        .map_err(failed(WHAT))?;
    let present_due: u32 = cmd("EXISTS")
        .arg(old.due())
        .query_async(&mut c)
        .await
        .map_err(failed(WHAT))?;
    let mut moved = 0;
    if present + present_due > 0 {
        let mut appids: Vec<String> = cmd("SMEMBERS")
            .arg(old.authorizers())
            .query_async(&mut c)
            .await
            .map_err(failed(WHAT))?;
        let scheduled: Vec<String> = cmd("ZRANGE")
            .arg(old.due())
            .arg(0)
            .arg(-1)
            .query_async(&mut c)
            .await
            .map_err(failed(WHAT))?;
        appids.extend(scheduled);
        appids.sort_unstable();
        appids.dedup();
        tracing::info!(
            accounts = appids.len(),
            "moving the accounts of the older Redis layout to buckets"
        );
        let script = Script::new(MOVE_ACCOUNT);
        // A pipelined script runs by its digest: load it first.
        script
            .prepare_invoke()
            .load_async(&mut c)
            .await
            .map_err(failed(WHAT))?;
        for batch in appids.chunks(500) {
            let mut p = deadpool_redis::redis::pipe();
            for appid in batch {
                let b = bucket(appid);
                p.invoke_script(
                    script
                        .key(old.authorizer(appid))
                        .key(keys.authorizer(appid))
                        .key(old.due())
                        .key(keys.due(b))
                        .key(old.due_attempts())
                        .key(keys.due_attempts(b))
                        .key(keys.authorizers(b))
                        .key(old.authorizers())
                        .arg(appid),
                )
                .ignore();
            }
            p.query_async::<()>(&mut c).await.map_err(failed(WHAT))?;
            moved += batch.len();
        }
        // Whatever is left of the old schedule's backoff belonged to no account.
        cmd("DEL")
            .arg(old.due_attempts())
            .query_async::<()>(&mut c)
            .await
            .map_err(failed(WHAT))?;
        tracing::info!(accounts = moved, "older Redis layout moved");
    }
    Script::new(MOVE_KEY)
        .key(old.component_token())
        .key(keys.component_token())
        .invoke_async::<i64>(&mut c)
        .await
        .map_err(failed(WHAT))?;
    Ok(moved)
}
