//! Tokens and accounts: the Redis model ([`store`]) and the rules that keep tokens fresh,
//! exchange authorization codes exactly once and react to WeChat's error codes ([`service`],
//! one file per job: `component.rs`, `authorizer.rs`, `exchange.rs`, `restore.rs`,
//! `tickets.rs` the accounts' JS-SDK tickets).
//! Shared by the business workers, the scheduler and the ingress's authorization pages.

mod authorizer;
mod component;
mod exchange;
mod restore;
pub mod service;
pub mod store;
pub mod tickets;

pub use service::{RefreshMode, RefreshOutcome, TokenError, TokenService};
pub use store::{
    AuthorizerRecord, AuthorizerStatus, StoredTicket, StoredToken, TokenStore, Written,
};
pub use tickets::{TicketKind, TicketMode, TicketOutcome};
