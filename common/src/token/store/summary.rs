//! The accounts' summary behind the platform gauges (`wxpipe_authorizers{status}`,
//! `wxpipe_authorizer_token_expires_in_min_seconds`). Making it means reading every account, so
//! one scheduler replica per interval makes it — the one that takes the `…:lock:gauges` claim —
//! and writes it to `…:gauges`; the other replicas read that one hash. Reading every account
//! costs Redis once per interval however many replicas run.

use super::*;
use crate::redis::claim::{Claim, Taken};
use crate::redis::{conn, failed};
use deadpool_redis::redis::AsyncCommands;
use std::time::Duration;

/// How many accounts are in each status, and the earliest token expiry of an active one.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AccountSummary {
    pub active: u64,
    pub refresh_failing: u64,
    pub revoked: u64,
    /// The earliest `expires_at` (s since the epoch) of an active account's token — 0 for an
    /// active account without a token — or `None` when no account is active.
    pub earliest_active_expiry: Option<i64>,
    /// When it was made (ms since the epoch).
    pub made_at_ms: i64,
}

impl AccountSummary {
    /// Sums the accounts' `(status, expires_at)` (as [`TokenStore::statuses`] reads them).
    pub fn of(
        states: impl IntoIterator<Item = (AuthorizerStatus, Option<i64>)>,
        made_at_ms: i64,
    ) -> Self {
        let mut s = Self {
            made_at_ms,
            ..Self::default()
        };
        for (status, expires_at) in states {
            match status {
                AuthorizerStatus::Active => {
                    s.active += 1;
                    let e = expires_at.unwrap_or(0);
                    s.earliest_active_expiry =
                        Some(s.earliest_active_expiry.map_or(e, |m| m.min(e)));
                }
                AuthorizerStatus::RefreshFailing => s.refresh_failing += 1,
                AuthorizerStatus::Revoked => s.revoked += 1,
            }
        }
        s
    }

    /// The number of accounts in `status`.
    pub fn count(&self, status: AuthorizerStatus) -> u64 {
        match status {
            AuthorizerStatus::Active => self.active,
            AuthorizerStatus::RefreshFailing => self.refresh_failing,
            AuthorizerStatus::Revoked => self.revoked,
        }
    }

    fn fields(&self) -> Vec<(&'static str, i64)> {
        let mut f = vec![
            ("active", self.active as i64),
            ("refresh_failing", self.refresh_failing as i64),
            ("revoked", self.revoked as i64),
            ("made_at_ms", self.made_at_ms),
        ];
        if let Some(e) = self.earliest_active_expiry {
            f.push(("earliest_active_expiry", e));
        }
        f
    }

    /// The summary a hash holds; `None` when it is missing or unreadable (then it is made again).
    fn from_fields(fields: &HashMap<String, String>) -> Option<Self> {
        let int = |k: &str| fields.get(k).and_then(|v| v.parse::<i64>().ok());
        let count = |k: &str| int(k).and_then(|v| u64::try_from(v).ok());
        let earliest = match fields.get("earliest_active_expiry") {
            Some(_) => Some(int("earliest_active_expiry")?),
            None => None,
        };
        Some(Self {
            active: count("active")?,
            refresh_failing: count("refresh_failing")?,
            revoked: count("revoked")?,
            earliest_active_expiry: earliest,
            made_at_ms: int("made_at_ms")?,
        })
    }
}

