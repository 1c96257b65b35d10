//! Authorizer tokens: refreshed under their locks (by the scheduler when taken from `due`, by a
//! caller when stale, by an operator when forced), served only with time left, and the
//! reactions to WeChat's error codes (protocol.md §6).

use super::service::{LOCK_LEASE, RefreshMode, RefreshOutcome, TokenError, TokenService};
use super::store::{AuthorizerStatus, StoredToken, Written};
use crate::ids::AppId;
use crate::redis::RedisError;
use crate::redis::lock::Lock;
use crate::wechat::{ErrorClass, WechatError};
use std::time::Duration;

impl TokenService {
    /// Refreshes `appid`'s token. `IfDue` gives up at once if another replica holds the lock
    /// and does nothing if the token is not due; `Force` waits up to 10 s for the lock.
    pub async fn refresh_authorizer(
        &self,
        appid: &AppId,
        mode: RefreshMode,
    ) -> Result<RefreshOutcome, TokenError> {
        let wait = match mode {
            RefreshMode::IfDue | RefreshMode::Taken(_) => Duration::ZERO,
            RefreshMode::IfStale | RefreshMode::Force => Duration::from_secs(10),
        };
        let name = self.store.keys.authorizer_lock(appid.as_str());
        let Some(mut lock) = Lock::acquire(self.store.pool(), &name, LOCK_LEASE, wait).await?
        else {
            return Ok(RefreshOutcome::Skipped);
        };
        // The calls it guards can outlast one lease (retries with backoff): renew it.
        lock.keep_alive(LOCK_LEASE);
        let result = self.refresh_authorizer_locked(&lock, appid, mode).await;
        let _ = lock.release().await;
        result
    }

    async fn refresh_authorizer_locked(
        &self,
        lock: &Lock,
        appid: &AppId,
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
            return Err(TokenError::NoRefreshToken(appid.to_string()));
        };
        let grant = self
            .with_component_token("api_authorizer_token", |ct| {
                let (client, rt) = (self.client.clone(), refresh_token.clone());
                async move {
                    client
                        .authorizer_token(ct.expose(), appid, rt.expose())
                        .await
                }
            })
            .await;
        let grant = match grant {
            Ok(g) => g,
            Err(TokenError::Wechat(e)) => {
                self.react_to_refresh_error(appid, refresh_token.expose(), &e)
                    .await?;
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
                Some(grant.authorizer_refresh_token.expose()),
                Some(refresh_token.expose()),
                due,
            )
            .await?;
        let outcome = match written {
            Written::Yes => "ok",
            Written::LostLock => "lost_lock",
            Written::Superseded => "superseded",
        };
        metrics::counter!("wxpipe_token_refreshes_total", "kind" => "authorizer", "outcome" => outcome).increment(1);
        match written {
            Written::Yes => {}
            Written::LostLock => {
                tracing::warn!(
                    appid = %appid,
                    "authorizer token refreshed but not stored: the lock expired meanwhile"
                );
                return Ok(RefreshOutcome::LostLock);
            }
            Written::Superseded => {
                tracing::info!(
                    appid = %appid,
                    "authorizer token refreshed but not stored: the account was revoked or re-authorized meanwhile"
                );
                return Ok(RefreshOutcome::Superseded);
            }
        }
        Ok(RefreshOutcome::Refreshed(token))
    }

    /// protocol.md §6 for a failed `api_authorizer_token`. "Never retried" means: 61003 revokes
    /// the account (it leaves `due`); 61023 sets the refused refresh token aside and takes the
    /// account out of `due` until a new refresh token arrives (from the list — never the refused
    /// one — or a re-authorization); 45009 closes the API's quota for everyone until Beijing
    /// midnight or until an operator clears it (see [`TokenService::guarded`]). Anything else
    /// is retried with the scheduler's backoff (1 min, or a fifth of the margin if shorter,
    /// doubling to 1 h).
    async fn react_to_refresh_error(
        &self,
        appid: &AppId,
        refresh_token: &str,
        e: &WechatError,
    ) -> Result<(), RedisError> {
        metrics::counter!("wxpipe_token_refreshes_total", "kind" => "authorizer", "outcome" => e.label()).increment(1);
        match e.class() {
            ErrorClass::NotAuthorized => {
                tracing::warn!(appid = %appid, error = %e, "the account no longer authorizes the platform; marked revoked");
                self.store.revoke(appid).await
            }
            ErrorClass::RefreshTokenInvalid => {
                tracing::error!(appid = %appid, error = %e, "refresh token refused; never retried with it (restored from the list when WeChat has a new one, or re-authorize)");
                self.store
                    .refuse_refresh_token(appid, refresh_token, &e.to_string())
                    .await
            }
            ErrorClass::QuotaReached => Ok(()),
            _ => {
                tracing::warn!(appid = %appid, error = %e, "authorizer refresh failed; will try again");
                self.store
                    .mark(appid, AuthorizerStatus::Active, &e.to_string())
                    .await
            }
        }
    }

    /// `appid`'s record, unless it is unknown or revoked.
    pub(super) async fn active_record(
        &self,
        appid: &AppId,
    ) -> Result<super::AuthorizerRecord, TokenError> {
        let record = self
            .store
            .authorizer(appid)
            .await?
            .ok_or_else(|| TokenError::Unknown(appid.to_string()))?;
        if record.status == AuthorizerStatus::Revoked {
            return Err(TokenError::Revoked(appid.to_string()));
        }
        Ok(record)
    }

    /// An authorizer token with more than [`SERVE_MARGIN_SECS`] left, refreshing it if needed.
    pub async fn authorizer_token(&self, appid: &AppId) -> Result<StoredToken, TokenError> {
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
                    .ok_or_else(|| TokenError::Unknown(appid.to_string()))?;
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

    /// Calls WeChat with `appid`'s token. An answer refusing the token (40001/40014/42001: the
    /// call was not made) invalidates it, compare-and-invalidate, and the call is made once
    /// more with the fresh one. Any other error is the caller's to handle (nothing else is
    /// retried here: a call that changes something must not be repeated blindly).
    pub async fn with_authorizer_token<T, F, Fut>(
        &self,
        appid: &AppId,
        call: F,
    ) -> Result<T, TokenError>
    where
        F: Fn(crate::secret::Token) -> Fut,
        Fut: std::future::Future<Output = Result<T, WechatError>>,
    {
        let token = self.authorizer_token(appid).await?;
        match call(token.access_token.clone()).await {
            Err(e) if e.class() == ErrorClass::InvalidToken => {
                tracing::info!(appid = %appid, error = %e, "WeChat refused the account's token: invalidated, the call made once more");
                let (_, fresh) = self
                    .invalidate_authorizer_token(appid, token.access_token.expose())
                    .await?;
                Ok(call(fresh.access_token).await?)
            }
            other => Ok(other?),
        }
    }

    /// Compare-and-invalidate for a caller whose call failed with `failed` (40001/40014/42001):
    /// invalidated only if it is still `appid`'s stored token, then refreshed once however many
    /// callers report it at once (they queue on the lock and find it fresh). Returns whether
    /// this call invalidated it, and the token to use now.
    pub async fn invalidate_authorizer_token(
        &self,
        appid: &AppId,
        failed: &str,
    ) -> Result<(bool, StoredToken), TokenError> {
        self.active_record(appid).await?;
        let invalidated = self
            .store
            .invalidate_authorizer_token(appid, failed)
            .await?;
        if invalidated {
            metrics::counter!("wxpipe_token_invalidations_total", "kind" => "authorizer")
                .increment(1);
        }
        Ok((invalidated, self.authorizer_token(appid).await?))
    }
}
