//! The exchanges and queues of design.md, declared idempotently by every process at start and
//! after every reconnect. Declaring an existing entity with the same arguments is a no-op;
//! different arguments are a configuration error the broker reports (PRECONDITION_FAILED).

use super::AmqpError;
use crate::ids::Namespace;
use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Channel, ExchangeKind};

/// Routing key of pushes to the authorization-event URL on `{ns}.raw`.
pub const RAW_COMPONENT: &str = "component";
/// Routing key of pushes to the message URL on `{ns}.raw`.
pub const RAW_AUTHORIZER: &str = "authorizer";

/// Redeliveries a quorum queue allows before it dead-letters a message (a consumer that keeps
/// crashing on it must not block the queue forever).
pub const DELIVERY_LIMIT: i64 = 20;

/// `{ns}.dlx` (fanout) → `{ns}.dead`: where every consumed queue dead-letters.
pub async fn declare_dead_letters(ch: &Channel, ns: &Namespace) -> Result<(), AmqpError> {
    declare_exchange(ch, &ns.dlx(), ExchangeKind::Fanout).await?;
    declare_quorum_queue(ch, &ns.dead(), None).await?;
    bind(ch, &ns.dead(), &ns.dlx(), "").await
}

/// `{ns}.raw`: the direct exchange and quorum queue of still-encrypted pushes, with its dead
/// letters. This is all the ingress needs.
pub async fn declare_raw(ch: &Channel, ns: &Namespace) -> Result<(), AmqpError> {
    declare_dead_letters(ch, ns).await?;
    declare_exchange(ch, &ns.raw(), ExchangeKind::Direct).await?;
    declare_quorum_queue(ch, &ns.raw(), Some(&ns.dlx())).await?;
    bind(ch, &ns.raw(), &ns.raw(), RAW_COMPONENT).await?;
    bind(ch, &ns.raw(), &ns.raw(), RAW_AUTHORIZER).await
}

/// Routing-key patterns `{ns}.business` is bound to: the platform's own events, and everything
/// of the full-network release test's accounts (protocol.md §5).
pub fn business_bindings() -> Vec<String> {
    let mut patterns = vec!["component.#".to_owned()];
    patterns.extend(
        crate::wechat::RELEASE_TEST_ACCOUNTS
            .iter()
            .map(|(_, appid)| format!("authorizer.{appid}.#")),
    );
    patterns
}

/// `{ns}.events`: the topic exchange of decoded events downstream teams bind to.
pub async fn declare_events(ch: &Channel, ns: &Namespace) -> Result<(), AmqpError> {
    declare_exchange(ch, &ns.events(), ExchangeKind::Topic).await
}

/// `{ns}.business`: the quorum queue of the platform's own handlers, bound to
/// [`business_bindings`] on `{ns}.events`.
pub async fn declare_business(ch: &Channel, ns: &Namespace) -> Result<(), AmqpError> {
    declare_events(ch, ns).await?;
    declare_dead_letters(ch, ns).await?;
    declare_quorum_queue(ch, &ns.business(), Some(&ns.dlx())).await?;
    for pattern in business_bindings() {
        bind(ch, &ns.business(), &ns.events(), &pattern).await?;
    }
    Ok(())
}

/// Everything: raw, events, business and dead letters (what the workers declare).
pub async fn declare_all(ch: &Channel, ns: &Namespace) -> Result<(), AmqpError> {
    declare_raw(ch, ns).await?;
    declare_business(ch, ns).await
}

/// Every exchange and queue name a namespace may own, for tools that remove a namespace.
pub fn all_names(ns: &Namespace) -> (Vec<String>, Vec<String>) {
    (
        vec![ns.raw(), ns.events(), ns.dlx()],
        vec![ns.raw(), ns.business(), ns.dead()],
    )
}

async fn declare_exchange(ch: &Channel, name: &str, kind: ExchangeKind) -> Result<(), AmqpError> {
    ch.exchange_declare(
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

async fn declare_quorum_queue(
    ch: &Channel,
    name: &str,
    dead_letter_exchange: Option<&str>,
) -> Result<(), AmqpError> {
    let mut args = FieldTable::default();
    args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("quorum".into()),
    );
    if let Some(dlx) = dead_letter_exchange {
        args.insert(
            "x-dead-letter-exchange".into(),
            AMQPValue::LongString(dlx.into()),
        );
        args.insert(
            "x-delivery-limit".into(),
            AMQPValue::LongLongInt(DELIVERY_LIMIT),
        );
    }
    ch.queue_declare(
        name.into(),
        QueueDeclareOptions {
            durable: true,
            ..Default::default()
        },
        args,
    )
    .await
    .map(|_| ())
    .map_err(AmqpError::broker(format!("declaring queue {name}")))
}

async fn bind(ch: &Channel, queue: &str, exchange: &str, key: &str) -> Result<(), AmqpError> {
    ch.queue_bind(
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
