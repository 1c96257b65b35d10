//! wxpipe's benchmarks, printed as figures (never asserted):
//!
//! `wxpipe-bench ingress` measures, against the real local RabbitMQ:
//! 1. the broker's own ceiling: a bare lapin publisher with confirms into a fresh `{ns}.raw`
//!    quorum queue, same payload, `--concurrency` publishes in flight;
//! 2. the ingress binary (a child process, so its RSS is its own) under `--concurrency`
//!    concurrent HTTP clients posting signed `--payload-bytes` pushes: accepted pushes/s,
//!    latency p50/p99/max, RSS, and the ratio to the ceiling.
//!
//! Build everything in release mode first: `cargo build --release`, then
//! `target/release/wxpipe-bench ingress`.

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use common::amqp::topology::{RAW_COMPONENT, declare_raw};
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions, QueuePurgeOptions};
use lapin::{BasicProperties, Connection, ConnectionProperties};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};
use wxpipe_tests::broker::TestNs;
use wxpipe_tests::creds;
use wxpipe_tests::push::{PushBuilder, SignedPush};

#[derive(Parser)]
#[command(
    name = "wxpipe-bench",
    version,
    about = "wxpipe's benchmarks (figures, not assertions)"
)]
struct Cli {
    #[command(subcommand)]
    command: Bench,
}

#[derive(Subcommand)]
enum Bench {
    /// Ingress throughput and latency vs. the broker's own confirmed-publish ceiling.
    Ingress(IngressBench),
}

#[derive(clap::Args)]
struct IngressBench {
    /// Concurrent HTTP clients (and publishes in flight for the ceiling).
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Seconds of measurement per phase (after the warm-up).
    #[arg(long, default_value_t = 10)]
    duration: u64,
    /// Seconds of warm-up per phase, not measured.
    #[arg(long, default_value_t = 2)]
    warmup: u64,
    /// Size of each push body in bytes (approximate to the AES block).
    #[arg(long, default_value_t = 600)]
    payload_bytes: usize,
    /// The ingress binary (default: `ingress` beside this one).
    #[arg(long)]
    ingress_bin: Option<PathBuf>,
    /// RabbitMQ URL.
    #[arg(
        long,
        env = "WXPIPE_AMQP_URL",
        default_value = "amqp://guest:guest@127.0.0.1:5672/%2f"
    )]
    amqp_url: String,
    /// Skip the broker-ceiling phase.
    #[arg(long)]
    skip_ceiling: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Bench::Ingress(b) => ingress_bench(b).await,
    }
}

/// A push whose body is about `bytes` long.
fn sized_push(builder: &PushBuilder, bytes: usize) -> SignedPush {
    let now = common::unix_now();
    let mut content_len = 1;
    loop {
        let plain = wxpipe_tests::push::text_message(
            "gh_97417a04a28d",
            "o-bench",
            now,
            &"x".repeat(content_len),
            1,
        );
        let push = builder.component(&plain, now, "424242");
        if push.body.len() >= bytes || content_len > 64 * 1024 {
            return push;
        }
        content_len += 8;
    }
}

async fn ingress_bench(b: IngressBench) -> anyhow::Result<()> {
    let builder = PushBuilder::test_platform();
    let push = sized_push(&builder, b.payload_bytes);
    println!(
        "# wxpipe-bench ingress: concurrency {}, push body {} bytes, {} s measured after {} s warm-up, {} cores",
        b.concurrency,
        push.body.len(),
        b.duration,
        b.warmup,
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0)
    );

    let ceiling = if b.skip_ceiling {
        None
    } else {
        let t = TestNs::new("bench-ceiling");
        let rate = broker_ceiling(&b, &t, push.body.as_bytes()).await?;
        println!(
            "broker ceiling (bare lapin, confirms, {} in flight): {rate:.0} msg/s",
            b.concurrency
        );
        Some(rate)
    };

    let t = TestNs::new("bench-ingress");
    let report = ingress_load(&b, &t, &push).await?;
    println!(
        "ingress: {:.0} accepted pushes/s, latency p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms, non-200: {}",
        report.rate, report.p50_ms, report.p99_ms, report.max_ms, report.failed
    );
    println!(
        "ingress RSS: {:.1} MB at the end, {:.1} MB peak (VmHWM)",
        report.rss_mb, report.hwm_mb
    );
    if let Some(c) = ceiling {
        println!("ingress / ceiling: {:.2}", report.rate / c);
    }
    Ok(())
}

