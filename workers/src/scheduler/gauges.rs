//! The platform's state as Prometheus gauges, set by every scheduler replica every
//! [`EVERY`] (alerts take the `max` or `min` over replicas): the ticket's age, the component
//! token's headroom, accounts by status, the smallest token headroom of an `active` account,
//! the depth of the raw, business and dead queues, and the open release jobs. The two about accounts come from their
//! summary, which one replica per interval makes for all (`TokenStore::account_summary`).

use super::console::ConsoleConfig;
use common::token::{AuthorizerStatus, TokenService};
use lapin::options::QueueDeclareOptions;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

pub const EVERY: Duration = Duration::from_secs(15);

/// Sets the gauges every [`EVERY`] until `shutdown`.
pub async fn run(
    tokens: Arc<TokenService>,
    console: ConsoleConfig,
    shutdown: watch::Receiver<bool>,
) {
    let mut broker: Option<lapin::Connection> = None;
    let mut every = common::shutdown::every(EVERY, shutdown);
    while every.tick().await {
        if let Err(e) = platform(&tokens).await {
            tracing::debug!(error = %e, "platform gauges not updated");
        }
        if let Err(e) = releases(&tokens).await {
            tracing::debug!(error = %e, "release gauges not updated");
        }
        if let Err(e) = queues(&mut broker, &console).await {
            tracing::debug!(error = %e, "queue gauges not updated");
            broker = None;
        }
    }
    if let Some(c) = broker {
        let _ = c.close(200, "shutting down".into()).await;
    }
}

async fn platform(tokens: &TokenService) -> Result<(), common::redis::RedisError> {
    let store = &tokens.store;
    let now = common::unix_now();
    let ticket = store.ticket().await?.is_some();
    metrics::gauge!("wxpipe_ticket_present").set(if ticket { 1.0 } else { 0.0 });
    if let Some(at) = store.ticket_at().await? {
        metrics::gauge!("wxpipe_ticket_age_seconds")
            .set((common::unix_now_ms() - at).max(0) as f64 / 1000.0);
    }
    let component = store
        .component_token()
        .await?
        .map(|t| (t.expires_at - now).max(0))
        .unwrap_or(0);
    metrics::gauge!("wxpipe_component_token_expires_in_seconds").set(component as f64);

    // Made by one replica per interval and shared (`…:gauges`), not read from every account.
    let summary = store.account_summary(EVERY).await?;
    for status in [
        AuthorizerStatus::Active,
        AuthorizerStatus::RefreshFailing,
        AuthorizerStatus::Revoked,
    ] {
        metrics::gauge!("wxpipe_authorizers", "status" => status.as_str())
            .set(summary.count(status) as f64);
    }
    // Accounts marked refresh_failing have their own alert; this one is for the healthy.
    if let Some(e) = summary.earliest_active_expiry {
        metrics::gauge!("wxpipe_authorizer_token_expires_in_min_seconds")
            .set((e - now).max(0) as f64);
    }
    Ok(())
}

/// How long past its due time an account of a running job counts as overdue (no replica of
/// the releases role works on it).
pub const OVERDUE: Duration = Duration::from_secs(300);

/// Open release jobs by status, their accounts by state, and the overdue accounts of the
/// running ones.
async fn releases(tokens: &TokenService) -> Result<(), common::redis::RedisError> {
    use common::releases::{AccountState, JobStatus, ReleaseStore};
    let store = ReleaseStore::new(tokens.store.pool().clone(), &tokens.store.keys);
    let (mut running, mut paused, mut overdue) = (0u64, 0u64, 0u64);
    let mut accounts = std::collections::BTreeMap::<AccountState, u64>::new();
    let before = common::unix_now_ms() - OVERDUE.as_millis() as i64;
    for id in store.open_jobs().await? {
        let Some(job) = store.job(&id).await? else {
            continue;
        };
        match job.status {
            JobStatus::Running => {
                running += 1;
                overdue += store.overdue(&id, before).await?;
            }
            JobStatus::Paused => paused += 1,
            _ => {}
        }
        for (state, n) in store.counts(&id).await? {
            *accounts.entry(state).or_default() += n;
        }
    }
    metrics::gauge!("wxpipe_release_jobs", "status" => "running").set(running as f64);
    metrics::gauge!("wxpipe_release_jobs", "status" => "paused").set(paused as f64);
    for state in AccountState::ALL {
        metrics::gauge!("wxpipe_release_accounts", "state" => state.as_str())
            .set(accounts.get(&state).copied().unwrap_or(0) as f64);
    }
    metrics::gauge!("wxpipe_release_overdue_accounts").set(overdue as f64);
    Ok(())
}

async fn queues(
    broker: &mut Option<lapin::Connection>,
    console: &ConsoleConfig,
) -> Result<(), lapin::Error> {
    if broker.as_ref().is_none_or(|c| !c.status().connected()) {
        let name = format!("wxpipe-scheduler {} gauges", console.namespace);
        match common::amqp::connect_any(&console.amqp_urls, 0, &name).await {
            Ok(c) => {
                // Whoever connects declares the topology (ARCHITECTURE, invariants): the queues
                // read below then exist, and a passive declare never closes a channel.
                let part = crate::role::Role::declare(console.raw_shards);
                if let Err(e) = common::amqp::topology::declare(&c, &console.namespace, &part).await
                {
                    tracing::debug!(error = %e, "topology not declared for the queue gauges");
                    return Ok(());
                }
                *broker = Some(c)
            }
            Err(e) => {
                tracing::debug!(error = %e, "no broker for the queue gauges");
                return Ok(());
            }
        }
    }
    let Some(conn) = broker.as_ref() else {
        return Ok(());
    };
    let ns = &console.namespace;
    let mut watched = console.raw_shards.queues(ns);
    watched.extend([ns.business(), ns.dead()]);
    for queue in watched {
        // A passive declare of a missing queue closes the channel: one channel per queue.
        let ch = conn.create_channel().await?;
        let declared = ch
            .queue_declare(
                queue.as_str().into(),
                QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                Default::default(),
            )
            .await;
        if let Ok(q) = declared {
            metrics::gauge!("wxpipe_queue_messages", "queue" => queue.clone())
                .set(q.message_count() as f64);
            metrics::gauge!("wxpipe_queue_consumers", "queue" => queue.clone())
                .set(q.consumer_count() as f64);
            let _ = ch.close(200, "done".into()).await;
        }
    }
    Ok(())
}
