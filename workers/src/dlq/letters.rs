//! The dead-letter queue as data: list, show, replay and purge `{ns}.dead`, behind both
//! `workers dlq` (which prints the results) and the console's JSON endpoints.
//!
//! Reading a queue without losing it, in memory that does not grow with it: `list`, `show`,
//! `replay` and `purge` *walk* the letters the queue held when the call started
//! ([`super::walk`]): at most [`super::walk::WINDOW`] unacknowledged at a time, each
//! acknowledged only after it was put back (to the tail of the queue), replayed (to the exchange
//! it first had) or, for a purge, deleted: each letter once, none lost. The queue's order is not
//! kept (see [`super::walk`]): a position names the letter a walk reads at that place now.

use super::walk::{self, Settled, Step};
use crate::decrypt::decode::decode_parts;
use common::config::PlatformArgs;
use common::ids::Namespace;
use common::wire::dead::DeadLetter;
use lapin::message::Delivery;
use lapin::options::QueueDeclareOptions;
use lapin::{Channel, Connection};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::Duration;

/// A dead-letter operation that could not be carried out.
#[derive(Debug, thiserror::Error)]
pub enum DlqError {
    #[error("could not connect to RabbitMQ: {0}")]
    Connect(String),
    #[error("queue {queue} is not there ({detail}); has any wxpipe process run in this namespace?")]
    NoQueue { queue: String, detail: String },
    #[error("RabbitMQ: {0}")]
    Broker(#[from] lapin::Error),
    #[error("{0}")]
    Invalid(String),
    #[error("could not open a publishing connection to RabbitMQ within 10 s")]
    NoPublisher,
}

/// Which dead letters an operation applies to (flags of `workers dlq replay`, fields of the
/// console's replay request).
#[derive(clap::Args, Debug, Clone, Default, Deserialize)]
pub struct Filter {
    /// Only letters dead-lettered from this queue (e.g. `wxpipe.raw`).
    #[arg(long)]
    #[serde(default)]
    pub source: Option<String>,
    /// Only letters with this reason (e.g. `appid_mismatch`, `redis_unavailable`).
    #[arg(long)]
    #[serde(default)]
    pub reason: Option<String>,
    /// Only letters dead-lettered since then: a duration (`2h`, `30m`) or an RFC 3339 time.
    #[arg(long)]
    #[serde(default)]
    pub since: Option<String>,
    /// At most this many letters.
    #[arg(long)]
    #[serde(default)]
    pub limit: Option<usize>,
}

impl Filter {
    fn matches(&self, info: &DeadLetter, since: Option<i64>) -> bool {
        given(&self.source).is_none_or(|s| s == info.source_queue)
            && given(&self.reason).is_none_or(|r| r == info.reason)
            && since.is_none_or(|t| info.dead_at_ms >= t)
    }

    /// `since` as ms since the epoch.
    fn since_ms(&self) -> Result<Option<i64>, DlqError> {
        let Some(since) = self.since.as_deref().filter(|s| !s.trim().is_empty()) else {
            return Ok(None);
        };
        let now_ms = common::unix_now_ms();
        if let Ok(d) = humantime::parse_duration(since) {
            return Ok(Some(now_ms - d.as_millis() as i64));
        }
        let t = humantime::parse_rfc3339_weak(since).map_err(|_| {
            DlqError::Invalid(format!(
                "since {since:?}: expected a duration like 2h or an RFC 3339 time"
            ))
        })?;
        Ok(Some(
            t.duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis() as i64)
                .unwrap_or(0),
        ))
    }
}

/// A filter field that is set and not empty.
fn given(f: &Option<String>) -> Option<&str> {
    f.as_deref().filter(|s| !s.is_empty())
}

/// Letters of one source queue and reason.
#[derive(Debug, Clone, Serialize)]
pub struct Group {
    pub source: String,
    pub reason: String,
    pub count: usize,
    /// When the oldest of them died, ms since the epoch (0: unknown).
    pub oldest_ms: i64,
    pub oldest_detail: String,
}

/// What `list` found.
#[derive(Debug, Clone, Serialize)]
pub struct Listing {
    pub queue: String,
    pub total: usize,
    pub groups: Vec<Group>,
}

/// One letter, as `show` presents it.
#[derive(Debug, Clone, Serialize)]
pub struct Letter {
    pub position: usize,
    pub source: String,
    pub reason: String,
    pub detail: String,
    pub dead_at_ms: i64,
    pub original_exchange: String,
    pub original_routing_key: String,
    /// The message's own headers (not the broker's nor ours).
    pub headers: BTreeMap<String, String>,
    pub body_bytes: usize,
    /// The body as text (lossy).
    pub body: String,
    /// The decrypted push, for a raw push that decrypts with the configured credentials.
    pub decrypted: Option<serde_json::Value>,
    /// Why it was not decrypted, when it is a raw push that was not.
    pub not_decrypted: Option<String>,
}

/// One letter chosen by a replay.
#[derive(Debug, Clone, Serialize)]
pub struct Chosen {
    pub position: usize,
    pub source: String,
    pub reason: String,
    pub dead_at_ms: i64,
    pub exchange: String,
    pub routing_key: String,
}

