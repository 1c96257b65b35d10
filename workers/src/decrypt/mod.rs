//! `workers decrypt`: `{ns}.raw` → verify · decrypt · parse · dedupe → one CloudEvent on
//! `{ns}.events`, confirmed, before the raw message is acked. Any number of replicas compete
//! for the queue. The delivery guarantee is argued in [`dedup`].

pub mod decode;
pub mod dedup;

use crate::args::WorkerArgs;
use crate::retry::{Attempt, retry};
use common::amqp::ConfirmedPublisher;
use common::amqp::consumer::{Disposition, Handler};
use common::amqp::publisher::Routing;
use common::config::ConfigError;
use common::crypto::MsgCrypt;
use common::event;
use common::ids::Namespace;
use common::wire::event::EventProperties;
use common::xml::FieldSource;
use decode::{Decoded, decode};
use dedup::{Claim, Dedup};
use lapin::message::Delivery;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// `WXPIPE_DECRYPT_LINGER_US`'s default: 1 ms cut the worker's CPU per event by a fifth in
/// `wxpipe-bench e2e`; 2.5 ms saved no more.
pub const DEFAULT_LINGER_US: u32 = 1000;
/// `WXPIPE_DECRYPT_LINGER_US`'s largest value (100 ms).
pub const MAX_LINGER_US: i64 = 100_000;

/// Consume `{ns}.raw`, publish decoded events to `{ns}.events`.
#[derive(clap::Args, Debug, Clone)]
pub struct DecryptArgs {
    #[command(flatten)]
    pub worker: WorkerArgs,
    /// Unacknowledged raw messages one worker holds (and handles concurrently).
    #[arg(long, env = "WXPIPE_DECRYPT_PREFETCH", default_value_t = 256)]
    pub prefetch: u16,
    /// Threads of the async runtime that handle the deliveries (besides the AMQP client's own
    /// I/O thread per connection). One wakes fewer threads per delivery than one per core
    /// (docs/performance.md); scale out with replicas, or raise it.
    #[arg(long, env = "WXPIPE_DECRYPT_THREADS", default_value_t = 1,
          value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub threads: u16,
    /// Microseconds that deliveries arriving a few at a time wait for others, to be handled
    /// together: one wake-up of each thread per batch instead of per push (docs/performance.md). 0 handles each at once.
    #[arg(long, env = "WXPIPE_DECRYPT_LINGER_US", default_value_t = DEFAULT_LINGER_US,
          value_parser = clap::value_parser!(u32).range(0..=MAX_LINGER_US))]
    pub linger_us: u32,
    /// How long a published push is remembered, so that WeChat's retries are dropped.
    #[arg(long, env = "WXPIPE_DEDUP_TTL_SECS", default_value_t = 900)]
    pub dedup_ttl_secs: u64,
    /// Lease of a worker's claim on a push; a dead worker's claim expires after it.
    #[arg(long, env = "WXPIPE_DEDUP_CLAIM_SECS", default_value_t = 30)]
    pub dedup_claim_secs: u64,
    /// The intake shards this worker consumes when `WXPIPE_RAW_SHARDS` > 1: `*` (every one)
    /// or a comma-separated list such as `0,2`.
    #[arg(long, env = "WXPIPE_DECRYPT_SHARDS", default_value = "*")]
    pub shards: String,
    /// Fault injection for `scripts/faults` only: a push whose text `Content` contains this
    /// makes its handler panic (a consumer that crashes on one message, every time).
    #[arg(long, env = "WXPIPE_FAULT_PANIC_ON", hide = true)]
    pub fault_panic_on: Option<String>,
}

/// Validated settings.
#[derive(Clone)]
pub struct DecryptConfig {
    pub crypt: MsgCrypt,
    pub namespace: Namespace,
    pub raw_shards: common::amqp::RawShards,
    /// The shards consumed (indexes below `raw_shards`).
    pub shards: Vec<u16>,
    pub amqp_urls: Vec<String>,
    pub redis_url: String,
    pub prefetch: u16,
    /// See [`DecryptArgs::linger_us`].
    pub linger: Duration,
    pub dedup_ttl: Duration,
    pub claim_ttl: Duration,
    pub max_attempts: u32,
    pub confirm_timeout: Duration,
    /// See [`DecryptArgs::fault_panic_on`].
    pub fault_panic_on: Option<String>,
}

