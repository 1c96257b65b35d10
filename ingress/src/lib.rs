//! # ingress
//!
//! wxpipe's only public listener. A push travels through [`routes`]: its signed query is parsed
//! ([`signed_query`]), its freshness, size, envelope and signatures are checked, and its raw
//! body is published to `{ns}.raw` by a confirmed, self-reconnecting publisher
//! ([`common::amqp::ConfirmedPublisher`]). `success` is answered only after the broker's
//! confirm; every other ending is an [`outcome::Outcome`] with its status code and counter.
//! [`server`] wires it together and shuts it down gracefully.

pub mod config;
pub mod outcome;
pub mod routes;
pub mod server;
pub mod signed_query;
pub mod state;
pub mod sync_reply;

pub use config::{IngressArgs, IngressConfig};
