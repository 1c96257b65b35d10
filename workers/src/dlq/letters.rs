//! The dead-letter queue as data: list, show, replay and purge `{ns}.dead`, behind both
//! `workers dlq` (which prints the results) and the console's JSON endpoints.
//!
//! Reading a queue without losing it: letters are taken with `basic.get` *without*
//! acknowledging them, at most as many as the queue held when the call started (so a requeued
//! letter is never read twice), and each is settled at the end: replayed ones are acked only
//! after their republish is confirmed; every other one is returned to the queue.

use crate::decrypt::decode::decode_parts;
use common::amqp::topology::Part;
use common::amqp::{ConfirmedPublisher, PublisherConfig};
use common::config::PlatformArgs;
use common::ids::Namespace;
use common::wire::dead::DeadLetter;
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicGetOptions, BasicNackOptions, QueueDeclareOptions};
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

/// What a replay did (or, in a dry run, would do).
#[derive(Debug, Clone, Serialize)]
pub struct Replay {
    pub dry_run: bool,
    /// Letters in the queue when it started.
    pub total: usize,
    pub chosen: Vec<Chosen>,
    pub replayed: usize,
    /// Letters left in the queue.
    pub left: usize,
    /// Letters that could not be replayed (they stay dead), each with why.
    pub failed: Vec<String>,
}

/// The dead-letter queue of one namespace.
pub struct DeadLetters {
    conn: Connection,
    urls: Vec<String>,
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
            urls: urls.to_vec(),
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

    /// Counts by source queue and reason, with the oldest of each group.
    pub async fn list(&self) -> Result<Listing, DlqError> {
        let queue = self.queue();
        let ch = self.conn.create_channel().await?;
        let n = depth(&ch, &queue).await?;
        let letters = take(&ch, &queue, n).await?;
        let mut groups: BTreeMap<(String, String), Group> = BTreeMap::new();
        for d in &letters {
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
        }
        give_back(&letters).await;
        Ok(Listing {
            queue,
            total: letters.len(),
            groups: groups.into_values().collect(),
        })
    }

    /// Letter number `position` (1 = the oldest), decrypted when it is a raw push and
    /// `platform` holds the credentials.
    pub async fn show(&self, position: usize, platform: &PlatformArgs) -> Result<Letter, DlqError> {
        if position < 1 {
            return Err(DlqError::Invalid("positions start at 1".into()));
        }
        let queue = self.queue();
        let ch = self.conn.create_channel().await?;
        let n = depth(&ch, &queue).await?;
        if position > n as usize {
            return Err(DlqError::Invalid(format!(
                "{queue} holds {n} letters; there is no #{position}"
            )));
        }
        let letters = take(&ch, &queue, position as u32).await?;
        let result = match letters.get(position - 1) {
            Some(d) => Ok(describe(position, d, platform)),
            None => Err(DlqError::Invalid(format!(
                "letter #{position} is no longer there"
            ))),
        };
        give_back(&letters).await;
        result
    }

