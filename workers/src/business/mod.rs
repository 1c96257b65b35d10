//! `workers business`: consumes `{ns}.business` and hands each event to the handler registered
//! for its type ([`registry`]). Unknown events are acked and counted; transient handler failures
//! are retried with backoff and dead-lettered after the configured attempts; permanent ones are
//! dead-lettered at once.

pub mod handlers;
pub mod registry;
pub mod release_test;

use crate::args::WorkerArgs;
use crate::retry::{Attempt, retry};
use common::amqp::consumer::{Disposition, Handler};
use common::amqp::topology::Part;
use common::amqp::{ConfirmedPublisher, PublisherConfig};
use common::config::ConfigError;
use common::ids::Namespace;
use lapin::message::Delivery;
use registry::{HandlerError, Registry};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tracing::Instrument;

/// Consume `{ns}.business`.
#[derive(clap::Args, Debug, Clone)]
pub struct BusinessArgs {
    #[command(flatten)]
    pub worker: WorkerArgs,
    /// Unacknowledged events one worker holds (and handles concurrently).
    #[arg(long, env = "WXPIPE_BUSINESS_PREFETCH", default_value_t = 32)]
    pub prefetch: u16,
}

/// Validated settings.
#[derive(Clone)]
pub struct BusinessConfig {
    pub tokens: Arc<common::token::TokenService>,
    pub namespace: Namespace,
    pub raw_shards: common::amqp::RawShards,
    pub amqp_urls: Vec<String>,
    pub prefetch: u16,
    pub max_attempts: u32,
}

impl BusinessArgs {
    pub fn validate(&self) -> Result<BusinessConfig, ConfigError> {
        common::config::positive("WXPIPE_BUSINESS_PREFETCH", u64::from(self.prefetch))?;
        Ok(BusinessConfig {
            tokens: Arc::new(self.worker.token_service()?),
            namespace: self.worker.service.namespace.namespace()?,
            raw_shards: self.worker.service.namespace.raw_shards()?,
            amqp_urls: self.worker.service.amqp.urls()?,
            prefetch: self.prefetch,
            max_attempts: self.worker.check_attempts()?,
        })
    }
}

/// Dispatches events to the registry.
pub struct BusinessHandler {
    pub registry: Registry,
    pub max_attempts: u32,
}

fn count(event_type: &str, outcome: &'static str) {
    metrics::counter!("wxpipe_business_events_total", "type" => event_type.to_owned(), "outcome" => outcome)
        .increment(1);
}

impl Handler for BusinessHandler {
    async fn handle(&self, delivery: &Delivery) -> Disposition {
        let event = match crate::role::cloud_event(delivery) {
            Ok(e) => e,
            Err(dead) => {
                count("?", "dead");
                return dead;
            }
        };
        let Some(handler) = self.registry.get(&event.event_type) else {
            tracing::debug!(event_type = %event.event_type, id = %event.id, "no handler; acked");
            count(&event.event_type, "unhandled");
            return Disposition::Ack;
        };
        // Every line a handler logs carries the event's id and source (the account's appid).
        let span = tracing::info_span!(
            "event",
            id = %event.id,
            source = %event.source,
            event_type = %event.event_type
        );
        let result = retry(self.max_attempts, "business", || async {
            match handler.handle(&event).await {
                Ok(()) => Attempt::Done(Ok(())),
                Err(HandlerError::Transient { reason, detail }) => {
                    Attempt::Transient { reason, detail }
                }
                Err(HandlerError::Permanent { reason, detail }) => {
                    Attempt::Done(Err((reason, detail)))
                }
            }
        })
        .instrument(span.clone())
        .await;
        match result {
            Ok(Ok(())) => {
                count(&event.event_type, "handled");
                tracing::debug!(parent: &span, "event handled");
                Disposition::Ack
            }
            Ok(Err((reason, detail))) => {
                count(&event.event_type, "dead");
                Disposition::DeadLetter { reason, detail }
            }
            Err(gave_up) => {
                count(&event.event_type, "dead");
                Disposition::DeadLetter {
                    reason: gave_up.reason,
                    detail: format!("{} (after {} attempts)", gave_up.detail, gave_up.attempts),
                }
            }
        }
    }
}

/// Routing-key patterns `{ns}.business` is bound to besides the platform's own events
/// (`component.#`): everything of the full-network release test's accounts (protocol.md §5).
pub fn bindings() -> Vec<String> {
    common::wechat::RELEASE_TEST_ACCOUNTS
        .iter()
        .map(|(_, appid)| common::event::authorizer_pattern(appid))
        .collect()
}

/// The platform's handlers: tokens and authorization, and the full-network release test
/// (which publishes passive replies on a connection of its own).
pub fn default_registry(config: &BusinessConfig) -> Registry {
    let mut registry = Registry::new();
    handlers::register(&mut registry, config.tokens.clone());
    let replies = ConfirmedPublisher::start(PublisherConfig {
        urls: config.amqp_urls.clone(),
        namespace: config.namespace.clone(),
        connection_name: format!(
            "wxpipe-business {} pid {} replies",
            config.namespace,
            std::process::id()
        ),
        channels: 1,
        confirm_timeout: Duration::from_secs(2),
        declare: Part::Nothing,
    });
    registry.register_prefix(
        common::event::AUTHORIZER_TYPE_PREFIX,
        Arc::new(release_test::ReleaseTest {
            tokens: config.tokens.clone(),
            replies,
        }),
    );
    registry
}

/// Runs one business worker with `registry` until `shutdown` becomes true.
pub async fn run(config: BusinessConfig, registry: Registry, shutdown: watch::Receiver<bool>) {
    tracing::info!(handlers = ?registry.types(), "business handlers");
    let store = &config.tokens.store;
    common::beacon::spawn(
        store.pool().clone(),
        store.keys.clone(),
        "business",
        shutdown.clone(),
    );
    let role = crate::role::Role {
        name: "business",
        namespace: config.namespace.clone(),
        raw_shards: config.raw_shards,
        urls: config.amqp_urls.clone(),
        queues: vec![config.namespace.business()],
        prefetch: config.prefetch,
        // The platform's own events are few: each starts at once.
        linger: Duration::ZERO,
        own_queues: Vec::new(),
    };
    let publisher = role.publisher(1, Duration::from_secs(2));
    let handler = Arc::new(BusinessHandler {
        registry,
        max_attempts: config.max_attempts,
    });
    role.consume(handler, publisher, shutdown).await;
}
