//! The tokens and accounts in Redis (design.md's Redis section; keys in [`crate::redis::Keys`]):
//! the types here, the platform's own state in `platform.rs`, the accounts in `accounts.rs`, the
//! accounts' summary for the gauges in `summary.rs`, the accounts' JS-SDK tickets in
//! `tickets.rs`, and every check-and-write as one Lua script
//! in `scripts.rs`.
//!
//! Writes of tokens are fenced: each is one Lua script that first checks the writer still holds
//! the token's lock (`KEYS[1]`, `ARGV[1]`), so a stalled replica can never overwrite a newer
//! token with an older one.

mod accounts;
mod platform;
mod scripts;
mod summary;
mod tickets;

pub use summary::AccountSummary;
pub use tickets::{StoredTicket, TicketsWritten};

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
    pub fn parse(s: &str) -> Self {
        match s {
            "revoked" => Self::Revoked,
            "refresh_failing" => Self::RefreshFailing,
            _ => Self::Active,
        }
    }

    pub fn as_str(self) -> &'static str {
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
    /// What `api_get_authorizer_info` answered, as stored (it holds the refresh token: never
    /// served whole; see [`AuthorizerRecord::profile_summary`]).
    #[serde(skip)]
    pub profile: Option<String>,
}

/// The parts of an account's stored profile an operator sees (no token).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ProfileSummary {
    /// The permission sets granted (`func_info[].funcscope_category.id`).
    pub permissions: Vec<i64>,
    /// `service_type_info.id`: 0/1 subscription account, 2 service account (official
    /// accounts); 0 for mini programs.
    pub service_type: Option<i64>,
    /// `verify_type_info.id`: -1 unverified, 0 WeChat-verified, …
    pub verify_type: Option<i64>,
    pub mini_program: bool,
    pub principal_name: Option<String>,
    pub alias: Option<String>,
    pub head_img: Option<String>,
    pub qrcode_url: Option<String>,
    pub account_status: Option<i64>,
    /// `MiniProgramInfo` as WeChat sent it (network, categories, …), for mini programs.
    pub mini_program_info: Option<serde_json::Value>,
    /// `business_info` as WeChat sent it (open_pay, open_shake, …).
    pub business_info: Option<serde_json::Value>,
}

impl AuthorizerRecord {
    /// `official_account`, `mini_program`, or `unknown` (no profile stored yet).
    pub fn account_type(&self) -> &'static str {
        match self.profile_summary() {
            Some(p) if p.mini_program => "mini_program",
            Some(_) => "official_account",
            None => "unknown",
        }
    }

    /// The stored profile without its tokens; `None` when none was stored.
    pub fn profile_summary(&self) -> Option<ProfileSummary> {
        let v: serde_json::Value = serde_json::from_str(self.profile.as_deref()?).ok()?;
        let info = &v["authorizer_info"];
        let text = |x: &serde_json::Value| x.as_str().filter(|s| !s.is_empty()).map(str::to_owned);
        let mut permissions: Vec<i64> = v["authorization_info"]["func_info"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|f| f["funcscope_category"]["id"].as_i64())
                    .collect()
            })
            .unwrap_or_default();
        permissions.sort_unstable();
        permissions.dedup();
        Some(ProfileSummary {
            permissions,
            service_type: info["service_type_info"]["id"].as_i64(),
            verify_type: info["verify_type_info"]["id"].as_i64(),
            mini_program: info.get("MiniProgramInfo").is_some_and(|m| !m.is_null()),
            principal_name: text(&info["principal_name"]),
            alias: text(&info["alias"]),
            head_img: text(&info["head_img"]),
            qrcode_url: text(&info["qrcode_url"]),
            account_status: info["account_status"].as_i64(),
            mini_program_info: info
                .get("MiniProgramInfo")
                .filter(|m| !m.is_null())
                .cloned(),
            business_info: info.get("business_info").filter(|m| !m.is_null()).cloned(),
        })
    }
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
    pool: crate::redis::Pool,
    pub keys: Keys,
}

impl TokenStore {
    pub fn new(pool: crate::redis::Pool, keys: Keys) -> Self {
        Self { pool, keys }
    }

    pub fn pool(&self) -> &crate::redis::Pool {
        &self.pool
    }

    /// Runs `write` again while Redis is unavailable, for up to 15 s (a failover takes a few
    /// seconds): a token just obtained from WeChat exists only in this process until it is
    /// stored and replicated, and obtaining another would cost a refresh. `write` must be
    /// idempotent (the fenced token writes are).
    pub(crate) async fn until_stored<T, F, Fut>(
        &self,
        what: &'static str,
        write: F,
    ) -> Result<T, RedisError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, RedisError>>,
    {
        use backon::Retryable;
        let backoff = backon::ExponentialBuilder::default()
            .with_min_delay(std::time::Duration::from_millis(200))
            .with_max_delay(std::time::Duration::from_secs(2))
            .with_total_delay(Some(std::time::Duration::from_secs(15)))
            .without_max_times()
            .with_jitter();
        write
            .retry(backoff)
            .when(|e| matches!(e, RedisError::Unavailable { .. }))
            .notify(|e, after| {
                tracing::warn!(what, error = %e, retry_in = ?after, "a write did not reach Redis; writing again");
                metrics::counter!("wxpipe_redis_write_retries_total", "what" => what).increment(1);
            })
            .await
    }

    /// Runs a fenced write script (`script`, its keys and arguments given by `prepare`) until it
    /// is stored ([`Self::until_stored`]); when it answers 1 (written), waits for a replica
    /// ([`Self::replicated`]). Returns the script's answer.
    pub(crate) async fn durable_script(
        &self,
        what: &'static str,
        script: &str,
        prepare: impl Fn(&mut deadpool_redis::redis::ScriptInvocation<'_>),
    ) -> Result<i64, RedisError> {
        let script = deadpool_redis::redis::Script::new(script);
        self.until_stored(what, || async {
            let mut c = crate::redis::conn(&self.pool, what).await?;
            let mut invocation = script.prepare_invoke();
            prepare(&mut invocation);
            let n: i64 = invocation
                .invoke_async(&mut c)
                .await
                .map_err(crate::redis::failed(what))?;
            if n == 1 {
                self.replicated(&mut c, what).await?;
            }
            Ok(n)
        })
        .await
    }

    /// After a write that must survive a failover (a token, a refresh token): with replicas
    /// (Redis Cluster, Sentinel), waits until one replica has it, so a master killed afterwards
    /// loses nothing ([`crate::redis::Connection::replicated`]). An error (the master gone
    /// meanwhile) is returned: the write may be lost, and the caller writes again.
    pub(crate) async fn replicated(
        &self,
        c: &mut crate::redis::Connection,
        what: &'static str,
    ) -> Result<(), RedisError> {
        c.replicated(what)
            .await
            .map(|_| ())
            .map_err(crate::redis::failed(what))
    }
}
