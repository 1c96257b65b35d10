//! What every consuming role sets up the same way: a confirmed publisher on its own connection
//! (events, replies, dead letters) and the consumer loop of [`common::amqp::consumer`] on its
//! queue, both declaring the whole topology, both named after the role in the broker.

use common::amqp::consumer::{self, ConsumerConfig, Handler};
use common::amqp::topology::Part;
use common::amqp::{ConfirmedPublisher, PublisherConfig};
use common::ids::Namespace;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// One consuming role of one process.
pub struct Role {
    /// `decrypt`, `business`, …
    pub name: &'static str,
    pub namespace: Namespace,
    pub urls: Vec<String>,
    pub queue: String,
    pub prefetch: u16,
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
    pub(crate) fn declare() -> Part {
        Part::All {
            business_patterns: crate::business::bindings(),
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
            declare: Self::declare(),
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
            queue: self.queue.clone(),
            connection_name: format!("{} consume", self.tag()),
            prefetch: self.prefetch,
            declare: Self::declare(),
        };
        consumer::run(options, handler, publisher.clone(), shutdown).await;
        publisher.close().await;
    }
}
