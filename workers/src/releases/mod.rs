//! `workers releases`: runs mini-program fleet releases (docs/releases.md). Any number of
//! replicas share the jobs in Redis:
//!
//! * [`step`] — one account's next WeChat call, made once across replicas;
//! * [`audits`] — audit results pushed by WeChat, from the role's queue `{ns}.releases`;
//! * [`events`] — `release.<state>` events on `{ns}.events`, from each job's outbox.
//!
//! Every tick the role takes the due accounts of each running job (within the job's
//! concurrency, across replicas), steps them, publishes the job's events, and finishes or
//! pauses jobs (`stop_when_failed_over`).

pub mod audits;
pub mod events;
pub mod step;

use crate::args::WorkerArgs;
use common::amqp::ConfirmedPublisher;
use common::config::ConfigError;
use common::ids::Namespace;
use common::releases::{AccountState, Job, JobStatus, ReleaseMode, ReleaseStore};
use common::token::TokenService;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

pub use step::Settings;

/// Run release jobs.
#[derive(clap::Args, Debug, Clone)]
pub struct ReleasesArgs {
    #[command(flatten)]
    pub worker: WorkerArgs,
    #[command(flatten)]
    pub timing: TimingArgs,
}

/// How the releases role paces itself (also read by `workers all`).
#[derive(clap::Args, Debug, Clone)]
pub struct TimingArgs {
    /// Seconds after a submit (and between polls) that an audit's status is read with
    /// `wxa/get_auditstatus` when WeChat's push has not arrived.
    #[arg(long, env = "WXPIPE_RELEASES_AUDIT_POLL_SECS", default_value_t = 1800)]
    pub releases_audit_poll_secs: u64,
    /// Seconds between readings of an exhausted audit quota (`wxa/queryquota`).
    #[arg(
        long,
        env = "WXPIPE_RELEASES_QUOTA_RECHECK_SECS",
        default_value_t = 600
    )]
    pub releases_quota_recheck_secs: u64,
    /// Milliseconds before a step that failed transiently is tried again (doubling, at most
    /// 30 minutes).
    #[arg(long, env = "WXPIPE_RELEASES_RETRY_MS", default_value_t = 30_000)]
    pub releases_retry_ms: u64,
    /// Seconds to wait when WeChat's code privacy check still runs after a commit (61039).
    #[arg(long, env = "WXPIPE_RELEASES_PRIVACY_RETRY_SECS", default_value_t = 30)]
    pub releases_privacy_retry_secs: u64,
    /// Seconds a replica holds an account it works on: another replica takes it over only after
    /// this (at least 15, beyond a WeChat call's 10 s timeout, so that a slow call is never
    /// made twice).
    #[arg(long, env = "WXPIPE_RELEASES_LEASE_SECS", default_value_t = 60,
          value_parser = clap::value_parser!(u64).range(15..=3600))]
    pub releases_lease_secs: u64,
    /// Milliseconds between looks for due accounts.
    #[arg(long, env = "WXPIPE_RELEASES_TICK_MS", default_value_t = 500)]
    pub releases_tick_ms: u64,
}

/// What the steps share.
pub struct Ctx {
    pub tokens: Arc<TokenService>,
    pub store: ReleaseStore,
    pub settings: Settings,
}

/// Validated settings.
#[derive(Clone)]
pub struct ReleasesConfig {
    pub tokens: Arc<TokenService>,
    pub namespace: Namespace,
    pub raw_shards: common::amqp::RawShards,
    pub amqp_urls: Vec<String>,
    pub settings: Settings,
}