async fn broker_ceiling(b: &IngressBench, t: &TestNs, body: &[u8]) -> anyhow::Result<f64> {
    let conn = Connection::connect(&b.amqp_url, ConnectionProperties::default()).await?;
    let ch = conn.create_channel().await?;
    declare_raw(&ch, &t.ns).await?;
    ch.confirm_select(ConfirmSelectOptions::default()).await?;
    let exchange = t.ns.raw();
    let stop = Arc::new(AtomicBool::new(false));
    let counting = Arc::new(AtomicBool::new(false));
    let count = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..b.concurrency {
        let (ch, exchange, body) = (ch.clone(), exchange.clone(), body.to_vec());
        let (stop, counting, count) = (stop.clone(), counting.clone(), count.clone());
        tasks.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let confirm = ch
                    .basic_publish(
                        exchange.as_str().into(),
                        RAW_COMPONENT.into(),
                        BasicPublishOptions::default(),
                        &body,
                        BasicProperties::default().with_delivery_mode(2),
                    )
                    .await?
                    .await?;
                if confirm.is_ack() && counting.load(Ordering::Relaxed) {
                    count.fetch_add(1, Ordering::Relaxed);
                }
            }
            Ok::<_, lapin::Error>(())
        }));
    }
    tokio::time::sleep(Duration::from_secs(b.warmup)).await;
    let broker = broker_pid();
    let cpu_before = broker.map(cpu_secs_of);
    let me_before = cpu_secs_of(std::process::id());
    counting.store(true, Ordering::Relaxed);
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs(b.duration)).await;
    let n = count.load(Ordering::Relaxed);
    let elapsed = started.elapsed();
    let me = (cpu_secs_of(std::process::id()) - me_before) / elapsed.as_secs_f64() * 100.0;
    match (broker, cpu_before) {
        (Some(pid), Some(before)) => println!(
            "CPU during the ceiling run: publisher {me:.0}%, RabbitMQ {:.0}%",
            (cpu_secs_of(pid) - before) / elapsed.as_secs_f64() * 100.0
        ),
        _ => println!("CPU during the ceiling run: publisher {me:.0}%"),
    }
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        task.await??;
    }
    ch.queue_purge(exchange.as_str().into(), QueuePurgeOptions::default())
        .await?;
    let _ = conn.close(200, "bench done".into()).await;
    Ok(n as f64 / elapsed.as_secs_f64())
}

struct LoadReport {
    rate: f64,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
    failed: u64,
    rss_mb: f64,
    hwm_mb: f64,
}

fn ingress_binary(b: &IngressBench) -> anyhow::Result<PathBuf> {
    if let Some(p) = &b.ingress_bin {
        return Ok(p.clone());
    }
    let me = std::env::current_exe()?;
    let sibling = me.with_file_name("ingress");
    if !sibling.exists() {
        bail!(
            "{} not found: run `cargo build --release` first, or pass --ingress-bin",
            sibling.display()
        );
    }
    Ok(sibling)
}

