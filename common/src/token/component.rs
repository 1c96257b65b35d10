//! The component token: refreshed under its lock when due, served only with time left,
//! invalidated only if it is still the token WeChat refused.

use super::service::{LOCK_LEASE, RefreshMode, TokenError, TokenService, with_backoff};
use super::store::StoredToken;
use crate::redis::lock::Lock;
use crate::wechat::{ErrorClass, WechatError};
use std::future::Future;
use std::time::Duration;

impl TokenService {
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

    /// Compare-and-invalidate for a caller whose call failed with `failed` (40001/40014/42001):
    /// the token is invalidated only if it is still the stored one, then refreshed once however
    /// many callers report it at once (they queue on the lock and find it fresh). Returns
    /// whether this call invalidated it, and the token to use now.
    pub async fn invalidate_component_token(
        &self,
        failed: &str,
    ) -> Result<(bool, String), TokenError> {
        let invalidated = self.store.invalidate_component_token(failed).await?;
        if invalidated {
            metrics::counter!("wxpipe_token_invalidations_total", "kind" => "component")
                .increment(1);
        }
        Ok((invalidated, self.component_token().await?))
    }
}
