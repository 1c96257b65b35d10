//! `wxpipe-node-loss`: a RabbitMQ node lost under load, repeated (see `wxpipe_tests::node_loss`),
//! as `scripts/node-loss` runs it.

use clap::Parser;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use wxpipe_tests::cluster::Clusters;
use wxpipe_tests::node_loss::{self, Loss, Plan, Report};

/// Lose a RabbitMQ node of the local cluster (`scripts/cluster up`) under steady load, again
/// and again; after each run, count the pushes answered `success` that never became an event
/// (must be 0) and measure each shard's refusal window (from the fault to its last refused
/// push). Exits non-zero if any push was lost or published under two ids.
#[derive(Parser)]
#[command(version)]
struct Args {
    /// Runs per kind of loss.
    #[arg(long, default_value_t = 1)]
    runs: usize,
    /// Kinds of loss, each run `--runs` times in turn.
    #[arg(long, value_enum, value_delimiter = ',', default_value = "connected")]
    loss: Vec<Loss>,
    /// How long the node stays down (or frozen).
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    down: Duration,
    /// Accounts sending at once (each its next push once the last is answered).
    #[arg(long, default_value_t = 30)]
    accounts: u64,
    /// Pause between one account's pushes.
    #[arg(long, default_value = "200ms", value_parser = humantime::parse_duration)]
    pause: Duration,
    /// Load before the fault.
    #[arg(long, default_value = "3s", value_parser = humantime::parse_duration)]
    before: Duration,
    /// Load after the node is back.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    after: Duration,
    /// Threads spinning on the CPU meanwhile, to play a loaded machine (the whole test command).
    #[arg(long, default_value_t = 0)]
    burn: usize,
    /// Also write every run's report as JSON here.
    #[arg(long)]
    json: Option<std::path::PathBuf>,
}

#[tokio::main(flavor = "multi_thread", worker_threads = 4)]
async fn main() -> anyhow::Result<std::process::ExitCode> {
    let args = Args::parse();
    // The publisher's warnings (a refused channel replaced, a connection lost) as they happen;
    // RUST_LOG overrides.
    wxpipe_tests::log_to_test_output("common::amqp=warn,ingress=warn");
    let Some(clusters) = Clusters::find("wxpipe-node-loss") else {
        anyhow::bail!("no local clusters: run scripts/cluster up first");
    };
    let burning = Arc::new(AtomicBool::new(true));
    let burners: Vec<_> = (0..args.burn)
        .map(|_| {
            let burning = burning.clone();
            std::thread::spawn(move || {
                let mut x = 0u64;
                while burning.load(Ordering::Relaxed) {
                    x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
                }
            })
        })
        .collect();
    let began = Instant::now();
    let mut all: Vec<(Loss, Report)> = Vec::new();
    for loss in &args.loss {
        for i in 1..=args.runs {
            let plan = Plan {
                loss: *loss,
                down: args.down,
                accounts: args.accounts,
                pause: args.pause,
                before: args.before,
                after: args.after,
                progress: true,
            };
            eprintln!("run {i}/{} ({loss:?}, down {:?})", args.runs, args.down);
            let report = node_loss::run(&clusters, &plan).await;
            println!(
                "{loss:?} run {i}: node {} · {} accepted · {} refused · windows {} · {} lost · {} duplicated{}",
                report.node,
                report.accepted,
                report.refused,
                windows(&report),
                report.lost.len(),
                report.duplicated,
                if report.split.is_empty() {
                    String::new()
                } else {
                    format!(" · {} under two ids", report.split.len())
                }
            );
            if !report.ok() {
                println!("  evidence: {}", report.evidence);
            }
            all.push((*loss, report));
        }
    }
    burning.store(false, Ordering::Relaxed);
    for b in burners {
        let _ = b.join();
    }
    println!("\nsummary ({:.0} s):", began.elapsed().as_secs_f64());
    for loss in &args.loss {
        let runs: Vec<&Report> = all
            .iter()
            .filter(|(l, _)| l == loss)
            .map(|(_, r)| r)
            .collect();
        let mut worst: Vec<Duration> = runs.iter().map(|r| r.worst_window()).collect();
        println!(
            "  {loss:?}: {} runs, {} pushes accepted, {} lost, {} under two ids; worst shard's refusal window {}",
            runs.len(),
            runs.iter().map(|r| r.accepted).sum::<usize>(),
            runs.iter().map(|r| r.lost.len()).sum::<usize>(),
            runs.iter().map(|r| r.split.len()).sum::<usize>(),
            node_loss::median_range(&mut worst)
        );
    }
    if let Some(path) = args.json {
        let rows: Vec<_> = all
            .iter()
            .map(|(l, r)| serde_json::json!({"loss": format!("{l:?}"), "report": r}))
            .collect();
        std::fs::write(path, serde_json::to_vec_pretty(&rows)?)?;
    }
    Ok(if all.iter().all(|(_, r)| r.ok()) {
        std::process::ExitCode::SUCCESS
    } else {
        std::process::ExitCode::FAILURE
    })
}

fn windows(r: &Report) -> String {
    r.windows
        .iter()
        .map(|w| w.map_or("-".into(), |w| format!("{:.1}s", w.as_secs_f64())))
        .collect::<Vec<_>>()
        .join("/")
}