impl TimingArgs {
    pub fn settings(&self) -> Result<Settings, ConfigError> {
        for (var, v) in [
            (
                "WXPIPE_RELEASES_AUDIT_POLL_SECS",
                self.releases_audit_poll_secs,
            ),
            (
                "WXPIPE_RELEASES_QUOTA_RECHECK_SECS",
                self.releases_quota_recheck_secs,
            ),
            ("WXPIPE_RELEASES_RETRY_MS", self.releases_retry_ms),
            (
                "WXPIPE_RELEASES_PRIVACY_RETRY_SECS",
                self.releases_privacy_retry_secs,
            ),
            ("WXPIPE_RELEASES_TICK_MS", self.releases_tick_ms),
        ] {
            common::config::positive(var, v)?;
        }
        Ok(Settings {
            lease: Duration::from_secs(self.releases_lease_secs),
            audit_poll: Duration::from_secs(self.releases_audit_poll_secs),
            quota_recheck: Duration::from_secs(self.releases_quota_recheck_secs),
            retry_base: Duration::from_millis(self.releases_retry_ms),
            privacy_retry: Duration::from_secs(self.releases_privacy_retry_secs),
            tick: Duration::from_millis(self.releases_tick_ms),
        })
    }

    /// The role's settings with `worker`'s platform, broker and Redis.
    pub fn validate(&self, worker: &WorkerArgs) -> Result<ReleasesConfig, ConfigError> {
        Ok(ReleasesConfig {
            tokens: Arc::new(worker.token_service()?),
            namespace: worker.service.namespace.namespace()?,
            raw_shards: worker.service.namespace.raw_shards()?,
            amqp_urls: worker.service.amqp.urls()?,
            settings: self.settings()?,
        })
    }
}

impl ReleasesArgs {
    pub fn validate(&self) -> Result<ReleasesConfig, ConfigError> {
        self.timing.validate(&self.worker)
    }
}

/// Runs the role until `shutdown`: the audit consumer and the job loop.
pub async fn run(config: ReleasesConfig, shutdown: watch::Receiver<bool>) {
    let store = ReleaseStore::new(
        config.tokens.store.pool().clone(),
        &config.tokens.store.keys,
    );
    common::beacon::spawn(
        config.tokens.store.pool().clone(),
        config.tokens.store.keys.clone(),
        "releases",
        shutdown.clone(),
    );
    let role = crate::role::Role {
        name: "releases",
        namespace: config.namespace.clone(),
        raw_shards: config.raw_shards,
        urls: config.amqp_urls.clone(),
        queues: vec![config.namespace.releases()],
        prefetch: 16,
        linger: Duration::ZERO,
        own_queues: vec![(config.namespace.releases(), audits::bindings())],
    };
    let publisher = role.publisher(1, Duration::from_secs(5));
    let handler = Arc::new(audits::AuditHandler {
        store: store.clone(),
    });
    let consumer = tokio::spawn(role.consume(handler, publisher.clone(), shutdown.clone()));
    let ctx = Arc::new(Ctx {
        tokens: config.tokens.clone(),
        store,
        settings: config.settings.clone(),
    });
    jobs_loop(ctx, publisher, config.namespace.events(), shutdown).await;
    let _ = consumer.await;
}

/// Steps in flight in this replica, per job.
type InFlight = HashMap<String, tokio::task::JoinSet<()>>;

async fn jobs_loop(
    ctx: Arc<Ctx>,
    publisher: ConfirmedPublisher,
    exchange: String,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut in_flight: InFlight = HashMap::new();
    let mut tick = tokio::time::interval(ctx.settings.tick);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.wait_for(|s| *s) => break,
        }
        if let Err(e) = one_round(&ctx, &publisher, &exchange, &mut in_flight).await {
            metrics::counter!("wxpipe_release_step_errors_total").increment(1);
            tracing::warn!(error = %e, "a round of release jobs failed");
        }
    }
    // Let the steps in flight finish (each is short: a call and a write).
    for (_, mut set) in in_flight {
        while set.join_next().await.is_some() {}
    }
}