async fn ingress_load(
    b: &IngressBench,
    t: &TestNs,
    push: &SignedPush,
) -> anyhow::Result<LoadReport> {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0")?;
        l.local_addr()?.port()
    };
    let mut child = tokio::process::Command::new(ingress_binary(b)?)
        .env("WXPIPE_COMPONENT_APPID", creds::COMPONENT_APPID)
        .env("WXPIPE_TOKEN", creds::TOKEN)
        .env("WXPIPE_ENCODING_AES_KEY", creds::ENCODING_AES_KEY)
        .env("WXPIPE_NAMESPACE", t.name())
        .env("WXPIPE_AMQP_URL", &b.amqp_url)
        .env("WXPIPE_INGRESS_ADDR", format!("127.0.0.1:{port}"))
        .env("RUST_LOG", "warn")
        .kill_on_drop(true)
        .spawn()
        .context("starting the ingress")?;
    let pid = child.id().context("ingress pid")?;
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(b.concurrency)
        .build()?;
    let ready = async {
        loop {
            if let Ok(r) = client.get(format!("{base}/readyz")).send().await
                && r.status() == 200
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(15), ready)
        .await
        .context("the ingress did not become ready")?;

    let path = format!("/wechat/component?{}", push.query);
    let body = bytes::Bytes::from(push.body.clone());
    let stop = Arc::new(AtomicBool::new(false));
    let measuring = Arc::new(AtomicBool::new(false));
    let failed = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..b.concurrency {
        let mut conn = HttpConn::open(port).await?;
        let (path, body) = (path.clone(), body.clone());
        let (stop, measuring, failed) = (stop.clone(), measuring.clone(), failed.clone());
        tasks.push(tokio::spawn(async move {
            let mut latencies_us: Vec<u32> = Vec::with_capacity(1 << 16);
            while !stop.load(Ordering::Relaxed) {
                let started = Instant::now();
                let ok = conn.post(&path, body.clone()).await;
                if measuring.load(Ordering::Relaxed) {
                    if ok {
                        latencies_us
                            .push(started.elapsed().as_micros().min(u32::MAX as u128) as u32);
                    } else {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
                if !ok {
                    // The server closed the connection or answered an error: reconnect.
                    match HttpConn::open(port).await {
                        Ok(c) => conn = c,
                        Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
                    }
                }
            }
            latencies_us
        }));
    }
    tokio::time::sleep(Duration::from_secs(b.warmup)).await;
    let broker_pid = broker_pid();
    let cpu_before = [Some(pid), Some(std::process::id()), broker_pid].map(|p| p.map(cpu_secs_of));
    measuring.store(true, Ordering::Relaxed);
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs(b.duration)).await;
    measuring.store(false, Ordering::Relaxed);
    let elapsed = started.elapsed();
    let cpu_after = [Some(pid), Some(std::process::id()), broker_pid].map(|p| p.map(cpu_secs_of));
    let share = |i: usize| match (cpu_before[i], cpu_after[i]) {
        (Some(a), Some(b)) => format!("{:.0}%", (b - a) / elapsed.as_secs_f64() * 100.0),
        _ => "n/a".into(),
    };
    println!(
        "CPU during the run (100% = one core): ingress {}, load generator {}, RabbitMQ {}",
        share(0),
        share(1),
        share(2)
    );
    stop.store(true, Ordering::Relaxed);
    let mut all: Vec<u32> = Vec::new();
    for task in tasks {
        all.extend(task.await?);
    }
    let (rss_mb, hwm_mb) = rss_of(pid);
    let _ = tokio::process::Command::new("kill")
        .arg(pid.to_string())
        .status()
        .await;
    let _ = tokio::time::timeout(Duration::from_secs(15), child.wait()).await;
    all.sort_unstable();
    let pct = |p: f64| -> f64 {
        if all.is_empty() {
            return 0.0;
        }
        let i = ((all.len() as f64 * p).ceil() as usize).clamp(1, all.len()) - 1;
        all[i] as f64 / 1000.0
    };
    Ok(LoadReport {
        rate: all.len() as f64 / elapsed.as_secs_f64(),
        p50_ms: pct(0.50),
        p99_ms: pct(0.99),
        max_ms: all.last().copied().unwrap_or(0) as f64 / 1000.0,
        failed: failed.load(Ordering::Relaxed),
        rss_mb,
        hwm_mb,
    })
}

/// One keep-alive HTTP/1.1 connection driven by hyper directly: the lightest client there is,
/// so that the load generator takes as little of the shared cores as possible.
struct HttpConn {
    sender: hyper::client::conn::http1::SendRequest<http_body_util::Full<bytes::Bytes>>,
}

impl HttpConn {
    async fn open(port: u16) -> anyhow::Result<Self> {
        let stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
        stream.set_nodelay(true)?;
        let (sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
        tokio::spawn(conn);
        Ok(Self { sender })
    }

    /// POSTs and reads the whole answer; true on 200.
    async fn post(&mut self, path: &str, body: bytes::Bytes) -> bool {
        use http_body_util::BodyExt;
        let req = hyper::Request::post(path)
            .header("host", "127.0.0.1")
            .header("content-type", "text/xml")
            .body(http_body_util::Full::new(body));
        let Ok(req) = req else { return false };
        if self.sender.ready().await.is_err() {
            return false;
        }
        match self.sender.send_request(req).await {
            Ok(resp) => {
                let ok = resp.status() == 200;
                ok && resp.into_body().collect().await.is_ok()
            }
            Err(_) => false,
        }
    }
}

/// User + system CPU seconds of a process, from /proc/<pid>/stat.
fn cpu_secs_of(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may contain spaces) start after the last ')'.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // utime and stime are fields 14 and 15 of stat, i.e. 11 and 12 after the name.
    (ticks(11) + ticks(12)) / 100.0
}

/// The local RabbitMQ's Erlang VM, if it runs on this machine.
fn broker_pid() -> Option<u32> {
    let out = std::process::Command::new("pgrep")
        .args(["-o", "beam.smp"])
        .output()
        .ok()?;
    String::from_utf8_lossy(&out.stdout).trim().parse().ok()
}

/// (VmRSS, VmHWM) of a process in MB, from /proc.
fn rss_of(pid: u32) -> (f64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|kb| kb.parse::<f64>().ok())
            .map(|kb| kb / 1024.0)
            .unwrap_or(0.0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}
