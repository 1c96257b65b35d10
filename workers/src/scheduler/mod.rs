//! `workers scheduler`: keeps the component token and every authorizer token fresh, and serves
//! them through the admin API ([`admin`]).
//!
//! Each tick (every second) a replica:
//! 1. refreshes the component token if it is missing or within the margin of its expiry (under
//!    its lock; a missing ticket makes it call `api_start_push_ticket`, rate-limited);
//! 2. restores accounts and refresh tokens from `api_get_authorizer_list` when Redis lost them
//!    (no known account, or an account without a refresh token), and anyway every
//!    `WXPIPE_LIST_SYNC_SECS`;
//! 3. takes the accounts whose due time has come in the buckets it holds (`…:{aNN}:due`, sorted
//!    sets; the replicas divide the buckets with leases, [`partition`]), a bounded number at
//!    once, and refreshes them. Taking an account reschedules it after a backoff first
//!    (1 minute, or a fifth of the margin if shorter, doubling to 1 hour per failed
//!    attempt), so every outcome — success, failure, an account without a refresh token, a
//!    crash — moves it off the head of the set: broken accounts never stall the healthy ones.
//!    Due times carry jitter so that thousands of accounts spread out, and each refresh is
//!    exactly-once across replicas: lock, double-check, fenced write (see
//!    [`common::token::service`]);
//! 4. takes the accounts whose JS-SDK tickets are due (`…:{aNN}:ticket_due`, the same buckets)
//!    and fetches them the same way ([`common::token::tickets`]), on a task of its own so that
//!    tickets never hold back tokens.

pub mod admin;
pub mod console;
pub mod gauges;
pub mod partition;
pub mod releases;
pub mod sync_reply;
pub mod team_keys;

use crate::args::WorkerArgs;
use common::config::ConfigError;
use common::token::service::retry_after;
use common::token::{
    RefreshMode, RefreshOutcome, TicketMode, TicketOutcome, TokenError, TokenService,
};
use futures::StreamExt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// Keep tokens fresh and serve them.
#[derive(clap::Args, Clone)]
pub struct SchedulerArgs {
    #[command(flatten)]
    pub worker: WorkerArgs,
    /// Where the admin/token API listens.
    #[arg(long, env = "WXPIPE_ADMIN_ADDR", default_value = "127.0.0.1:8081")]
    pub admin_addr: SocketAddr,
    /// Bearer token of the admin API (required).
    #[arg(long, env = "WXPIPE_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
    /// Authorizer refreshes in flight at once per replica.
    #[arg(long, env = "WXPIPE_REFRESH_CONCURRENCY", default_value_t = 32)]
    pub refresh_concurrency: usize,
    /// How often the account list is re-read from api_get_authorizer_list anyway.
    #[arg(long, env = "WXPIPE_LIST_SYNC_SECS", default_value_t = 3600)]
    pub list_sync_secs: u64,
    /// Lease of a replica's buckets of accounts: a dead replica's buckets are taken over by
    /// the others within it.
    #[arg(long, env = "WXPIPE_SCHEDULER_LEASE_SECS", default_value_t = 10)]
    pub lease_secs: u64,
    /// The ingress's public base URL: the console shows `{it}/auth`, the link to send to
    /// account administrators, with its QR code (unset: the console says so).
    #[arg(long, env = "WXPIPE_PUBLIC_BASE_URL")]
    pub public_base_url: Option<String>,
}

impl std::fmt::Debug for SchedulerArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SchedulerArgs")
            .field("worker", &self.worker)
            .field("admin_addr", &self.admin_addr)
            .field(
                "admin_token",
                &self.admin_token.as_ref().map(|_| "[redacted]"),
            )
            .field("refresh_concurrency", &self.refresh_concurrency)
            .field("list_sync_secs", &self.list_sync_secs)
            .field("lease_secs", &self.lease_secs)
            .field("public_base_url", &self.public_base_url)
            .finish()
    }
}

