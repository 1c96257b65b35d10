//! `workers dlq list|show|replay|purge`: inspect and replay `{ns}.dead` from a terminal. The
//! work is done by [`letters::DeadLetters`], which the console's endpoints use too; this module
//! only parses the command line and prints.

pub mod letters;
pub mod purge;
pub mod reader;

use common::config::{AmqpArgs, NamespaceArgs, PlatformArgs};
pub use letters::{DeadLetters, DlqError, Filter};
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

#[derive(clap::Subcommand, Debug)]
pub enum DlqCommand {
    /// Count dead letters by source queue and reason, with the oldest of each group.
    List,
    /// Print one dead letter, decrypted when it is a raw push and the platform's credentials
    /// are set. Positions are where letters are now: the broker puts the letters a read looked
    /// at back in an order of its own.
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
    let dlq = DeadLetters::connect(&urls, &ns, "wxpipe-dlq").await?;
    let out = match args.command {
        DlqCommand::List => dlq.list().await.map(|l| print_listing(&l)),
        DlqCommand::Show { position, platform } => dlq
            .show(position, &platform)
            .await
            .map(|l| print_letter(&l)),
        DlqCommand::Replay { filter, dry_run } => replay(&dlq, &filter, dry_run).await,
        DlqCommand::Purge { yes } => purge(&dlq, yes).await,
    };
    dlq.close().await;
    Ok(out?)
}

/// An RFC 3339 time of ms since the epoch.
pub fn when(ms: i64) -> String {
    if ms <= 0 || ms == i64::MAX {
        return "unknown time".into();
    }
    humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + Duration::from_millis(ms as u64))
        .to_string()
}

fn print_listing(l: &letters::Listing) -> String {
    if l.groups.is_empty() {
        return format!("{} is empty", l.queue);
    }
    let mut out = format!("{} dead letters in {}\n", l.total, l.queue);
    out.push_str(&format!(
        "{:>7}  {:<28} {:<22} {:<22} {}\n",
        "count", "source", "reason", "oldest", "oldest's detail"
    ));
    for g in &l.groups {
        out.push_str(&format!(
            "{:>7}  {:<28} {:<22} {:<22} {}\n",
            g.count,
            g.source,
            g.reason,
            when(g.oldest_ms),
            g.oldest_detail
        ));
    }
    out.trim_end().to_owned()
}

fn print_letter(l: &letters::Letter) -> String {
    let mut out = format!(
        "source:      {}\nreason:      {}\ndetail:      {}\ndead since:  {}\nfirst sent:  exchange {:?}, routing key {:?}\n",
        l.source,
        l.reason,
        l.detail,
        when(l.dead_at_ms),
        l.original_exchange,
        l.original_routing_key
    );
    if !l.headers.is_empty() {
        out.push_str("headers:\n");
        for (k, v) in &l.headers {
            out.push_str(&format!("  {k}: {v}\n"));
        }
    }
    out.push_str(&format!("body ({} bytes):\n{}\n", l.body_bytes, l.body));
    if let Some(d) = &l.decrypted {
        out.push_str(&format!(
            "decrypted:\n{}\n",
            serde_json::to_string_pretty(d).unwrap_or_default()
        ));
    }
    if let Some(why) = &l.not_decrypted {
        out.push_str(&format!("({why})\n"));
    }
    out.trim_end().to_owned()
}

async fn replay(dlq: &DeadLetters, filter: &Filter, dry_run: bool) -> Result<String, DlqError> {
    let bar = indicatif::ProgressBar::hidden();
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "reading {bar:40} {pos}/{len} letters ({per_sec}, eta {eta})",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let progress = |done: usize, of: usize| {
        if done == 1 && of >= 20 {
            bar.set_length(of as u64);
            bar.set_draw_target(indicatif::ProgressDrawTarget::stderr());
        }
        bar.set_position(done as u64);
    };
    let r = dlq.replay(filter, dry_run, &progress).await?;
    bar.finish_and_clear();
    if r.dry_run {
        let mut out = format!(
            "would replay {} of {} dead letters:\n",
            r.chosen_total, r.total
        );
        for c in &r.chosen {
            out.push_str(&format!(
                "  #{:<5} {} → exchange {:?} key {:?} ({}, {})\n",
                c.position,
                c.source,
                c.exchange,
                c.routing_key,
                c.reason,
                when(c.dead_at_ms)
            ));
        }
        if r.chosen_total > r.chosen.len() {
            out.push_str(&format!(
                "  … and {} more\n",
                r.chosen_total - r.chosen.len()
            ));
        }
        return Ok(out.trim_end().to_owned());
    }
    let mut out = format!(
        "replayed {} dead letters; {} left in {}",
        r.replayed,
        r.left,
        dlq.queue()
    );
    if r.failed_total > 0 {
        out.push_str(&format!(
            "\n{} could not be replayed and stay dead:",
            r.failed_total
        ));
        for f in &r.failed {
            out.push_str(&format!("\n  {f}"));
        }
        if r.failed_total > r.failed.len() {
            out.push_str(&format!(
                "\n  … and {} more",
                r.failed_total - r.failed.len()
            ));
        }
        return Err(DlqError::Invalid(out));
    }
    Ok(out)
}

async fn purge(dlq: &DeadLetters, yes: bool) -> Result<String, DlqError> {
    let n = dlq.depth().await?;
    if !yes {
        return Err(DlqError::Invalid(format!(
            "refusing to delete {n} dead letters without --yes"
        )));
    }
    // Exactly the letters counted: one that dies meanwhile is not deleted unseen.
    let purged = dlq.purge(n as usize).await?;
    Ok(format!(
        "purged {purged} dead letters from {} (the {n} counted; any that died since are kept)",
        dlq.queue()
    ))
}
