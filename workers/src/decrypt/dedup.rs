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
//! The claim is the workspace's one claim primitive (`common::redis::claim`), batched. Marking
//! `done` is a plain `SET`, not a fenced settle: it is written only after the event's confirm,
//! so it is true whoever holds the claim by then.
//!
//! `done` keys expire after `dedup_ttl` (WeChat retries within seconds; the default is generous).
//!
//! # Batching
//!
//! Claims and `done` marks from all the deliveries a worker handles at once go through one task
//! that sends whatever is waiting as a single Redis pipeline. Each operation keeps its own
//! meaning and its own answer; only the round trips are shared, which is what lets one worker
//! keep up with the broker. A claim is `SET NX PX`; only when that is not won does a second
//! round trip `GET` the key to tell `done` from another worker's claim — the rare path of a
//! retry — so a push costs Redis two commands, not three (`SET NX`, `GET`, `SET`).

use common::redis::Keys;
use common::redis::claim;
use deadpool_redis::redis::{self, Value};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

/// Most operations sent in one pipeline.
const MAX_BATCH: usize = 512;

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
    pool: common::redis::Pool,
    keys: Keys,
    /// This worker's claim value, so that only the owner releases its claim.
    token: String,
    pub claim_ttl: Duration,
    pub dedup_ttl: Duration,
    batch: mpsc::Sender<Request>,
}

/// An operation and where its answer (Redis's reply to its one command) goes.
type Request = (Op, oneshot::Sender<Result<Value, DedupError>>);

/// One pipelined operation, one command each.
enum Op {
    /// `SET key <token> NX PX claim_ttl`.
    Claim(String),
    /// `GET key`, after a claim that was not won.
    Read(String),
    /// `SET key done PX dedup_ttl`.
    Done(String),
}

const DONE: &str = "done";

impl Dedup {
    /// Creates the store and starts its batching task (on the current Tokio runtime).
    pub fn new(
        pool: common::redis::Pool,
        keys: Keys,
        claim_ttl: Duration,
        dedup_ttl: Duration,
    ) -> Self {
        let token = claim::new_value();
        let (batch, rx) = mpsc::channel(4 * MAX_BATCH);
        tokio::spawn(run_batches(
            pool.clone(),
            token.clone(),
            claim_ttl,
            dedup_ttl,
            rx,
        ));
        Self {
            pool,
            keys,
            token,
            claim_ttl,
            dedup_ttl,
            batch,
        }
    }

    async fn submit(&self, op: Op) -> Result<Value, DedupError> {
        let (tx, rx) = oneshot::channel();
        self.batch
            .send((op, tx))
            .await
            .map_err(|_| DedupError("the Redis batching task has stopped".into()))?;
        rx.await
            .map_err(|_| DedupError("the Redis batching task dropped a request".into()))?
    }

    /// Tries to claim `event_id`.
    pub async fn claim(&self, event_id: &str) -> Result<Claim, DedupError> {
        let key = self.keys.dedup(event_id);
        let set = self.submit(Op::Claim(key.clone())).await?;
        if claim::is_ok(&set) {
            return Ok(Claim::Won);
        }
        let current = self.submit(Op::Read(key)).await?;
        Ok(claim_outcome(Some(set), Some(current)))
    }

    /// Records that the event of `event_id` was confirmed.
    pub async fn mark_done(&self, event_id: &str) -> Result<(), DedupError> {
        match self.submit(Op::Done(self.keys.dedup(event_id))).await? {
            v if claim::is_ok(&v) => Ok(()),
            other => Err(DedupError(format!("unexpected answer to SET: {other:?}"))),
        }
    }

    /// Gives up our claim (after a failed publish), so a retry need not wait for it to expire.
    pub async fn release(&self, event_id: &str) -> Result<(), DedupError> {
        let key = self.keys.dedup(event_id);
        answered(claim::release(&self.pool, &key, &self.token))
            .await
            .map(|_| ())
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

async fn get_conn(pool: &common::redis::Pool) -> Result<common::redis::Connection, DedupError> {
    tokio::time::timeout(REDIS_DEADLINE, pool.get())
        .await
        .map_err(|_| {
            DedupError(format!(
                "no Redis connection within {} s",
                REDIS_DEADLINE.as_secs()
            ))
        })?
        .map_err(|e| DedupError(e.to_string()))
}

/// How long one Redis step — a connection from the pool, a pipeline's answers, a release —
/// may take before it counts as Redis being unavailable.
const REDIS_DEADLINE: Duration = Duration::from_secs(2);

/// `step`'s answer, or a [`DedupError`] once [`REDIS_DEADLINE`] has passed without one.
async fn answered<T, E: std::fmt::Display>(
    step: impl std::future::Future<Output = Result<T, E>>,
) -> Result<T, DedupError> {
    tokio::time::timeout(REDIS_DEADLINE, step)
        .await
        .map_err(|_| {
            DedupError(format!(
                "Redis did not answer within {} s",
                REDIS_DEADLINE.as_secs()
            ))
        })?
        .map_err(|e| DedupError(e.to_string()))
}

/// Sends waiting operations as pipelines until every sender is gone.
async fn run_batches(
    pool: common::redis::Pool,
    token: String,
    claim_ttl: Duration,
    dedup_ttl: Duration,
    mut rx: mpsc::Receiver<Request>,
) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    // One connection kept from batch to batch (and dropped on any error): taking it from the
    // pool for every batch costs deadpool's recycle check (a `PING` round trip) per batch.
    let mut held: Option<common::redis::Connection> = None;
    while rx.recv_many(&mut batch, MAX_BATCH).await > 0 {
        let mut pipe = redis::pipe();
        for (op, _) in &batch {
            match op {
                Op::Claim(key) => claim::push_set_nx(&mut pipe, key, &token, claim_ttl),
                Op::Read(key) => {
                    pipe.cmd("GET").arg(key);
                }
                Op::Done(key) => {
                    pipe.cmd("SET")
                        .arg(key)
                        .arg(DONE)
                        .arg("PX")
                        .arg(dedup_ttl.as_millis() as u64);
                }
            }
        }
        let result: Result<Vec<Value>, DedupError> = async {
            let conn = match &mut held {
                Some(conn) => conn,
                None => held.insert(get_conn(&pool).await?),
            };
            answered(pipe.query_async::<Vec<Value>>(conn)).await
        }
        .await;
        if result.is_err() {
            held = None;
        }
        match result {
            Ok(values) => {
                let mut values = values.into_iter();
                for (_, reply) in batch.drain(..) {
                    let answer = values.next().ok_or_else(|| {
                        DedupError("Redis answered fewer commands than sent".into())
                    });
                    let _ = reply.send(answer);
                }
            }
            Err(e) => {
                for (_, reply) in batch.drain(..) {
                    let _ = reply.send(Err(e.clone()));
                }
            }
        }
    }
}

/// The outcome of a claim attempt ([`claim::push_take`]) in the dedup's terms.
fn claim_outcome(set: Option<Value>, current: Option<Value>) -> Claim {
    match claim::outcome(set, current) {
        claim::Outcome::Won => Claim::Won,
        claim::Outcome::Settled(v) if v == DONE => Claim::Done,
        // Held by another worker, or expired between the SET and the GET (try again later).
        _ => Claim::HeldByOther,
    }
}
