//! `wxpipe-bench ingress`: the ingress binary against the broker's own confirmed-publish
//! ceiling.

use super::*;
use procfs::{broker_pid, cpu_secs_of, rss_of, sibling_binary};
use stalls::StallWatch;

#[derive(clap::Args)]
pub struct IngressBench {
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

pub async fn run(b: IngressBench) -> anyhow::Result<()> {
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

    let watch = StallWatch::start(broker_pid());
    let ceiling = if b.skip_ceiling {
        None
    } else {
        let t = TestNs::new("bench-ceiling");
        let push = &push;
        let since = common::unix_now_ms();
        let rate = broker_ceiling(&b, &t, push).await?;
        println!(
            "broker ceiling (bare lapin, the ingress's message, mandatory, confirms, {} in flight): {rate:.0} msg/s ({})",
            b.concurrency,
            watch.count_between(since, common::unix_now_ms())
        );
        Some(rate)
    };

    let t = TestNs::new("bench-ingress");
    let since = common::unix_now_ms();
    let report = ingress_load(&b, &t, &push).await?;
    println!(
        "ingress: {:.0} accepted pushes/s, latency p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms, non-200: {} ({})",
        report.rate,
        report.p50_ms,
        report.p99_ms,
        report.max_ms,
        report.failed,
        watch.count_between(since, common::unix_now_ms())
    );
    println!(
        "ingress RSS: {:.1} MB at the end, {:.1} MB peak (VmHWM)",
        report.rss_mb, report.hwm_mb
    );
    if let Some(c) = ceiling {
        println!("ingress / ceiling: {:.2}", report.rate / c);
        println!(
            "figures: ingress_rate={:.0} ingress_ceiling={c:.0} ingress_ratio={:.3} ingress_p99_ms={:.2} ingress_rss_mb={:.1}",
            report.rate,
            report.rate / c,
            report.p99_ms,
            report.hwm_mb
        );
    }
    Ok(())
}

/// The message the ingress publishes for `push`: its body, and its query as headers.
pub fn raw_message(push: &SignedPush) -> (Vec<u8>, BasicProperties) {
    let q: std::collections::HashMap<String, String> =
        url::form_urlencoded::parse(push.query.as_bytes())
            .into_owned()
            .collect();
    let get = |k: &str| q.get(k).cloned().unwrap_or_default();
    let raw = common::wire::raw::RawPush {
        route: RawRoute::Component,
        timestamp: get("timestamp"),
        nonce: get("nonce"),
        msg_signature: get("msg_signature"),
        signature: q.get("signature").cloned(),
        encrypt_type: q.get("encrypt_type").cloned(),
        openid: None,
        appid: None,
        received_at_ms: Some(common::unix_now_ms()),
    };
    (push.body.clone().into_bytes(), raw.to_properties())
}

/// The broker's own ceiling for the ingress's work: a bare lapin publisher of the very message
/// the ingress publishes (same body and headers, `mandatory`, persistent), with confirms.
async fn broker_ceiling(b: &IngressBench, t: &TestNs, push: &SignedPush) -> anyhow::Result<f64> {
    let (body, props) = raw_message(push);
    let conn = Connection::connect(&b.amqp_url, ConnectionProperties::default()).await?;
    declare(&conn, &t.ns, &Part::Raw(common::amqp::RawShards::ONE)).await?;
    let ch = conn.create_channel().await?;
    ch.confirm_select(ConfirmSelectOptions::default()).await?;
    let exchange = t.ns.raw();
    let stop = Arc::new(AtomicBool::new(false));
    let counting = Arc::new(AtomicBool::new(false));
    let count = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..b.concurrency {
        let (ch, exchange, body, props) =
            (ch.clone(), exchange.clone(), body.clone(), props.clone());
        let (stop, counting, count) = (stop.clone(), counting.clone(), count.clone());
        tasks.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let confirm = ch
                    .basic_publish(
                        exchange.as_str().into(),
                        RawRoute::Component.routing_key().into(),
                        BasicPublishOptions {
                            mandatory: true,
                            ..Default::default()
                        },
                        &body,
                        props.clone(),
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
    super::close(&conn, "bench done").await;
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
        .env("WXPIPE_COMPONENT_APPID", test_platform::COMPONENT_APPID)
        .env("WXPIPE_TOKEN", test_platform::TOKEN)
        .env("WXPIPE_ENCODING_AES_KEY", test_platform::ENCODING_AES_KEY)
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
    let pct = |p: f64| percentile(&all, p) / 1000.0;
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
