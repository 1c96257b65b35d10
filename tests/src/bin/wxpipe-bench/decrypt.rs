//! `wxpipe-bench decrypt`.

use super::*;
use futures::StreamExt;
use lapin::PublisherConfirm;
use lapin::options::{BasicConsumeOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use latency::Latency;
use procfs::{CpuUse, CpuWindow, Spent, broker_pid, redis_pid, rss_of, sibling_binary};
use stalls::StallWatch;

#[derive(clap::Args)]
pub struct DecryptBench {
    /// Pushes queued for each throughput phase.
    #[arg(long, default_value_t = 60_000)]
    messages: u64,
    /// Prefetch of the worker and of the bare ceiling consumer.
    #[arg(long, default_value_t = 256)]
    prefetch: u16,
    /// Rounds of (bare ceiling, workers) throughput phases; each figure is the median of the
    /// rounds', the ratio the median of the rounds' ratios.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// `workers decrypt` processes draining the queue together (cost growth: 1 → 4).
    #[arg(long, default_value_t = 1)]
    replicas: usize,
    /// Seconds of the half-load latency phase.
    #[arg(long, default_value_t = 10)]
    latency_secs: u64,
    /// Pushes/s of the latency phases instead of half the sustained rate (to see how the
    /// latency grows with load).
    #[arg(long)]
    latency_rate: Option<f64>,
    /// The workers binary (default: `workers` beside this one).
    #[arg(long)]
    workers_bin: Option<PathBuf>,
    #[command(flatten)]
    services: Services,
}

/// A raw message as the ingress stores it: body and headers.
struct Raw {
    body: Vec<u8>,
    headers: FieldTable,
}

impl Raw {
    /// Publishes it to `exchange` (`{ns}.raw`) on `ch`, received now; the confirm to await.
    async fn publish(
        &self,
        ch: &lapin::Channel,
        exchange: &str,
    ) -> Result<PublisherConfirm, lapin::Error> {
        ch.basic_publish(
            exchange.into(),
            "authorizer".into(),
            BasicPublishOptions::default(),
            &self.body,
            self.properties(),
        )
        .await
    }

    /// Its properties, received now.
    fn properties(&self) -> BasicProperties {
        let mut headers = self.headers.clone();
        common::wire::set_int(
            &mut headers,
            common::wire::raw::H_RECEIVED_AT,
            common::unix_now_ms(),
        );
        BasicProperties::default()
            .with_delivery_mode(2)
            .with_headers(headers)
    }
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
            Raw {
                headers: p.raw_headers(AUTHORIZER),
                body: p.body.into_bytes(),
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
            confirms.push(m.publish(ch, &exchange).await?);
        }
        for c in confirms {
            c.await?;
        }
    }
    Ok(())
}

