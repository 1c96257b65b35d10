//! Restoring accounts and refresh tokens from `api_get_authorizer_list` when Redis lost them
//! (design.md: refresh tokens are the one thing that cannot be recomputed).

use super::service::{TokenError, TokenService};
use crate::ids::AppId;
use futures::StreamExt;

/// Accounts of one page of `api_get_authorizer_list` written to Redis at once.
const RESTORE_CONCURRENCY: usize = 32;

impl TokenService {
    /// Restores refresh tokens (and the list of accounts) from `api_get_authorizer_list`, paged
    /// by 500. Returns how many refresh tokens were restored.
    pub async fn restore_from_list(&self) -> Result<usize, TokenError> {
        let mut offset = 0u64;
        let mut restored = 0;
        loop {
            let (total, page) = self
                .with_component_token("api_get_authorizer_list", |ct| {
                    let client = self.client.clone();
                    async move { client.authorizer_list(ct.expose(), offset, 500).await }
                })
                .await?;
            let n = page.len() as u64;
            // The accounts of a page are written a few dozen at a time: one after the other,
            // 100,000 accounts took minutes of round trips before the first refresh.
            let mut writes = futures::stream::iter(page)
                .map(|item| self.restore_one(item))
                .buffer_unordered(RESTORE_CONCURRENCY);
            while let Some(restored_now) = writes.next().await {
                if restored_now? {
                    restored += 1;
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

    /// Restores one listed account: its refresh token if Redis has none (a revoked account
    /// stays revoked), and a refresh soon if it needs one. Whether a refresh token was
    /// restored.
    async fn restore_one(&self, item: crate::wechat::ListedAuthorizer) -> Result<bool, TokenError> {
        let Some(rt) = item.refresh_token else {
            return Ok(false);
        };
        let Ok(appid) = item.authorizer_appid.parse::<AppId>() else {
            tracing::warn!(
                appid = %item.authorizer_appid,
                "api_get_authorizer_list returned something that is not an appid; skipped"
            );
            return Ok(false);
        };
        // Refresh soon, spread over a few seconds, if it needs one (decided in Redis, in
        // one step with the scheduling: see the script).
        let due = crate::unix_now_ms() + (rand::random::<u32>() % 5_000) as i64;
        Ok(self.store.restore_account(&appid, rt.expose(), due).await?)
    }
}