/// Validated settings.
#[derive(Clone)]
pub struct SchedulerConfig {
    pub tokens: Arc<TokenService>,
    pub admin_addr: SocketAddr,
    pub admin_token: String,
    pub refresh_concurrency: usize,
    pub list_sync: Duration,
    pub tick: Duration,
    /// See [`SchedulerArgs::lease_secs`].
    pub lease: Duration,
    pub console: console::ConsoleConfig,
    /// The admin API's listener limits.
    pub limits: common::edge::Limits,
}

impl SchedulerArgs {
    pub fn validate(&self) -> Result<SchedulerConfig, ConfigError> {
        let admin_token = match self.admin_token.as_deref().map(str::trim) {
            Some(t) => crate::args::admin_token(t)?,
            None => return Err(ConfigError::Missing("WXPIPE_ADMIN_TOKEN")),
        };
        Ok(SchedulerConfig {
            tokens: Arc::new(self.worker.token_service()?),
            admin_addr: self.admin_addr,
            admin_token,
            refresh_concurrency: self.refresh_concurrency.max(1),
            list_sync: Duration::from_secs(self.list_sync_secs.max(60)),
            tick: Duration::from_secs(1),
            lease: {
                if !(3..=300).contains(&self.lease_secs) {
                    return Err(ConfigError::Invalid {
                        var: "WXPIPE_SCHEDULER_LEASE_SECS",
                        reason: "must be between 3 and 300".into(),
                    });
                }
                Duration::from_secs(self.lease_secs)
            },
            limits: self.worker.edge.limits()?,
            console: console::ConsoleConfig {
                amqp_urls: self.worker.service.amqp.urls()?,
                namespace: self.worker.service.namespace.namespace()?,
                raw_shards: self.worker.service.namespace.raw_shards()?,
                platform: self.worker.service.platform.clone(),
                public_base_url: self
                    .public_base_url
                    .as_deref()
                    .filter(|u| !u.trim().is_empty())
                    .map(|u| common::config::http_url("WXPIPE_PUBLIC_BASE_URL", u))
                    .transpose()?,
            },
        })
    }
}

/// One scheduler replica's loop (without the admin API); returns when `shutdown` turns true.
pub async fn run_loop(config: SchedulerConfig, shutdown: watch::Receiver<bool>) {
    let svc = config.tokens.clone();
    common::beacon::spawn(
        svc.store.pool().clone(),
        svc.store.keys.clone(),
        "scheduler",
        shutdown.clone(),
    );
    let started = std::time::Instant::now();
    let mut partition = partition::Partition::new(
        svc.store.pool().clone(),
        svc.store.keys.clone(),
        config.lease,
    );
    tracing::info!(replica = partition.id(), "scheduler started");
    let mut migrated = false;
    let restoring = ListRestore::default();
    let ticketing = TicketRounds::default();
    let stop = shutdown.clone();
    let mut every = common::shutdown::every(config.tick, shutdown);
    // A round that took a full batch of due accounts is followed by the next one at once
    // (a restore of 100,000 accounts waited a tick between batches of 512).
    let mut more = false;
    loop {
        let go_on = if more {
            tokio::task::yield_now().await;
            !*stop.borrow()
        } else {
            every.tick().await
        };
        if !go_on {
            break;
        }
        if !migrated {
            match common::redis::migrate::run(svc.store.pool(), &svc.store.keys).await {
                Ok(_) => migrated = true,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot check for an older Redis layout");
                    continue;
                }
            }
        }
        let buckets = match partition.tick().await {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(error = %e, "cannot renew this replica's buckets");
                partition.held()
            }
        };
        more = match partition
            .renewing(once(&svc, &config, &buckets, &restoring, &ticketing))
            .await
        {
            Ok(more) => more,
            Err(e) => {
                tracing::warn!(error = %e, "scheduler tick failed");
                metrics::counter!("wxpipe_scheduler_errors_total").increment(1);
                false
            }
        };
        // Profiles (permission sets, types, business info) once a day, by one replica that
        // has run for an hour (a fleet restarting does not re-read every profile at once; each
        // was read when its account authorized).
        if started.elapsed() >= Duration::from_secs(3600)
            && matches!(
                svc.store
                    .rate_limit("profile_sync", PROFILE_EVERY_SECS)
                    .await,
                Ok(true)
            )
        {
            tokio::spawn(sync_profiles(svc.clone()));
        }
    }
    partition.leave().await;
}

