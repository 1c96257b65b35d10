//! The exchanges and queues of design.md, declared idempotently by every process at start and
//! after every reconnect. Declaring an existing entity with the same arguments is a no-op.
//!
//! # Delivery guarantees of the queues
//!
//! Consumed queues (`{ns}.raw`, `{ns}.business`) are quorum queues that dead-letter to
//! `{ns}.dlx` with `x-dead-letter-strategy=at-least-once` (with the `x-overflow=reject-publish`
//! it requires): a message the broker dead-letters by itself (a rejection, the delivery limit)
//! leaves its queue only once `{ns}.dead` confirmed it, where the default strategy would drop it
//! if the dead-letter queue were unavailable. `{ns}.dead` has a delivery limit far above
//! anything `workers dlq` inspection can reach, and no dead-letter exchange of its own.
//!
//! A queue declared by an older wxpipe (without these arguments) cannot be redeclared with them
//! (the broker answers PRECONDITION_FAILED). It is then left as it is, with a warning and a
//! metric; docs/integrating.md shows the RabbitMQ policy that gives it the same guarantees without
//! redeclaring.

use super::AmqpError;
use super::shards::RawShards;
use crate::ids::Namespace;
use crate::wire::raw::RawRoute;
use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Channel, Connection, ExchangeKind};

/// Redeliveries a consumed quorum queue allows before it dead-letters a message (a consumer
/// that keeps crashing on it must not block the queue forever).
pub const DELIVERY_LIMIT: i64 = 20;

/// Redeliveries `{ns}.dead` allows: each `workers dlq` inspection returns every letter it read,
/// which counts as a delivery; a billion inspections are out of reach.
pub const DEAD_DELIVERY_LIMIT: i64 = 1_000_000_000;

/// The routing-key pattern `{ns}.business` always binds: the platform's own events.
pub const COMPONENT_EVENTS: &str = "component.#";

/// What a process declares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Part {
    /// Nothing (a connection that only answers on direct reply-to).
    Nothing,
    /// `{ns}.raw` (in this many shards) and the dead letters: all the ingress's pushes need.
    Raw(RawShards),
    /// Everything: raw, events, business (bound to [`COMPONENT_EVENTS`] and these extra
    /// patterns) and dead letters, and the role's own consumed queues with their patterns on
    /// `{ns}.events` (`{ns}.releases`).
    All {
        raw: RawShards,
        business_patterns: Vec<String>,
        own_queues: Vec<(String, Vec<String>)>,
    },
}

impl Part {
    /// Everything, with no bindings of `{ns}.business` beyond [`COMPONENT_EVENTS`].
    pub fn everything(raw: RawShards) -> Self {
        Part::All {
            raw,
            business_patterns: Vec::new(),
            own_queues: Vec::new(),
        }
    }
}

/// The exchange type of a sharded `{ns}.raw` (the `rabbitmq_consistent_hash_exchange` plugin).
pub const CONSISTENT_HASH: &str = "x-consistent-hash";

/// Declares `part` of `ns` on `conn`, on channels of its own.
pub async fn declare(conn: &Connection, ns: &Namespace, part: &Part) -> Result<(), AmqpError> {
    if *part == Part::Nothing {
        return Ok(());
    }
    let mut d = Declarer::open(conn).await?;
    d.dead_letters(ns).await?;
    let shards = match part {
        Part::Raw(shards) | Part::All { raw: shards, .. } => *shards,
        Part::Nothing => RawShards::ONE,
    };
    d.raw(ns, shards).await?;
    if let Part::All {
        business_patterns,
        own_queues,
        ..
    } = part
    {
        d.exchange(&ns.events(), ExchangeKind::Topic).await?;
        d.consumed_queue(&ns.business(), ns).await?;
        d.bind(&ns.business(), &ns.events(), COMPONENT_EVENTS)
            .await?;
        for pattern in business_patterns {
            d.bind(&ns.business(), &ns.events(), pattern).await?;
        }
        for (queue, patterns) in own_queues {
            d.consumed_queue(queue, ns).await?;
            for pattern in patterns {
                d.bind(queue, &ns.events(), pattern).await?;
            }
        }
    }
    d.close().await;
    Ok(())
}

/// Every exchange and queue name a namespace may own with `shards`, for tools that remove a
/// namespace.
pub fn all_names(ns: &Namespace, shards: RawShards) -> (Vec<String>, Vec<String>) {
    let mut queues = shards.queues(ns);
    queues.extend([ns.business(), ns.releases(), ns.dead()]);
    (vec![ns.raw(), ns.events(), ns.dlx()], queues)
}

/// The arguments of a consumed quorum queue.
pub fn consumed_queue_arguments(ns: &Namespace) -> FieldTable {
    let mut args = quorum();
    for (k, v) in [
        ("x-dead-letter-exchange", ns.dlx()),
        ("x-dead-letter-strategy", "at-least-once".into()),
        ("x-overflow", "reject-publish".into()),
    ] {
        args.insert(k.into(), AMQPValue::LongString(v.into()));
    }
    args.insert(
        "x-delivery-limit".into(),
        AMQPValue::LongLongInt(DELIVERY_LIMIT),
    );
    args
}

fn quorum() -> FieldTable {
    let mut args = FieldTable::default();
    args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("quorum".into()),
    );
    args
}

fn is_precondition_failed(e: &lapin::Error) -> bool {
    matches!(e.kind(), lapin::ErrorKind::ProtocolError(a) if a.get_id() == 406)
}

