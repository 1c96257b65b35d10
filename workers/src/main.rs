use clap::{Parser, Subcommand};
use std::io::Write;
use std::process::ExitCode;

/// wxpipe's workers and tools.
#[derive(Parser, Debug)]
#[command(name = "workers", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Offline WXBizMsgCrypt tools: sign, encrypt a reply, decrypt a captured push.
    #[command(subcommand)]
    Crypto(workers::crypto_tool::CryptoCommand),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    common::telemetry::init_logging();
    match cli.command {
        Command::Crypto(cmd) => {
            let name = match &cmd {
                workers::crypto_tool::CryptoCommand::Sign { .. } => "sign",
                workers::crypto_tool::CryptoCommand::Encrypt { .. } => "encrypt",
                workers::crypto_tool::CryptoCommand::Decrypt { .. } => "decrypt",
            };
            match workers::crypto_tool::run(cmd) {
                Ok(out) => {
                    let mut stdout = std::io::stdout().lock();
                    let _ = writeln!(stdout, "{out}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("workers crypto {name}: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}
