//! # workers
//!
//! wxpipe's worker roles, one module each, run as subcommands of the `workers` binary.
//! So far: [`crypto_tool`], the offline WXBizMsgCrypt tools for support work.

pub mod crypto_tool;
