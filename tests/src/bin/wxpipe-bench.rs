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
use common::amqp::topology::{Part, declare};
use common::wire::raw::RawRoute;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions, QueuePurgeOptions};
use lapin::{BasicProperties, Connection, ConnectionProperties};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};
use wxpipe_tests::broker::TestNs;
use wxpipe_tests::creds;
use wxpipe_tests::http1::HttpConn;
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
    /// Decrypt-worker throughput vs. a bare consume-and-republish ceiling, and latency at half load.
    Decrypt(DecryptBench),
    /// One scheduler replica keeping N authorizers' tokens fresh against wechat-sim, and
    /// token reads through its admin API.
    Scheduler(SchedulerBench),
}

#[derive(clap::Args)]
struct SchedulerBench {
    /// Simulated authorized accounts.
    #[arg(long, default_value_t = 10_000)]
    authorizers: usize,
    /// Lifetime of an authorizer token in the simulator (seconds).
    #[arg(long, default_value_t = 60)]
    token_ttl: u64,
    /// WXPIPE_REFRESH_MARGIN_SECS of the scheduler.
    #[arg(long, default_value_t = 20)]
    margin: u64,
    /// Seconds measured after every account has its first token.
    #[arg(long, default_value_t = 90)]
    duration: u64,
    /// Admin API token reads per second during the measurement.
    #[arg(long, default_value_t = 1000.0)]
    read_rate: f64,
    /// The workers binary (default: `workers` beside this one).
    #[arg(long)]
    workers_bin: Option<PathBuf>,
    /// Redis URL.
    #[arg(
        long,
        env = "WXPIPE_REDIS_URL",
        default_value = "redis://127.0.0.1:6379/0"
    )]
    redis_url: String,
}

#[derive(clap::Args)]
struct DecryptBench {
    /// Pushes queued for each throughput phase.
    #[arg(long, default_value_t = 60_000)]
    messages: u64,
    /// Prefetch of the worker and of the bare ceiling consumer.
    #[arg(long, default_value_t = 256)]
    prefetch: u16,
    /// Seconds of the half-load latency phase.
    #[arg(long, default_value_t = 10)]
    latency_secs: u64,
    /// The workers binary (default: `workers` beside this one).
    #[arg(long)]
    workers_bin: Option<PathBuf>,
    /// RabbitMQ URL.
    #[arg(
        long,
        env = "WXPIPE_AMQP_URL",
        default_value = "amqp://guest:guest@127.0.0.1:5672/%2f"
    )]
    amqp_url: String,
    /// Redis URL.
    #[arg(
        long,
        env = "WXPIPE_REDIS_URL",
        default_value = "redis://127.0.0.1:6379/0"
    )]
    redis_url: String,
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
        Bench::Decrypt(b) => decrypt_bench::run(b).await,
        Bench::Scheduler(b) => scheduler_bench::run(b).await,
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
    declare(&conn, &t.ns, &Part::Raw).await?;
    let ch = conn.create_channel().await?;
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
                        RawRoute::Component.routing_key().into(),
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
    sibling_binary(b.ingress_bin.as_ref(), "ingress")
}

