//! Keeping tokens fresh, exactly once per window across replicas, and never serving an expired
//! one.
//!
//! * Every refresh runs under the token's distributed lock (lease longer than the WeChat call),
//!   re-reads the token after taking the lock (double-check: another replica may just have
//!   refreshed it), and writes the new token with a fenced script — a replica that lost its lock
//!   while stalled writes nothing.
//! * A token is served only while it has more than [`SERVE_MARGIN_SECS`] left; otherwise it is
//!   refreshed first.
//! * Error codes (protocol.md §6): 40001/40014/42001 → compare-and-invalidate, refresh once,
//!   retry once; −1 and 45011 → backoff with jitter (`backon`); 45009, 61023, 61003 are never
//!   retried — the account is marked, counted, logged and shown by the admin API.

use super::store::{AuthorizerStatus, StoredToken, TokenStore};
use crate::redis::lock::Lock;
use crate::redis::{RedisError, conn, failed};
use crate::wechat::{ErrorClass, WechatClient, WechatError};
use backon::{BackoffBuilder, ExponentialBuilder};
use deadpool_redis::redis::cmd;
use std::future::Future;
use std::time::Duration;

/// A token is served only with more than this left (or half the refresh margin, if smaller).
pub const SERVE_MARGIN_SECS: i64 = 30;
/// Lease of a refresh lock: longer than a WeChat call (10 s timeout) and its retries.
const LOCK_LEASE: Duration = Duration::from_secs(45);
/// Lease of an authorization code's exchange claim.
const CODE_CLAIM: Duration = Duration::from_secs(40);

/// Why a token could not be had.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error(transparent)]
    Redis(#[from] RedisError),
    #[error(transparent)]
    Wechat(#[from] WechatError),
    #[error(
        "no component_verify_ticket yet (WeChat pushes one every 10 minutes; a push was requested)"
    )]
    NoTicket,
    #[error("the lock on {0} is held by another replica")]
    Busy(String),
    #[error("{0} is not a known authorizer")]
    Unknown(String),
    #[error("{0} has revoked the authorization")]
    Revoked(String),
    #[error("{0} has no refresh token (it is being restored from api_get_authorizer_list)")]
    NoRefreshToken(String),
}

/// What a refresh did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RefreshOutcome {
    Refreshed(StoredToken),
    /// Not due yet (another replica refreshed it) — nothing done.
    NotDue,
    /// Another replica holds the lock right now — nothing done.
    Skipped,
    /// Our lock expired before we wrote: the token was not stored.
    LostLock,
}

/// When to refresh. Every mode re-reads the token after taking its lock, so a replica that
/// waited for the lock does not refresh again what the holder just refreshed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefreshMode {
    /// The scheduler's mode for the component token: only if it is within the refresh margin
    /// of its expiry (does not wait for the lock).
    IfDue,
    /// The scheduler's mode for an authorizer it took from `due` at this time (ms): only if
    /// nobody refreshed it since (does not wait for the lock).
    Taken(i64),
    /// For serving: only if the token is missing or about to expire (waits for the lock).
    IfStale,
    /// An operator asked for it (waits for the lock).
    Force,
}

/// Tokens of one platform.
#[derive(Clone)]
pub struct TokenService {
    pub store: TokenStore,
    pub client: WechatClient,
    /// Refresh this long before expiry (`WXPIPE_REFRESH_MARGIN_SECS`).
    pub margin: Duration,
}

/// Retries `call` on −1, 45011 and unreachable, with jittered backoff, 4 tries in all.
async fn with_backoff<T, F, Fut>(mut call: F) -> Result<T, WechatError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, WechatError>>,
{
    let mut delays = ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(200))
        .with_max_delay(Duration::from_secs(5))
        .with_jitter()
        .with_max_times(3)
        .build();
    loop {
        match call().await {
            Err(e) if e.is_transient() => match delays.next() {
                Some(d) => {
                    metrics::counter!("wxpipe_wechat_retries_total", "errcode" => e.label())
                        .increment(1);
                    tokio::time::sleep(d).await;
                }
                None => return Err(e),
            },
            other => return other,
        }
    }
}

impl TokenService {
    /// Seconds a served token must have left: [`SERVE_MARGIN_SECS`], or half the refresh
    /// margin when that is smaller (tests use tokens of a few seconds).
    pub fn serve_margin(&self) -> i64 {
        SERVE_MARGIN_SECS.min(self.margin.as_secs() as i64 / 2)
    }

