use clap::{Parser, Subcommand};
use std::io::Write;
use std::process::ExitCode;
use workers::business::{self, BusinessArgs};
use workers::decrypt::{self, DecryptArgs};
use workers::dlq::{self, DlqArgs};
use workers::scheduler::{self, SchedulerArgs};

/// mimalloc instead of the system allocator: the decrypt path allocates per field, and glibc's
/// malloc/free were a fifth of its CPU (docs/performance.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// wxpipe's workers and tools. Every setting is an environment variable (shown in each
/// subcommand's --help) or the flag of the same name.
#[derive(Parser, Debug)]
#[command(name = "workers", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Consume {ns}.raw: verify, decrypt, parse, dedupe, publish CloudEvents to {ns}.events.
    Decrypt(DecryptArgs),
    /// Consume {ns}.business: the platform's own events, through the handler registry.
    Business(BusinessArgs),
    /// Keep the component token and every authorizer token fresh; serve the admin/token API.
    Scheduler(SchedulerArgs),
    /// Decrypt, business, scheduler and releases in one process (small deployments, the local
    /// demo).
    All(AllArgs),
    /// Serve WeChat's API to the platform's teams with tokens attached (team API keys, scopes,
    /// rates; refused tokens refreshed once and retried).
    Gateway(workers::gateway::GatewayArgs),
    /// Run mini-program fleet releases (commit, audit, release across many accounts; any
    /// number of replicas).
    Releases(workers::releases::ReleasesArgs),
    /// Inspect and replay dead letters ({ns}.dead).
    Dlq(DlqArgs),
    /// Offline WXBizMsgCrypt tools: sign, encrypt a reply, decrypt a captured push.
    #[command(subcommand)]
    Crypto(workers::crypto_tool::CryptoCommand),
    /// Print the metrics reference (Markdown: every metric, its type, labels, the roles that
    /// record it and what it means).
    MetricsReference,
    /// Print the workers' configuration reference (Markdown: every setting, its variable, flag,
    /// default, the commands that read it and what it means).
    ConfigReference,
}

/// `workers all`: the scheduler's settings (which include every worker setting) plus the
/// decrypt ones.
#[derive(clap::Args, Debug)]
struct AllArgs {
    #[command(flatten)]
    scheduler: SchedulerArgs,
    /// Unacknowledged raw messages the decrypt worker holds.
    #[arg(long, env = "WXPIPE_DECRYPT_PREFETCH", default_value_t = 256)]
    decrypt_prefetch: u16,
    /// Microseconds that deliveries arriving a few at a time wait for others (decrypt).
    #[arg(long, env = "WXPIPE_DECRYPT_LINGER_US", default_value_t = workers::decrypt::DEFAULT_LINGER_US,
          value_parser = clap::value_parser!(u32).range(0..=workers::decrypt::MAX_LINGER_US))]
    decrypt_linger_us: u32,
    /// Unacknowledged events the business worker holds.
    #[arg(long, env = "WXPIPE_BUSINESS_PREFETCH", default_value_t = 32)]
    business_prefetch: u16,
    #[arg(long, env = "WXPIPE_DEDUP_TTL_SECS", default_value_t = 900)]
    dedup_ttl_secs: u64,
    #[arg(long, env = "WXPIPE_DEDUP_CLAIM_SECS", default_value_t = 30)]
    dedup_claim_secs: u64,
    #[command(flatten)]
    releases: workers::releases::TimingArgs,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Command::MetricsReference = cli.command {
        print!("{}", common::metrics_catalog::markdown());
        return ExitCode::SUCCESS;
    }
    if let Command::ConfigReference = cli.command {
        use clap::CommandFactory;
        let rows = common::reference::settings(&Cli::command(), "workers");
        print!("## `workers`\n\n{}", common::reference::markdown(&rows));
        print!(
            "\n## Every binary (read outside the flags)\n\n{}",
            common::reference::markdown(&common::reference::every_binary())
        );
        return ExitCode::SUCCESS;
    }
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    // A decrypt replica runs on the threads it is given; every other command on one per core
    // (or `TOKIO_WORKER_THREADS`).
    if let Command::Decrypt(args) = &cli.command {
        runtime.worker_threads(args.threads.into());
    }
    match runtime.enable_all().build() {
        Ok(runtime) => runtime.block_on(run(cli)),
        Err(e) => fail("workers", format!("cannot start the async runtime: {e}")),
    }
}

