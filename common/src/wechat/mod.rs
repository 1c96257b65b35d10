//! The WeChat Open Platform API client (protocol.md §2) and its error codes (§6).
//!
//! Every call is a POST of JSON to `{WXPIPE_WECHAT_API_BASE}{path}`, the component token in the
//! query as `component_access_token=` and an authorizer token as `access_token=`. Errors come
//! back as `{"errcode","errmsg"}` with HTTP 200 and are classified by [`ErrorClass`] so callers
//! react as protocol.md §6 says. No error message ever contains a token or the secret (request
//! URLs carry tokens, so transport errors are stripped of their URL).

mod client;
mod errors;

pub use client::{AuthorizationInfo, AuthorizerGrant, ListedAuthorizer, TokenGrant, WechatClient};
pub use errors::{ErrorClass, WechatError};