    /// When a token expiring at `expires_at` should be refreshed (ms): `margin` before, minus a
    /// random jitter of up to half the margin (at most 5 minutes), so that thousands of accounts
    /// authorized in the same second spread their refreshes.
    pub fn due_ms(&self, expires_at: i64) -> i64 {
        let margin_ms = self.margin.as_millis() as i64;
        let spread = (margin_ms / 2).clamp(1, 300_000);
        expires_at * 1000 - margin_ms - (rand::random::<u64>() % spread as u64) as i64
    }

    /// A component token with more than [`SERVE_MARGIN_SECS`] left, refreshing it if needed.
    pub async fn component_token(&self) -> Result<String, TokenError> {
        if let Some(t) = self.store.component_token().await?
            && t.expires_at - crate::unix_now() > self.serve_margin()
        {
            return Ok(t.access_token);
        }
        Ok(self
            .refresh_component_token(RefreshMode::IfDue)
            .await?
            .access_token)
    }

    /// Refreshes the component token under its lock (waiting up to 10 s for it).
    pub async fn refresh_component_token(
        &self,
        mode: RefreshMode,
    ) -> Result<StoredToken, TokenError> {
        let name = self.store.keys.lock("component_token");
        let Some(lock) = Lock::acquire(
            self.store.pool(),
            &name,
            LOCK_LEASE,
            Duration::from_secs(10),
        )
        .await?
        else {
            return Err(TokenError::Busy("component_token".into()));
        };
        let result = self.refresh_component_token_locked(&lock, mode).await;
        let _ = lock.release().await;
        result
    }

    async fn refresh_component_token_locked(
        &self,
        lock: &Lock,
        mode: RefreshMode,
    ) -> Result<StoredToken, TokenError> {
        let margin = self.margin.as_secs() as i64;
        if let Some(t) = self.store.component_token().await?
            && (mode == RefreshMode::IfDue && t.expires_at - crate::unix_now() > margin)
        {
            return Ok(t); // another replica refreshed it while we waited for the lock
        }
        let Some(ticket) = self.store.ticket().await? else {
            self.request_ticket_push().await;
            return Err(TokenError::NoTicket);
        };
        let grant = match with_backoff(|| self.client.component_token(&ticket)).await {
            Ok(g) => g,
            Err(e) => {
                if e.class() == ErrorClass::TicketInvalid {
                    self.request_ticket_push().await;
                }
                metrics::counter!("wxpipe_token_refreshes_total", "kind" => "component", "outcome" => e.label()).increment(1);
                return Err(e.into());
            }
        };
        let token = StoredToken {
            access_token: grant.token,
            expires_at: crate::unix_now() + grant.expires_in,
        };
        if !self.store.write_component_token(lock, &token).await? {
            tracing::warn!("component token refreshed but not stored: the lock expired meanwhile");
            metrics::counter!("wxpipe_token_refreshes_total", "kind" => "component", "outcome" => "lost_lock").increment(1);
            return Ok(token);
        }
        metrics::counter!("wxpipe_token_refreshes_total", "kind" => "component", "outcome" => "ok")
            .increment(1);
        tracing::info!(expires_at = token.expires_at, "component token refreshed");
        Ok(token)
    }

    /// Asks WeChat to push a ticket — at most once a minute across all replicas.
    pub async fn request_ticket_push(&self) {
        match self.store.rate_limit("start_push_ticket", 60).await {
            Ok(true) => match self.client.start_push_ticket().await {
                Ok(()) => {
                    tracing::info!("no ticket: asked WeChat to push one (api_start_push_ticket)")
                }
                Err(e) => tracing::warn!(error = %e, "api_start_push_ticket failed"),
            },
            Ok(false) => {}
            Err(e) => tracing::warn!(error = %e, "cannot rate-limit api_start_push_ticket"),
        }
    }

    /// Calls `f` with the component token; if WeChat says the token is invalid or expired,
    /// invalidates it (only if it is still the stored one), refreshes, and calls `f` once more.
    pub async fn with_component_token<T, F, Fut>(&self, f: F) -> Result<T, TokenError>
    where
        F: Fn(String) -> Fut,
        Fut: Future<Output = Result<T, WechatError>>,
    {
        let token = self.component_token().await?;
        match with_backoff(|| f(token.clone())).await {
            Err(e) if e.class() == ErrorClass::InvalidToken => {
                tracing::warn!(error = %e, "component token refused; invalidating and refreshing once");
                self.store.invalidate_component_token(&token).await?;
                let fresh = self.component_token().await?;
                Ok(with_backoff(|| f(fresh.clone())).await?)
            }
            other => Ok(other?),
        }
    }

