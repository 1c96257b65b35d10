//! RabbitMQ: connecting to a cluster's nodes in turn, the declared topology, and a publisher
//! whose publishes are confirmed by the broker and which reconnects by itself.

pub mod acks;
pub mod connection;
pub mod consumer;
pub mod publisher;
pub mod shards;
pub mod stuck;
pub mod topology;

pub use connection::connect_any;
pub use publisher::{ConfirmedPublisher, PublishError, PublisherConfig};
pub use shards::RawShards;

/// A broker-level failure, with the context that says where it happened.
#[derive(Debug, thiserror::Error)]
pub enum AmqpError {
    #[error("could not connect to any RabbitMQ node ({tried} tried): {last}")]
    Connect { tried: usize, last: String },
    #[error("{what}: {source}")]
    Broker {
        what: String,
        #[source]
        source: lapin::Error,
    },
}

impl AmqpError {
    pub(crate) fn broker(what: impl Into<String>) -> impl FnOnce(lapin::Error) -> Self {
        let what = what.into();
        move |source| Self::Broker { what, source }
    }
}

/// The delays between reconnection attempts: 100 ms doubling to 5 s, with jitter, forever.
pub fn reconnect_backoff() -> impl Iterator<Item = std::time::Duration> {
    use backon::BackoffBuilder;
    backon::ExponentialBuilder::default()
        .with_min_delay(std::time::Duration::from_millis(100))
        .with_max_delay(std::time::Duration::from_secs(5))
        .with_jitter()
        .without_max_times()
        .build()
}