impl DecryptArgs {
    pub fn validate(&self) -> Result<DecryptConfig, ConfigError> {
        let w = &self.worker;
        common::config::positive("WXPIPE_DECRYPT_PREFETCH", u64::from(self.prefetch))?;
        if self.dedup_claim_secs < 5 {
            return Err(ConfigError::Invalid {
                var: "WXPIPE_DEDUP_CLAIM_SECS",
                reason: "must be at least 5 (longer than a publish confirm can take)".into(),
            });
        }
        let raw_shards = w.service.namespace.raw_shards()?;
        let shards = raw_shards
            .select(Some(&self.shards))
            .map_err(|e| ConfigError::Invalid {
                var: "WXPIPE_DECRYPT_SHARDS",
                reason: e.to_string(),
            })?;
        Ok(DecryptConfig {
            crypt: w.service.platform.crypt()?,
            namespace: w.service.namespace.namespace()?,
            raw_shards,
            shards,
            amqp_urls: w.service.amqp.urls()?,
            redis_url: w.service.redis.redis_url.clone(),
            prefetch: self.prefetch,
            linger: Duration::from_micros(self.linger_us.into()),
            dedup_ttl: Duration::from_secs(self.dedup_ttl_secs.max(1)),
            claim_ttl: Duration::from_secs(self.dedup_claim_secs),
            max_attempts: w.check_attempts()?,
            confirm_timeout: Duration::from_secs(2),
            fault_panic_on: self.fault_panic_on.clone().filter(|m| !m.is_empty()),
        })
    }
}

/// The per-delivery logic.
pub struct DecryptHandler {
    crypt: MsgCrypt,
    publisher: ConfirmedPublisher,
    events_exchange: String,
    dedup: Dedup,
    max_attempts: u32,
    fault_panic_on: Option<String>,
}

/// How one delivery attempt ended.
enum Delivered {
    Published,
    Duplicate,
    StillHeld,
}

impl Handler for DecryptHandler {
    async fn handle(&self, delivery: &Delivery) -> Disposition {
        let decoded = match decode(&self.crypt, delivery) {
            Ok(d) => d,
            Err(poison) => {
                count("dead");
                return Disposition::DeadLetter {
                    reason: poison.reason(),
                    detail: poison.to_string(),
                };
            }
        };
        if let Some(marker) = &self.fault_panic_on
            && decoded
                .push
                .fields()
                .leaf("Content")
                .is_some_and(|c| c.contains(marker.as_str()))
        {
            panic!("fault injection: a push containing the WXPIPE_FAULT_PANIC_ON marker");
        }
        let (address, body) = match decode::event(&decoded, self.crypt.appid()) {
            Ok(e) => e,
            Err(poison) => {
                count("dead");
                return Disposition::DeadLetter {
                    reason: poison.reason(),
                    detail: poison.to_string(),
                };
            }
        };
        let outcome = retry(self.max_attempts, "decrypt", || {
            self.deliver(&decoded, &address, &body)
        })
        .await;
        let follow = |what: &str| {
            tracing::debug!(
                id = %address.id,
                source = %address.source,
                event_type = %address.event_type,
                nonce = %decoded.raw.nonce,
                timestamp = %decoded.raw.timestamp,
                "{what}"
            )
        };
        match outcome {
            Ok(Delivered::Published) => {
                count("published");
                if let Some(at) = decoded.raw.received_at_ms {
                    let secs = (common::unix_now_ms() - at).max(0) as f64 / 1000.0;
                    metrics::histogram!("wxpipe_push_to_event_seconds").record(secs);
                }
                follow("event published");
                Disposition::Ack
            }
            Ok(Delivered::Duplicate) => {
                count("duplicate");
                follow("duplicate push: its event was already published");
                Disposition::Ack
            }
            Ok(Delivered::StillHeld) => {
                count("requeued");
                Disposition::Requeue
            }
            Err(gave_up) => {
                count("dead");
                Disposition::DeadLetter {
                    reason: gave_up.reason,
                    detail: format!("{} (after {} attempts)", gave_up.detail, gave_up.attempts),
                }
            }
        }
    }
}

