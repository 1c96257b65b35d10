//! `wxpipe-bench e2e`: the whole pipeline — the real `ingress` and `workers decrypt` binaries —
//! under signed pushes from `--concurrency` HTTP connections, events counted on a downstream
//! quorum queue bound to `{ns}.events`; beside it, in the same run, a bare lapin pipeline doing
//! the same broker work (the ingress's message confirmed into a raw quorum queue, consumed and
//! republished with a confirm to the topic exchange, consumed downstream) as the ceiling. Then
//! push-to-event latency (the ingress's `received_at` to the downstream consumer) at half the
//! measured throughput.

use super::*;
use lapin::types::AMQPValue;
use latency::Latency;
use procfs::{CpuUse, Spent, broker_pid, redis_pid, sibling_binary};
use stalls::StallWatch;

#[derive(clap::Args)]
pub struct E2eBench {
    /// HTTP connections (pushes in flight) at saturation, and publishes in flight in the ceiling.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Rounds of (ceiling, pipeline) saturation phases; the ratio is the median of the
    /// rounds' ratios.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Seconds measured per saturation phase (after the warm-up).
    #[arg(long, default_value_t = 5)]
    duration: u64,
    #[arg(long, default_value_t = 3)]
    warmup: u64,
    /// Seconds of the half-load latency phase.
    #[arg(long, default_value_t = 10)]
    latency_secs: u64,
    /// The directory of the `ingress` and `workers` binaries (default: beside this one).
    #[arg(long)]
    bin_dir: Option<PathBuf>,
    #[command(flatten)]
    services: Services,
}

/// `n` distinct signed text pushes (their own MsgIds), as (path and query, body).
fn pushes(n: usize, first_msg_id: u64) -> Vec<(String, bytes::Bytes)> {
    let b = PushBuilder::test_platform();
    let now = common::unix_now();
    (0..n)
        .map(|i| {
            let plain = wxpipe_tests::push::text_message(
                GH,
                "o-bench",
                now,
                &"x".repeat(100),
                first_msg_id + i as u64,
            );
            let p = b.authorizer(GH, "o-bench", &plain, now, "424242");
            (
                format!("/wechat/authorizers/{AUTHORIZER}?{}", p.query),
                bytes::Bytes::from(p.body),
            )
        })
        .collect()
}

fn spawn(
    b: &E2eBench,
    t: &TestNs,
    bin: &str,
    args: &[&str],
    port: u16,
) -> anyhow::Result<tokio::process::Child> {
    let path = match &b.bin_dir {
        Some(d) => d.join(bin),
        None => sibling_binary(None, bin)?,
    };
    Ok(tokio::process::Command::new(path)
        .args(args)
        .env("WXPIPE_COMPONENT_APPID", test_platform::COMPONENT_APPID)
        .env("WXPIPE_TOKEN", test_platform::TOKEN)
        .env("WXPIPE_ENCODING_AES_KEY", test_platform::ENCODING_AES_KEY)
        .env("WXPIPE_NAMESPACE", t.name())
        .env("WXPIPE_AMQP_URL", &b.services.amqp_url)
        .env("WXPIPE_REDIS_URL", &b.services.redis_url)
        .env("WXPIPE_INGRESS_ADDR", format!("127.0.0.1:{port}"))
        .env("RUST_LOG", "warn")
        .kill_on_drop(true)
        .spawn()?)
}