    /// Refreshes `appid`'s token. `IfDue` gives up at once if another replica holds the lock
    /// and does nothing if the token is not due; `Force` waits up to 10 s for the lock.
    pub async fn refresh_authorizer(
        &self,
        appid: &str,
        mode: RefreshMode,
    ) -> Result<RefreshOutcome, TokenError> {
        let wait = match mode {
            RefreshMode::IfDue | RefreshMode::Taken(_) => Duration::ZERO,
            RefreshMode::IfStale | RefreshMode::Force => Duration::from_secs(10),
        };
        let name = self.store.keys.lock(&format!("authorizer:{appid}"));
        let Some(lock) = Lock::acquire(self.store.pool(), &name, LOCK_LEASE, wait).await? else {
            return Ok(RefreshOutcome::Skipped);
        };
        let result = self.refresh_authorizer_locked(&lock, appid, mode).await;
        let _ = lock.release().await;
        result
    }

    async fn refresh_authorizer_locked(
        &self,
        lock: &Lock,
        appid: &str,
        mode: RefreshMode,
    ) -> Result<RefreshOutcome, TokenError> {
        let record = self.active_record(appid).await?;
        // Double-check under the lock: another replica may have refreshed it meanwhile.
        let fresh = match mode {
            // Refreshed by someone else since we took it (`last_refresh` is in seconds).
            RefreshMode::Taken(taken_at_ms) => {
                record.access_token.is_some()
                    && record
                        .last_refresh
                        .is_some_and(|t| t * 1000 >= taken_at_ms - 1000)
            }
            RefreshMode::IfDue => {
                record.access_token.is_some()
                    && record
                        .expires_at
                        .is_some_and(|exp| exp - crate::unix_now() > self.margin.as_secs() as i64)
            }
            RefreshMode::IfStale => {
                record.access_token.is_some()
                    && record
                        .expires_at
                        .is_some_and(|exp| exp - crate::unix_now() > self.serve_margin())
            }
            RefreshMode::Force => false,
        };
        if fresh {
            return Ok(RefreshOutcome::NotDue);
        }
        let Some(refresh_token) = record.refresh_token.clone() else {
            return Err(TokenError::NoRefreshToken(appid.to_owned()));
        };
        let grant = self
            .with_component_token(|ct| {
                let (client, rt) = (self.client.clone(), refresh_token.clone());
                async move { client.authorizer_token(&ct, appid, &rt).await }
            })
            .await;
        let grant = match grant {
            Ok(g) => g,
            Err(TokenError::Wechat(e)) => {
                self.react_to_refresh_error(appid, &e).await?;
                return Err(e.into());
            }
            Err(other) => return Err(other),
        };
        let token = StoredToken {
            access_token: grant.authorizer_access_token,
            expires_at: crate::unix_now() + grant.expires_in,
        };
        let due = self.due_ms(token.expires_at);
        let written = self
            .store
            .write_authorizer_tokens(
                lock,
                appid,
                &token,
                Some(&grant.authorizer_refresh_token),
                due,
            )
            .await?;
        let outcome = if written { "ok" } else { "lost_lock" };
        metrics::counter!("wxpipe_token_refreshes_total", "kind" => "authorizer", "outcome" => outcome).increment(1);
        if !written {
            tracing::warn!(
                appid,
                "authorizer token refreshed but not stored: the lock expired meanwhile"
            );
            return Ok(RefreshOutcome::LostLock);
        }
        Ok(RefreshOutcome::Refreshed(token))
    }

    /// protocol.md §6 for a failed `api_authorizer_token`.
    async fn react_to_refresh_error(&self, appid: &str, e: &WechatError) -> Result<(), RedisError> {
        metrics::counter!("wxpipe_token_refreshes_total", "kind" => "authorizer", "outcome" => e.label()).increment(1);
        let retry_in_ms = match e.class() {
            ErrorClass::NotAuthorized => {
                tracing::warn!(appid, error = %e, "the account no longer authorizes the platform; marked revoked");
                return self.store.revoke(appid).await;
            }
            ErrorClass::RefreshTokenInvalid => {
                tracing::error!(appid, error = %e, "refresh token refused; not retried (restore from the list or re-authorize)");
                self.store
                    .mark(appid, AuthorizerStatus::RefreshFailing, &e.to_string())
                    .await?;
                3_600_000
            }
            ErrorClass::QuotaReached => {
                tracing::error!(appid, error = %e, "daily quota reached; not retried (clear_quota/v2)");
                self.store
                    .mark(appid, AuthorizerStatus::RefreshFailing, &e.to_string())
                    .await?;
                600_000
            }
            _ => {
                tracing::warn!(appid, error = %e, "authorizer refresh failed; will try again");
                self.store
                    .mark(appid, AuthorizerStatus::Active, &e.to_string())
                    .await?;
                30_000 + (rand::random::<u32>() % 30_000) as i64
            }
        };
        self.store
            .schedule(appid, crate::unix_now_ms() + retry_in_ms)
            .await
    }

