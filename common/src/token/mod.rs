//! Tokens and accounts: the Redis model ([`store`]) and the rules that keep tokens fresh,
//! exchange authorization codes exactly once and react to WeChat's error codes ([`service`]).
//! Shared by the business workers, the scheduler and the ingress's authorization pages.

pub mod service;
pub mod store;

pub use service::{RefreshMode, RefreshOutcome, TokenError, TokenService};
pub use store::{AuthorizerRecord, AuthorizerStatus, StoredToken, TokenStore};
