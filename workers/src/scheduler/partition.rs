//! Scheduler replicas divide the accounts' [`BUCKETS`] among themselves, so that N replicas
//! each scan 1/N of the `due` schedule.
//!
//! Every tick a replica
//! 1. announces itself in `…:schedulers` (a sorted set: member = replica id, score = when it
//!    last announced, by Redis's clock: `TIME` inside the script, so a replica whose clock is
//!    off is neither forgotten nor keeps the dead alive) and forgets members silent for a lease;
//! 2. computes its share: bucket `b` belongs to the replica of rank `b mod N` among the N live
//!    ids (sorted), so every replica computes the same assignment from the same membership;
//! 3. renews the leases of the buckets it holds and still should, releases the ones it holds
//!    and no longer should (a newcomer gets them at its next tick), and claims each bucket of
//!    its share that nobody holds (`…:{aNN}:lease`, the workspace's claim primitive).
//!
//! A replica that dies stops announcing and renewing: within one lease its buckets' leases
//! run out and its membership is forgotten, and at the next tick the survivors' shares cover
//! them. Ownership only divides the work: two replicas that briefly both scan a bucket (a
//! stalled one waking up) cannot refresh one token twice, because each refresh still takes
//! the account's lock, re-reads the token and writes it fenced ([`common::token::service`]).

use common::redis::claim::{Claim, Taken};
use common::redis::{BUCKETS, Keys, Pool, RedisError, conn, failed};
use deadpool_redis::redis::{Script, cmd};
use std::collections::BTreeMap;
use std::time::Duration;

/// Announces `ARGV[1]` in the members `KEYS[1]` at Redis's time, forgets the members silent for
/// `ARGV[2]` ms, and returns the live ones. The time is Redis's own (`TIME`), never a replica's:
/// with local clocks, a replica whose clock ran minutes behind was forgotten by the others at
/// every tick while it still counted them, and the two computed different shares.
const ANNOUNCE: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZADD', KEYS[1], now, ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - tonumber(ARGV[2]))
return redis.call('ZRANGE', KEYS[1], 0, -1)
";

/// This replica's share of the buckets.
pub struct Partition {
    pool: Pool,
    keys: Keys,
    id: String,
    lease: Duration,
    held: BTreeMap<u16, Claim>,
}

impl Partition {
    /// A replica named after its host and process (and a random part, so that two schedulers in
    /// one process — tests — differ).
    pub fn new(pool: Pool, keys: Keys, lease: Duration) -> Self {
        let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "host".into());
        let id = format!(
            "{host}:{}:{}",
            std::process::id(),
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        );
        Self {
            pool,
            keys,
            id,
            lease,
            held: BTreeMap::new(),
        }
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    /// The buckets held now, ascending.
    pub fn held(&self) -> Vec<u16> {
        self.held.keys().copied().collect()
    }

    /// One round of announce · compute share · renew, release, claim. Returns the buckets held
    /// afterwards. On a Redis error the buckets are kept as they are (their leases keep them
    /// ours until they run out).
    pub async fn tick(&mut self) -> Result<Vec<u16>, RedisError> {
        const WHAT: &str = "dividing the buckets";
        let mut c = conn(&self.pool, WHAT).await?;
        let mut live: Vec<String> = Script::new(ANNOUNCE)
            .key(self.keys.schedulers())
            .arg(&self.id)
            .arg(self.lease.as_millis() as u64)
            .invoke_async(&mut c)
            .await
            .map_err(failed(WHAT))?;
        drop(c);
        live.sort_unstable();
        let share = share(&live, &self.id);

        // Renew what we hold and keep; release what is no longer ours. A lease is forgotten
        // here only once Redis said it is not ours (or gave it back): on an error it is kept,
        // as held, and tried again next tick — it may well still be ours in Redis, and a bucket
        // held in Redis by a replica that no longer scans it would go unscanned for a lease.
        let held: Vec<u16> = self.held.keys().copied().collect();
        for b in held {
            let Some(claim) = self.held.get(&b) else {
                continue;
            };
            if share.contains(&b) {
                match claim.extend(self.lease).await {
                    Ok(true) => {}
                    Ok(false) => {
                        tracing::warn!(bucket = b, "lost the lease of a bucket");
                        self.held.remove(&b);
                    }
                    Err(e) => return Err(e),
                }
            } else if let Some(claim) = self.held.remove(&b) {
                match claim.release_or_keep().await {
                    Ok(()) => {}
                    Err((claim, e)) => {
                        self.held.insert(b, claim);
                        return Err(e);
                    }
                }
            }
        }
        // Claim what is ours and free.
        for b in share {
            if self.held.contains_key(&b) {
                continue;
            }
            if let Taken::Won(claim) =
                Claim::take_as(&self.pool, &self.keys.bucket_lease(b), self.lease, &self.id).await?
            {
                self.held.insert(b, claim);
            }
        }
        metrics::gauge!("wxpipe_scheduler_buckets_held").set(self.held.len() as f64);
        metrics::gauge!("wxpipe_scheduler_replicas").set(live.len() as f64);
        Ok(self.held())
    }

