//! `workers dlq list|show|replay|purge`: inspect and replay `{ns}.dead`.
//!
//! Reading a queue without losing it: the tool takes messages with `basic.get` *without*
//! acknowledging them, at most as many as the queue held when it started (so a requeued message
//! is never read twice), and settles each one at the end: replayed ones are acked only after
//! their republish is confirmed; every other one is returned to the queue.

use crate::decrypt::decode::decode_parts;
use common::amqp::topology::Part;
use common::amqp::{ConfirmedPublisher, PublisherConfig};
use common::config::{AmqpArgs, NamespaceArgs, PlatformArgs};
use common::ids::Namespace;
use common::wire::dead::DeadLetter;
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicGetOptions, BasicNackOptions, QueueDeclareOptions, QueuePurgeOptions,
};
use lapin::{Channel, Connection};
use std::collections::BTreeMap;
use std::time::Duration;

/// Inspect and replay dead letters.
#[derive(clap::Args, Debug)]
pub struct DlqArgs {
    #[command(flatten)]
    pub amqp: AmqpArgs,
    #[command(flatten)]
    pub namespace: NamespaceArgs,
    #[command(subcommand)]
    pub command: DlqCommand,
}

/// Which dead letters a command applies to.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct Filter {
    /// Only letters dead-lettered from this queue (e.g. `wxpipe.raw`).
    #[arg(long)]
    pub source: Option<String>,
    /// Only letters with this reason (e.g. `appid_mismatch`, `redis_unavailable`).
    #[arg(long)]
    pub reason: Option<String>,
    /// Only letters dead-lettered since then: a duration (`2h`, `30m`) or an RFC 3339 time.
    #[arg(long)]
    pub since: Option<String>,
    /// At most this many letters.
    #[arg(long)]
    pub limit: Option<usize>,
}