    /// `appid`'s record, unless it is unknown or revoked.
    async fn active_record(&self, appid: &str) -> Result<super::AuthorizerRecord, TokenError> {
        let record = self
            .store
            .authorizer(appid)
            .await?
            .ok_or_else(|| TokenError::Unknown(appid.to_owned()))?;
        if record.status == AuthorizerStatus::Revoked {
            return Err(TokenError::Revoked(appid.to_owned()));
        }
        Ok(record)
    }

    /// An authorizer token with more than [`SERVE_MARGIN_SECS`] left, refreshing it if needed.
    pub async fn authorizer_token(&self, appid: &str) -> Result<StoredToken, TokenError> {
        let record = self.active_record(appid).await?;
        if let (Some(t), Some(exp)) = (&record.access_token, record.expires_at)
            && exp - crate::unix_now() > self.serve_margin()
        {
            return Ok(StoredToken {
                access_token: t.clone(),
                expires_at: exp,
            });
        }
        match self.refresh_authorizer(appid, RefreshMode::IfStale).await? {
            RefreshOutcome::Refreshed(t) => Ok(t),
            _ => {
                // Someone else refreshed it just now: read theirs.
                let r = self
                    .store
                    .authorizer(appid)
                    .await?
                    .ok_or_else(|| TokenError::Unknown(appid.to_owned()))?;
                match (r.access_token, r.expires_at) {
                    (Some(t), Some(exp)) if exp - crate::unix_now() > self.serve_margin() => {
                        Ok(StoredToken {
                            access_token: t,
                            expires_at: exp,
                        })
                    }
                    _ => Err(TokenError::Busy(format!("authorizer:{appid}"))),
                }
            }
        }
    }