fn count(outcome: &'static str) {
    metrics::counter!("wxpipe_decrypt_messages_total", "outcome" => outcome).increment(1);
}

fn redis_down(e: dedup::DedupError) -> Attempt<Delivered> {
    Attempt::Transient {
        reason: "redis_unavailable",
        detail: e.0,
    }
}

impl DecryptHandler {
    /// One attempt: claim, publish and confirm, mark done (see [`dedup`]).
    async fn deliver(
        &self,
        decoded: &Decoded,
        address: &event::EventAddress,
        body: &[u8],
    ) -> Attempt<Delivered> {
        let mut claim = match self.dedup.claim(&address.id).await {
            Ok(c) => c,
            Err(e) => return redis_down(e),
        };
        if claim == Claim::HeldByOther {
            claim = match self.dedup.wait_for_other(&address.id).await {
                Ok(c) => c,
                Err(e) => return redis_down(e),
            };
        }
        match claim {
            Claim::Done => return Attempt::Done(Delivered::Duplicate),
            Claim::HeldByOther => return Attempt::Done(Delivered::StillHeld),
            Claim::Won => {}
        }
        let props = EventProperties {
            id: address.id.clone(),
            event_type: address.event_type.clone(),
            received_at_ms: decoded.raw.received_at_ms,
            reply: decoded.reply.clone(),
        };
        // An event nobody subscribed to is normal on a topic exchange: not mandatory.
        if let Err(e) = self
            .publisher
            .publish_routed(
                &self.events_exchange,
                &address.routing_key,
                body,
                props.to_properties(),
                Routing::AnyQueues,
            )
            .await
        {
            // Let a retry (ours or another replica's) claim it at once.
            let _ = self.dedup.release(&address.id).await;
            return Attempt::Transient {
                reason: "publish_failed",
                detail: e.to_string(),
            };
        }
        if let Err(e) = self.dedup.mark_done(&address.id).await {
            // The event is out; the claim will expire. Only a redelivery after that could
            // publish a duplicate, and it would carry the same id.
            tracing::warn!(id = %address.id, error = %e, "event published but not marked done");
            metrics::counter!("wxpipe_decrypt_mark_done_failures_total").increment(1);
        }
        Attempt::Done(Delivered::Published)
    }
}

/// Runs one decrypt worker until `shutdown` becomes true.
pub async fn run(
    config: DecryptConfig,
    shutdown: watch::Receiver<bool>,
) -> Result<(), common::redis::RedisError> {
    let pool = common::redis::pool(&config.redis_url)?;
    let keys = common::redis::Keys::new(&config.namespace, config.crypt.appid());
    common::beacon::spawn(pool.clone(), keys.clone(), "decrypt", shutdown.clone());
    let role = crate::role::Role {
        name: "decrypt",
        namespace: config.namespace.clone(),
        raw_shards: config.raw_shards,
        urls: config.amqp_urls.clone(),
        queues: config
            .shards
            .iter()
            .map(|i| config.raw_shards.queue(&config.namespace, *i))
            .collect(),
        prefetch: config.prefetch,
        linger: config.linger,
        own_queues: Vec::new(),
    };
    let publisher = role.publisher(2, config.confirm_timeout);
    let handler = Arc::new(DecryptHandler {
        crypt: config.crypt.clone(),
        publisher: publisher.clone(),
        events_exchange: config.namespace.events(),
        dedup: Dedup::new(pool, keys, config.claim_ttl, config.dedup_ttl),
        max_attempts: config.max_attempts,
        fault_panic_on: config.fault_panic_on.clone(),
    });
    role.consume(handler, publisher, shutdown).await;
    Ok(())
}