/// 503 COMMAND_INVALID: what the broker answers for an unknown exchange type.
fn is_command_invalid(e: &lapin::Error) -> bool {
    matches!(e.kind(), lapin::ErrorKind::ProtocolError(a) if a.get_id() == 503)
}

/// Declarations on one channel, replaced when the broker closes it over a legacy queue.
struct Declarer<'a> {
    conn: &'a Connection,
    ch: Channel,
}

impl<'a> Declarer<'a> {
    async fn open(conn: &'a Connection) -> Result<Self, AmqpError> {
        let ch = conn.create_channel().await.map_err(AmqpError::broker(
            "opening a channel to declare the topology",
        ))?;
        Ok(Self { conn, ch })
    }

    async fn close(self) {
        let _ = self.ch.close(200, "topology declared".into()).await;
    }

    async fn dead_letters(&mut self, ns: &Namespace) -> Result<(), AmqpError> {
        self.exchange(&ns.dlx(), ExchangeKind::Fanout).await?;
        let mut args = quorum();
        args.insert(
            "x-delivery-limit".into(),
            AMQPValue::LongLongInt(DEAD_DELIVERY_LIMIT),
        );
        self.queue(&ns.dead(), args).await?;
        self.bind(&ns.dead(), &ns.dlx(), "").await
    }

    async fn raw(&mut self, ns: &Namespace, shards: RawShards) -> Result<(), AmqpError> {
        if !shards.is_sharded() {
            self.exchange(&ns.raw(), ExchangeKind::Direct).await?;
            self.consumed_queue(&ns.raw(), ns).await?;
            for route in RawRoute::ALL {
                self.bind(&ns.raw(), &ns.raw(), route.routing_key()).await?;
            }
            return Ok(());
        }
        self.sharded_exchange(&ns.raw(), shards).await?;
        for queue in shards.queues(ns) {
            let mut args = consumed_queue_arguments(ns);
            args.insert(
                "x-queue-leader-locator".into(),
                AMQPValue::LongString("balanced".into()),
            );
            self.queue(&queue, args).await?;
            // The binding key of a consistent-hash exchange is the queue's weight.
            self.bind(&queue, &ns.raw(), "1").await?;
        }
        Ok(())
    }

    /// `{ns}.raw` as a consistent-hash exchange on the shard header, with the two mistakes an
    /// operator can make named: the plugin not enabled, or a K = 1 exchange still in place.
    async fn sharded_exchange(&self, name: &str, shards: RawShards) -> Result<(), AmqpError> {
        let mut args = FieldTable::default();
        args.insert(
            "hash-header".into(),
            AMQPValue::LongString(crate::wire::raw::H_SHARD.into()),
        );
        let declared = self
            .ch
            .exchange_declare(
                name.into(),
                ExchangeKind::Custom(CONSISTENT_HASH.into()),
                ExchangeDeclareOptions {
                    durable: true,
                    ..Default::default()
                },
                args,
            )
            .await;
        match declared {
            Ok(()) => Ok(()),
            Err(e) => {
                let what = if is_precondition_failed(&e) {
                    format!(
                        "WXPIPE_RAW_SHARDS={shards}: exchange {name} exists with another type or \
                         arguments (a deployment with another shard count); drain it and delete \
                         it first (docs/scaling-out.md, 'Sharded intake')"
                    )
                } else if is_command_invalid(&e) {
                    format!(
                        "WXPIPE_RAW_SHARDS={shards} needs the broker's consistent-hash exchange: \
                         rabbitmq-plugins enable rabbitmq_consistent_hash_exchange"
                    )
                } else {
                    format!("declaring exchange {name}")
                };
                Err(AmqpError::Broker { what, source: e })
            }
        }
    }

    async fn consumed_queue(&mut self, name: &str, ns: &Namespace) -> Result<(), AmqpError> {
        self.queue(name, consumed_queue_arguments(ns)).await
    }

    async fn exchange(&self, name: &str, kind: ExchangeKind) -> Result<(), AmqpError> {
        self.ch
            .exchange_declare(
                name.into(),
                kind,
                ExchangeDeclareOptions {
                    durable: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .map_err(AmqpError::broker(format!("declaring exchange {name}")))
    }

    async fn queue(&mut self, name: &str, args: FieldTable) -> Result<(), AmqpError> {
        let options = QueueDeclareOptions {
            durable: true,
            ..Default::default()
        };
        match self.ch.queue_declare(name.into(), options, args).await {
            Ok(_) => Ok(()),
            Err(e) if is_precondition_failed(&e) => {
                // Declared earlier with other arguments: keep it, on a fresh channel.
                tracing::warn!(
                    queue = name,
                    "queue exists with the arguments of an older wxpipe; keeping it (see docs/integrating.md, \
                     'Moving an existing deployment': a policy gives it at-least-once dead-lettering)"
                );
                metrics::counter!("wxpipe_amqp_legacy_queues_total", "queue" => name.to_owned())
                    .increment(1);
                self.ch = self
                    .conn
                    .create_channel()
                    .await
                    .map_err(AmqpError::broker("reopening the declaration channel"))?;
                Ok(())
            }
            Err(e) => Err(AmqpError::Broker {
                what: format!("declaring queue {name}"),
                source: e,
            }),
        }
    }

    async fn bind(&self, queue: &str, exchange: &str, key: &str) -> Result<(), AmqpError> {
        self.ch
            .queue_bind(
                queue.into(),
                exchange.into(),
                key.into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(AmqpError::broker(format!(
                "binding {queue} to {exchange} ({key:?})"
            )))
    }
}