pub async fn run(b: E2eBench) -> anyhow::Result<()> {
    let rounds = b.rounds.max(1);
    println!(
        "# wxpipe-bench e2e: {rounds} rounds of (ceiling, pipeline), {} pushes in flight, {} s measured per phase after {} s warm-up, {} cores",
        b.concurrency,
        b.duration,
        b.warmup,
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0)
    );
    let watch = StallWatch::start(procfs::broker_pid());
    let ceiling = Ceiling::open(&b).await?;

    let t = TestNs::new("bench-e2e");
    let (conn, sink) = with_sink(&b.services.amqp_url, &t, "downstream").await?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let mut ingress = spawn(&b, &t, "ingress", &[], port)?;
    let mut worker = spawn(&b, &t, "workers", &["decrypt"], port)?;
    wait_ready(port, Duration::from_secs(20)).await?;

    // Where each phase's CPU goes, per event (both phases share the same cores).
    let (broker, redis) = (broker_pid(), redis_pid(&b.services.redis_url).await);
    let ceiling_procs = [
        ("RabbitMQ", broker),
        (
            "this process (bare pipeline, downstream)",
            Some(std::process::id()),
        ),
    ];
    let pipeline_procs = [
        ("RabbitMQ", broker),
        ("Redis", redis),
        ("ingress", ingress.id()),
        ("decrypt worker", worker.id()),
        (
            "this process (HTTP load, downstream)",
            Some(std::process::id()),
        ),
    ];
    let (mut ceilings, mut rates, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    let (mut ceiling_cpu, mut pipeline_cpu) = (Spent::default(), Spent::default());
    for round in 1..=rounds as u64 {
        let since = common::unix_now_ms();
        let (c, cpu) = ceiling.phase(&b, &ceiling_procs).await?;
        println!(
            "round {round}: ceiling (bare lapin: confirmed publish → raw quorum queue → consume, confirmed republish → downstream): {c:.0} msg/s ({}); CPU per message: {}",
            watch.count_between(since, common::unix_now_ms()),
            cpu.describe_per(c)
        );
        ceiling_cpu.add(c, &cpu);
        let since = common::unix_now_ms();
        let (rate, sent, events, cpu) =
            saturate(&b, &conn, &sink, port, round * 100_000_000, &pipeline_procs).await?;
        println!(
            "round {round}: pipeline at saturation: {rate:.0} events/s; {sent} pushes sent, {events} events ({:.2} of the ceiling; {}); CPU per event: {}",
            rate / c,
            watch.count_between(since, common::unix_now_ms()),
            cpu.describe_per(rate)
        );
        pipeline_cpu.add(rate, &cpu);
        ceilings.push(c);
        rates.push(rate);
        ratios.push(rate / c);
    }
    ceiling.close().await;
    let (ceiling, rate, ratio) = (median(&ceilings), median(&rates), median(&ratios));
    println!(
        "e2e / ceiling: {ratio:.2} (median of the rounds' ratios: {}); pipeline {rate:.0} events/s, ceiling {ceiling:.0} msg/s (medians)",
        listed(&ratios)
    );
    let (ceiling_us, pipeline_us) = (ceiling_cpu.us_per_item(), pipeline_cpu.us_per_item());
    println!(
        "CPU per message, ceiling (all rounds): {}",
        ceiling_cpu.describe()
    );
    println!(
        "CPU per event, pipeline (all rounds): {}",
        pipeline_cpu.describe()
    );
    println!("{}", Spent::bound(&ceiling_cpu, &pipeline_cpu));

    // Half load: an open loop at half the rate, latency from the ingress's received_at.
    let half = (rate / 2.0).max(1.0);
    let n = (half * b.latency_secs as f64) as usize;
    let pushes = pushes(n, 10_000_000);
    let lat = Arc::new(std::sync::Mutex::new(Vec::with_capacity(n)));
    let got = Arc::new(AtomicU64::new(0));
    let counter = downstream(
        conn.create_channel().await?,
        sink.clone(),
        got.clone(),
        Some(lat.clone()),
    );
    let mut conns = Vec::new();
    for _ in 0..16 {
        conns.push(Arc::new(tokio::sync::Mutex::new(
            HttpConn::open(("127.0.0.1", port)).await?,
        )));
    }
    let start = Instant::now();
    let mut inflight = Vec::with_capacity(n);
    for (i, (path, body)) in pushes.into_iter().enumerate() {
        tokio::time::sleep_until((start + Duration::from_secs_f64(i as f64 / half)).into()).await;
        let c = conns[i % conns.len()].clone();
        inflight.push(tokio::spawn(async move {
            c.lock().await.post(&path, body).await
        }));
    }
    for f in inflight {
        let _ = f.await;
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while got.load(Ordering::Relaxed) < n as u64 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    counter.abort();
    let samples = lat.lock().map(|l| l.clone()).unwrap_or_default();
    let latency = Latency::of("e2e", &samples, &watch);
    println!(
        "push-to-event at half load ({half:.0}/s): {}",
        latency.describe()
    );
    println!(
        "figures: e2e_rate={rate:.0} e2e_ceiling={ceiling:.0} e2e_ratio={ratio:.3} e2e_half_p50_ms={:.2} e2e_half_p99_ms={:.2} e2e_half_quiet_p99_ms={:.2} e2e_half_stalls={} e2e_cpu_us_per_event={pipeline_us:.0} e2e_ceiling_cpu_us_per_msg={ceiling_us:.0} e2e_busy_pct={:.0} e2e_ceiling_busy_pct={:.0}",
        latency.p50,
        latency.p99,
        latency.quiet_p99,
        latency.stalls.total(),
        pipeline_cpu.busy_pct(),
        ceiling_cpu.busy_pct(),
    );
    for child in [&mut ingress, &mut worker] {
        terminate(child, Duration::from_secs(15)).await;
    }
    super::close(&conn, "bench done").await;
    Ok(())
}

/// One saturation phase of the pipeline: `concurrency` HTTP connections post distinct pushes
/// (MsgIds from `first_msg_id`) in a closed loop; the events/s reaching the downstream queue
/// after the warm-up, and, once the pipeline has drained, how many pushes were accepted and how
/// many events arrived.
async fn saturate(
    b: &E2eBench,
    conn: &Connection,
    sink: &str,
    port: u16,
    first_msg_id: u64,
    procs: &[(&'static str, Option<u32>)],
) -> anyhow::Result<(f64, u64, u64, CpuUse)> {
    let total = (b.warmup + b.duration + 2) as usize * 12_000;
    let all = Arc::new(pushes(total, first_msg_id));
    let next = Arc::new(AtomicU64::new(0));
    let accepted = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let events = Arc::new(AtomicU64::new(0));
    let ch = conn.create_channel().await?;
    let counter = downstream(ch.clone(), sink.to_owned(), events.clone(), None);
    let mut senders = Vec::new();
    for _ in 0..b.concurrency {
        let mut http = HttpConn::open(("127.0.0.1", port)).await?;
        let (all, next, accepted, stop) =
            (all.clone(), next.clone(), accepted.clone(), stop.clone());
        senders.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let i = next.fetch_add(1, Ordering::Relaxed) as usize;
                let Some((path, body)) = all.get(i) else {
                    break;
                };
                if http.post(path, body.clone()).await {
                    accepted.fetch_add(1, Ordering::Relaxed);
                } else {
                    match HttpConn::open(("127.0.0.1", port)).await {
                        Ok(c) => http = c,
                        Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
                    }
                }
            }
        }));
    }
    let (rate, cpu) = measure_cpu(&events, b.warmup, b.duration, procs).await;
    stop.store(true, Ordering::Relaxed);
    for s in senders {
        let _ = s.await;
    }
    // Let the pipeline drain before the next phase.
    let sent = accepted.load(Ordering::Relaxed);
    drained(&events, sent).await;
    counter.abort();
    let _ = ch.close(200, "phase done".into()).await;
    Ok((rate, sent, events.load(Ordering::Relaxed), cpu))
}

