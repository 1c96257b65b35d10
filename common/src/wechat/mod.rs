//! The WeChat Open Platform API client (protocol.md §2) and its error codes (§6).
//!
//! Every call is a POST of JSON to `{WXPIPE_WECHAT_API_BASE}{path}`, the component token in the
//! query as `component_access_token=` and an authorizer token as `access_token=`. Errors come
//! back as `{"errcode","errmsg"}` with HTTP 200 and are classified by [`ErrorClass`] so callers
//! react as protocol.md §6 says. No error message ever contains a token or the secret (request
//! URLs carry tokens, so transport errors are stripped of their URL).

mod client;
pub mod code;
mod errors;

pub use client::{
    AuthorizationInfo, AuthorizerGrant, ListedAuthorizer, OauthGrant, TicketGrant, TokenGrant,
    WechatClient,
};
pub use errors::{ErrorClass, WechatError};

/// The full-network release test's accounts (protocol.md §5), as (original id, appid): five
/// official accounts, then five mini programs. WeChat picks a group at random.
pub const RELEASE_TEST_ACCOUNTS: [(&str, &str); 10] = [
    ("gh_3c884a361561", "wx570bc396a51b8ff8"),
    ("gh_c0f28a78b318", "wx9252c5e0bb1836fc"),
    ("gh_3f222ed8d140", "wx8e1097c5bc82cde9"),
    ("gh_26128078e9ab", "wx14550af28c71a144"),
    ("gh_2b3713f184a6", "wxa35b9c23cfe664eb"),
    ("gh_8dad206e9538", "wxd101a85aa106f53e"),
    ("gh_905ae9d01059", "wxc39235c15087f6f3"),
    ("gh_393666f1fdf4", "wx7720d01d4b2a4500"),
    ("gh_39abb5d4e1b7", "wx05d483572dcd5d8b"),
    ("gh_7818dcb60240", "wx5910277cae6fd970"),
];

/// Whether `appid` is one of the full-network test accounts.
pub fn is_release_test_appid(appid: &str) -> bool {
    RELEASE_TEST_ACCOUNTS.iter().any(|(_, a)| *a == appid)
}
