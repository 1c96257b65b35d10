//! `wxpipe-faults`: the fault suite (see `wxpipe_tests::faults`), as `scripts/faults` runs it.

use clap::Parser;
use std::time::Duration;
use wxpipe_tests::faults::{self, Fault, Plan};

/// Inject faults one at a time into the real pipeline under load and report, for each, what
/// was sent, accepted and delivered, what was lost or duplicated, and how long recovery took.
#[derive(Parser)]
#[command(version)]
struct Args {
    /// Faults to inject, in order (default: all).
    #[arg(long, value_enum, value_delimiter = ',')]
    only: Vec<Fault>,
    /// Pushes per second during each fault.
    #[arg(long, default_value_t = 500.0)]
    rate: f64,
    /// Traffic per fault (the fault happens in its middle third).
    #[arg(long, default_value = "9s", value_parser = humantime::parse_duration)]
    traffic: Duration,
    /// How long the frozen scheduler stays stopped (its lock lease is 45 s).
    #[arg(long, default_value = "50s", value_parser = humantime::parse_duration)]
    freeze: Duration,
    /// Also write the rows as JSON here.
    #[arg(long)]
    json: Option<std::path::PathBuf>,
}

#[tokio::main]
async fn main() -> anyhow::Result<std::process::ExitCode> {
    let args = Args::parse();
    let plan = Plan {
        faults: if args.only.is_empty() {
            Fault::ALL.to_vec()
        } else {
            args.only
        },
        rate: args.rate,
        traffic: args.traffic,
        freeze: args.freeze,
        progress: true,
    };
    let dir = tempdir()?;
    let rows = faults::run(&plan, &dir).await?;
    println!("{}", faults::table(&rows));
    if let Some(path) = args.json {
        std::fs::write(path, serde_json::to_vec_pretty(&rows)?)?;
    }
    let failed: Vec<_> = rows.iter().filter(|r| !r.ok()).map(|r| r.fault).collect();
    if failed.is_empty() {
        let _ = std::fs::remove_dir_all(&dir);
        println!("every fault: 0 lost");
        Ok(std::process::ExitCode::SUCCESS)
    } else {
        eprintln!("FAILED: {} (logs in {})", failed.join(", "), dir.display());
        Ok(std::process::ExitCode::FAILURE)
    }
}

fn tempdir() -> std::io::Result<std::path::PathBuf> {
    let dir = std::env::temp_dir().join(format!("wxpipe-faults-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}