/// How many messages `queue` holds (an error, not a hang, if the broker does not say within
/// 10 s).
async fn count(ch: &lapin::Channel, queue: &str) -> anyhow::Result<u32> {
    let declare = ch.queue_declare(
        queue.into(),
        QueueDeclareOptions {
            passive: true,
            ..Default::default()
        },
        FieldTable::default(),
    );
    Ok(tokio::time::timeout(Duration::from_secs(10), declare)
        .await
        .map_err(|_| anyhow::anyhow!("no answer to counting {queue} within 10 s"))??
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

/// Starts the bare worker on its own connection: it consumes `{ns}.raw` and republishes to
/// `{ns}.events`, with a confirm, the event the worker makes of `first` (same body, same
/// properties), then acks — what the worker does minus verify, decrypt, parse, dedup and JSON.
async fn start_bare(
    b: &DecryptBench,
    t: &TestNs,
    first: &Raw,
) -> anyhow::Result<(Connection, tokio::task::JoinHandle<()>)> {
    let conn = Connection::connect(&b.services.amqp_url, ConnectionProperties::default()).await?;
    let event = super::worker_event(&first.body, &first.properties())?;
    let task = bare_worker(&conn, &t.ns, b.prefetch, Some(event)).await?;
    Ok((conn, task))
}

/// The process of the bare worker (and of the bench's own counting and stall watch).
const BARE: &str = "this process (bare worker)";
/// The `workers decrypt` processes.
const WORKERS: &str = "decrypt workers";

/// The bare ceiling: the rate at which the bare worker drains `n` queued messages into `sink`,
/// and the CPU the broker and this process used meanwhile.
async fn bare_ceiling(
    b: &DecryptBench,
    t: &TestNs,
    sink: &str,
    first: &Raw,
    n: u32,
) -> anyhow::Result<(f64, CpuUse)> {
    let (conn, task) = start_bare(b, t, first).await?;
    let counter = conn.create_channel().await?;
    let cpu = CpuWindow::start(&[("RabbitMQ", broker_pid()), (BARE, Some(std::process::id()))]);
    let rate = rate_until(&counter, sink, n).await?;
    let cpu = cpu.end();
    task.abort();
    super::close(&conn, "ceiling done").await;
    Ok((rate, cpu))
}

fn spawn_worker(b: &DecryptBench, t: &TestNs) -> anyhow::Result<tokio::process::Child> {
    Ok(
        tokio::process::Command::new(sibling_binary(b.workers_bin.as_ref(), "workers")?)
            .arg("decrypt")
            .env("WXPIPE_COMPONENT_APPID", test_platform::COMPONENT_APPID)
            .env("WXPIPE_TOKEN", test_platform::TOKEN)
            .env("WXPIPE_ENCODING_AES_KEY", test_platform::ENCODING_AES_KEY)
            .env("WXPIPE_NAMESPACE", t.name())
            .env("WXPIPE_AMQP_URL", &b.services.amqp_url)
            .env("WXPIPE_REDIS_URL", &b.services.redis_url)
            .env("WXPIPE_DECRYPT_PREFETCH", b.prefetch.to_string())
            .env("RUST_LOG", "warn")
            .kill_on_drop(true)
            .spawn()?,
    )
}

pub async fn run(b: DecryptBench) -> anyhow::Result<()> {
    let watch = StallWatch::start(broker_pid());
    let t = TestNs::new("bench-decrypt");
    let (conn, sink) = with_sink(&b.services.amqp_url, &t, "sink").await?;
    let ch = conn.create_channel().await?;
    ch.confirm_select(ConfirmSelectOptions::default()).await?;
    println!(
        "# wxpipe-bench decrypt: {} rounds of (ceiling, workers), {} pushes per phase, prefetch {}, {} cores",
        b.rounds.max(1),
        b.messages,
        b.prefetch,
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0)
    );
    let n = b.messages as u32;

    // 1 and 2, in alternating rounds: the bare ceiling, then `replicas` workers decrypt
    // processes, each draining a full queue, so that both sides of each ratio see the same
    // minute of a shared machine (and a broker stall in one round is outvoted by the others).
    let rounds = b.rounds.max(1);
    let (mut ceilings, mut bare_cpu, mut rates, mut cpus, mut hwms, mut ratios) = (
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
    );
    let mut first = None;
    let (redis, mut redis_cpu) = (redis_pid(&b.services.redis_url).await, Vec::new());
    let (mut ceiling_cpu, mut workers_cpu) = (Spent::default(), Spent::default());
    for round in 1..=rounds as u64 {
        let msgs = raw_messages(b.messages, round * 100_000_000);
        fill(&ch, &t, &msgs).await?;
        let since = common::unix_now_ms();
        let (ceiling, ceiling_use) = bare_ceiling(&b, &t, &sink, &msgs[0], n).await?;
        // CPU per message over the whole drain (n messages in the window's seconds).
        let drained = n as f64 / ceiling_use.secs.max(1e-9);
        let bare_us = ceiling_use.us_of(BARE, drained).unwrap_or(0.0);
        ceiling_cpu.add(drained, &ceiling_use);
        println!(
            "round {round}: bare consume-and-republish ceiling (prefetch {}): {ceiling:.0} msg/s, {bare_us:.0} µs of CPU per message in the bare worker's process ({}); CPU per message: {}",
            b.prefetch,
            watch.count_between(since, common::unix_now_ms()),
            ceiling_use.describe_per(drained)
        );
        ch.queue_purge(sink.as_str().into(), Default::default())
            .await?;
        if first.is_none() {
            first = msgs.into_iter().next();
        }

        let msgs = raw_messages(b.messages, round * 100_000_000 + 10_000_000);
        fill(&ch, &t, &msgs).await?;
        let mut workers = Vec::new();
        for _ in 0..b.replicas.max(1) {
            workers.push(spawn_worker(&b, &t)?);
        }
        let pids: Vec<u32> = workers.iter().filter_map(|w| w.id()).collect();
        let mut procs = vec![
            ("RabbitMQ", broker_pid()),
            ("Redis", redis),
            ("this process (counting)", Some(std::process::id())),
        ];
        procs.extend(pids.iter().map(|p| (WORKERS, Some(*p))));
        let cpu = CpuWindow::start(&procs);
        let since = common::unix_now_ms();
        let rate = rate_until(&ch, &sink, n).await?;
        let used = cpu.end();
        let drained = n as f64 / used.secs.max(1e-9);
        let worker_us = used.us_of(WORKERS, drained).unwrap_or(0.0);
        let redis_us = used.us_of("Redis", drained);
        workers_cpu.add(drained, &used);
        let hwm: f64 = pids.iter().map(|p| rss_of(*p).1).sum();
        println!(
            "round {round}: workers decrypt ×{}: {rate:.0} pushes/s raw → events (confirmed, deduped), workers' CPU {:.0}% in all, Redis {} µs per push, peak RSS {hwm:.1} MB in all, {:.2} of the ceiling ({}); CPU per push: {}",
            pids.len(),
            worker_us * drained / 1e4,
            redis_us.map_or("n/a".into(), |us| format!("{us:.0}")),
            rate / ceiling,
            watch.count_between(since, common::unix_now_ms()),
            used.describe_per(drained)
        );
        stop_all(workers).await;
        ch.queue_purge(sink.as_str().into(), Default::default())
            .await?;
        ceilings.push(ceiling);
        bare_cpu.push(bare_us);
        rates.push(rate);
        cpus.push(worker_us);
        hwms.push(hwm);
        ratios.push(rate / ceiling);
        redis_cpu.extend(redis_us);
    }
    let (ceiling, bare_us, rate, cpu_us, ratio) = (
        median(&ceilings),
        median(&bare_cpu),
        median(&rates),
        median(&cpus),
        median(&ratios),
    );
    let hwm = hwms.iter().copied().fold(0.0, f64::max);
    println!(
        "decrypt / ceiling: {ratio:.2} (median of the rounds' ratios: {}); workers {rate:.0} pushes/s, {cpu_us:.0} µs of CPU per push; ceiling {ceiling:.0} msg/s, {bare_us:.0} µs per message (medians)",
        listed(&ratios)
    );
    println!(
        "CPU per message, ceiling (all rounds): {}",
        ceiling_cpu.describe()
    );
    println!(
        "CPU per push, workers (all rounds): {}",
        workers_cpu.describe()
    );
    println!("{}", Spent::bound(&ceiling_cpu, &workers_cpu));
    let Some(first) = first else {
        bail!("no messages to measure with (--messages 0)");
    };

    // 3. the rate one worker sustains while its queue is being published to — the latency
    //    phase's own traffic. The drain-only rate above leaves the publishing out, and on a
    //    machine the broker shares, half of it was no half load (docs/performance.md).
    let sink = replace_sink(&ch, &b.services.amqp_url, &t, &sink, "sustained").await?;
    let worker = spawn_worker(&b, &t)?;
    let sustained = sustained_rate(&conn, &t, &sink).await?;
    stop_all(vec![worker]).await;
    println!(
        "workers decrypt ×1 while its queue is published to (at most {BACKLOG} pushes queued): {sustained:.0} pushes/s"
    );

    // 4. latency at half that load (or at --latency-rate), through a fresh worker, into a
    //    fresh sink
    let target = b.latency_rate.unwrap_or(sustained / 2.0);
    let sink = replace_sink(&ch, &b.services.amqp_url, &t, &sink, "half").await?;
    let worker = spawn_worker(&b, &t)?;
    let latency = Latency::of(
        "decrypt-worker",
        &half_load_latency(&b, &t, &sink, target).await?,
        &watch,
    );
    println!(
        "push-to-event latency at {target:.0}/s: {}",
        latency.describe()
    );
    stop_all(vec![worker]).await;

    // 5. the same half load through the bare worker: the broker's own share of that latency
    let sink = replace_sink(&ch, &b.services.amqp_url, &t, &sink, "half-bare").await?;
    let (bare_conn, bare) = start_bare(&b, &t, &first).await?;
    let bare_latency = Latency::of(
        "decrypt-bare",
        &half_load_latency(&b, &t, &sink, target).await?,
        &watch,
    );
    bare.abort();
    super::close(&bare_conn, "bare latency done").await;
    println!(
        "the same through the bare worker (the broker's share): {}",
        bare_latency.describe()
    );
    println!(
        "figures: decrypt_rate={rate:.0} decrypt_sustained_rate={sustained:.0} decrypt_ceiling={ceiling:.0} decrypt_ratio={ratio:.3} decrypt_half_p50_ms={:.2} decrypt_half_p99_ms={:.2} decrypt_half_quiet_p99_ms={:.2} decrypt_half_stalls={} decrypt_bare_half_p50_ms={:.2} decrypt_bare_half_p99_ms={:.2} decrypt_bare_half_quiet_p99_ms={:.2} decrypt_rss_mb={hwm:.1} decrypt_cpu_us_per_push={cpu_us:.0} decrypt_bare_cpu_us_per_push={bare_us:.0} decrypt_all_cpu_us_per_push={:.0} decrypt_ceiling_all_cpu_us_per_msg={:.0}{}",
        latency.p50,
        latency.p99,
        latency.quiet_p99,
        latency.stalls.total(),
        bare_latency.p50,
        bare_latency.p99,
        bare_latency.quiet_p99,
        workers_cpu.us_per_item(),
        ceiling_cpu.us_per_item(),
        if redis_cpu.is_empty() {
            String::new()
        } else {
            format!(" decrypt_redis_cpu_us_per_push={:.0}", median(&redis_cpu))
        }
    );
    super::close(&conn, "bench done").await;
    Ok(())
}

/// Pushes in the pipeline (published, not yet arrived downstream) at most while measuring the
/// sustained rate: twice the default prefetch, so the worker never waits for work and the queue
/// never grows without bound.
const BACKLOG: u64 = 512;

/// The events/s reaching `sink` while closed-loop publishers keep [`BACKLOG`] distinct pushes
/// in the pipeline (publish rate = the worker's rate), measured for 5 s after a 2 s warm-up.
/// Returns once what was published has arrived (at most 60 s).
async fn sustained_rate(conn: &Connection, t: &TestNs, sink: &str) -> anyhow::Result<f64> {
    const WARMUP: u64 = 2;
    const MEASURED: u64 = 5;
    let msgs = Arc::new(raw_messages((WARMUP + MEASURED + 3) * 12_000, 30_000_000));
    let (next, published, events) = (
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
    );
    let stop = Arc::new(AtomicBool::new(false));
    let counter = super::downstream(
        conn.create_channel().await?,
        sink.to_owned(),
        events.clone(),
        None,
    );
    let publish = conn.create_channel().await?;
    publish
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    let exchange = Arc::new(t.ns.raw());
    let publishers: Vec<_> = (0..64)
        .map(|_| {
            let (publish, exchange, msgs) = (publish.clone(), exchange.clone(), msgs.clone());
            let (next, published, events, stop) = (
                next.clone(),
                published.clone(),
                events.clone(),
                stop.clone(),
            );
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    if next.load(Ordering::Relaxed) >= events.load(Ordering::Relaxed) + BACKLOG {
                        tokio::time::sleep(Duration::from_millis(1)).await;
                        continue;
                    }
                    let Some(m) = msgs.get(next.fetch_add(1, Ordering::Relaxed) as usize) else {
                        break;
                    };
                    m.publish(&publish, &exchange).await?.await?;
                    published.fetch_add(1, Ordering::Relaxed);
                }
                Ok::<_, lapin::Error>(())
            })
        })
        .collect();
    let rate = measure(&events, WARMUP, MEASURED).await;
    stop.store(true, Ordering::Relaxed);
    for p in publishers {
        p.await??;
    }
    let target = published.load(Ordering::Relaxed);
    drained(&events, target).await;
    counter.abort();
    let _ = publish.close(200, "sustained done".into()).await;
    anyhow::ensure!(
        msgs.len() as u64 > target,
        "the sustained phase ran out of pushes ({target}): the rate is not measured at saturation"
    );
    Ok(rate)
}