    /// Runs `work` (a round of refreshes) while renewing the leases of the buckets held, every
    /// third of a lease, so that no round — however slow WeChat answers — outlasts them. A
    /// round used to renew only between rounds: one longer than the lease (512 refreshes at a
    /// few dozen per second, or WeChat calls timing out and retried) let the buckets go, and
    /// they moved between replicas mid-round. Membership and shares still change only in
    /// [`Partition::tick`], between rounds.
    pub async fn renewing<T>(&mut self, work: impl std::future::Future<Output = T>) -> T {
        let every = self.lease / 3;
        let renew = async {
            loop {
                tokio::time::sleep(every).await;
                self.renew_held().await;
            }
        };
        tokio::select! {
            biased;
            out = work => out,
            _ = renew => unreachable!("the renewal loop has no end"),
        }
    }

    /// Extends every held lease once; a lease found lost is dropped from what is held (its
    /// bucket is claimed again at the next tick if it is still ours and free).
    async fn renew_held(&mut self) {
        let held: Vec<u16> = self.held.keys().copied().collect();
        for b in held {
            let Some(claim) = self.held.get(&b) else {
                continue;
            };
            match claim.extend(self.lease).await {
                Ok(true) => {}
                Ok(false) => {
                    tracing::warn!(bucket = b, "lost the lease of a bucket");
                    self.held.remove(&b);
                }
                Err(e) => {
                    tracing::warn!(bucket = b, error = %e, "cannot renew the lease of a bucket");
                }
            }
        }
        metrics::gauge!("wxpipe_scheduler_buckets_held").set(self.held.len() as f64);
    }

    /// Gives every bucket back and leaves the membership (a graceful stop: the others take
    /// over at their next tick instead of after a lease).
    pub async fn leave(mut self) {
        for (_, claim) in std::mem::take(&mut self.held) {
            let _ = claim.release().await;
        }
        if let Ok(mut c) = conn(&self.pool, "leaving the schedulers").await {
            let _ = cmd("ZREM")
                .arg(self.keys.schedulers())
                .arg(&self.id)
                .query_async::<()>(&mut c)
                .await;
        }
    }
}

/// The buckets of the replica `me` among the sorted live ids: those `b` with
/// `b mod N == rank(me)`. Empty when `me` is not (yet) among them.
pub fn share(live: &[String], me: &str) -> Vec<u16> {
    let Some(rank) = live.iter().position(|id| id == me) else {
        return Vec::new();
    };
    let n = live.len();
    (0..BUCKETS).filter(|b| *b as usize % n == rank).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_cover_every_bucket_once() {
        let live: Vec<String> = ["a", "b", "c"].map(String::from).to_vec();
        let mut all: Vec<u16> = live.iter().flat_map(|id| share(&live, id)).collect();
        all.sort_unstable();
        assert_eq!(all, (0..BUCKETS).collect::<Vec<_>>());
        assert_eq!(share(&live, "a").len(), 22);
        assert_eq!(share(&live, "c").len(), 21);
        assert!(share(&live, "z").is_empty());
        assert_eq!(share(&live[..1], "a").len(), BUCKETS as usize);
    }
}
