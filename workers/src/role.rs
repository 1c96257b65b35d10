//! What every consuming role sets up the same way: a confirmed publisher on its own connection
//! (events, replies, dead letters) and the consumer loop of [`common::amqp::consumer`] on its
//! queues, both declaring the whole topology, both named after the role in the broker.

use common::amqp::consumer::{self, ConsumerConfig, Disposition, Handler};
use common::amqp::topology::Part;
use common::amqp::{ConfirmedPublisher, PublisherConfig, RawShards};
use common::ids::Namespace;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// The CloudEvent a delivery of `{ns}.events` carries, or the dead-lettering of one that carries
/// none (the caller counts it).
pub fn cloud_event(
    delivery: &lapin::message::Delivery,
) -> Result<common::event::CloudEvent, Disposition> {
    serde_json::from_slice(&delivery.data).map_err(|e| Disposition::DeadLetter {
        reason: "unparseable",
        detail: format!("not a CloudEvent: {e}"),
    })
}

/// One consuming role of one process.
pub struct Role {
    /// `decrypt`, `business`, …
    pub name: &'static str,
    pub namespace: Namespace,
    /// `WXPIPE_RAW_SHARDS`, for the declared topology.
    pub raw_shards: RawShards,
    pub urls: Vec<String>,
    /// The queues consumed (the decrypt role's shards; the business queue).
    pub queues: Vec<String>,
    pub prefetch: u16,
    /// See [`ConsumerConfig::linger`].
    pub linger: Duration,
    /// Queues of the role's own besides the shared ones, with their patterns on `{ns}.events`.
    pub own_queues: Vec<(String, Vec<String>)>,
}

impl Role {
    fn tag(&self) -> String {
        format!(
            "wxpipe-{} {} pid {}",
            self.name,
            self.namespace,
            std::process::id()
        )
    }

    /// The whole topology, with the business queue bound to what its handlers need.
    pub(crate) fn declare(raw_shards: RawShards) -> Part {
        Part::All {
            raw: raw_shards,
            business_patterns: crate::business::bindings(),
            own_queues: Vec::new(),
        }
    }

    /// [`Self::declare`] with this role's own queues.
    fn part(&self) -> Part {
        match Self::declare(self.raw_shards) {
            Part::All {
                raw,
                business_patterns,
                ..
            } => Part::All {
                raw,
                business_patterns,
                own_queues: self.own_queues.clone(),
            },
            other => other,
        }
    }

    /// The role's confirmed publisher (connection `… publish`).
    pub fn publisher(&self, channels: usize, confirm_timeout: Duration) -> ConfirmedPublisher {
        ConfirmedPublisher::start(PublisherConfig {
            urls: self.urls.clone(),
            namespace: self.namespace.clone(),
            connection_name: format!("{} publish", self.tag()),
            channels,
            confirm_timeout,
            declare: self.part(),
        })
    }

    /// Consumes the role's queue with `handler` until `shutdown`, then closes `publisher`.
    pub async fn consume<H: Handler>(
        self,
        handler: Arc<H>,
        publisher: ConfirmedPublisher,
        shutdown: watch::Receiver<bool>,
    ) {
        let options = ConsumerConfig {
            urls: self.urls.clone(),
            namespace: self.namespace.clone(),
            queues: self.queues.clone(),
            connection_name: format!("{} consume", self.tag()),
            prefetch: self.prefetch,
            declare: self.part(),
            linger: self.linger,
        };
        // The loop runs as a task on the runtime's worker threads, not on the caller's thread
        // (`main`'s `block_on`): the handler task it spawns per delivery then goes to that
        // worker's own run queue instead of the shared injection queue, which can wake another
        // thread for every delivery.
        let run = tokio::spawn(consumer::run(options, handler, publisher.clone(), shutdown));
        if let Err(e) = run.await {
            tracing::error!(role = self.name, error = %e, "the consumer loop ended abnormally");
        }
        publisher.close().await;
    }
}