    /// Exchanges an authorization code with `api_query_auth` exactly once, however many times
    /// and from wherever it arrives (the `authorized` push, `/auth/callback`, a retry): the
    /// first holder of the code's claim exchanges it and records `done:<appid>`; the others wait
    /// for that. A code WeChat calls invalid or used (61009/61010) is harmless when the account
    /// already has a refresh token. Returns the account's appid.
    pub async fn exchange_code(
        &self,
        code: &str,
        appid_hint: Option<&str>,
    ) -> Result<String, TokenError> {
        let key = self.store.keys.auth_code(code);
        let claim = format!("claim:{}", uuid::Uuid::new_v4().simple());
        let deadline = tokio::time::Instant::now() + CODE_CLAIM + Duration::from_secs(5);
        loop {
            let mut c = conn(self.store.pool(), "claiming an auth code").await?;
            let won: Option<String> = cmd("SET")
                .arg(&key)
                .arg(&claim)
                .arg("NX")
                .arg("PX")
                .arg(CODE_CLAIM.as_millis() as u64)
                .query_async(&mut c)
                .await
                .map_err(failed("claiming an auth code"))?;
            if won.is_some() {
                break;
            }
            let current: Option<String> = cmd("GET")
                .arg(&key)
                .query_async(&mut c)
                .await
                .map_err(failed("reading an auth code"))?;
            if let Some(appid) = current.as_deref().and_then(|v| v.strip_prefix("done:")) {
                return Ok(appid.to_owned());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(TokenError::Busy(format!("authcode {code}")));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let result = self.exchange_claimed(code, appid_hint).await;
        let mut c = conn(self.store.pool(), "settling an auth code").await?;
        match &result {
            Ok(appid) => {
                cmd("SET")
                    .arg(&key)
                    .arg(format!("done:{appid}"))
                    .arg("EX")
                    .arg(3600)
                    .query_async::<()>(&mut c)
                    .await
            }
            Err(_) => cmd("DEL").arg(&key).query_async::<()>(&mut c).await,
        }
        .map_err(failed("settling an auth code"))?;
        result
    }

    async fn exchange_claimed(
        &self,
        code: &str,
        appid_hint: Option<&str>,
    ) -> Result<String, TokenError> {
        let info = self
            .with_component_token(|ct| {
                let client = self.client.clone();
                let code = code.to_owned();
                async move { client.query_auth(&ct, &code).await }
            })
            .await;
        let info = match info {
            Ok(i) => i,
            Err(TokenError::Wechat(e)) if e.class() == ErrorClass::CodeInvalid => {
                if let Some(appid) = appid_hint
                    && self
                        .store
                        .authorizer(appid)
                        .await?
                        .is_some_and(|r| r.has_refresh_token)
                {
                    tracing::info!(
                        appid,
                        "auth code already used; the account has a refresh token"
                    );
                    return Ok(appid.to_owned());
                }
                return Err(e.into());
            }
            Err(e) => return Err(e),
        };
        let appid = info.authorizer_appid.clone();
        self.store
            .authorized(&appid, info.authorizer_refresh_token.as_deref())
            .await?;
        if let Some(token) = info.authorizer_access_token {
            let lock_name = self.store.keys.lock(&format!("authorizer:{appid}"));
            if let Some(lock) = Lock::acquire(
                self.store.pool(),
                &lock_name,
                LOCK_LEASE,
                Duration::from_secs(10),
            )
            .await?
            {
                let token = StoredToken {
                    access_token: token,
                    expires_at: crate::unix_now() + info.expires_in,
                };
                let due = self.due_ms(token.expires_at);
                self.store
                    .write_authorizer_tokens(
                        &lock,
                        &appid,
                        &token,
                        info.authorizer_refresh_token.as_deref(),
                        due,
                    )
                    .await?;
                let _ = lock.release().await;
            }
        } else {
            // No API rights granted: nothing to refresh until the account grants them.
            self.store
                .schedule(&appid, crate::unix_now_ms() + 3_600_000)
                .await?;
        }
        match self
            .with_component_token(|ct| {
                let client = self.client.clone();
                let appid = appid.clone();
                async move { client.authorizer_info(&ct, &appid).await }
            })
            .await
        {
            Ok(profile) => self.store.save_profile(&appid, &profile).await?,
            Err(e) => {
                tracing::warn!(appid, error = %e, "authorized, but the profile could not be fetched")
            }
        }
        metrics::counter!("wxpipe_authorizations_total").increment(1);
        tracing::info!(appid, "authorization code exchanged");
        Ok(appid)
    }

    /// Reads which account a code was exchanged for, if it was.
    pub async fn code_outcome(&self, code: &str) -> Result<Option<String>, RedisError> {
        let mut c = conn(self.store.pool(), "reading an auth code").await?;
        let v: Option<String> = cmd("GET")
            .arg(self.store.keys.auth_code(code))
            .query_async(&mut c)
            .await
            .map_err(failed("reading an auth code"))?;
        Ok(v.and_then(|v| v.strip_prefix("done:").map(str::to_owned)))
    }

    /// Restores refresh tokens (and the list of accounts) from `api_get_authorizer_list`, paged
    /// by 500. Returns how many refresh tokens were restored.
    pub async fn restore_from_list(&self) -> Result<usize, TokenError> {
        let mut offset = 0u64;
        let mut restored = 0;
        loop {
            let (total, page) = self
                .with_component_token(|ct| {
                    let client = self.client.clone();
                    async move { client.authorizer_list(&ct, offset, 500).await }
                })
                .await?;
            let n = page.len() as u64;
            for item in page {
                let Some(rt) = item.refresh_token else {
                    continue;
                };
                let known = self.store.authorizer(&item.authorizer_appid).await?;
                if known
                    .as_ref()
                    .is_some_and(|r| r.status == AuthorizerStatus::Revoked)
                {
                    continue;
                }
                if self
                    .store
                    .restore_refresh_token(&item.authorizer_appid, &rt)
                    .await?
                {
                    restored += 1;
                }
                if known.as_ref().is_none_or(|r| r.access_token.is_none()) {
                    // Refresh soon, spread over a few seconds.
                    let due = crate::unix_now_ms() + (rand::random::<u32>() % 5_000) as i64;
                    self.store.schedule(&item.authorizer_appid, due).await?;
                }
            }
            offset += n;
            if n == 0 || offset >= total {
                break;
            }
        }
        if restored > 0 {
            tracing::info!(
                restored,
                "refresh tokens restored from api_get_authorizer_list"
            );
        }
        Ok(restored)
    }
}