/// A report names at most this many chosen letters and this many failures (it counts all).
pub const MAX_LISTED: usize = 1_000;

/// What a replay did (or, in a dry run, would do).
#[derive(Debug, Clone, Serialize)]
pub struct Replay {
    pub dry_run: bool,
    /// Letters in the queue when it started.
    pub total: usize,
    /// The chosen letters (the first [`MAX_LISTED`]).
    pub chosen: Vec<Chosen>,
    /// How many letters were chosen in all.
    pub chosen_total: usize,
    pub replayed: usize,
    /// Letters left in the queue.
    pub left: usize,
    /// Letters that could not be replayed (they stay dead), each with why (the first
    /// [`MAX_LISTED`]).
    pub failed: Vec<String>,
    /// How many letters could not be replayed in all.
    pub failed_total: usize,
}

/// The dead-letter queue of one namespace.
pub struct DeadLetters {
    conn: Connection,
    ns: Namespace,
}

impl DeadLetters {
    /// Connects (to the first of `urls` that answers), naming the connection `who`.
    pub async fn connect(urls: &[String], ns: &Namespace, who: &str) -> Result<Self, DlqError> {
        let conn = common::amqp::connect_any(urls, 0, &format!("{who} {ns}"))
            .await
            .map_err(|e| DlqError::Connect(e.to_string()))?;
        Ok(Self {
            conn,
            ns: ns.clone(),
        })
    }

    /// Closes the connection, bounded: lapin 4.12 can leave a close's promise unresolved when
    /// its I/O loop ends first (seen once: `workers dlq replay` had done its work, then hung
    /// on this close forever, and with it the e2e test that ran it). The process is about to
    /// exit; the broker notices the dropped socket.
    pub async fn close(self) {
        let _ = tokio::time::timeout(
            Duration::from_secs(2),
            self.conn.close(200, "dlq done".into()),
        )
        .await;
    }

    pub fn queue(&self) -> String {
        self.ns.dead()
    }

    /// Letters in the queue now.
    pub async fn depth(&self) -> Result<u32, DlqError> {
        let ch = self.conn.create_channel().await?;
        let n = depth(&ch, &self.queue()).await;
        let _ = tokio::time::timeout(Duration::from_secs(2), ch.close(200, "done".into())).await;
        n
    }

    /// Counts by source queue and reason, with the oldest of each group (a walk: every letter
    /// is put back).
    pub async fn list(&self) -> Result<Listing, DlqError> {
        let queue = self.queue();
        let n = self.depth().await? as usize;
        let mut groups: BTreeMap<(String, String), Group> = BTreeMap::new();
        let walked = walk::walk(
            &self.conn,
            &queue,
            n,
            |_, d| {
                let info = DeadLetter::from_properties(&d.properties);
                let g = groups
                    .entry((info.source_queue.clone(), info.reason.clone()))
                    .or_insert_with(|| Group {
                        source: info.source_queue.clone(),
                        reason: info.reason.clone(),
                        count: 0,
                        oldest_ms: i64::MAX,
                        oldest_detail: String::new(),
                    });
                g.count += 1;
                if info.dead_at_ms < g.oldest_ms {
                    g.oldest_ms = info.dead_at_ms;
                    g.oldest_detail = info.detail;
                }
                Step::Keep
            },
            |_, _, _| {},
        )
        .await;
        let walked = walked?;
        Ok(Listing {
            queue,
            total: walked.seen,
            groups: groups.into_values().collect(),
        })
    }

    /// Letter number `position` (as a walk reads the queue now), decrypted when it is a raw push and
    /// `platform` holds the credentials.
    pub async fn show(&self, position: usize, platform: &PlatformArgs) -> Result<Letter, DlqError> {
        if position < 1 {
            return Err(DlqError::Invalid("positions start at 1".into()));
        }
        let queue = self.queue();
        let n = self.depth().await? as usize;
        if position > n {
            return Err(DlqError::Invalid(format!(
                "{queue} holds {n} letters; there is no #{position}"
            )));
        }
        let gone = || DlqError::Invalid(format!("letter #{position} is no longer there"));
        let mut found = None;
        let walked = walk::walk(
            &self.conn,
            &queue,
            n,
            |p, d| {
                if p == position {
                    found = Some(describe(position, d, platform));
                }
                Step::Keep
            },
            |_, _, _| {},
        )
        .await;
        walked?;
        found.ok_or_else(gone)
    }

