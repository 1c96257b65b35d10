//! `wxpipe-bench shards`: what the broker sustains into the intake with K = 1, 2, 3… shards —
//! confirmed, mandatory publishes of the ingress's own raw message, spread over `--accounts`
//! appids, from one connection per node given — and how evenly the consistent hash spread them.
//! Run it against the local cluster (`scripts/cluster up`, then
//! `--amqp-url "$(scripts/cluster env | sed -n 's/^WXPIPE_CLUSTER_AMQP_URL=//p')"`).

use super::*;
use common::amqp::RawShards;
use lapin::options::QueueDeclareOptions;

#[derive(clap::Args)]
pub struct ShardsBench {
    /// The shard counts to measure, in turn.
    #[arg(long, value_delimiter = ',', default_value = "1,2,3")]
    shards: Vec<u16>,
    /// Publishes in flight in all (spread over the nodes' connections).
    #[arg(long, default_value_t = 96)]
    concurrency: usize,
    /// Seconds measured per shard count (after the warm-up).
    #[arg(long, default_value_t = 8)]
    duration: u64,
    /// Seconds of warm-up per shard count, not measured.
    #[arg(long, default_value_t = 2)]
    warmup: u64,
    /// Distinct authorizer appids the pushes come from.
    #[arg(long, default_value_t = 1000)]
    accounts: u64,
    /// RabbitMQ URL(s): a comma-separated list publishes through every node.
    #[arg(
        long,
        env = "WXPIPE_AMQP_URL",
        default_value = "amqp://guest:guest@127.0.0.1:5672/%2f"
    )]
    amqp_url: String,
}

pub async fn run(b: ShardsBench) -> anyhow::Result<()> {
    let urls: Vec<String> = b.amqp_url.split(',').map(str::to_owned).collect();
    println!(
        "# wxpipe-bench shards: {} node(s), {} publishes in flight, {} accounts, {} s measured after {} s warm-up, {} cores",
        urls.len(),
        b.concurrency,
        b.accounts,
        b.duration,
        b.warmup,
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0)
    );
    let push = PushBuilder::test_platform().component("<xml/>", common::unix_now(), "1");
    let appids = wxpipe_tests::intake::appids(b.accounts);
    let mut figures = Vec::new();
    for k in &b.shards {
        let shards = RawShards::new(*k).context("--shards")?;
        let t = TestNs::on("bench-shards", &b.amqp_url);
        let (rate, per_shard) = measure(&b, &urls, &t, shards, &push, &appids).await?;
        let spread = if per_shard.is_empty() {
            0.0
        } else {
            let (lo, hi) = (
                *per_shard.iter().min().unwrap_or(&0) as f64,
                *per_shard.iter().max().unwrap_or(&0) as f64,
            );
            if hi > 0.0 { lo / hi } else { 0.0 }
        };
        println!(
            "K={k}: {rate:.0} confirmed pushes/s; per shard {per_shard:?} (smallest/largest {spread:.2})"
        );
        figures.push(format!("shards_k{k}={rate:.0}"));
    }
    println!("figures: {}", figures.join(" "));
    Ok(())
}

async fn measure(
    b: &ShardsBench,
    urls: &[String],
    t: &TestNs,
    shards: RawShards,
    push: &SignedPush,
    appids: &[String],
) -> anyhow::Result<(f64, Vec<u32>)> {
    let mut conns = Vec::new();
    for url in urls {
        conns.push(Connection::connect(url, ConnectionProperties::default()).await?);
    }
    declare(&conns[0], &t.ns, &Part::Raw(shards)).await?;
    let mut channels = Vec::new();
    for c in &conns {
        let ch = c.create_channel().await?;
        ch.confirm_select(ConfirmSelectOptions::default()).await?;
        channels.push(ch);
    }
    let q: std::collections::HashMap<String, String> =
        url::form_urlencoded::parse(push.query.as_bytes())
            .into_owned()
            .collect();
    let exchange = t.ns.raw();
    let stop = Arc::new(AtomicBool::new(false));
    let counting = Arc::new(AtomicBool::new(false));
    let count = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for i in 0..b.concurrency {
        let ch = channels[i % channels.len()].clone();
        let (exchange, body) = (exchange.clone(), push.body.clone());
        let (stop, counting, count) = (stop.clone(), counting.clone(), count.clone());
        let appids = appids.to_vec();
        let q = q.clone();
        tasks.push(tokio::spawn(async move {
            let mut n = i;
            while !stop.load(Ordering::Relaxed) {
                n = n.wrapping_add(b_step());
                let raw = common::wire::raw::RawPush {
                    route: RawRoute::Authorizer,
                    timestamp: q.get("timestamp").cloned().unwrap_or_default(),
                    nonce: format!("{n}"),
                    msg_signature: q.get("msg_signature").cloned().unwrap_or_default(),
                    signature: q.get("signature").cloned(),
                    encrypt_type: q.get("encrypt_type").cloned(),
                    openid: Some("o-bench".into()),
                    appid: Some(appids[n % appids.len()].clone()),
                    received_at_ms: Some(common::unix_now_ms()),
                };
                let confirm = ch
                    .basic_publish(
                        exchange.as_str().into(),
                        RawRoute::Authorizer.routing_key().into(),
                        BasicPublishOptions {
                            mandatory: true,
                            ..Default::default()
                        },
                        body.as_bytes(),
                        raw.to_properties(),
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
    counting.store(true, Ordering::Relaxed);
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs(b.duration)).await;
    let n = count.load(Ordering::Relaxed);
    let elapsed = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        task.await??;
    }
    let ch = conns[0].create_channel().await?;
    let mut per_shard = Vec::new();
    for queue in shards.queues(&t.ns) {
        let d = ch
            .queue_declare(
                queue.as_str().into(),
                QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                Default::default(),
            )
            .await?;
        per_shard.push(d.message_count());
        ch.queue_purge(queue.as_str().into(), QueuePurgeOptions::default())
            .await?;
    }
    for c in conns {
        super::close(&c, "bench done").await;
    }
    Ok((n as f64 / elapsed.as_secs_f64(), per_shard))
}

/// Each publisher walks the accounts with a stride prime to any count, so every account is hit.
fn b_step() -> usize {
    7919
}
