//! Deduplication of pushes across any number of decrypt replicas, in Redis.
//!
//! # The states of a dedup key (`{ns}:{component_appid}:dedup:{event id}`)
//!
//! ```text
//!   absent ──claim (SET NX PX claim_ttl)──▶ "claim:<token>" ──event confirmed──▶ "done" (PX dedup_ttl)
//!      ▲                                         │
//!      └──── claim_ttl expires (claimant died) ──┘   or released by its owner after a failed publish
//! ```
//!
//! A worker holding a push does, in order: **claim → publish the event and wait for the
//! broker's confirm → mark done → ack the raw message.**
//!
//! # Why nothing is lost and nothing is doubled while nothing crashes
//!
//! * **No loss.** A raw message is acked only after its event was confirmed (or after seeing
//!   `done`, which is written only after a confirm). Until the ack, the broker keeps the raw
//!   message and redelivers it if the worker dies. A redelivery is never dropped because of a
//!   dead worker's claim: a claim is a *lease* (`PX claim_ttl`), so it disappears by itself, and
//!   a worker that finds a claim it does not own does not ack — it waits until the key becomes
//!   `done` (then the event exists: ack) or disappears (then it claims and publishes itself), and
//!   if neither happens in time it requeues the message. The only state that leads to an ack
//!   without publishing is `done`, and `done` implies a confirmed event.
//! * **No second event without a crash.** WeChat's retries of one push (separate requests,
//!   possibly at the same instant on different replicas) compute the same event id. `SET NX`
//!   lets exactly one of them claim; the others wait for `done` and ack without publishing.
//!   A claim outlives any normal handling (`claim_ttl` ≫ the confirm deadline), so it cannot
//!   expire under a live owner.
//! * **After a crash, a duplicate carries the same id.** If a worker dies between the confirm
//!   and writing `done`, its claim expires and a redelivery publishes the event again — with the
//!   same `id`, so consumers that remember ids drop it. If it dies after `done` but before the
//!   ack, the redelivery finds `done` and is acked without a second event.
//! * **Redis unavailable** is a transient failure: the message is retried with backoff (never
//!   acked without an event), and dead-lettered with reason `redis_unavailable` only after the
//!   configured attempts; `workers dlq replay` brings it back.
//!
//! `done` keys expire after `dedup_ttl` (WeChat retries within seconds; the default is generous).

use common::redis::Keys;
use deadpool_redis::redis::Script;
use std::time::Duration;

/// The outcome of trying to claim a push.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// We own it: publish, then [`Dedup::mark_done`].
    Won,
    /// Its event was already published.
    Done,
    /// Another worker is handling it right now.
    HeldByOther,
}

/// A Redis failure (transient).
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct DedupError(pub String);

/// The dedup store of one platform.
#[derive(Clone)]
pub struct Dedup {
    pool: deadpool_redis::Pool,
    keys: Keys,
    /// This worker's claim value, so that only the owner releases its claim.
    token: String,
    pub claim_ttl: Duration,
    pub dedup_ttl: Duration,
}

const DONE: &str = "done";

/// `SET NX PX`; on failure, the current value (nil if it expired in between).
const CLAIM: &str = r"
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return 'won' end
return redis.call('GET', KEYS[1])
";

/// Deletes the key only if it still holds our claim.
const RELEASE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
";

impl Dedup {
    pub fn new(
        pool: deadpool_redis::Pool,
        keys: Keys,
        claim_ttl: Duration,
        dedup_ttl: Duration,
    ) -> Self {
        let id = uuid::Uuid::new_v4().simple().to_string();
        Self {
            pool,
            keys,
            token: format!("claim:{id}"),
            claim_ttl,
            dedup_ttl,
        }
    }

    async fn conn(&self) -> Result<deadpool_redis::Connection, DedupError> {
        tokio::time::timeout(Duration::from_secs(2), self.pool.get())
            .await
            .map_err(|_| DedupError("no Redis connection within 2 s".into()))?
            .map_err(|e| DedupError(e.to_string()))
    }

    /// Tries to claim `event_id`.
    pub async fn claim(&self, event_id: &str) -> Result<Claim, DedupError> {
        let mut conn = self.conn().await?;
        let value: Option<String> = Script::new(CLAIM)
            .key(self.keys.dedup(event_id))
            .arg(&self.token)
            .arg(self.claim_ttl.as_millis() as u64)
            .invoke_async(&mut conn)
            .await
            .map_err(|e| DedupError(e.to_string()))?;
        Ok(match value.as_deref() {
            Some("won") => Claim::Won,
            Some(DONE) => Claim::Done,
            Some(_) => Claim::HeldByOther,
            // Expired between the SET and the GET: whoever held it is gone; try again.
            None => Claim::HeldByOther,
        })
    }

    /// Records that the event of `event_id` was confirmed.
    pub async fn mark_done(&self, event_id: &str) -> Result<(), DedupError> {
        let mut conn = self.conn().await?;
        deadpool_redis::redis::cmd("SET")
            .arg(self.keys.dedup(event_id))
            .arg(DONE)
            .arg("PX")
            .arg(self.dedup_ttl.as_millis() as u64)
            .query_async::<()>(&mut conn)
            .await
            .map_err(|e| DedupError(e.to_string()))
    }

    /// Gives up our claim (after a failed publish), so a retry need not wait for it to expire.
    pub async fn release(&self, event_id: &str) -> Result<(), DedupError> {
        let mut conn = self.conn().await?;
        Script::new(RELEASE)
            .key(self.keys.dedup(event_id))
            .arg(&self.token)
            .invoke_async::<i64>(&mut conn)
            .await
            .map(|_| ())
            .map_err(|e| DedupError(e.to_string()))
    }

    /// Waits while another worker holds `event_id`: `Done` once its event is confirmed, `Won`
    /// if the claim vanished and we took it, `HeldByOther` if it is still held after
    /// `claim_ttl` plus a second.
    pub async fn wait_for_other(&self, event_id: &str) -> Result<Claim, DedupError> {
        let deadline = tokio::time::Instant::now() + self.claim_ttl + Duration::from_secs(1);
        let mut pause = Duration::from_millis(20);
        while tokio::time::Instant::now() < deadline {
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(500));
            match self.claim(event_id).await? {
                Claim::HeldByOther => continue,
                settled => return Ok(settled),
            }
        }
        Ok(Claim::HeldByOther)
    }
}