/// One tick, refreshing the due accounts of `buckets`; true when it took as many as one round
/// takes (more are probably due).
pub async fn once(
    svc: &Arc<TokenService>,
    config: &SchedulerConfig,
    buckets: &[u16],
    restoring: &ListRestore,
    ticketing: &TicketRounds,
) -> Result<bool, TokenError> {
    // 1. the component token
    let margin = svc.margin.as_secs() as i64;
    let component_due = svc
        .store
        .component_token()
        .await?
        .is_none_or(|t| t.expires_at - common::unix_now() <= margin);
    if component_due {
        match svc.refresh_component_token(RefreshMode::IfDue).await {
            Ok(_) | Err(TokenError::Busy(_)) => {}
            Err(TokenError::NoTicket) => {
                tracing::info!("waiting for a component_verify_ticket");
                return Ok(false);
            }
            // Already logged once when it failed; shown by GET /v1/component/status.
            Err(e @ (TokenError::BackingOff { .. } | TokenError::QuotaExhausted { .. })) => {
                tracing::debug!(error = %e, "component token not refreshed");
            }
            Err(e) => tracing::warn!(error = %e, "component token refresh failed"),
        }
    }

    // 2. restore what Redis lost, and re-sync now and then — on a task of its own, so that
    //    reading a list of 100,000 accounts neither holds back the refreshes of the accounts
    //    already known nor lets this replica's bucket leases lapse.
    let lost = svc.store.known_count().await? == 0;
    let sync_window = if lost { 60 } else { config.list_sync.as_secs() };
    if !restoring.running() && svc.store.rate_limit("list_sync", sync_window).await? {
        restoring.start(svc, config.list_sync);
    }

    // 3. due refreshes
    let taken_at = common::unix_now_ms();
    // Bucket leases are renewed during a round too (`Partition::renewing`); rounds stay short
    // anyway, so that membership changes (taken in between) are seen soon, and full rounds
    // follow each other at once, so a short round costs no throughput.
    let round = config.refresh_concurrency * 4;
    let due = svc
        .store
        .take_due(buckets, round, retry_after(svc.margin), RETRY_AFTER_AT_MOST)
        .await?;
    let full = due.len() >= round;
    let mut missing_refresh_token = false;
    let mut results = futures::stream::iter(due)
        .map(|appid| async move {
            let r = svc
                .refresh_authorizer(&appid, RefreshMode::Taken(taken_at))
                .await;
            (appid, r)
        })
        .buffer_unordered(config.refresh_concurrency);
    while let Some((appid, r)) = results.next().await {
        match r {
            Ok(RefreshOutcome::Refreshed(_)) => {
                tracing::debug!(appid = %appid, "authorizer token refreshed")
            }
            Ok(_) => {}
            Err(TokenError::NoRefreshToken(_)) => {
                metrics::counter!("wxpipe_token_refreshes_total", "kind" => "authorizer", "outcome" => "no_refresh_token").increment(1);
                missing_refresh_token = true;
            }
            Err(TokenError::Revoked(_)) => {
                let _ = svc.store.revoke(&appid).await;
            }
            Err(TokenError::Unknown(_)) => {
                let _ = svc.store.unschedule(&appid).await;
            }
            // The refused refresh token was set aside: WeChat's list may have a newer one.
            Err(TokenError::Wechat(w))
                if w.class() == common::wechat::ErrorClass::RefreshTokenInvalid =>
            {
                missing_refresh_token = true;
            }
            Err(e) => tracing::debug!(appid = %appid, error = %e, "authorizer refresh failed"),
        }
    }
    // Accounts without a (working) refresh token may get one from the list; ask at most every
    // 5 minutes (they are retried with their own backoff meanwhile).
    if missing_refresh_token
        && !restoring.running()
        && svc.store.rate_limit("list_sync_missing", 300).await?
    {
        restoring.start(svc, config.list_sync);
    }

    // 4. due JS-SDK tickets, the same way (their own schedule and backoff) — on a task of
    //    their own, one round at a time, so that fetching thousands of tickets (after a Redis
    //    loss, say) never holds back a token refresh.
    ticketing.start(svc, config, buckets);
    Ok(full)
}