impl TokenStore {
    /// The accounts' summary, at most `max_age` old: the shared one if it is fresh enough;
    /// else this replica makes it — if it wins the claim to, which then holds for `max_age` so
    /// that no other replica makes it again meanwhile — and shares it. A replica that loses the
    /// claim to one making it right now keeps the older summary (or, when there is none yet,
    /// makes its own without sharing it).
    pub async fn account_summary(&self, max_age: Duration) -> Result<AccountSummary, RedisError> {
        let shared = self.shared_summary().await?;
        let now = crate::unix_now_ms();
        // A summary "from the future" (a replica whose clock is ahead) is not fresh either.
        let fresh =
            |s: &AccountSummary| (0..max_age.as_millis() as i64).contains(&(now - s.made_at_ms));
        if let Some(s) = shared.as_ref().filter(|s| fresh(s)) {
            return Ok(s.clone());
        }
        match Claim::take(&self.pool, &self.keys.lock("gauges"), max_age).await? {
            // Kept, not released: the claim's lease is what keeps the others from making it.
            Taken::Won(_claim) => {
                let made = self.make_summary().await?;
                self.share_summary(&made, max_age).await?;
                Ok(made)
            }
            Taken::Held | Taken::Settled(_) => match shared {
                Some(s) => Ok(s),
                None => self.make_summary().await,
            },
        }
    }

    async fn make_summary(&self) -> Result<AccountSummary, RedisError> {
        let appids = self.authorizer_appids().await?;
        let states = self.statuses(&appids).await?;
        Ok(AccountSummary::of(states, crate::unix_now_ms()))
    }

    async fn shared_summary(&self) -> Result<Option<AccountSummary>, RedisError> {
        let mut c = conn(&self.pool, "reading the accounts' summary").await?;
        let fields: HashMap<String, String> = c
            .hgetall(self.keys.gauges())
            .await
            .map_err(failed("reading the accounts' summary"))?;
        Ok(AccountSummary::from_fields(&fields))
    }

    /// Replaces the shared summary (at once: readers never see half of it); it expires after a
    /// few intervals, so a summary nobody makes any more does not outlive its makers.
    async fn share_summary(&self, s: &AccountSummary, max_age: Duration) -> Result<(), RedisError> {
        let key = self.keys.gauges();
        let mut c = conn(&self.pool, "sharing the accounts' summary").await?;
        deadpool_redis::redis::pipe()
            .atomic()
            .del(&key)
            .ignore()
            .hset_multiple(&key, &s.fields())
            .ignore()
            .pexpire(&key, (max_age.as_millis() as i64).saturating_mul(4))
            .ignore()
            .query_async::<()>(&mut c)
            .await
            .map_err(failed("sharing the accounts' summary"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use AuthorizerStatus::*;

    #[test]
    fn counts_each_status_and_the_earliest_expiry_of_the_active_only() {
        let s = AccountSummary::of(
            [
                (Active, Some(500)),
                (Active, Some(300)),
                (RefreshFailing, Some(10)),
                (Revoked, None),
                (Revoked, Some(1)),
            ],
            7,
        );
        assert_eq!((s.active, s.refresh_failing, s.revoked), (2, 1, 2));
        assert_eq!(s.earliest_active_expiry, Some(300));
        // An active account without a token counts as expired.
        let s = AccountSummary::of([(Active, Some(500)), (Active, None)], 7);
        assert_eq!(s.earliest_active_expiry, Some(0));
        let s = AccountSummary::of([(Revoked, Some(5))], 7);
        assert_eq!(s.earliest_active_expiry, None);
    }

    /// The hash `s` is shared as, as HGETALL returns it.
    fn hash(s: &AccountSummary) -> HashMap<String, String> {
        s.fields()
            .into_iter()
            .map(|(k, v)| (k.into(), v.to_string()))
            .collect()
    }

    #[test]
    fn a_summary_survives_its_hash_and_a_partial_hash_is_none() {
        for s in [
            AccountSummary::of([(Active, Some(9)), (Revoked, None)], 1234),
            AccountSummary::of([], 1),
        ] {
            assert_eq!(AccountSummary::from_fields(&hash(&s)), Some(s));
        }
        let partial: HashMap<String, String> = [("active".to_owned(), "3".to_owned())].into();
        assert_eq!(AccountSummary::from_fields(&partial), None);
        let mut garbled = hash(&AccountSummary::of([], 1));
        garbled.insert("earliest_active_expiry".into(), "soon".into());
        assert_eq!(AccountSummary::from_fields(&garbled), None);
        assert_eq!(AccountSummary::from_fields(&HashMap::new()), None);
    }
}