/// `explicit`, else the binary `name` beside this one.
fn sibling_binary(explicit: Option<&PathBuf>, name: &str) -> anyhow::Result<PathBuf> {
    if let Some(p) = explicit {
        return Ok(p.clone());
    }
    let me = std::env::current_exe()?;
    let sibling = me.with_file_name(name);
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
    let client = wxpipe_tests::http_builder()
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
        let mut conn = HttpConn::open(("127.0.0.1", port)).await?;
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
                    match HttpConn::open(("127.0.0.1", port)).await {
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

mod decrypt_bench {
    //! `wxpipe-bench decrypt`.

    use super::*;
    use futures::StreamExt;
    use lapin::options::{
        BasicAckOptions, BasicConsumeOptions, BasicQosOptions, QueueDeclareOptions,
    };
    use lapin::types::{AMQPValue, FieldTable};
    use wxpipe_tests::broker::bind_queue;

    const AUTHORIZER: &str = "wxba5fad812f8e6fb9";
    const GH: &str = "gh_97417a04a28d";

    /// A raw message as the ingress stores it: body and headers.
    struct Raw {
        body: Vec<u8>,
        headers: FieldTable,
    }

    fn raw_messages(n: u64, first_msg_id: u64) -> Vec<Raw> {
        let b = PushBuilder::test_platform();
        let now = common::unix_now();
        (0..n)
            .map(|i| {
                let plain = wxpipe_tests::push::text_message(
                    GH,
                    "o-bench",
                    now,
                    &"x".repeat(200),
                    first_msg_id + i,
                );
                let p = b.authorizer(GH, "o-bench", &plain, now, "424242");
                let mut headers = FieldTable::default();
                for (k, v) in url::form_urlencoded::parse(p.query.as_bytes()) {
                    headers.insert(k.as_ref().into(), AMQPValue::LongString(v.as_ref().into()));
                }
                headers.insert("appid".into(), AMQPValue::LongString(AUTHORIZER.into()));
                Raw {
                    body: p.body.into_bytes(),
                    headers,
                }
            })
            .collect()
    }

    /// Publishes every message to `{ns}.raw` with confirms, 256 in flight.
    async fn fill(ch: &lapin::Channel, t: &TestNs, msgs: &[Raw]) -> anyhow::Result<()> {
        let exchange = t.ns.raw();
        for chunk in msgs.chunks(256) {
            let mut confirms = Vec::with_capacity(chunk.len());
            for m in chunk {
                let mut headers = m.headers.clone();
                headers.insert(
                    "received_at".into(),
                    AMQPValue::LongLongInt(common::unix_now_ms()),
                );
                confirms.push(
                    ch.basic_publish(
                        exchange.as_str().into(),
                        "authorizer".into(),
                        BasicPublishOptions::default(),
                        &m.body,
                        BasicProperties::default()
                            .with_delivery_mode(2)
                            .with_headers(headers),
                    )
                    .await?,
                );
            }
            for c in confirms {
                c.await?;
            }
        }
        Ok(())
    }

    async fn count(ch: &lapin::Channel, queue: &str) -> anyhow::Result<u32> {
        Ok(ch
            .queue_declare(
                queue.into(),
                QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await?
            .message_count())
    }

    /// Waits until `sink` holds `target` messages; returns the rate from the first message on.
    async fn rate_until(ch: &lapin::Channel, sink: &str, target: u32) -> anyhow::Result<f64> {
        let mut first: Option<(Instant, u32)> = None;
        let deadline = Instant::now() + Duration::from_secs(600);
        loop {
            let n = count(ch, sink).await?;
            if first.is_none() && n > 0 {
                first = Some((Instant::now(), n));
            }
            if n >= target {
                let (t0, n0) = first.unwrap_or((Instant::now(), 0));
                return Ok(f64::from(n - n0) / t0.elapsed().as_secs_f64().max(1e-3));
            }
            anyhow::ensure!(Instant::now() < deadline, "stuck at {n} of {target}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The bare ceiling: consume `{ns}.raw`, republish each body to `{ns}.events` with a
    /// confirm, then ack — what the worker does minus verify, decrypt, parse, dedup and JSON.
    async fn bare_ceiling(b: &DecryptBench, t: &TestNs, sink: &str, n: u32) -> anyhow::Result<f64> {
        let conn = Connection::connect(&b.amqp_url, ConnectionProperties::default()).await?;
        let consume = conn.create_channel().await?;
        let publish = conn.create_channel().await?;
        publish
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        consume
            .basic_qos(b.prefetch, BasicQosOptions::default())
            .await?;
        let mut consumer = consume
            .basic_consume(
                t.ns.raw().as_str().into(),
                "bench-ceiling".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        let events = t.ns.events();
        let task = tokio::spawn(async move {
            while let Some(Ok(d)) = consumer.next().await {
                let (publish, events) = (publish.clone(), events.clone());
                tokio::spawn(async move {
                    let confirm = publish
                        .basic_publish(
                            events.as_str().into(),
                            "authorizer.wxba5fad812f8e6fb9.text".into(),
                            BasicPublishOptions::default(),
                            &d.data,
                            BasicProperties::default().with_delivery_mode(2),
                        )
                        .await;
                    if let Ok(c) = confirm
                        && c.await.is_ok()
                    {
                        let _ = d.ack(BasicAckOptions::default()).await;
                    }
                });
            }
        });
        let counter = conn.create_channel().await?;
        let rate = rate_until(&counter, sink, n).await?;
        task.abort();
        let _ = conn.close(200, "ceiling done".into()).await;
        Ok(rate)
    }

    fn spawn_worker(b: &DecryptBench, t: &TestNs) -> anyhow::Result<tokio::process::Child> {
        Ok(
            tokio::process::Command::new(sibling_binary(b.workers_bin.as_ref(), "workers")?)
                .arg("decrypt")
                .env("WXPIPE_COMPONENT_APPID", creds::COMPONENT_APPID)
                .env("WXPIPE_TOKEN", creds::TOKEN)
                .env("WXPIPE_ENCODING_AES_KEY", creds::ENCODING_AES_KEY)
                .env("WXPIPE_NAMESPACE", t.name())
                .env("WXPIPE_AMQP_URL", &b.amqp_url)
                .env("WXPIPE_REDIS_URL", &b.redis_url)
                .env("WXPIPE_DECRYPT_PREFETCH", b.prefetch.to_string())
                .env("RUST_LOG", "warn")
                .kill_on_drop(true)
                .spawn()?,
        )
    }

    pub async fn run(b: DecryptBench) -> anyhow::Result<()> {
        let t = TestNs::new("bench-decrypt");
        let sink = t.queue("sink");
        let conn = Connection::connect(&b.amqp_url, ConnectionProperties::default()).await?;
        declare(&conn, &t.ns, &Part::everything()).await?;
        let ch = conn.create_channel().await?;
        bind_queue(&sink, &t.ns.events(), &["authorizer.#"]).await?;
        ch.confirm_select(ConfirmSelectOptions::default()).await?;
        println!(
            "# wxpipe-bench decrypt: {} pushes per phase, prefetch {}, {} cores",
            b.messages,
            b.prefetch,
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(0)
        );
        let n = b.messages as u32;

        // 1. the bare ceiling
        let msgs = raw_messages(b.messages, 1);
        fill(&ch, &t, &msgs).await?;
        let ceiling = bare_ceiling(&b, &t, &sink, n).await?;
        println!(
            "bare consume-and-republish ceiling (prefetch {}): {ceiling:.0} msg/s",
            b.prefetch
        );
        ch.queue_purge(sink.as_str().into(), Default::default())
            .await?;

        // 2. one workers decrypt process, on a full queue
        let msgs = raw_messages(b.messages, 10_000_000);
        fill(&ch, &t, &msgs).await?;
        let mut worker = spawn_worker(&b, &t)?;
        let pid = worker.id().unwrap_or(0);
        let cpu_before = cpu_secs_of(pid);
        let started = Instant::now();
        let rate = rate_until(&ch, &sink, n).await?;
        let cpu = (cpu_secs_of(pid) - cpu_before) / started.elapsed().as_secs_f64() * 100.0;
        let (_, hwm) = rss_of(pid);
        println!(
            "workers decrypt: {rate:.0} pushes/s raw → events (confirmed, deduped), worker CPU {cpu:.0}%, peak RSS {hwm:.1} MB"
        );
        println!("decrypt / ceiling: {:.2}", rate / ceiling);
        ch.queue_purge(sink.as_str().into(), Default::default())
            .await?;

        // 3. latency at half that load
        let target = rate / 2.0;
        let latency = half_load_latency(&b, &t, &sink, target).await?;
        println!(
            "push-to-event latency at {target:.0}/s: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms ({} events)",
            latency.0, latency.1, latency.2, latency.3
        );
        let _ = tokio::process::Command::new("kill")
            .arg(pid.to_string())
            .status()
            .await;
        let _ = tokio::time::timeout(Duration::from_secs(10), worker.wait()).await;
        let _ = conn.close(200, "bench done".into()).await;
        Ok(())
    }

    /// Publishes at `rate`/s for `latency_secs` and measures received_at → event consumed.
    async fn half_load_latency(
        b: &DecryptBench,
        t: &TestNs,
        sink: &str,
        rate: f64,
    ) -> anyhow::Result<(f64, f64, f64, usize)> {
        let total = (rate * b.latency_secs as f64) as u64;
        let msgs = raw_messages(total, 20_000_000);
        let conn = Connection::connect(&b.amqp_url, ConnectionProperties::default()).await?;
        let consume = conn.create_channel().await?;
        let mut consumer = consume
            .basic_consume(
                sink.into(),
                "bench-latency".into(),
                BasicConsumeOptions {
                    no_ack: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await?;
        let collector = tokio::spawn(async move {
            let mut lat = Vec::with_capacity(total as usize);
            while lat.len() < total as usize {
                let Ok(Some(Ok(d))) =
                    tokio::time::timeout(Duration::from_secs(20), consumer.next()).await
                else {
                    break;
                };
                let sent = d
                    .properties
                    .headers()
                    .as_ref()
                    .and_then(|h| match h.inner().get("received_at") {
                        Some(AMQPValue::LongLongInt(v)) => Some(*v),
                        _ => None,
                    })
                    .unwrap_or(0);
                lat.push((common::unix_now_ms() - sent) as f64);
            }
            lat
        });
        let publish = conn.create_channel().await?;
        publish
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        let exchange = t.ns.raw();
        let start = Instant::now();
        let mut confirms = Vec::new();
        for (i, m) in msgs.iter().enumerate() {
            let due = start + Duration::from_secs_f64(i as f64 / rate);
            tokio::time::sleep_until(due.into()).await;
            let mut headers = m.headers.clone();
            headers.insert(
                "received_at".into(),
                AMQPValue::LongLongInt(common::unix_now_ms()),
            );
            confirms.push(
                publish
                    .basic_publish(
                        exchange.as_str().into(),
                        "authorizer".into(),
                        BasicPublishOptions::default(),
                        &m.body,
                        BasicProperties::default()
                            .with_delivery_mode(2)
                            .with_headers(headers),
                    )
                    .await?,
            );
            if confirms.len() >= 512 {
                for c in confirms.drain(..) {
                    c.await?;
                }
            }
        }
        for c in confirms {
            c.await?;
        }
        let mut lat = collector.await?;
        lat.sort_by(|a, b| a.total_cmp(b));
        let pct = |p: f64| {
            lat.get(((lat.len() as f64 * p).ceil() as usize).saturating_sub(1))
                .copied()
                .unwrap_or(0.0)
        };
        let _ = conn.close(200, "latency done".into()).await;
        Ok((
            pct(0.5),
            pct(0.99),
            lat.last().copied().unwrap_or(0.0),
            lat.len(),
        ))
    }
}

mod scheduler_bench {
    //! `wxpipe-bench scheduler`.

    use super::*;
    use wxpipe_tests::sim::{self, SimSettings, state::Rules};

    const ADMIN: &str = "bench-admin-token-0123456789";

    pub async fn run(b: SchedulerBench) -> anyhow::Result<()> {
        let t = TestNs::new("bench-sched");
        let mut settings = SimSettings::for_tests("http://127.0.0.1:9");
        settings.rules = Rules {
            authorizer_token_ttl: Duration::from_secs(b.token_ttl),
            daily_quota: u64::MAX,
            ..Rules::default()
        };
        let sim = sim::start(settings).await?;
        let appids: Vec<String> = {
            let mut st = sim
                .shared
                .state
                .lock()
                .map_err(|_| anyhow::anyhow!("sim state"))?;
            (0..b.authorizers)
                .map(|_| {
                    let (a, code, _) = st.authorize(None, false);
                    let _ = st.query_auth(creds::COMPONENT_APPID, &code);
                    a.appid
                })
                .collect()
        };
        // wxpipe has only the ticket: accounts and refresh tokens come from the list.
        let ticket = sim
            .shared
            .state
            .lock()
            .map_err(|_| anyhow::anyhow!("sim state"))?
            .issue_ticket();
        let store = common::token::TokenStore::new(
            common::redis::pool(&b.redis_url)?,
            common::redis::Keys::new(&t.ns, creds::COMPONENT_APPID),
        );
        store.save_ticket(&ticket).await?;
        let admin_port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let mut child =
            tokio::process::Command::new(sibling_binary(b.workers_bin.as_ref(), "workers")?)
                .arg("scheduler")
                .env("WXPIPE_COMPONENT_APPID", creds::COMPONENT_APPID)
                .env("WXPIPE_COMPONENT_SECRET", creds::COMPONENT_SECRET)
                .env("WXPIPE_TOKEN", creds::TOKEN)
                .env("WXPIPE_ENCODING_AES_KEY", creds::ENCODING_AES_KEY)
                .env("WXPIPE_NAMESPACE", t.name())
                .env("WXPIPE_REDIS_URL", &b.redis_url)
                .env("WXPIPE_WECHAT_API_BASE", sim.api_base())
                .env("WXPIPE_REFRESH_MARGIN_SECS", b.margin.to_string())
                .env("WXPIPE_ADMIN_ADDR", format!("127.0.0.1:{admin_port}"))
                .env("WXPIPE_ADMIN_TOKEN", ADMIN)
                .env("RUST_LOG", "warn")
                .kill_on_drop(true)
                .spawn()?;
        let pid = child.id().unwrap_or(0);
        println!(
            "# wxpipe-bench scheduler: {} authorizers, {} s tokens, margin {} s, one replica, {} s measured, {:.0} token reads/s",
            b.authorizers, b.token_ttl, b.margin, b.duration, b.read_rate
        );

        // Until every account has its first token from wxpipe.
        let started = Instant::now();
        loop {
            let n = sim
                .shared
                .state
                .lock()
                .map_err(|_| anyhow::anyhow!("sim state"))?
                .stats
                .authorizer_token_times
                .values()
                .filter(|v| v.len() >= 2)
                .count();
            if n >= b.authorizers {
                break;
            }
            anyhow::ensure!(
                started.elapsed() < Duration::from_secs(300),
                "only {n} accounts got a token in 300 s"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        println!(
            "restore: {} accounts listed, refresh tokens restored and first tokens fetched in {:.1} s",
            b.authorizers,
            started.elapsed().as_secs_f64()
        );

        let calls_before = refresh_calls(&sim);
        let cpu_before = cpu_secs_of(pid);
        let measured = Instant::now();
        let reads = read_load(
            admin_port,
            &appids,
            b.read_rate,
            Duration::from_secs(b.duration),
        )
        .await?;
        let elapsed = measured.elapsed().as_secs_f64();
        let calls = refresh_calls(&sim) - calls_before;
        let cpu = cpu_secs_of(pid) - cpu_before;
        let (_, hwm) = rss_of(pid);
        let window = (b.token_ttl - b.margin) as f64 - b.margin as f64 / 4.0;
        let rejected = sim.stats()["rejected_token_calls"].as_u64().unwrap_or(0);
        println!(
            "refreshes: {calls} api_authorizer_token calls in {elapsed:.0} s = {:.0} per window of ~{window:.0} s ({:.2} per account per window)",
            calls as f64 * window / elapsed,
            calls as f64 * window / elapsed / b.authorizers as f64
        );
        println!(
            "scheduler CPU: {:.1} % of a core, {:.0} µs per refresh (including the admin API's share); peak RSS {hwm:.1} MB",
            cpu / elapsed * 100.0,
            if calls > 0 {
                cpu / calls as f64 * 1e6
            } else {
                0.0
            }
        );
        println!(
            "admin API token reads: {} at {:.0}/s, p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms, errors {}; tokens refused by the sim: {rejected}",
            reads.0, reads.1, reads.2, reads.3, reads.4, reads.5
        );
        let _ = tokio::process::Command::new("kill")
            .arg(pid.to_string())
            .status()
            .await;
        let _ = tokio::time::timeout(Duration::from_secs(10), child.wait()).await;
        sim.stop().await;
        Ok(())
    }

    fn refresh_calls(sim: &sim::SimHandle) -> u64 {
        sim.stats()["calls"]["api_authorizer_token"]
            .as_u64()
            .unwrap_or(0)
    }

    /// (reads, rate, p50, p99, max, errors) of GET /v1/authorizers/{appid}/access_token.
    async fn read_load(
        port: u16,
        appids: &[String],
        rate: f64,
        duration: Duration,
    ) -> anyhow::Result<(usize, f64, f64, f64, f64, u64)> {
        let workers = 16usize;
        let interval = Duration::from_secs_f64(workers as f64 / rate);
        let errors = Arc::new(AtomicU64::new(0));
        let start = Instant::now();
        let mut tasks = Vec::new();
        for w in 0..workers {
            let (appids, errors) = (appids.to_vec(), errors.clone());
            tasks.push(tokio::spawn(async move {
                let client = wxpipe_tests::http();
                let mut lat = Vec::new();
                let mut next = start + interval.mul_f64(w as f64 / workers as f64);
                let mut i = w;
                while start.elapsed() < duration {
                    tokio::time::sleep_until(next.into()).await;
                    next += interval;
                    i = (i + 7919) % appids.len();
                    let t0 = Instant::now();
                    let ok = client
                        .get(format!(
                            "http://127.0.0.1:{port}/v1/authorizers/{}/access_token",
                            appids[i]
                        ))
                        .bearer_auth(ADMIN)
                        .send()
                        .await
                        .is_ok_and(|r| r.status() == 200);
                    if ok {
                        lat.push(t0.elapsed().as_secs_f64() * 1000.0);
                    } else {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
                lat
            }));
        }
        let mut all = Vec::new();
        for t in tasks {
            all.extend(t.await?);
        }
        all.sort_by(|a, b| a.total_cmp(b));
        let pct = |p: f64| {
            all.get(((all.len() as f64 * p).ceil() as usize).saturating_sub(1))
                .copied()
                .unwrap_or(0.0)
        };
        Ok((
            all.len(),
            all.len() as f64 / start.elapsed().as_secs_f64(),
            pct(0.5),
            pct(0.99),
            all.last().copied().unwrap_or(0.0),
            errors.load(Ordering::Relaxed),
        ))
    }
}
