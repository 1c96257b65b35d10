//! `wxpipe-bench ingress`: the ingress binary against the broker's own confirmed-publish
//! ceiling, in alternating rounds (ceiling, ingress, ceiling, ingress, …) so that both sides of
//! each ratio see the same minute of a shared machine.

use super::*;
use procfs::{CpuUse, CpuWindow, Spent, broker_pid, rss_of, sibling_binary};
use stalls::StallWatch;

#[derive(clap::Args)]
pub struct IngressBench {
    /// Concurrent HTTP clients (and publishes in flight for the ceiling).
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Rounds of one ceiling phase followed by one ingress phase; the ratio is the median of
    /// the rounds' ratios.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Seconds measured per phase (after the warm-up).
    #[arg(long, default_value_t = 5)]
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
    /// Skip the broker-ceiling phases.
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
    let rounds = b.rounds.max(1);
    println!(
        "# wxpipe-bench ingress: concurrency {}, push body {} bytes, {rounds} rounds of (ceiling, ingress), {} s measured per phase after {} s warm-up, {} cores",
        b.concurrency,
        push.body.len(),
        b.duration,
        b.warmup,
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0)
    );

    let watch = StallWatch::start(broker_pid());
    let ceiling_ns = TestNs::new("bench-ceiling");
    let ceiling = if b.skip_ceiling {
        None
    } else {
        Some(Ceiling::open(&b, &ceiling_ns, &push).await?)
    };
    let ingress_ns = TestNs::new("bench-ingress");
    let mut ingress = UnderLoad::start(&b, &ingress_ns, &push).await?;

    let (mut ceilings, mut rates, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    let mut latencies_us: Vec<u32> = Vec::new();
    let mut failed = 0;
    let (mut ceiling_cpu, mut cpu) = (Spent::default(), Spent::default());
    for round in 1..=rounds {
        let ceiling_rate = match &ceiling {
            Some(c) => {
                let since = common::unix_now_ms();
                let (rate, used) = c.phase(&b).await?;
                ceiling_cpu.add(rate, &used);
                println!(
                    "round {round}: broker ceiling (bare lapin, the ingress's message, mandatory, confirms, {} in flight): {rate:.0} msg/s ({})",
                    b.concurrency,
                    watch.count_between(since, common::unix_now_ms())
                );
                ceilings.push(rate);
                Some(rate)
            }
            None => None,
        };
        let since = common::unix_now_ms();
        let phase = ingress.phase(&b).await?;
        let stalls = watch.count_between(since, common::unix_now_ms());
        let rate = phase.latencies_us.len() as f64 / phase.elapsed.as_secs_f64();
        match ceiling_rate {
            Some(c) => {
                println!(
                    "round {round}: ingress {rate:.0} accepted pushes/s, {:.2} of the ceiling ({stalls})",
                    rate / c
                );
                ratios.push(rate / c);
            }
            None => println!("round {round}: ingress {rate:.0} accepted pushes/s ({stalls})"),
        }
        rates.push(rate);
        cpu.add(rate, &phase.cpu);
        latencies_us.extend(phase.latencies_us);
        failed += phase.failed;
    }
    if let Some(c) = ceiling {
        c.close().await;
    }
    let (rss_mb, hwm_mb) = ingress.stop().await;

    latencies_us.sort_unstable();
    let pct = |p: f64| percentile(&latencies_us, p) / 1000.0;
    let (p50, p99) = (pct(0.50), pct(0.99));
    let max = latencies_us.last().copied().unwrap_or(0) as f64 / 1000.0;
    let rate = median(&rates);
    println!(
        "ingress (median of {rounds} phases): {rate:.0} accepted pushes/s; over all phases latency p50 {p50:.2} ms, p99 {p99:.2} ms, max {max:.2} ms, non-200: {failed}"
    );
    println!(
        "CPU during the ingress phases (100% = one core): {}",
        cpu.describe_pct()
    );
    println!("CPU per accepted push: {}", cpu.describe());
    println!("ingress RSS: {rss_mb:.1} MB at the end, {hwm_mb:.1} MB peak (VmHWM)");
    if !ratios.is_empty() {
        let (ceiling, ratio) = (median(&ceilings), median(&ratios));
        println!(
            "ingress / ceiling: {ratio:.2} (median of the rounds' ratios: {})",
            listed(&ratios)
        );
        println!("CPU per message, ceiling: {}", ceiling_cpu.describe());
        println!("{}", Spent::bound(&ceiling_cpu, &cpu));
        println!(
            "figures: ingress_rate={rate:.0} ingress_ceiling={ceiling:.0} ingress_ratio={ratio:.3} ingress_p99_ms={p99:.2} ingress_rss_mb={hwm_mb:.1} ingress_cpu_us_per_push={:.0} ingress_ceiling_cpu_us_per_msg={:.0} ingress_busy_pct={:.0} ingress_ceiling_busy_pct={:.0}",
            cpu.us_per_item(),
            ceiling_cpu.us_per_item(),
            cpu.busy_pct(),
            ceiling_cpu.busy_pct(),
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
struct Ceiling {
    conn: Connection,
    ch: lapin::Channel,
    exchange: String,
    body: Arc<Vec<u8>>,
    props: BasicProperties,
}

impl Ceiling {
    async fn open(b: &IngressBench, t: &TestNs, push: &SignedPush) -> anyhow::Result<Self> {
        let (body, props) = raw_message(push);
        let conn = Connection::connect(&b.amqp_url, ConnectionProperties::default()).await?;
        declare(&conn, &t.ns, &Part::Raw(common::amqp::RawShards::ONE)).await?;
        let ch = conn.create_channel().await?;
        ch.confirm_select(ConfirmSelectOptions::default()).await?;
        Ok(Self {
            conn,
            ch,
            exchange: t.ns.raw(),
            body: Arc::new(body),
            props,
        })
    }

    /// One phase: `concurrency` publishers for the warm-up and the measured seconds; the rate
    /// of confirmed publishes measured, and the CPU of the broker and of this process
    /// meanwhile. The queue is purged afterwards, as the ingress's is.
    async fn phase(&self, b: &IngressBench) -> anyhow::Result<(f64, CpuUse)> {
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(AtomicU64::new(0));
        let tasks = confirmed_publishers(
            &self.ch,
            (&self.exchange, RawRoute::Component.routing_key()),
            (&self.body, &self.props),
            b.concurrency,
            &stop,
            &acked,
        );
        let procs = [
            ("RabbitMQ", broker_pid()),
            ("this process (publisher)", Some(std::process::id())),
        ];
        let (rate, cpu) = measure_cpu(&acked, b.warmup, b.duration, &procs).await;
        stop.store(true, Ordering::Relaxed);
        for task in tasks {
            task.await??;
        }
        self.ch
            .queue_purge(self.exchange.as_str().into(), QueuePurgeOptions::default())
            .await?;
        Ok((rate, cpu))
    }

    async fn close(self) {
        super::close(&self.conn, "bench done").await;
    }
}

/// What one ingress phase measured.
struct Phase {
    latencies_us: Vec<u32>,
    failed: u64,
    elapsed: Duration,
    /// The ingress's, the load generator's and the broker's over the measured seconds.
    cpu: CpuUse,
}

/// The ingress binary, started once for every round, and its open HTTP connections.
struct UnderLoad {
    child: tokio::process::Child,
    pid: u32,
    port: u16,
    conns: Vec<HttpConn>,
    path: String,
    body: bytes::Bytes,
    /// A channel to purge the ingress's queue after each phase, as the ceiling's is.
    amqp: Connection,
    purge: lapin::Channel,
    queue: String,
}

impl UnderLoad {
    async fn start(b: &IngressBench, t: &TestNs, push: &SignedPush) -> anyhow::Result<Self> {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0")?;
            l.local_addr()?.port()
        };
        let child =
            tokio::process::Command::new(sibling_binary(b.ingress_bin.as_ref(), "ingress")?)
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
        wait_ready(port, Duration::from_secs(15)).await?;
        let mut conns = Vec::with_capacity(b.concurrency);
        for _ in 0..b.concurrency {
            conns.push(HttpConn::open(("127.0.0.1", port)).await?);
        }
        let amqp = Connection::connect(&b.amqp_url, ConnectionProperties::default()).await?;
        let purge = amqp.create_channel().await?;
        Ok(Self {
            amqp,
            purge,
            queue: t.ns.raw(),
            child,
            pid,
            port,
            conns,
            path: format!("/wechat/component?{}", push.query),
            body: bytes::Bytes::from(push.body.clone()),
        })
    }

    /// One phase: every connection posts the push in a closed loop for the warm-up and the
    /// measured seconds; the accepted pushes' latencies of the measured seconds.
    async fn phase(&mut self, b: &IngressBench) -> anyhow::Result<Phase> {
        let stop = Arc::new(AtomicBool::new(false));
        let measuring = Arc::new(AtomicBool::new(false));
        let failed = Arc::new(AtomicU64::new(0));
        let mut tasks = Vec::new();
        let port = self.port;
        for mut conn in self.conns.drain(..) {
            let (path, body) = (self.path.clone(), self.body.clone());
            let (stop, measuring, failed) = (stop.clone(), measuring.clone(), failed.clone());
            tasks.push(tokio::spawn(async move {
                let mut latencies_us: Vec<u32> = Vec::with_capacity(1 << 15);
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
                (conn, latencies_us)
            }));
        }
        tokio::time::sleep(Duration::from_secs(b.warmup)).await;
        let cpu = CpuWindow::start(&[
            ("ingress", Some(self.pid)),
            ("load generator", Some(std::process::id())),
            ("RabbitMQ", broker_pid()),
        ]);
        measuring.store(true, Ordering::Relaxed);
        let started = Instant::now();
        tokio::time::sleep(Duration::from_secs(b.duration)).await;
        measuring.store(false, Ordering::Relaxed);
        let elapsed = started.elapsed();
        let cpu = cpu.end();
        stop.store(true, Ordering::Relaxed);
        let mut latencies_us = Vec::new();
        for task in tasks {
            let (conn, l) = task.await?;
            self.conns.push(conn);
            latencies_us.extend(l);
        }
        self.purge
            .queue_purge(self.queue.as_str().into(), QueuePurgeOptions::default())
            .await?;
        Ok(Phase {
            latencies_us,
            failed: failed.load(Ordering::Relaxed),
            elapsed,
            cpu,
        })
    }

    /// Stops the ingress; its (VmRSS, VmHWM) in MB just before.
    async fn stop(mut self) -> (f64, f64) {
        let rss = rss_of(self.pid);
        self.conns.clear();
        terminate(&mut self.child, Duration::from_secs(15)).await;
        super::close(&self.amqp, "bench done").await;
        rss
    }
}
