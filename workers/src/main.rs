use clap::{Parser, Subcommand};
use std::io::Write;
use std::process::ExitCode;
use workers::business::{self, BusinessArgs};
use workers::decrypt::{self, DecryptArgs};
use workers::dlq::{self, DlqArgs};

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
    /// Decrypt and business in one process (small deployments, the local demo).
    All(DecryptArgs),
    /// Inspect and replay dead letters ({ns}.dead).
    Dlq(DlqArgs),
    /// Offline WXBizMsgCrypt tools: sign, encrypt a reply, decrypt a captured push.
    #[command(subcommand)]
    Crypto(workers::crypto_tool::CryptoCommand),
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    common::telemetry::init_logging();
    match cli.command {
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
            spawn_metrics(args.worker.metrics_addr, shutdown.clone());
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
            spawn_metrics(args.worker.metrics_addr, shutdown.clone());
            business::run(config, business::registry::Registry::new(), shutdown).await;
            ExitCode::SUCCESS
        }
        Command::All(args) => {
            let (decrypt_config, business_config) =
                match (args.validate(), business_args(&args).validate()) {
                    (Ok(d), Ok(b)) => (d, b),
                    (Err(e), _) | (_, Err(e)) => return config_error(e),
                };
            let shutdown = common::shutdown::on_signal();
            spawn_metrics(args.worker.metrics_addr, shutdown.clone());
            let business = tokio::spawn(business::run(
                business_config,
                business::registry::Registry::new(),
                shutdown.clone(),
            ));
            let decrypted = decrypt::run(decrypt_config, shutdown).await;
            let _ = business.await;
            match decrypted {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => fail("workers all", e),
            }
        }
    }
}

/// `workers all` configures business from the same variables as decrypt.
fn business_args(args: &DecryptArgs) -> BusinessArgs {
    let prefetch = std::env::var("WXPIPE_BUSINESS_PREFETCH")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(32);
    BusinessArgs {
        worker: args.worker.clone(),
        prefetch,
    }
}

fn spawn_metrics(addr: Option<std::net::SocketAddr>, shutdown: tokio::sync::watch::Receiver<bool>) {
    if let Some(addr) = addr {
        tokio::spawn(async move {
            if let Err(e) = workers::serve::metrics_listener(addr, shutdown).await {
                tracing::error!(%addr, error = %e, "cannot serve /metrics");
            }
        });
    }
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
