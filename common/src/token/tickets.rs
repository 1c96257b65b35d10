//! JS-SDK tickets (protocol.md §9): each Official Account's `jsapi_ticket` — and its `wx_card`
//! ticket where it granted permission set 8 — fetched with its authorizer token, kept in Redis
//! and refreshed ahead of expiry under a lock per account, with a fenced write, exactly like
//! tokens. WeChat hands back the same ticket while it is valid, each time with a fresh-looking
//! `expires_in`, and anyone calling `getticket` for the account may have started it: the store
//! keeps a lower bound of each ticket's real expiry — exact once a rotation was seen, and for a
//! ticket of unknown age (the first seen, or one seen again after Redis lost it) re-checked
//! every probe interval until WeChat rotates it (`store/scripts.rs`, `WRITE_TICKETS_IF_HELD`,
//! spells the rules). `getticket` is limited to about 10,000 calls a day per
//! account, so nothing here calls it per request: the scheduler fetches on the schedule, and a
//! caller finding no servable ticket fetches once under the lock (the others wait and read).

use super::service::{
    LOCK_LEASE, TokenError, TokenService, next_quota_day_ms, retry_after, with_backoff,
};
use super::store::{StoredTicket, TicketsWritten};
use crate::ids::AppId;
use crate::redis::lock::Lock;
use crate::secret::Token;
use crate::wechat::ErrorClass;
use std::time::Duration;

/// The two tickets of `getticket`'s `type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TicketKind {
    /// `jsapi`: signs `wx.config` for a page (every Official Account).
    Jsapi,
    /// `wx_card`: card and coupon APIs (permission set 8).
    WxCard,
}

impl TicketKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Jsapi => "jsapi",
            Self::WxCard => "wx_card",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "jsapi" => Some(Self::Jsapi),
            "wx_card" => Some(Self::WxCard),
            _ => None,
        }
    }
}

/// Permission set 8 (卡券管理): the account may use the card APIs.
const CARD_PERMISSION: i64 = 8;

/// An account whose profile says it needs no ticket (a mini program) is looked at again this
/// much later (its type never changes; the schedule only needs not to forget it).
const NO_TICKETS_RECHECK_MS: i64 = 86_400_000;

/// See [`TokenService::ticket_probe`].
const TICKET_PROBE: Duration = Duration::from_secs(60);

/// When to fetch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TicketMode {
    /// The scheduler took the account: fetch the tickets within the margin of their expiry
    /// (not waiting for the lock).
    Scheduled,
    /// A caller found no servable ticket of this kind: fetch it unless someone just did
    /// (waits for the lock).
    IfStale(TicketKind),
}

/// What a ticket refresh did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TicketOutcome {
    /// Fetched and stored this many tickets.
    Fetched(usize),
    /// Nothing was due (someone else fetched them).
    NotDue,
    /// Another replica holds the lock.
    Skipped,
    /// The account needs no ticket (a mini program, or no card permission for `wx_card`).
    NotNeeded,
    /// The lock expired before the write, or the account was revoked meanwhile.
    NotStored,
}

impl TokenService {
    /// The tickets `appid` needs, from its stored profile (fetched when missing): none for a
    /// mini program, `jsapi` for an Official Account, and `wx_card` too with permission set 8.
    async fn ticket_kinds(&self, appid: &AppId) -> Result<Vec<TicketKind>, TokenError> {
        let record = self.active_record(appid).await?;
        // No profile (an account restored from the list after a Redis loss; the daily profile
        // sync brings it): try jsapi rather than spend an api_get_authorizer_info per account
        // — a mini program answers 48001 and is left alone for a day.
        let Some(p) = record.profile_summary() else {
            return Ok(vec![TicketKind::Jsapi]);
        };
        if p.mini_program {
            return Ok(Vec::new());
        }
        let mut kinds = vec![TicketKind::Jsapi];
        if p.permissions.contains(&CARD_PERMISSION) {
            kinds.push(TicketKind::WxCard);
        }
        Ok(kinds)
    }

    /// Fetches `appid`'s due tickets under its lock and stores them (fenced).
    pub async fn refresh_tickets(
        &self,
        appid: &AppId,
        mode: TicketMode,
    ) -> Result<TicketOutcome, TokenError> {
        let wait = match mode {
            TicketMode::Scheduled => Duration::ZERO,
            TicketMode::IfStale(_) => Duration::from_secs(10),
        };
        let name = self.store.keys.tickets_lock(appid.as_str());
        let Some(mut lock) = Lock::acquire(self.store.pool(), &name, LOCK_LEASE, wait).await?
        else {
            return Ok(TicketOutcome::Skipped);
        };
        lock.keep_alive(LOCK_LEASE);
        let result = self.refresh_tickets_locked(&lock, appid, mode).await;
        let _ = lock.release().await;
        result
    }

