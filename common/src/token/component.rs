//! The component token: refreshed under its lock when due, served only with time left,
//! invalidated only if it is still the token WeChat refused — and, when it keeps failing (a
//! wrong secret, a missing IP-whitelist entry, a refused ticket), asked for at most once per
//! backoff step across every replica and caller: 2 s doubling to one call a minute, the
//! state in Redis (`component_token:failures`), shown by the admin API.

use super::service::{LOCK_LEASE, RefreshMode, TokenError, TokenService};
use super::store::StoredToken;
use crate::redis::lock::Lock;
use crate::secret::Token;
use crate::wechat::{ErrorClass, WechatError};
use std::future::Future;
use std::time::Duration;

/// The first pause after a failure of the component token…
const FAILURE_BACKOFF: Duration = Duration::from_secs(2);
/// …doubling up to one call a minute.
const FAILURE_BACKOFF_CAP: Duration = Duration::from_secs(60);

impl TokenService {
    /// The component token and its expiry, with more than [`SERVE_MARGIN_SECS`] left,
    /// refreshing it if needed.
    pub async fn current_component_token(&self) -> Result<StoredToken, TokenError> {
        if let Some(t) = self.store.component_token().await?
            && t.expires_at - crate::unix_now() > self.serve_margin()
        {
            return Ok(t);
        }
        self.refresh_component_token(RefreshMode::IfDue).await
    }

    /// [`Self::current_component_token`], the token alone.
    pub async fn component_token(&self) -> Result<Token, TokenError> {
        Ok(self.current_component_token().await?.access_token)
    }

    /// Refreshes the component token under its lock (waiting up to 10 s for it).
    pub async fn refresh_component_token(
        &self,
        mode: RefreshMode,
    ) -> Result<StoredToken, TokenError> {
        let name = self.store.keys.component_lock();
        let Some(mut lock) = Lock::acquire(
            self.store.pool(),
            &name,
            LOCK_LEASE,
            Duration::from_secs(10),
        )
        .await?
        else {
            return Err(TokenError::Busy("component_token".into()));
        };
        // The call it guards can outlast one lease (retries with backoff): renew it.
        lock.keep_alive(LOCK_LEASE);
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
        if let Some(f) = self.store.component_failures().await?
            && f.next_at_ms > crate::unix_now_ms()
        {
            return Err(TokenError::BackingOff {
                failures: f.failures,
                next_at_ms: f.next_at_ms,
                last_error: f.last_error,
            });
        }
        let Some(ticket) = self.store.ticket().await? else {
            self.request_ticket_push().await;
            return Err(TokenError::NoTicket);
        };
        let grant = match self
            .guarded("api_component_token", || {
                self.client.component_token(&ticket)
            })
            .await
        {
            Ok(g) => g,
            Err(e) => {
                let label = match &e {
                    TokenError::Wechat(w) => {
                        if w.class() == ErrorClass::TicketInvalid {
                            self.request_ticket_push().await;
                        }
                        w.label()
                    }
                    TokenError::QuotaExhausted { .. } => "quota".into(),
                    _ => "error".into(),
                };
                metrics::counter!("wxpipe_token_refreshes_total", "kind" => "component", "outcome" => label).increment(1);
                if matches!(e, TokenError::Wechat(_)) {
                    let next_at = self
                        .store
                        .record_component_failure(
                            &e.to_string(),
                            FAILURE_BACKOFF,
                            FAILURE_BACKOFF_CAP,
                        )
                        .await?;
                    tracing::warn!(error = %e, next_attempt_in_ms = next_at - crate::unix_now_ms(), "component token refresh failed; backing off");
                }
                return Err(e);
            }
        };
        self.store.clear_component_failures().await?;
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
    /// `api` names the call for its daily quota (see [`TokenService::guarded`]).
    pub async fn with_component_token<T, F, Fut>(
        &self,
        api: &'static str,
        f: F,
    ) -> Result<T, TokenError>
    where
        F: Fn(Token) -> Fut,
        Fut: Future<Output = Result<T, WechatError>>,
    {
        let token = self.component_token().await?;
        match self.guarded(api, || f(token.clone())).await {
            Err(TokenError::Wechat(e)) if e.class() == ErrorClass::InvalidToken => {
                tracing::warn!(error = %e, "component token refused; invalidating and refreshing once");
                self.store
                    .invalidate_component_token(token.expose())
                    .await?;
                let fresh = self.component_token().await?;
                self.guarded(api, || f(fresh.clone())).await
            }
            other => other,
        }
    }

    /// Compare-and-invalidate for a caller whose call failed with `failed` (40001/40014/42001):
    /// the token is invalidated only if it is still the stored one, then refreshed once however
    /// many callers report it at once (they queue on the lock and find it fresh). Returns
    /// whether this call invalidated it, and the token to use now.
    pub async fn invalidate_component_token(
        &self,
        failed: &str,
    ) -> Result<(bool, StoredToken), TokenError> {
        let invalidated = self.store.invalidate_component_token(failed).await?;
        if invalidated {
            metrics::counter!("wxpipe_token_invalidations_total", "kind" => "component")
                .increment(1);
        }
        Ok((invalidated, self.current_component_token().await?))
    }
}