#[derive(clap::Subcommand, Debug)]
pub enum DlqCommand {
    /// Count dead letters by source queue and reason, with the oldest of each group.
    List,
    /// Print one dead letter (1 = the oldest), decrypted when it is a raw push and the
    /// platform's credentials are set.
    Show {
        /// Position in the queue, from 1.
        position: usize,
        #[command(flatten)]
        platform: PlatformArgs,
    },
    /// Republish matching letters to the exchange and routing key they first had; each is
    /// removed only after its republish is confirmed.
    Replay {
        #[command(flatten)]
        filter: Filter,
        /// Show what would be replayed; change nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Delete every dead letter.
    Purge {
        /// Really delete them.
        #[arg(long)]
        yes: bool,
    },
}

/// Runs a dlq command; returns what it prints.
pub async fn run(args: DlqArgs) -> anyhow::Result<String> {
    let ns = args.namespace.namespace()?;
    let urls = args.amqp.urls()?;
    let conn = common::amqp::connect_any(&urls, 0, &format!("wxpipe-dlq {ns}")).await?;
    let queue = ns.dead();
    let out = match args.command {
        DlqCommand::List => list(&conn, &queue).await,
        DlqCommand::Show { position, platform } => show(&conn, &queue, position, &platform).await,
        DlqCommand::Replay { filter, dry_run } => replay(&conn, &urls, &ns, &filter, dry_run).await,
        DlqCommand::Purge { yes } => purge(&conn, &queue, yes).await,
    };
    let _ = conn.close(200, "dlq done".into()).await;
    out
}

/// Messages in `queue` (passive declare).
async fn depth(ch: &Channel, queue: &str) -> anyhow::Result<u32> {
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
        .map_err(|e| {
            anyhow::anyhow!(
                "queue {queue} is not there ({e}); has any wxpipe process run in this namespace?"
            )
        })?;
    Ok(q.message_count())
}

/// Takes up to `max` letters without acknowledging them. A quorum queue can answer "empty"
/// for a moment while letters are being returned to it (by an earlier run of this tool, or a
/// closing channel), so an early "empty" is retried for up to a second.
async fn take(ch: &Channel, queue: &str, max: u32) -> anyhow::Result<Vec<Delivery>> {
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

fn when(ms: i64) -> String {
    if ms <= 0 {
        return "unknown time".into();
    }
    humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + Duration::from_millis(ms as u64))
        .to_string()
}

async fn list(conn: &Connection, queue: &str) -> anyhow::Result<String> {
    let ch = conn.create_channel().await?;
    let n = depth(&ch, queue).await?;
    let letters = take(&ch, queue, n).await?;
    let mut groups: BTreeMap<(String, String), (usize, i64, String)> = BTreeMap::new();
    for d in &letters {
        let info = DeadLetter::from_properties(&d.properties);
        let g =
            groups
                .entry((info.source_queue, info.reason))
                .or_insert((0, i64::MAX, String::new()));
        g.0 += 1;
        if info.dead_at_ms < g.1 {
            g.1 = info.dead_at_ms;
            g.2 = info.detail;
        }
    }
    give_back(&letters).await;
    if groups.is_empty() {
        return Ok(format!("{queue} is empty"));
    }
    let mut out = format!("{} dead letters in {queue}\n", letters.len());
    out.push_str(&format!(
        "{:>7}  {:<28} {:<22} {:<22} {}\n",
        "count", "source", "reason", "oldest", "oldest's detail"
    ));
    for ((source, reason), (count, oldest, detail)) in groups {
        out.push_str(&format!(
            "{count:>7}  {source:<28} {reason:<22} {:<22} {detail}\n",
            when(oldest)
        ));
    }
    Ok(out.trim_end().to_owned())
}

async fn show(
    conn: &Connection,
    queue: &str,
    position: usize,
    platform: &PlatformArgs,
) -> anyhow::Result<String> {
    anyhow::ensure!(position >= 1, "positions start at 1");
    let ch = conn.create_channel().await?;
    let n = depth(&ch, queue).await?;
    anyhow::ensure!(
        position <= n as usize,
        "{queue} holds {n} letters; there is no #{position}"
    );
    let letters = take(&ch, queue, position as u32).await?;
    let result = match letters.get(position - 1) {
        Some(d) => Ok(describe(d, platform)),
        None => Err(anyhow::anyhow!("letter #{position} is no longer there")),
    };
    give_back(&letters).await;
    result
}

fn describe(d: &Delivery, platform: &PlatformArgs) -> String {
    let info = DeadLetter::from_properties(&d.properties);
    let mut out = format!(
        "source:      {}\nreason:      {}\ndetail:      {}\ndead since:  {}\nfirst sent:  exchange {:?}, routing key {:?}\n",
        info.source_queue,
        info.reason,
        info.detail,
        when(info.dead_at_ms),
        info.original_exchange,
        info.original_routing_key
    );
    if let Some(h) = d.properties.headers() {
        out.push_str("headers:\n");
        for (k, v) in h.inner() {
            if !k.as_str().starts_with("x-") {
                out.push_str(&format!(
                    "  {k}: {}\n",
                    common::wire::text_value(v).unwrap_or_else(|| format!("{v:?}"))
                ));
            }
        }
    }
    out.push_str(&format!(
        "body ({} bytes):\n{}\n",
        d.data.len(),
        String::from_utf8_lossy(&d.data)
    ));
    if info.original_exchange.ends_with(".raw") {
        match platform.crypt() {
            Ok(crypt) => {
                // A message that died with a fixed cause decrypts now; otherwise say why not.
                match decode_parts(&crypt, &info.original_routing_key, &d.properties, &d.data) {
                    Ok(decoded) => out.push_str(&format!(
                        "decrypted:\n{}\n",
                        serde_json::to_string_pretty(decoded.push.fields()).unwrap_or_default()
                    )),
                    Err(e) => out.push_str(&format!(
                        "not decryptable with the configured credentials: {e}\n"
                    )),
                }
            }
            Err(e) => out.push_str(&format!(
                "(set the platform's credentials to decrypt it: {e})\n"
            )),
        }
    }
    out.trim_end().to_owned()
}

/// Parses `--since`.
fn since_ms(since: &str) -> anyhow::Result<i64> {
    let now_ms = common::unix_now_ms();
    if let Ok(d) = humantime::parse_duration(since) {
        return Ok(now_ms - d.as_millis() as i64);
    }
    let t = humantime::parse_rfc3339_weak(since).map_err(|_| {
        anyhow::anyhow!("--since {since:?}: expected a duration like 2h or an RFC 3339 time")
    })?;
    Ok(t.duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0))
}