/// The bare pipeline: the same broker work with nothing else, set up once for every round.
struct Ceiling {
    _t: TestNs,
    conn: Connection,
    publish: lapin::Channel,
    exchange: String,
    body: Arc<Vec<u8>>,
    props: BasicProperties,
    events: Arc<AtomicU64>,
    counter: tokio::task::JoinHandle<()>,
    worker: tokio::task::JoinHandle<()>,
}

impl Ceiling {
    async fn open(b: &E2eBench) -> anyhow::Result<Self> {
        let t = TestNs::new("bench-e2e-ceiling");
        let (conn, sink) = with_sink(&b.services.amqp_url, &t, "downstream").await?;
        let push = pushes(1, 1).remove(0);
        let signed = wxpipe_tests::push::SignedPush {
            query: push
                .0
                .split_once('?')
                .map(|(_, q)| q.to_owned())
                .unwrap_or_default(),
            body: String::from_utf8_lossy(&push.1).into_owned(),
        };
        let (body, mut props) = super::ingress::raw_message(&signed);
        if let Some(h) = props.headers().clone() {
            let mut h = h;
            h.insert("appid".into(), AMQPValue::LongString(AUTHORIZER.into()));
            props = props.with_headers(h);
        }
        // The event the worker makes of this push, with its properties.
        let event = super::worker_event(&body, &props)?;
        let events = Arc::new(AtomicU64::new(0));
        let counter = downstream(conn.create_channel().await?, sink, events.clone(), None);
        // The worker: consume raw, republish with a confirm, ack.
        let worker = bare_worker(&conn, &t.ns, 256, Some(event)).await?;
        // The ingress: confirmed, mandatory publishes of its message.
        let publish = conn.create_channel().await?;
        publish
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        Ok(Self {
            exchange: t.ns.raw(),
            _t: t,
            conn,
            publish,
            body: Arc::new(body),
            props,
            events,
            counter,
            worker,
        })
    }

    /// One phase: `concurrency` publishes in flight for the warm-up and the measured seconds;
    /// the events/s downstream and the CPU `procs` used meanwhile. Returns once what was
    /// published has arrived (at most 60 s).
    async fn phase(
        &self,
        b: &E2eBench,
        procs: &[(&'static str, Option<u32>)],
    ) -> anyhow::Result<(f64, CpuUse)> {
        let stop = Arc::new(AtomicBool::new(false));
        let published = Arc::new(AtomicU64::new(0));
        let before = self.events.load(Ordering::Relaxed);
        let publishers = confirmed_publishers(
            &self.publish,
            (&self.exchange, "authorizer"),
            (&self.body, &self.props),
            b.concurrency,
            &stop,
            &published,
        );
        let (rate, cpu) = measure_cpu(&self.events, b.warmup, b.duration, procs).await;
        stop.store(true, Ordering::Relaxed);
        for p in publishers {
            p.await??;
        }
        let target = before + published.load(Ordering::Relaxed);
        drained(&self.events, target).await;
        Ok((rate, cpu))
    }

    async fn close(self) {
        self.worker.abort();
        self.counter.abort();
        super::close(&self.conn, "ceiling done").await;
    }
}