    async fn refresh_tickets_locked(
        &self,
        lock: &Lock,
        appid: &AppId,
        mode: TicketMode,
    ) -> Result<TicketOutcome, TokenError> {
        let kinds = self.ticket_kinds(appid).await?;
        let wanted = match mode {
            TicketMode::Scheduled => !kinds.is_empty(),
            TicketMode::IfStale(k) => kinds.contains(&k),
        };
        if !wanted {
            if mode == TicketMode::Scheduled {
                self.store
                    .schedule_tickets(appid, crate::unix_now_ms() + NO_TICKETS_RECHECK_MS)
                    .await?;
            }
            return Ok(TicketOutcome::NotNeeded);
        }
        // Double-check under the lock: due means within the margin (the scheduler) or not
        // servable (a caller), and not fetched by anyone within the retry interval (the same
        // ticket handed back inside the margin is asked for again only then).
        let now = crate::unix_now();
        let threshold = match mode {
            TicketMode::Scheduled => self.margin.as_secs() as i64,
            TicketMode::IfStale(_) => self.ticket_serve_margin(),
        };
        let retry_secs = retry_after(self.margin).as_secs().max(1) as i64;
        let margin_ms = self.margin.as_millis() as i64;
        let mut due = Vec::new();
        // When the kinds not fetched now are due: a margin before a ticket's expiry, or a
        // second after it for one handed back again inside the margin.
        let mut others: Option<i64> = None;
        for kind in kinds {
            let stored = self.store.js_ticket(appid, kind.as_str()).await?;
            // A caller fetches only the kind it needs; the others keep their schedule (the
            // write below sets the account's next time from every kind).
            if let TicketMode::IfStale(k) = mode
                && k != kind
            {
                let at = stored.map_or(crate::unix_now_ms(), |t| t.expires_at * 1000 - margin_ms);
                others = Some(others.map_or(at, |o: i64| o.min(at)));
                continue;
            }
            let probe_ms = self.ticket_probe().as_millis() as i64;
            let at = match stored {
                // A ticket of unknown age that pages used since its last fetch is asked for
                // again a probe interval after that fetch.
                Some(t)
                    if !t.certain
                        && t.served_at >= t.fetched_at
                        && t.expires_at - now > self.ticket_serve_margin() =>
                {
                    let at = t.fetched_at * 1000 + probe_ms;
                    if mode == TicketMode::Scheduled && at <= crate::unix_now_ms() {
                        due.push(kind);
                        continue;
                    }
                    at.min(t.expires_at * 1000 - margin_ms)
                }
                Some(t) if t.expires_at - now > threshold => {
                    if t.expires_at - now > self.margin.as_secs() as i64 {
                        t.expires_at * 1000 - margin_ms
                    } else {
                        (t.expires_at + 1) * 1000
                    }
                }
                Some(t) if now - t.fetched_at < retry_secs && t.expires_at - now > 0 => {
                    (t.expires_at + 1) * 1000
                }
                _ => {
                    due.push(kind);
                    continue;
                }
            };
            others = Some(others.map_or(at, |o: i64| o.min(at)));
        }
        if due.is_empty() {
            if mode == TicketMode::Scheduled
                && let Some(at) = others
            {
                let at = at.max(crate::unix_now_ms() + retry_after(self.margin).as_millis() as i64);
                self.store.schedule_tickets(appid, at).await?;
            }
            return Ok(TicketOutcome::NotDue);
        }
        let mut fetched: Vec<(TicketKind, Token, i64)> = Vec::new();
        for kind in due {
            match self.fetch_ticket(appid, kind).await {
                Ok(g) => fetched.push((kind, g.ticket, g.expires_in)),
                Err(TokenError::Wechat(crate::wechat::WechatError::Api {
                    code: 48001, ..
                })) if fetched.is_empty() => {
                    // Not an account with this ticket (a mini program whose profile was not
                    // known yet): looked at again in a day.
                    metrics::counter!("wxpipe_ticket_refreshes_total", "kind" => kind.as_str(), "outcome" => "48001").increment(1);
                    self.store
                        .schedule_tickets(appid, crate::unix_now_ms() + NO_TICKETS_RECHECK_MS)
                        .await?;
                    return Ok(TicketOutcome::NotNeeded);
                }
                Err(e) => {
                    metrics::counter!("wxpipe_ticket_refreshes_total", "kind" => kind.as_str(), "outcome" => error_label(&e)).increment(1);
                    if let TokenError::Wechat(w) = &e
                        && w.class() == ErrorClass::QuotaReached
                    {
                        // getticket's quota is the account's own: this account waits for
                        // Beijing midnight, the others go on.
                        tracing::error!(appid = %appid, kind = kind.as_str(), "getticket's daily quota is used up for this account: next attempt at Beijing midnight");
                        self.store
                            .schedule_tickets(appid, next_quota_day_ms(crate::unix_now_ms()))
                            .await?;
                    }
                    if fetched.is_empty() {
                        return Err(e);
                    }
                    tracing::warn!(appid = %appid, kind = kind.as_str(), error = %e, "ticket not fetched; the others are stored");
                    break;
                }
            }
        }
        let jitter = self.jitter_ms();
        let rows: Vec<(&str, &Token, i64)> = fetched
            .iter()
            .map(|(k, t, e)| (k.as_str(), t, *e))
            .collect();
        let written = self
            .store
            .write_tickets(
                lock,
                appid,
                &rows,
                (
                    margin_ms,
                    jitter,
                    (retry_after(self.margin).as_millis() as i64).min(1000),
                ),
                others,
                self.ticket_probe().as_millis() as i64,
            )
            .await?;
        let outcome = match &written {
            TicketsWritten::Yes(_) => "ok",
            TicketsWritten::LostLock => "lost_lock",
            TicketsWritten::Revoked => "superseded",
        };
        for (kind, _, _) in &fetched {
            metrics::counter!("wxpipe_ticket_refreshes_total", "kind" => kind.as_str(), "outcome" => outcome).increment(1);
        }
        match written {
            TicketsWritten::Yes(_) => Ok(TicketOutcome::Fetched(fetched.len())),
            TicketsWritten::LostLock => {
                tracing::warn!(appid = %appid, "tickets fetched but not stored: the lock expired meanwhile");
                Ok(TicketOutcome::NotStored)
            }
            TicketsWritten::Revoked => Ok(TicketOutcome::NotStored),
        }
    }