impl Filter {
    fn matches(&self, info: &DeadLetter, since: Option<i64>) -> bool {
        self.source.as_ref().is_none_or(|s| *s == info.source_queue)
            && self.reason.as_ref().is_none_or(|r| *r == info.reason)
            && since.is_none_or(|t| info.dead_at_ms >= t)
    }
}

async fn replay(
    conn: &Connection,
    urls: &[String],
    ns: &Namespace,
    filter: &Filter,
    dry_run: bool,
) -> anyhow::Result<String> {
    let queue = &ns.dead();
    let since = filter.since.as_deref().map(since_ms).transpose()?;
    let ch = conn.create_channel().await?;
    let n = depth(&ch, queue).await?;
    let letters = take(&ch, queue, n).await?;
    let limit = filter.limit.unwrap_or(usize::MAX);
    let chosen: Vec<(usize, DeadLetter)> = letters
        .iter()
        .enumerate()
        .map(|(i, d)| (i, DeadLetter::from_properties(&d.properties)))
        .filter(|(_, info)| filter.matches(info, since))
        .take(limit)
        .collect();
    if dry_run {
        let mut out = format!(
            "would replay {} of {} dead letters:\n",
            chosen.len(),
            letters.len()
        );
        for (i, info) in &chosen {
            out.push_str(&format!(
                "  #{:<5} {} → exchange {:?} key {:?} ({}, {})\n",
                i + 1,
                info.source_queue,
                info.original_exchange,
                info.original_routing_key,
                info.reason,
                when(info.dead_at_ms)
            ));
        }
        give_back(&letters).await;
        return Ok(out.trim_end().to_owned());
    }
    // Republishes are mandatory: a letter whose queue is gone stays dead instead of vanishing.
    let publisher = ConfirmedPublisher::start(PublisherConfig {
        urls: urls.to_vec(),
        namespace: ns.clone(),
        connection_name: format!("wxpipe-dlq {ns} replay"),
        channels: 1,
        confirm_timeout: Duration::from_secs(5),
        declare: Part::Nothing,
    });
    if !publisher.wait_connected(Duration::from_secs(10)).await {
        give_back(&letters).await;
        anyhow::bail!("could not open a publishing connection to RabbitMQ within 10 s");
    }
    let bar = indicatif::ProgressBar::new(chosen.len() as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "replaying {bar:40} {pos}/{len} ({per_sec}, eta {eta})",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    if chosen.len() < 20 {
        bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    let mut settled = vec![false; letters.len()];
    let (mut replayed, mut failed) = (0usize, Vec::new());
    for (i, info) in &chosen {
        let d = &letters[*i];
        if info.original_exchange.is_empty() && info.original_routing_key.is_empty() {
            failed.push(format!(
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
            Ok(()) => {
                d.ack(BasicAckOptions::default()).await?;
                settled[*i] = true;
                replayed += 1;
            }
            Err(e) => failed.push(format!("#{}: {e}", i + 1)),
        }
        bar.inc(1);
    }
    bar.finish_and_clear();
    publisher.close().await;
    let rest: Vec<Delivery> = letters
        .into_iter()
        .zip(settled)
        .filter_map(|(d, done)| (!done).then_some(d))
        .collect();
    give_back(&rest).await;
    let mut out = format!(
        "replayed {replayed} dead letters; {} left in {queue}",
        rest.len()
    );
    if !failed.is_empty() {
        out.push_str(&format!(
            "\n{} could not be replayed and stay dead:",
            failed.len()
        ));
        for f in &failed {
            out.push_str(&format!("\n  {f}"));
        }
        anyhow::bail!(out);
    }
    Ok(out)
}

async fn purge(conn: &Connection, queue: &str, yes: bool) -> anyhow::Result<String> {
    let ch = conn.create_channel().await?;
    let n = depth(&ch, queue).await?;
    anyhow::ensure!(yes, "refusing to delete {n} dead letters without --yes");
    let purged = ch
        .queue_purge(queue.into(), QueuePurgeOptions::default())
        .await?;
    Ok(format!("purged {purged} dead letters from {queue}"))
}
