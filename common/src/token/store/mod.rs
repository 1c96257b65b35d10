//! The tokens and accounts in Redis (design.md's Redis section; keys in [`crate::redis::Keys`]):
//! the types here, the platform's own state in `platform.rs`, the accounts in `accounts.rs`, and
//! every check-and-write as one Lua script in `scripts.rs`.
//!
//! Writes of tokens are fenced: each is one Lua script that first checks the writer still holds
//! the token's lock (`KEYS[1]`, `ARGV[1]`), so a stalled replica can never overwrite a newer
//! token with an older one.

mod accounts;
mod platform;
mod scripts;

use crate::redis::lock::Lock;
use crate::redis::{Keys, RedisError};
use crate::secret::Token;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

/// A token and when it expires (unix seconds).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredToken {
    pub access_token: Token,
    pub expires_at: i64,
}

/// An account's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AuthorizerStatus {
    Active,
    /// The account removed the platform (`unauthorized`, or 61003).
    Revoked,
    /// The refresh token was refused (61023) or refreshing keeps failing; see `last_error`.
    RefreshFailing,
}

impl AuthorizerStatus {
    fn parse(s: &str) -> Self {
        match s {
            "revoked" => Self::Revoked,
            "refresh_failing" => Self::RefreshFailing,
            _ => Self::Active,
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Revoked => "revoked",
            Self::RefreshFailing => "refresh_failing",
        }
    }
}

/// Consecutive failures of the component token (shared by every replica and caller).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FailureState {
    pub failures: u64,
    /// No attempt before this (ms since the epoch).
    pub next_at_ms: i64,
    pub last_at_ms: i64,
    pub last_error: String,
}

/// Everything stored about one account.
#[derive(Debug, Clone, Serialize)]
pub struct AuthorizerRecord {
    pub appid: crate::ids::AppId,
    pub status: AuthorizerStatus,
    #[serde(skip)]
    pub refresh_token: Option<Token>,
    #[serde(skip)]
    pub access_token: Option<Token>,
    pub expires_at: Option<i64>,
    pub last_refresh: Option<i64>,
    pub last_error: Option<String>,
    pub nick_name: Option<String>,
    pub user_name: Option<String>,
    pub authorized_at: Option<i64>,
    pub refreshes: u64,
    pub has_refresh_token: bool,
}

/// What a fenced write of tokens did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Written {
    Yes,
    /// The lock expired before the write: nothing written.
    LostLock,
    /// The account was revoked, re-authorized or its refresh token refused meanwhile:
    /// nothing written.
    Superseded,
}

/// The Redis side of tokens and accounts of one platform.
#[derive(Clone)]
pub struct TokenStore {
    pool: deadpool_redis::Pool,
    pub keys: Keys,
}

impl TokenStore {
    pub fn new(pool: deadpool_redis::Pool, keys: Keys) -> Self {
        Self { pool, keys }
    }

    pub fn pool(&self) -> &deadpool_redis::Pool {
        &self.pool
    }
}