async fn one_round(
    ctx: &Arc<Ctx>,
    publisher: &ConfirmedPublisher,
    exchange: &str,
    in_flight: &mut InFlight,
) -> Result<(), String> {
    let open = ctx.store.open_jobs().await.map_err(|e| e.to_string())?;
    in_flight.retain(|id, set| {
        while set.try_join_next().is_some() {}
        !set.is_empty() || open.contains(id)
    });
    for id in open {
        let Some(job) = ctx.store.job(&id).await.map_err(|e| e.to_string())? else {
            continue;
        };
        let job = Arc::new(job);
        if let Err(e) = events::drain(
            &ctx.store,
            ctx.tokens.store.pool(),
            publisher,
            exchange,
            &id,
        )
        .await
        {
            tracing::warn!(job = %id, error = %e, "release events not published yet");
        }
        // A cancelled job leaves the open set once its last events are published.
        if job.status == JobStatus::Cancelled {
            if ctx
                .store
                .outbox(&id, 1)
                .await
                .map_err(|e| e.to_string())?
                .is_empty()
            {
                ctx.store.close(&id).await.map_err(|e| e.to_string())?;
            }
            continue;
        }
        // A cancelling job still works: it undoes its audits in review.
        if !matches!(job.status, JobStatus::Running | JobStatus::Cancelling) {
            continue;
        }
        if settle(ctx, &job).await.map_err(|e| e.to_string())? {
            continue;
        }
        let lease = ctx.settings.lease.as_millis() as i64;
        let due = ctx
            .store
            .take_due(
                &id,
                lease,
                job.spec.concurrency,
                job.spec.concurrency as usize,
            )
            .await
            .map_err(|e| e.to_string())?;
        let set = in_flight.entry(id.clone()).or_default();
        for appid in due {
            let (ctx, job) = (ctx.clone(), job.clone());
            set.spawn(async move { step::run(&ctx, &job, &appid).await });
        }
    }
    Ok(())
}

/// Finishes a job with nothing left to do, or pauses one whose failures passed its ratio;
/// `true` when it did either.
async fn settle(ctx: &Ctx, job: &Job) -> Result<bool, common::redis::RedisError> {
    let counts = ctx.store.counts(&job.id).await?;
    let n = |s: AccountState| counts.get(&s).copied().unwrap_or(0);
    let finished: u64 = AccountState::ALL
        .into_iter()
        .filter(|s| s.is_final())
        .map(n)
        .sum::<u64>()
        + if job.spec.release == ReleaseMode::Manual {
            n(AccountState::AuditPassed)
        } else {
            0
        };
    if let Some(ratio) = job.spec.stop_when_failed_over
        && job.status == JobStatus::Running
    {
        let failed: u64 = AccountState::ALL
            .into_iter()
            .filter(|s| s.is_failure())
            .map(n)
            .sum();
        if finished > 0 && failed as f64 / finished as f64 > ratio && failed >= 1 {
            let why = format!(
                "paused: {failed} of {finished} finished accounts failed, over the job's ratio {ratio}"
            );
            tracing::warn!(job = %job.id, "{why}");
            metrics::counter!("wxpipe_release_jobs_total", "outcome" => "paused_failures")
                .increment(1);
            ctx.store
                .set_status(&job.id, JobStatus::Paused, Some(&why))
                .await?;
            return Ok(true);
        }
    }
    // Finished only once its last events are published (the outbox is drained every round).
    if finished >= job.total && ctx.store.outbox(&job.id, 1).await?.is_empty() {
        if job.status == JobStatus::Cancelling {
            tracing::info!(job = %job.id, "release job cancelled: its audits in review were undone");
            ctx.store
                .set_status(
                    &job.id,
                    JobStatus::Cancelled,
                    Some("cancelled by an operator"),
                )
                .await?;
            return Ok(true);
        }
        tracing::info!(job = %job.id, total = job.total, "release job finished");
        metrics::counter!("wxpipe_release_jobs_total", "outcome" => "finished").increment(1);
        ctx.store
            .set_status(&job.id, JobStatus::Finished, None)
            .await?;
        return Ok(true);
    }
    Ok(false)
}