    /// One `getticket` with the account's token; a token WeChat refuses (40001/40014/42001) is
    /// compare-and-invalidated and the call made once more with the next one.
    async fn fetch_ticket(
        &self,
        appid: &AppId,
        kind: TicketKind,
    ) -> Result<crate::wechat::TicketGrant, TokenError> {
        self.with_authorizer_token(appid, |t: Token| {
            let client = self.client.clone();
            async move {
                with_backoff(|| {
                    let (client, t) = (client.clone(), t.clone());
                    async move { client.getticket(t.expose(), kind.as_str()).await }
                })
                .await
            }
        })
        .await
    }

    /// A page is signed with `t`: if its age is unknown and no page used it since its last
    /// fetch, its next fetch is pulled to a probe interval after that one (so tickets of
    /// unknown age are probed only while pages use them).
    async fn served(&self, appid: &AppId, kind: TicketKind, t: &StoredTicket) {
        if t.certain || t.served_at >= t.fetched_at {
            return;
        }
        let probe = self.ticket_probe().as_millis() as i64;
        if let Err(e) = self
            .store
            .pull_ticket_probe(appid, kind.as_str(), probe)
            .await
        {
            tracing::debug!(appid = %appid, error = %e, "cannot mark a ticket served");
        }
    }

    /// How often a ticket whose age is unknown (the first one seen for an account, or one
    /// seen again after Redis lost it) is asked for again while pages use it, until WeChat
    /// rotates it: a page may get a signature made with such a ticket up to this long after it
    /// died, once per account.
    pub fn ticket_probe(&self) -> Duration {
        TICKET_PROBE
    }

    /// Seconds a served ticket must have left: 5, or the tokens' serve margin when that is
    /// smaller. A signature is checked by WeChat when the page calls `wx.config`, right after
    /// it loads; and a ticket handed back again inside the refresh margin is replaced only once
    /// it expires (WeChat gives no new one before), so this is the window without one.
    pub fn ticket_serve_margin(&self) -> i64 {
        self.serve_margin().min(5)
    }

    /// `appid`'s ticket of `kind` with more than [`Self::ticket_serve_margin`] left, fetched
    /// first if there is none (one caller fetches under the lock; the others wait and read it).
    pub async fn ticket(
        &self,
        appid: &AppId,
        kind: TicketKind,
    ) -> Result<StoredTicket, TokenError> {
        self.active_record(appid).await?;
        let servable = |t: Option<StoredTicket>| {
            t.filter(|t| t.expires_at - crate::unix_now() > self.ticket_serve_margin())
        };
        if let Some(t) = servable(self.store.js_ticket(appid, kind.as_str()).await?) {
            self.served(appid, kind, &t).await;
            return Ok(t);
        }
        match self
            .refresh_tickets(appid, TicketMode::IfStale(kind))
            .await?
        {
            TicketOutcome::NotNeeded => {
                return Err(TokenError::NoTicketNeeded(appid.to_string(), kind.as_str()));
            }
            TicketOutcome::Skipped => return Err(TokenError::Busy(format!("tickets:{appid}"))),
            _ => {}
        }
        if let Some(t) = servable(self.store.js_ticket(appid, kind.as_str()).await?) {
            self.served(appid, kind, &t).await;
            return Ok(t);
        }
        Err(TokenError::Busy(format!("tickets:{appid}")))
    }
}

fn error_label(e: &TokenError) -> String {
    match e {
        TokenError::Wechat(w) => w.label(),
        TokenError::Redis(_) => "redis".into(),
        _ => "token".into(),
    }
}
