//! Authorization codes, exchanged with `api_query_auth` exactly once, however many times and
//! from wherever they arrive: a [`Claim`](crate::redis::claim::Claim) on `authcode:{code}`,
//! settled into `done:<appid>`.

use super::service::{LOCK_LEASE, TokenError, TokenService};
use super::store::StoredToken;
use crate::ids::AppId;
use crate::redis::RedisError;
use crate::redis::claim::Taken;
use crate::redis::lock::Lock;
use crate::secret::Token;
use crate::wechat::ErrorClass;
use std::time::Duration;

/// Lease of an authorization code's exchange claim: longer than the exchange's WeChat calls.
const CODE_CLAIM: Duration = Duration::from_secs(40);
/// How long an exchanged code is remembered.
const CODE_DONE: Duration = Duration::from_secs(3600);
const DONE_PREFIX: &str = "done:";

impl TokenService {
    /// Exchanges an authorization code with `api_query_auth` exactly once, however many times
    /// and from wherever it arrives (the `authorized` push, `/auth/callback`, a retry): the
    /// holder of the code's claim exchanges it and settles the claim into `done:<appid>`; the
    /// others wait for that. A code WeChat calls invalid or used (61009/61010) is harmless when
    /// the account already has a refresh token. Returns the account's appid.
    pub async fn exchange_code(
        &self,
        code: &str,
        appid_hint: Option<&AppId>,
    ) -> Result<AppId, TokenError> {
        let deadline = tokio::time::Instant::now() + CODE_CLAIM + Duration::from_secs(5);
        let claim = loop {
            match self.store.take_auth_code(code, CODE_CLAIM).await? {
                Taken::Won(claim) => break claim,
                Taken::Settled(v) => {
                    if let Some(appid) = v.strip_prefix(DONE_PREFIX).and_then(|a| a.parse().ok()) {
                        return Ok(appid);
                    }
                }
                Taken::Held => {}
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(TokenError::Busy("an authorization code's exchange".into()));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let result = self.exchange_claimed(code, appid_hint).await;
        match &result {
            Ok(appid) => {
                if !claim
                    .settle(&format!("{DONE_PREFIX}{appid}"), CODE_DONE)
                    .await?
                {
                    tracing::warn!(appid = %appid, "code exchanged after its claim expired");
                }
            }
            Err(_) => {
                claim.release().await?;
            }
        }
        result
    }

    async fn exchange_claimed(
        &self,
        code: &str,
        appid_hint: Option<&AppId>,
    ) -> Result<AppId, TokenError> {
        let info = self
            .with_component_token("api_query_auth", |ct| {
                let client = self.client.clone();
                let code = code.to_owned();
                async move { client.query_auth(ct.expose(), &code).await }
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
                        appid = %appid,
                        "auth code already used; the account has a refresh token"
                    );
                    return Ok(appid.clone());
                }
                return Err(e.into());
            }
            Err(e) => return Err(e),
        };
        let appid: AppId =
            info.authorizer_appid
                .parse()
                .map_err(|_| crate::wechat::WechatError::Protocol {
                    api: "api_query_auth",
                    detail: "authorizer_appid is not an appid".into(),
                })?;
        self.store
            .authorized(
                &appid,
                info.authorizer_refresh_token.as_ref().map(Token::expose),
            )
            .await?;
        if let Some(token) = info.authorizer_access_token {
            let lock_name = self.store.keys.authorizer_lock(appid.as_str());
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
                        info.authorizer_refresh_token.as_ref().map(Token::expose),
                        // Written right after `authorized`: fenced on the same token.
                        info.authorizer_refresh_token.as_ref().map(Token::expose),
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
        if let Err(e) = self.refresh_profile(&appid).await {
            tracing::warn!(appid = %appid, error = %e, "authorized, but the profile could not be fetched")
        }
        metrics::counter!("wxpipe_authorizations_total").increment(1);
        tracing::info!(appid = %appid, "authorization code exchanged");
        Ok(appid)
    }

    /// Fetches and stores `appid`'s profile (`api_get_authorizer_info`: permission sets,
    /// service and verify types, mini-program and business info): on every authorization and
    /// its updates, and daily (the scheduler).
    pub async fn refresh_profile(&self, appid: &AppId) -> Result<(), TokenError> {
        let profile = self
            .with_component_token("api_get_authorizer_info", |ct| {
                let client = self.client.clone();
                let appid = appid.clone();
                async move { client.authorizer_info(ct.expose(), &appid).await }
            })
            .await?;
        self.store.save_profile(appid, &profile).await?;
        Ok(())
    }

    /// Which account a code was exchanged for, if it was.
    pub async fn code_outcome(&self, code: &str) -> Result<Option<AppId>, RedisError> {
        Ok(self
            .store
            .auth_code_state(code)
            .await?
            .and_then(|v| v.strip_prefix(DONE_PREFIX).and_then(|a| a.parse().ok())))
    }
}