    /// Republishes the letters `filter` matches to the exchange and routing key they first had;
    /// each is removed only after its republish is confirmed; the others are put back.
    /// `progress` is told how many of the queue's letters are done, as they are done.
    pub async fn replay(
        &self,
        filter: &Filter,
        dry_run: bool,
        progress: &(dyn Fn(usize, usize) + Sync),
    ) -> Result<Replay, DlqError> {
        let queue = self.queue();
        let since = filter.since_ms()?;
        let n = self.depth().await? as usize;
        let limit = filter.limit.unwrap_or(usize::MAX);
        let mut report = Replay {
            dry_run,
            total: n,
            chosen: Vec::new(),
            chosen_total: 0,
            replayed: 0,
            left: n,
            failed: Vec::new(),
            failed_total: 0,
        };
        let mut chosen_so_far = 0usize;
        let mut chosen = Vec::new();
        // Written by both closures: a letter refused before its step, and every step's end.
        let tally = std::sync::Mutex::new((0usize, 0usize, Vec::<String>::new()));
        let fail = |position: usize, why: String| {
            let mut t = tally.lock().unwrap_or_else(|p| p.into_inner());
            t.1 += 1;
            if t.2.len() < MAX_LISTED {
                t.2.push(format!("#{position}: {why}"));
            }
        };
        let walked = walk::walk(
            &self.conn,
            &queue,
            n,
            |position, d| {
                let info = DeadLetter::from_properties(&d.properties);
                if chosen_so_far >= limit || !filter.matches(&info, since) {
                    return Step::Keep;
                }
                chosen_so_far += 1;
                if chosen.len() < MAX_LISTED {
                    chosen.push(Chosen {
                        position,
                        source: info.source_queue.clone(),
                        reason: info.reason.clone(),
                        dead_at_ms: info.dead_at_ms,
                        exchange: info.original_exchange.clone(),
                        routing_key: info.original_routing_key.clone(),
                    });
                }
                if dry_run {
                    return Step::Keep;
                }
                if info.original_exchange.is_empty() && info.original_routing_key.is_empty() {
                    fail(
                        position,
                        "no original exchange or routing key recorded".into(),
                    );
                    return Step::Keep;
                }
                Step::Republish {
                    exchange: info.original_exchange,
                    routing_key: info.original_routing_key,
                }
            },
            |position, step, settled| {
                match (step, settled) {
                    (Step::Republish { .. }, Settled::Done) => {
                        tally.lock().unwrap_or_else(|p| p.into_inner()).0 += 1
                    }
                    (Step::Republish { .. }, Settled::Failed(e)) => fail(position, e.clone()),
                    (_, Settled::Failed(e)) => fail(position, format!("not put back: {e}")),
                    _ => {}
                }
                progress(position, n);
            },
        )
        .await;
        walked?;
        let (replayed, failed_total, failed) =
            tally.into_inner().unwrap_or_else(|p| p.into_inner());
        report.chosen = chosen;
        report.chosen_total = chosen_so_far;
        report.replayed = replayed;
        report.failed_total = failed_total;
        report.failed = failed;
        report.left = n.saturating_sub(replayed);
        Ok(report)
    }

    /// Deletes the `expected` oldest letters — the ones an operator counted — and never a
    /// letter that arrived after the count; returns how many were deleted (fewer when the
    /// queue holds fewer).
    pub async fn purge(&self, expected: usize) -> Result<usize, DlqError> {
        let mut deleted = 0;
        let walked = walk::walk(
            &self.conn,
            &self.queue(),
            expected,
            |_, _| Step::Delete,
            |_, _, settled| {
                if matches!(settled, Settled::Done) {
                    deleted += 1;
                }
            },
        )
        .await;
        walked?;
        Ok(deleted)
    }
}

/// Messages ready in `queue` (passive declare).
pub(super) async fn depth(ch: &Channel, queue: &str) -> Result<u32, DlqError> {
    let q = ch
        .queue_declare(
            queue.into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            Default::default(),
        )
        .await
        .map_err(|e| DlqError::NoQueue {
            queue: queue.to_owned(),
            detail: e.to_string(),
        })?;
    Ok(q.message_count())
}

fn describe(position: usize, d: &Delivery, platform: &PlatformArgs) -> Letter {
    let info = DeadLetter::from_properties(&d.properties);
    let mut headers = BTreeMap::new();
    if let Some(h) = d.properties.headers() {
        for (k, v) in h.inner() {
            if !k.as_str().starts_with("x-") {
                headers.insert(
                    k.to_string(),
                    common::wire::text_value(v).unwrap_or_else(|| format!("{v:?}")),
                );
            }
        }
    }
    let (mut decrypted, mut not_decrypted) = (None, None);
    if info.original_exchange.ends_with(".raw") {
        match platform.crypt() {
            // A letter that died with a fixed cause decrypts now; otherwise say why not.
            Ok(crypt) => {
                match decode_parts(&crypt, &info.original_routing_key, &d.properties, &d.data) {
                    Ok(decoded) => {
                        decrypted = serde_json::to_value(decoded.push.fields()).ok();
                    }
                    Err(e) => {
                        not_decrypted = Some(format!(
                            "not decryptable with the configured credentials: {e}"
                        ));
                    }
                }
            }
            Err(e) => {
                not_decrypted = Some(format!("set the platform's credentials to decrypt it: {e}"))
            }
        }
    }
    Letter {
        position,
        source: info.source_queue,
        reason: info.reason,
        detail: info.detail,
        dead_at_ms: info.dead_at_ms,
        original_exchange: info.original_exchange,
        original_routing_key: info.original_routing_key,
        headers,
        body_bytes: d.data.len(),
        body: String::from_utf8_lossy(&d.data).into_owned(),
        decrypted,
        not_decrypted,
    }
}
