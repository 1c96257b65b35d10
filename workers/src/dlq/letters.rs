//! The dead-letter queue as data: list, show, replay and purge `{ns}.dead`, behind both
//! `workers dlq` (which prints the results) and the console's JSON endpoints.
//!
//! Reading a queue without losing it, in bounded memory: a [`Reader`] has the letters the queue
//! held when the call started delivered *unacknowledged*, a window per consumer, and keeps none
//! of them; replayed ones are acked one by one after their republish is
//! confirmed; at the end every other one is returned to the queue at once
//! ([`super::reader`]). A report lists at most [`SHOWN`] letters and counts them all.

use super::reader::{Reader, close, depth};
use crate::decrypt::decode::decode_parts;
use common::amqp::topology::Part;
use common::amqp::{ConfirmedPublisher, PublisherConfig};
use common::config::PlatformArgs;
use common::ids::Namespace;
use common::wire::dead::DeadLetter;
use lapin::Connection;
use lapin::message::Delivery;
use lapin::options::BasicAckOptions;
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

/// Letters a report names one by one, at most (chosen for a replay, failed): it counts them all.
pub const SHOWN: usize = 1_000;

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
    /// Letters looked at: those in the queue when it started.
    pub total: usize,
    /// The first [`SHOWN`] letters chosen.
    pub chosen: Vec<Chosen>,
    /// Letters chosen, in all.
    pub chosen_total: usize,
    pub replayed: usize,
    /// Letters left in the queue.
    pub left: usize,
    /// The first [`SHOWN`] letters that could not be replayed (they stay dead), each with why.
    pub failed: Vec<String>,
    /// Letters that could not be replayed, in all.
    pub failed_total: usize,
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
        close(ch).await;
        n
    }

    /// Counts by source queue and reason, with the oldest of each group.
    pub async fn list(&self) -> Result<Listing, DlqError> {
        let queue = self.queue();
        let n = self.depth().await?;
        let mut reader = Reader::new(&self.conn, &queue, n as usize, n as usize);
        let mut groups: BTreeMap<(String, String), Group> = BTreeMap::new();
        let mut total = 0;
        let read = loop {
            let d = match reader.next().await {
                Ok(Some(d)) => d,
                Ok(None) => break Ok(()),
                Err(e) => break Err(e),
            };
            total += 1;
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
        };
        reader.give_back().await;
        read?;
        Ok(Listing {
            queue,
            total,
            groups: groups.into_values().collect(),
        })
    }

    /// Letter number `position` (1 = the first the queue hands out now), decrypted when it is a raw push and
    /// `platform` holds the credentials.
    pub async fn show(&self, position: usize, platform: &PlatformArgs) -> Result<Letter, DlqError> {
        if position < 1 {
            return Err(DlqError::Invalid("positions start at 1".into()));
        }
        let queue = self.queue();
        let n = self.depth().await?;
        if position > n as usize {
            return Err(DlqError::Invalid(format!(
                "{queue} holds {n} letters; there is no #{position}"
            )));
        }
        let mut reader = Reader::new(&self.conn, &queue, position, n as usize);
        let mut seen = 0;
        let found = loop {
            match reader.next().await {
                Ok(Some(d)) => {
                    seen += 1;
                    if seen == position {
                        break Ok(describe(position, &d, platform));
                    }
                }
                Ok(None) => {
                    break Err(DlqError::Invalid(format!(
                        "letter #{position} is no longer there"
                    )));
                }
                Err(e) => break Err(e),
            }
        };
        reader.give_back().await;
        found
    }

    /// Republishes the letters `filter` matches to the exchange and routing key they first had;
    /// each is removed only after its republish is confirmed. `progress` is told how many
    /// letters of the queue were looked at, of how many, as they are.
    pub async fn replay(
        &self,
        filter: &Filter,
        dry_run: bool,
        progress: &(dyn Fn(usize, usize) + Sync),
    ) -> Result<Replay, DlqError> {
        let queue = self.queue();
        let since = filter.since_ms()?;
        let limit = filter.limit.unwrap_or(usize::MAX);
        // Republishes are mandatory: a letter whose queue is gone stays dead instead of vanishing.
        let publisher = if dry_run {
            None
        } else {
            let p = ConfirmedPublisher::start(PublisherConfig {
                urls: self.urls.clone(),
                namespace: self.ns.clone(),
                connection_name: format!("wxpipe-dlq {} replay", self.ns),
                channels: 1,
                confirm_timeout: Duration::from_secs(5),
                declare: Part::Nothing,
            });
            if !p.wait_connected(Duration::from_secs(10)).await {
                p.close().await;
                return Err(DlqError::NoPublisher);
            }
            Some(p)
        };
        let (n, mut reader) = match self.depth().await {
            Ok(n) => (
                n as usize,
                Reader::new(&self.conn, &queue, n as usize, n as usize),
            ),
            Err(e) => {
                if let Some(p) = publisher {
                    p.close().await;
                }
                return Err(e);
            }
        };
        let mut report = Replay {
            dry_run,
            total: 0,
            chosen: Vec::new(),
            chosen_total: 0,
            replayed: 0,
            left: 0,
            failed: Vec::new(),
            failed_total: 0,
        };
        let read = loop {
            let d = match reader.next().await {
                Ok(Some(d)) => d,
                Ok(None) => break Ok(()),
                Err(e) => break Err(e),
            };
            report.total += 1;
            let position = report.total;
            progress(position, n);
            let info = DeadLetter::from_properties(&d.properties);
            if report.chosen_total >= limit || !filter.matches(&info, since) {
                continue;
            }
            report.chosen_total += 1;
            if report.chosen.len() < SHOWN {
                report.chosen.push(Chosen {
                    position,
                    source: info.source_queue.clone(),
                    reason: info.reason.clone(),
                    dead_at_ms: info.dead_at_ms,
                    exchange: info.original_exchange.clone(),
                    routing_key: info.original_routing_key.clone(),
                });
            }
            let Some(publisher) = &publisher else {
                continue;
            };
            let outcome =
                if info.original_exchange.is_empty() && info.original_routing_key.is_empty() {
                    Err("no original exchange or routing key recorded".to_owned())
                } else {
                    match publisher
                        .publish(
                            &info.original_exchange,
                            &info.original_routing_key,
                            &d.data,
                            DeadLetter::strip(&d.properties),
                        )
                        .await
                    {
                        Ok(()) => match d.ack(BasicAckOptions::default()).await {
                            Ok(_) => {
                                reader.settled();
                                report.replayed += 1;
                                Ok(())
                            }
                            // Republished but still in the queue: it will be seen again (at least once).
                            Err(e) => Err(format!("republished, but could not be removed: {e}")),
                        },
                        Err(e) => Err(e.to_string()),
                    }
                };
            if let Err(why) = outcome {
                report.failed_total += 1;
                if report.failed.len() < SHOWN {
                    report.failed.push(format!("#{position}: {why}"));
                }
            }
        };
        reader.give_back().await;
        if let Some(p) = publisher {
            p.close().await;
        }
        report.left = self.depth().await.map(|n| n as usize).unwrap_or(0);
        read?;
        Ok(report)
    }

    /// Deletes the `expected` letters the queue hands out first — the ones an operator counted
    /// — and never a letter that died after the count ([`super::purge`]); returns how many
    /// were deleted (fewer when the queue held fewer).
    pub async fn purge(&self, expected: usize) -> Result<usize, DlqError> {
        super::purge::first(&self.conn, &self.queue(), expected).await
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
