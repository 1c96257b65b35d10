//! # workers
//!
//! wxpipe's worker roles, one module each, run as subcommands of the `workers` binary. Each
//! consuming role has the same shape — receive, handle, acknowledge — given by
//! [`common::amqp::consumer`]:
//!
//! * [`decrypt`] — `{ns}.raw` → verify, decrypt, parse, dedupe → `{ns}.events`.
//! * [`business`] — `{ns}.business`: the platform's own events, through a handler registry.
//! * [`scheduler`] — keeps every token fresh; the admin/token API.
//! * [`releases`] — mini-program fleet releases: each account's commit, audit and release.
//! * [`gateway`] — WeChat's API for the platform's teams, tokens attached.
//! * [`dlq`] — inspect and replay `{ns}.dead`.
//! * [`crypto_tool`] — offline WXBizMsgCrypt tools for support work.
//!
//! [`retry`] bounds transient failures; [`args`] holds the command-line and environment arguments every role shares.

pub mod args;
pub mod business;
pub mod crypto_tool;
pub mod decrypt;
pub mod dlq;
pub mod gateway;
pub mod releases;
pub mod retry;
pub mod role;
pub mod scheduler;
pub mod serve;