/// At most one task of a kind at a time per replica: [`OneAtATime::begin`] hands out the right
/// to run, given back when the [`Running`] it returns drops — however the task ends, a panic
/// included — so the next tick may start another.
#[derive(Clone, Default)]
struct OneAtATime(Arc<std::sync::atomic::AtomicBool>);

/// The right to run, held by the task ([`OneAtATime`]).
struct Running(Arc<std::sync::atomic::AtomicBool>);

impl Drop for Running {
    fn drop(&mut self) {
        self.0.store(false, std::sync::atomic::Ordering::Release);
    }
}

impl OneAtATime {
    fn running(&self) -> bool {
        self.0.load(std::sync::atomic::Ordering::Acquire)
    }

    /// The right to run, unless a task of this kind runs.
    fn begin(&self) -> Option<Running> {
        (!self.0.swap(true, std::sync::atomic::Ordering::AcqRel)).then(|| Running(self.0.clone()))
    }
}

/// The ticket rounds of one replica: at most one at a time, on its own task; a round that took
/// a full batch is followed by the next at once.
#[derive(Clone, Default)]
pub struct TicketRounds(OneAtATime);

impl TicketRounds {
    fn start(&self, svc: &Arc<TokenService>, config: &SchedulerConfig, buckets: &[u16]) {
        if buckets.is_empty() {
            return;
        }
        let Some(running) = self.0.begin() else {
            return;
        };
        let (svc, config, buckets) = (svc.clone(), config.clone(), buckets.to_vec());
        tokio::spawn(async move {
            let _running = running;
            loop {
                match tickets(&svc, &config, &buckets).await {
                    Ok(true) => tokio::task::yield_now().await,
                    Ok(false) => break,
                    Err(e) => {
                        tracing::warn!(error = %e, "ticket round failed");
                        metrics::counter!("wxpipe_scheduler_errors_total").increment(1);
                        break;
                    }
                }
            }
        });
    }
}

/// Fetches the due tickets of `buckets`' accounts; true when it took a full round.
async fn tickets(
    svc: &Arc<TokenService>,
    config: &SchedulerConfig,
    buckets: &[u16],
) -> Result<bool, TokenError> {
    // A quarter of the tokens' concurrency: tickets are fetched behind the tokens (an account
    // joins the ticket schedule when its token is written), never in their way.
    let concurrency = (config.refresh_concurrency / 4).max(1);
    let round = concurrency * 4;
    let due = svc
        .store
        .take_ticket_due(buckets, round, retry_after(svc.margin), RETRY_AFTER_AT_MOST)
        .await?;
    let full = due.len() >= round;
    let mut results = futures::stream::iter(due)
        .map(|appid| async move {
            let r = svc.refresh_tickets(&appid, TicketMode::Scheduled).await;
            (appid, r)
        })
        .buffer_unordered(concurrency);
    while let Some((appid, r)) = results.next().await {
        match r {
            Ok(TicketOutcome::Fetched(n)) => {
                tracing::debug!(appid = %appid, n, "tickets fetched")
            }
            Ok(_) => {}
            // A revoked or unknown account leaves the ticket schedule with its tickets.
            Err(TokenError::Revoked(_)) => {
                let _ = svc.store.revoke(&appid).await;
            }
            Err(TokenError::Unknown(_)) => {
                let _ = svc.store.unschedule(&appid).await;
            }
            Err(e) => tracing::debug!(appid = %appid, error = %e, "ticket fetch failed"),
        }
    }
    Ok(full)
}

/// The list restore of one replica: at most one at a time, on its own task.
#[derive(Clone, Default)]
pub struct ListRestore(OneAtATime);

impl ListRestore {
    fn running(&self) -> bool {
        self.0.running()
    }

