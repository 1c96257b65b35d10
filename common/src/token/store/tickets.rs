//! Each account's JS-SDK tickets in Redis (protocol.md §9): a hash per account beside its
//! record, the ticket schedule (`ticket_due`, bucketed like the token schedule, with its own
//! backoff), and the fenced write ([`WRITE_TICKETS_IF_HELD`]).

use super::scripts::*;
use super::*;
use crate::ids::AppId;
use crate::redis::{bucket, conn, failed};
use deadpool_redis::redis::AsyncCommands;

/// One stored ticket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredTicket {
    pub ticket: Token,
    /// When this ticket was first handed to us (unix seconds).
    pub first_seen: i64,
    /// When it really expires: first seen + its lifetime, whatever later answers said.
    pub expires_at: i64,
    /// When it was last asked for.
    pub fetched_at: i64,
    /// Whether we saw it born (a rotation observed); an uncertain ticket is re-checked every
    /// probe interval while pages use it, until WeChat rotates it.
    pub certain: bool,
    /// When a page was last signed with it, if it is uncertain (0: not since it was stored).
    pub served_at: i64,
}

/// The fields of one kind of ticket, as `HMGET` answers them.
type TicketFields = (
    Option<String>,
    Option<i64>,
    Option<i64>,
    Option<i64>,
    Option<String>,
    Option<i64>,
);

/// What the fenced write of tickets did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TicketsWritten {
    /// Stored; the real expiry of each ticket written, in order.
    Yes(Vec<i64>),
    LostLock,
    /// The account was revoked meanwhile: its tickets were dropped.
    Revoked,
}

impl TokenStore {
    /// `appid`'s stored ticket of `kind` (`jsapi`, `wx_card`).
    pub async fn js_ticket(
        &self,
        appid: &AppId,
        kind: &str,
    ) -> Result<Option<StoredTicket>, RedisError> {
        let mut c = conn(&self.pool, "reading a ticket").await?;
        let fields = [
            kind.to_owned(),
            format!("{kind}_first_seen"),
            format!("{kind}_expires_at"),
            format!("{kind}_fetched_at"),
            format!("{kind}_certain"),
            format!("{kind}_served_at"),
        ];
        let (ticket, first_seen, expires_at, fetched_at, certain, served_at): TicketFields =
            deadpool_redis::redis::cmd("HMGET")
                .arg(self.keys.tickets(appid))
                .arg(&fields)
                .query_async(&mut c)
                .await
                .map_err(failed("reading a ticket"))?;
        Ok(match (ticket, expires_at) {
            (Some(t), Some(exp)) if !t.is_empty() => Some(StoredTicket {
                ticket: Token::from(t),
                first_seen: first_seen.unwrap_or(exp),
                expires_at: exp,
                fetched_at: fetched_at.unwrap_or(0),
                certain: certain.as_deref() == Some("1"),
                served_at: served_at.unwrap_or(0),
            }),
            _ => None,
        })
    }

    /// Takes the accounts of `buckets` whose tickets are due, like [`Self::take_due`].
    pub async fn take_ticket_due(
        &self,
        buckets: &[u16],
        limit: usize,
        retry: std::time::Duration,
        cap: std::time::Duration,
    ) -> Result<Vec<AppId>, RedisError> {
        let k = &self.keys;
        self.take_from(
            (|b| k.ticket_due(b), |b| k.ticket_due_attempts(b)),
            buckets,
            limit,
            (retry, cap),
        )
        .await
    }

    /// Puts `appid`'s tickets on the schedule at `due_ms` (replacing its time).
    pub async fn schedule_tickets(&self, appid: &AppId, due_ms: i64) -> Result<(), RedisError> {
        let mut c = conn(&self.pool, "scheduling tickets").await?;
        c.zadd::<_, _, _, ()>(self.keys.ticket_due(bucket(appid.as_str())), appid, due_ms)
            .await
            .map_err(failed("scheduling tickets"))
    }

    /// When `appid`'s tickets are due (ms), if scheduled.
    pub async fn ticket_due_at(&self, appid: &AppId) -> Result<Option<i64>, RedisError> {
        let key = self.keys.ticket_due(bucket(appid.as_str()));
        self.score(key, appid, "reading a ticket due time").await
    }

    /// A page was signed with `appid`'s uncertain ticket of `kind`: see [`PULL_TICKET_PROBE`].
    pub async fn pull_ticket_probe(
        &self,
        appid: &AppId,
        kind: &str,
        probe_ms: i64,
    ) -> Result<bool, RedisError> {
        const WHAT: &str = "marking a ticket served";
        let mut c = conn(&self.pool, WHAT).await?;
        let n: i64 = deadpool_redis::redis::Script::new(PULL_TICKET_PROBE)
            .key(self.keys.tickets(appid))
            .key(self.keys.ticket_due(bucket(appid.as_str())))
            .arg(kind)
            .arg(appid)
            .arg(crate::unix_now())
            .arg(probe_ms)
            .invoke_async(&mut c)
            .await
            .map_err(failed(WHAT))?;
        Ok(n == 1)
    }

    /// Fenced write of fetched tickets (`(kind, ticket, expires_in)`), see
    /// [`WRITE_TICKETS_IF_HELD`]; `margin_ms` and `jitter_ms` place the next fetch, `retry_ms`
    /// is the soonest it may be, `others_due_ms` when the kinds not fetched now are due,
    /// `probe_ms` how often a ticket whose age is unknown is asked for again.
    pub async fn write_tickets(
        &self,
        lock: &Lock,
        appid: &AppId,
        fetched: &[(&str, &Token, i64)],
        (margin_ms, jitter_ms, retry_ms): (i64, i64, i64),
        others_due_ms: Option<i64>,
        probe_ms: i64,
    ) -> Result<TicketsWritten, RedisError> {
        const WHAT: &str = "writing tickets";
        let b = bucket(appid.as_str());
        let script = deadpool_redis::redis::Script::new(WRITE_TICKETS_IF_HELD);
        let answer: Vec<i64> = self
            .until_stored(WHAT, || async {
                let mut c = conn(&self.pool, WHAT).await?;
                let mut s = script.prepare_invoke();
                s.key(lock.key())
                    .key(self.keys.tickets(appid))
                    .key(self.keys.ticket_due(b))
                    .key(self.keys.ticket_due_attempts(b))
                    .key(self.keys.authorizer(appid))
                    .arg(lock.value())
                    .arg(appid)
                    .arg(crate::unix_now())
                    .arg(margin_ms)
                    .arg(jitter_ms)
                    .arg(retry_ms)
                    .arg(others_due_ms.unwrap_or(0))
                    .arg(fetched.len())
                    .arg(probe_ms);
                for (kind, ticket, expires_in) in fetched {
                    s.arg(*kind).arg(ticket.expose()).arg(*expires_in);
                }
                let v: Vec<i64> = s.invoke_async(&mut c).await.map_err(failed(WHAT))?;
                if v.first() == Some(&1) {
                    self.replicated(&mut c, WHAT).await?;
                }
                Ok(v)
            })
            .await?;
        Ok(match answer.first() {
            Some(1) => TicketsWritten::Yes(answer[1..].to_vec()),
            Some(-1) => TicketsWritten::Revoked,
            _ => TicketsWritten::LostLock,
        })
    }
}