    /// Republishes the letters `filter` matches to the exchange and routing key they first had;
    /// each is removed only after its republish is confirmed. `progress` is told how many of
    /// the chosen letters are done, as they are done.
    pub async fn replay(
        &self,
        filter: &Filter,
        dry_run: bool,
        progress: &(dyn Fn(usize, usize) + Sync),
    ) -> Result<Replay, DlqError> {
        let queue = self.queue();
        let since = filter.since_ms()?;
        let ch = self.conn.create_channel().await?;
        let n = depth(&ch, &queue).await?;
        let letters = take(&ch, &queue, n).await?;
        let limit = filter.limit.unwrap_or(usize::MAX);
        let chosen: Vec<(usize, DeadLetter)> = letters
            .iter()
            .enumerate()
            .map(|(i, d)| (i, DeadLetter::from_properties(&d.properties)))
            .filter(|(_, info)| filter.matches(info, since))
            .take(limit)
            .collect();
        let mut report = Replay {
            dry_run,
            total: letters.len(),
            chosen: chosen
                .iter()
                .map(|(i, info)| Chosen {
                    position: i + 1,
                    source: info.source_queue.clone(),
                    reason: info.reason.clone(),
                    dead_at_ms: info.dead_at_ms,
                    exchange: info.original_exchange.clone(),
                    routing_key: info.original_routing_key.clone(),
                })
                .collect(),
            replayed: 0,
            left: letters.len(),
            failed: Vec::new(),
        };
        if dry_run {
            give_back(&letters).await;
            return Ok(report);
        }
        // Republishes are mandatory: a letter whose queue is gone stays dead instead of vanishing.
        let publisher = ConfirmedPublisher::start(PublisherConfig {
            urls: self.urls.clone(),
            namespace: self.ns.clone(),
            connection_name: format!("wxpipe-dlq {} replay", self.ns),
            channels: 1,
            confirm_timeout: Duration::from_secs(5),
            declare: Part::Nothing,
        });
        if !publisher.wait_connected(Duration::from_secs(10)).await {
            give_back(&letters).await;
            return Err(DlqError::NoPublisher);
        }
        let mut settled = vec![false; letters.len()];
        for (done, (i, info)) in chosen.iter().enumerate() {
            let d = &letters[*i];
            if info.original_exchange.is_empty() && info.original_routing_key.is_empty() {
                report.failed.push(format!(
                    "#{}: no original exchange or routing key recorded",
                    i + 1
                ));
                continue;
            }
            let republished = publisher
                .publish(
                    &info.original_exchange,
                    &info.original_routing_key,
                    &d.data,
                    DeadLetter::strip(&d.properties),
                )
                .await;
            match republished {
                Ok(()) => match d.ack(BasicAckOptions::default()).await {
                    Ok(_) => {
                        settled[*i] = true;
                        report.replayed += 1;
                    }
                    // Republished but still in the queue: it will be seen again (at least once).
                    Err(e) => report.failed.push(format!(
                        "#{}: republished, but could not be removed: {e}",
                        i + 1
                    )),
                },
                Err(e) => report.failed.push(format!("#{}: {e}", i + 1)),
            }
            progress(done + 1, chosen.len());
        }
        publisher.close().await;
        let rest: Vec<Delivery> = letters
            .into_iter()
            .zip(settled)
            .filter_map(|(d, done)| (!done).then_some(d))
            .collect();
        give_back(&rest).await;
        report.left = rest.len();
        Ok(report)
    }

    /// Deletes the `expected` letters the queue hands out first — the ones an operator counted
    /// — and never a letter that died after the count ([`super::purge`]); returns how many
    /// were deleted (fewer when the queue held fewer).
    pub async fn purge(&self, expected: usize) -> Result<usize, DlqError> {
        super::purge::first(&self.conn, &self.queue(), expected).await
    }
}

/// Messages in `queue` (passive declare).
async fn depth(ch: &Channel, queue: &str) -> Result<u32, DlqError> {
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

/// Takes up to `max` letters without acknowledging them. A quorum queue can answer "empty"
/// for a moment while letters are being returned to it (by an earlier call, or a closing
/// channel), so an early "empty" is retried for up to a second.
async fn take(ch: &Channel, queue: &str, max: u32) -> Result<Vec<Delivery>, DlqError> {
    let mut out = Vec::new();
    let mut empty_answers = 0;
    while out.len() < max as usize {
        match ch
            .basic_get(queue.into(), BasicGetOptions { no_ack: false })
            .await?
        {
            Some(msg) => out.push(msg.delivery),
            None if empty_answers < 20 => {
                empty_answers += 1;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            None => break,
        }
    }
    Ok(out)
}

/// Returns letters to the queue.
async fn give_back(letters: &[Delivery]) {
    for d in letters {
        let _ = d
            .nack(BasicNackOptions {
                requeue: true,
                ..Default::default()
            })
            .await;
    }
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