/// Stops worker processes, waiting at most 10 s for each.
async fn stop_all(workers: Vec<tokio::process::Child>) {
    for mut w in workers {
        terminate(&mut w, Duration::from_secs(10)).await;
    }
}

/// Publishes at `rate`/s for `latency_secs`; each event's `(received_at, consumed)` in unix ms.
async fn half_load_latency(
    b: &DecryptBench,
    t: &TestNs,
    sink: &str,
    rate: f64,
) -> anyhow::Result<Vec<(i64, i64)>> {
    let total = (rate * b.latency_secs as f64) as u64;
    let msgs = raw_messages(total, 20_000_000);
    let conn = Connection::connect(&b.services.amqp_url, ConnectionProperties::default()).await?;
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
            let sent = received_at(&d.properties).unwrap_or(0);
            lat.push((sent, common::unix_now_ms()));
        }
        lat
    });
    let publish = conn.create_channel().await?;
    publish
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    // Confirms are awaited on a task of their own: the open loop never pauses for them (it
    // did every 512 messages, then sent the overdue ones in a burst).
    let (confirms, mut confirmed) = tokio::sync::mpsc::unbounded_channel::<PublisherConfirm>();
    let confirmer = tokio::spawn(async move {
        while let Some(c) = confirmed.recv().await {
            c.await?;
        }
        Ok::<_, lapin::Error>(())
    });
    let exchange = t.ns.raw();
    let start = Instant::now();
    for (i, m) in msgs.iter().enumerate() {
        let due = start + Duration::from_secs_f64(i as f64 / rate);
        tokio::time::sleep_until(due.into()).await;
        let confirm = m.publish(&publish, &exchange).await?;
        let _ = confirms.send(confirm);
    }
    drop(confirms);
    confirmer.await??;
    let lat = collector.await?;
    super::close(&conn, "latency done").await;
    Ok(lat)
}