async fn run(cli: Cli) -> ExitCode {
    // The tools print results; the services log their work.
    match cli.command {
        Command::Dlq(_)
        | Command::Crypto(_)
        | Command::ConfigReference
        | Command::MetricsReference => {
            common::telemetry::init_logging_with_default("warn,lapin=off")
        }
        _ => common::telemetry::init_logging(),
    }
    match cli.command {
        Command::ConfigReference | Command::MetricsReference => ExitCode::SUCCESS,
        Command::Crypto(cmd) => {
            let name = match &cmd {
                workers::crypto_tool::CryptoCommand::Sign { .. } => "sign",
                workers::crypto_tool::CryptoCommand::Encrypt { .. } => "encrypt",
                workers::crypto_tool::CryptoCommand::Decrypt { .. } => "decrypt",
            };
            print_result(
                &format!("workers crypto {name}"),
                workers::crypto_tool::run(cmd),
            )
        }
        Command::Dlq(args) => print_result("workers dlq", dlq::run(args).await),
        Command::Decrypt(args) => {
            let config = match args.validate() {
                Ok(c) => c,
                Err(e) => return config_error(e),
            };
            let shutdown = common::shutdown::on_signal();
            spawn_metrics(&args.worker, shutdown.clone());
            match decrypt::run(config, shutdown).await {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => fail("workers decrypt", e),
            }
        }
        Command::Business(args) => {
            let config = match args.validate() {
                Ok(c) => c,
                Err(e) => return config_error(e),
            };
            let shutdown = common::shutdown::on_signal();
            spawn_metrics(&args.worker, shutdown.clone());
            let registry = business::default_registry(&config);
            business::run(config, registry, shutdown).await;
            ExitCode::SUCCESS
        }
        Command::Scheduler(args) => {
            let config = match args.validate() {
                Ok(c) => c,
                Err(e) => return config_error(e),
            };
            let shutdown = common::shutdown::on_signal();
            spawn_metrics(&args.worker, shutdown.clone());
            match scheduler::run(config, shutdown).await {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => fail("workers scheduler", format!("admin API: {e}")),
            }
        }
        Command::Releases(args) => {
            let config = match args.validate() {
                Ok(c) => c,
                Err(e) => return config_error(e),
            };
            let shutdown = common::shutdown::on_signal();
            spawn_metrics(&args.worker, shutdown.clone());
            workers::releases::run(config, shutdown).await;
            ExitCode::SUCCESS
        }
        Command::Gateway(args) => {
            let (config, addr) = match args.validate() {
                Ok(c) => c,
                Err(e) => return config_error(e),
            };
            let shutdown = common::shutdown::on_signal();
            spawn_metrics(&args.worker, shutdown.clone());
            let listener = match tokio::net::TcpListener::bind(addr).await {
                Ok(l) => l,
                Err(e) => return fail("workers gateway", format!("cannot listen on {addr}: {e}")),
            };
            match workers::gateway::serve(listener, config, shutdown).await {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => fail("workers gateway", e),
            }
        }
        Command::All(args) => {
            let worker = args.scheduler.worker.clone();
            let decrypt_args = DecryptArgs {
                worker: worker.clone(),
                prefetch: args.decrypt_prefetch,
                linger_us: args.decrypt_linger_us,
                dedup_ttl_secs: args.dedup_ttl_secs,
                dedup_claim_secs: args.dedup_claim_secs,
                // Not used: `all` runs on the process's runtime, one thread per core.
                threads: 1,
                shards: "*".into(),
                fault_panic_on: None,
            };
            let business_args = BusinessArgs {
                worker: worker.clone(),
                prefetch: args.business_prefetch,
            };
            let (d, b, s) = match (
                decrypt_args.validate(),
                business_args.validate(),
                args.scheduler.validate(),
            ) {
                (Ok(d), Ok(b), Ok(s)) => (d, b, s),
                (Err(e), _, _) | (_, Err(e), _) | (_, _, Err(e)) => return config_error(e),
            };
            let r = match args.releases.validate(&worker) {
                Ok(r) => r,
                Err(e) => return config_error(e),
            };
            let shutdown = common::shutdown::on_signal();
            spawn_metrics(&worker, shutdown.clone());
            let registry = business::default_registry(&b);
            let business = tokio::spawn(business::run(b, registry, shutdown.clone()));
            let sched = tokio::spawn(scheduler::run(s, shutdown.clone()));
            let releases = tokio::spawn(workers::releases::run(r, shutdown.clone()));
            let decrypted = decrypt::run(d, shutdown).await;
            let _ = business.await;
            let _ = releases.await;
            let scheduled = sched.await;
            match (decrypted, scheduled) {
                (Err(e), _) => fail("workers all", e),
                (_, Ok(Err(e))) => fail("workers all", format!("admin API: {e}")),
                _ => ExitCode::SUCCESS,
            }
        }
    }
}

fn spawn_metrics(worker: &workers::args::WorkerArgs, shutdown: tokio::sync::watch::Receiver<bool>) {
    let (Some(addr), Ok(redis)) = (worker.metrics_addr, worker.redis_pool()) else {
        return;
    };
    tokio::spawn(async move {
        if let Err(e) = workers::serve::metrics_listener(addr, redis, shutdown).await {
            tracing::error!(%addr, error = %e, "cannot serve /metrics");
        }
    });
}

fn print_result(what: &str, result: anyhow::Result<String>) -> ExitCode {
    match result {
        Ok(out) => {
            let mut stdout = std::io::stdout().lock();
            let _ = writeln!(stdout, "{out}");
            ExitCode::SUCCESS
        }
        Err(e) => fail(what, e),
    }
}

fn config_error(e: common::config::ConfigError) -> ExitCode {
    eprintln!("workers: configuration error: {e}");
    ExitCode::from(2)
}

fn fail(what: &str, e: impl std::fmt::Display) -> ExitCode {
    eprintln!("{what}: {e}");
    ExitCode::FAILURE
}
