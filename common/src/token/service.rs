//! Keeping tokens fresh, exactly once per window across replicas, and never serving an expired
//! one. This file holds what the token jobs share (the service, its errors and modes, the
//! backoff); each job has its own file: [`super::component`] (the component token),
//! [`super::authorizer`] (authorizer tokens), [`super::exchange`] (authorization codes) and
//! [`super::restore`] (restoring accounts from `api_get_authorizer_list`). Every job talks to
//! Redis only through [`TokenStore`].
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

use super::store::{StoredToken, TokenStore};
use crate::redis::RedisError;
use crate::wechat::{WechatClient, WechatError};
use backon::{BackoffBuilder, ExponentialBuilder};
use std::future::Future;
use std::time::Duration;

/// A token is served only with more than this left (or half the refresh margin, if smaller).
pub const SERVE_MARGIN_SECS: i64 = 30;
/// Lease of a refresh lock: longer than a WeChat call (10 s timeout) and its retries.
pub(super) const LOCK_LEASE: Duration = Duration::from_secs(45);

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
    #[error("{0} needs no {1} ticket (a mini program, or no card permission for wx_card)")]
    NoTicketNeeded(String, &'static str),
    #[error("{0} has no refresh token (it is being restored from api_get_authorizer_list)")]
    NoRefreshToken(String),
    #[error(
        "WeChat's daily quota of {api} is used up (45009): no call until {until} (Beijing midnight) or until it is cleared (clear_quota, then POST /v1/quota/clear)",
        until = crate::event::rfc3339(*until_ms / 1000)
    )]
    QuotaExhausted { api: &'static str, until_ms: i64 },
    #[error(
        "the component token failed {failures} times in a row (last: {last_error}); next attempt at {at}",
        at = crate::event::rfc3339(*next_at_ms / 1000)
    )]
    BackingOff {
        failures: u64,
        next_at_ms: i64,
        last_error: String,
    },
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
    /// The account was revoked or re-authorized during the call: the token was not stored.
    Superseded,
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
pub(super) async fn with_backoff<T, F, Fut>(mut call: F) -> Result<T, WechatError>
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

/// A scheduled refresh (of a token or of tickets) that neither succeeded nor rescheduled itself
/// is retried after this…
pub const RETRY_AFTER: Duration = Duration::from_secs(60);

/// The first retry of a taken account whose refresh neither succeeded nor rescheduled it (a
/// transient error, a lock held by a refresh that then failed): [`RETRY_AFTER`], or a fifth of
/// the refresh margin when that is shorter, so that at least three attempts (0, 1/5, 3/5 of the
/// margin) fall before the token expires however short the margin (the default 600 s margin
/// keeps 60 s; tests with tokens of a few seconds retry within a second). Tickets use it too.
pub fn retry_after(margin: Duration) -> Duration {
    RETRY_AFTER.min(margin / 5).max(Duration::from_millis(100))
}

/// Every API whose daily quota wxpipe tracks (the component's calls).
pub const QUOTA_APIS: [&str; 7] = [
    "api_component_token",
    "api_start_push_ticket",
    "api_create_preauthcode",
    "api_query_auth",
    "api_authorizer_token",
    "api_get_authorizer_info",
    "api_get_authorizer_list",
];

/// The next midnight in Beijing (UTC+8), when WeChat's daily quotas reset, in ms.
pub fn next_quota_day_ms(now_ms: i64) -> i64 {
    const DAY: i64 = 86_400_000;
    const UTC8: i64 = 8 * 3_600_000;
    ((now_ms + UTC8).div_euclid(DAY) + 1) * DAY - UTC8
}

impl TokenService {
    /// Calls WeChat's `api` through `call`, with the transient retries of [`with_backoff`],
    /// unless its daily quota is known to be used up; a 45009 closes that quota for every
    /// replica and caller until Beijing midnight (or an operator clears it).
    pub(super) async fn guarded<T, F, Fut>(
        &self,
        api: &'static str,
        call: F,
    ) -> Result<T, TokenError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, WechatError>>,
    {
        if let Some(until_ms) = self.store.quota_closed_until(api).await? {
            metrics::counter!("wxpipe_wechat_calls_skipped_total", "api" => api, "reason" => "quota").increment(1);
            return Err(TokenError::QuotaExhausted { api, until_ms });
        }
        match with_backoff(call).await {
            Err(e) if e.class() == crate::wechat::ErrorClass::QuotaReached => {
                let until_ms = next_quota_day_ms(crate::unix_now_ms());
                tracing::error!(api, error = %e, "daily quota used up: no more calls until Beijing midnight or until it is cleared");
                metrics::counter!("wxpipe_wechat_quota_exhausted_total", "api" => api).increment(1);
                self.store.close_quota(api, until_ms).await?;
                Err(e.into())
            }
            other => Ok(other?),
        }
    }

    /// Seconds a served token must have left: [`SERVE_MARGIN_SECS`], or half the refresh
    /// margin when that is smaller (tests use tokens of a few seconds).
    pub fn serve_margin(&self) -> i64 {
        SERVE_MARGIN_SECS.min(self.margin.as_secs() as i64 / 2)
    }

    /// When a token expiring at `expires_at` should be refreshed (ms): `margin` before, minus a
    /// random jitter of up to half the margin (at most 5 minutes), so that thousands of accounts
    /// authorized in the same second spread their refreshes.
    pub fn due_ms(&self, expires_at: i64) -> i64 {
        expires_at * 1000 - self.margin.as_millis() as i64 - self.jitter_ms()
    }

    /// A random jitter of up to half the margin, at most 5 minutes (ms): see [`Self::due_ms`].
    pub fn jitter_ms(&self) -> i64 {
        let spread = (self.margin.as_millis() as i64 / 2).clamp(1, 300_000);
        (rand::random::<u64>() % spread as u64) as i64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_refresh_is_retried_within_the_margin() {
        // The default margin (600 s) keeps the 1-minute retry; shorter margins scale it down.
        assert_eq!(retry_after(Duration::from_secs(600)), RETRY_AFTER);
        assert_eq!(
            retry_after(Duration::from_secs(120)),
            Duration::from_secs(24)
        );
        assert_eq!(
            retry_after(Duration::from_secs(3)),
            Duration::from_millis(600)
        );
        assert_eq!(retry_after(Duration::ZERO), Duration::from_millis(100));
        // Attempts at 0, r and 3r (the retry doubles): all inside the margin.
        for secs in [1, 3, 60, 120, 300, 600, 6999] {
            let margin = Duration::from_secs(secs);
            assert!(retry_after(margin) * 3 < margin, "margin {secs} s");
        }
    }

    #[test]
    fn quotas_reset_at_beijing_midnight() {
        // 2026-11-29T15:59:59Z is 23:59:59 in Beijing: the day turns one second later.
        let t = 1_795_967_999_000;
        assert_eq!(next_quota_day_ms(t), t + 1000);
        // One second later it is the next day's midnight.
        assert_eq!(next_quota_day_ms(t + 1000), t + 1000 + 86_400_000);
    }
}