    /// Starts a read of the whole list unless one runs; once it succeeds, the next periodic
    /// re-sync is `list_sync` away (a restore started under the 60 s window of a Redis that
    /// lost its accounts was otherwise followed by a second full read a minute later).
    fn start(&self, svc: &Arc<TokenService>, list_sync: Duration) {
        let Some(running) = self.0.begin() else {
            return;
        };
        let svc = svc.clone();
        tokio::spawn(async move {
            let _running = running;
            let started = std::time::Instant::now();
            match svc.restore_from_list().await {
                Ok(restored) => {
                    tracing::debug!(
                        restored,
                        secs = started.elapsed().as_secs_f64(),
                        "api_get_authorizer_list read"
                    );
                    if let Err(e) = svc
                        .store
                        .hold_rate_limit("list_sync", list_sync.as_secs())
                        .await
                    {
                        tracing::warn!(error = %e, "cannot postpone the next list re-sync");
                    }
                }
                Err(e) => tracing::warn!(error = %e, "api_get_authorizer_list failed"),
            }
        });
    }
}

/// How often every account's profile is fetched again (besides on `updateauthorized`).
const PROFILE_EVERY_SECS: u64 = 86_400;

/// Fetches every active account's profile again, a few at a time.
async fn sync_profiles(svc: Arc<TokenService>) {
    let appids = match svc.store.authorizer_appids().await {
        Ok(a) => a,
        Err(e) => return tracing::warn!(error = %e, "profile sync: cannot list accounts"),
    };
    let states = match svc.store.statuses(&appids).await {
        Ok(s) => s,
        Err(e) => return tracing::warn!(error = %e, "profile sync: cannot read accounts"),
    };
    let active: Vec<_> = appids
        .into_iter()
        .zip(states)
        .filter(|(_, (status, _))| *status == common::token::AuthorizerStatus::Active)
        .map(|(a, _)| a)
        .collect();
    let (mut ok, mut failed) = (0usize, 0usize);
    let mut results = futures::stream::iter(active)
        .map(|appid| {
            let svc = svc.clone();
            async move { svc.refresh_profile(&appid).await }
        })
        .buffer_unordered(4);
    while let Some(r) = results.next().await {
        let outcome = if r.is_ok() { "ok" } else { "failed" };
        metrics::counter!("wxpipe_profile_refreshes_total", "outcome" => outcome).increment(1);
        if r.is_ok() { ok += 1 } else { failed += 1 }
    }
    tracing::info!(ok, failed, "account profiles refreshed");
}

/// A taken account's retries (after [`retry_after`]) double per failed attempt up to this.
const RETRY_AFTER_AT_MOST: Duration = Duration::from_secs(3600);

/// The scheduler role: the loop and the admin API, until `shutdown`.
pub async fn run(config: SchedulerConfig, shutdown: watch::Receiver<bool>) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(config.admin_addr).await?;
    let admin = {
        let config = config.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move { admin::serve(listener, &config, shutdown).await })
    };
    run_loop(config, shutdown).await;
    admin.await.map_err(std::io::Error::other)?
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        scheduler: SchedulerArgs,
    }

    #[test]
    fn debug_never_shows_a_secret() {
        let cli = Cli::parse_from([
            "scheduler",
            "--admin-token",
            "admin-secret-0123456789",
            "--component-secret",
            "app-secret-value",
            "--token",
            "msgtoken",
            "--encoding-aes-key",
            "AESKEYAESKEYAESKEYAESKEYAESKEYAESKEYAESKEY1",
            "--amqp-url",
            "amqp://user:broker-password@127.0.0.1:5672/%2f",
            "--redis-url",
            "redis://:redis-password@127.0.0.1:6379/0",
        ]);
        let shown = format!("{:?}", cli.scheduler);
        for secret in [
            "admin-secret-0123456789",
            "app-secret-value",
            "msgtoken",
            "AESKEYAESKEY",
            "broker-password",
            "redis-password",
        ] {
            assert!(!shown.contains(secret), "{secret} in {shown}");
        }
    }
}
