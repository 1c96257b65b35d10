//! wxpipe's benchmarks, printed as figures (never asserted):
//!
//! `wxpipe-bench ingress` measures, against the real local RabbitMQ, in `--rounds` alternating
//! rounds:
//! 1. the broker's own ceiling: a bare lapin publisher with confirms into a fresh `{ns}.raw`
//!    quorum queue, same payload, `--concurrency` publishes in flight;
//! 2. the ingress binary (a child process, so its RSS is its own) under `--concurrency`
//!    concurrent HTTP clients posting signed `--payload-bytes` pushes: accepted pushes/s,
//!    latency p50/p99/max, RSS, and the ratio to the ceiling of the same round.
//!
//! The ratios of `ingress`, `e2e` and `decrypt` are each the median of their rounds' ratios:
//! a ceiling and the phase it is compared with run back to back, so that a slow minute of the
//! shared machine, or one of the broker's own stalls, falls on one round and not on the figure.
//!
//! `wxpipe-bench decrypt`, `wxpipe-bench scheduler` and `wxpipe-bench gateway`: see their modules. One module per
//! benchmark behind this thin command line.
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
use wxpipe_tests::http1::HttpConn;
use wxpipe_tests::push::{PushBuilder, SignedPush};
use wxpipe_tests::test_platform;

/// The allocator of the worker and ingress binaries, so the figures are theirs.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod codec;
mod decrypt;
mod e2e;
mod gateway;
mod ingress;
mod latency;
mod procfs;
mod releases;
mod scheduler;
mod shards;
mod stalls;

use decrypt::DecryptBench;
use ingress::IngressBench;
use scheduler::SchedulerBench;

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
    /// What the gateway adds to a WeChat call (latency one at a time; calls/s of one replica).
    Gateway(gateway::GatewayBench),
    /// The decrypt worker's CPU path per push on one thread (the shared vector), and each stage.
    Codec(codec::CodecBench),
    /// The whole pipeline (ingress + decrypt binaries) vs a bare lapin pipeline doing the same
    /// broker work, and push-to-event latency at half load.
    E2e(e2e::E2eBench),
    /// Confirmed publishes into a sharded intake with K = 1, 2, 3… (on a cluster: through every
    /// node), and how evenly the shards fill.
    Shards(shards::ShardsBench),
    /// One release job across N simulated mini programs with instant review: time to release
    /// all, WeChat calls per account, the releases role's CPU and RSS (medians over runs).
    Releases(releases::ReleasesBench),
}

/// The account of the shared vector `official-message-push-component`, which the decrypt and
/// e2e benchmarks push for.
pub const AUTHORIZER: &str = "wxba5fad812f8e6fb9";
pub const GH: &str = "gh_97417a04a28d";

/// The broker and Redis the benchmarks that need both talk to.
#[derive(clap::Args)]
pub struct Services {
    /// RabbitMQ URL.
    #[arg(
        long,
        env = "WXPIPE_AMQP_URL",
        default_value = "amqp://guest:guest@127.0.0.1:5672/%2f"
    )]
    pub amqp_url: String,
    /// Redis URL.
    #[arg(
        long,
        env = "WXPIPE_REDIS_URL",
        default_value = "redis://127.0.0.1:6379/0"
    )]
    pub redis_url: String,
}

/// The `received_at` (ms) a raw message or an event carries: the wire type's header.
pub fn received_at(props: &BasicProperties) -> Option<i64> {
    common::wire::int_header(
        common::wire::header_table(props),
        common::wire::raw::H_RECEIVED_AT,
    )
}

/// The event the decrypt worker publishes for the raw message `(body, props)` — its CloudEvent
/// JSON and its properties, made by the worker's own functions — so that a ceiling republishes
/// exactly what the worker would and the broker does the same work in both.
pub fn worker_event(
    body: &[u8],
    props: &BasicProperties,
) -> anyhow::Result<(Vec<u8>, BasicProperties)> {
    let crypt = PushBuilder::test_platform().crypt().clone();
    let decoded = workers::decrypt::decode::decode_parts(
        &crypt,
        common::wire::raw::RawRoute::Authorizer.routing_key(),
        props,
        body,
    )
    .map_err(|e| anyhow::anyhow!("the bench's raw message does not decode: {e}"))?;
    let (address, json) = workers::decrypt::decode::event(&decoded, crypt.appid())
        .map_err(|e| anyhow::anyhow!("the bench's push makes no event: {e}"))?;
    let props = common::wire::event::EventProperties {
        id: address.id,
        event_type: address.event_type,
        received_at_ms: decoded.raw.received_at_ms,
        reply: None,
    }
    .to_properties();
    Ok((json, props))
}

/// A bare decrypt worker, the ceiling of the decrypt and e2e benchmarks: consumes `{ns}.raw`
/// with `prefetch`, republishes each message to `{ns}.events` with a confirm — as `event` when
/// given, else its own body (persistent) — then acks; nothing else.
pub async fn bare_worker(
    conn: &Connection,
    ns: &common::ids::Namespace,
    prefetch: u16,
    event: Option<(Vec<u8>, BasicProperties)>,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    use futures::StreamExt;
    use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions};
    let consume = conn.create_channel().await?;
    consume
        .basic_qos(prefetch, BasicQosOptions::default())
        .await?;
    let publish = conn.create_channel().await?;
    publish
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    let mut consumer = consume
        .basic_consume(
            ns.raw().as_str().into(),
            "bench-bare-worker".into(),
            BasicConsumeOptions::default(),
            lapin::types::FieldTable::default(),
        )
        .await?;
    let (exchange, key) = (ns.events(), format!("authorizer.{AUTHORIZER}.text"));
    let event = event.map(Arc::new);
    Ok(tokio::spawn(async move {
        while let Some(Ok(d)) = consumer.next().await {
            let (publish, exchange, key, event) = (
                publish.clone(),
                exchange.clone(),
                key.clone(),
                event.clone(),
            );
            tokio::spawn(async move {
                let (body, props) = match event.as_deref() {
                    // The event carries the raw message's reception time, as the worker's does.
                    Some((body, props)) => {
                        (body.as_slice(), with_received_at(props, &d.properties))
                    }
                    None => (
                        d.data.as_slice(),
                        BasicProperties::default().with_delivery_mode(2),
                    ),
                };
                if let Ok(c) = publish
                    .basic_publish(
                        exchange.as_str().into(),
                        key.as_str().into(),
                        BasicPublishOptions::default(),
                        body,
                        props,
                    )
                    .await
                    && c.await.is_ok()
                {
                    let _ = d.ack(BasicAckOptions::default()).await;
                }
            });
        }
    }))
}

/// `props` with the `received_at` header of `from` (when it has one).
fn with_received_at(props: &BasicProperties, from: &BasicProperties) -> BasicProperties {
    let Some(at) = received_at(from) else {
        return props.clone();
    };
    let mut headers = props.headers().clone().unwrap_or_default();
    common::wire::set_int(&mut headers, common::wire::raw::H_RECEIVED_AT, at);
    props.clone().with_headers(headers)
}

/// Closes a bench connection, giving up after 5 s: a decrypt run once hung for good in a
/// close (lapin's I/O loop of that connection had already ended), holding up `scripts/bench`.
pub async fn close(conn: &Connection, why: &str) {
    if tokio::time::timeout(Duration::from_secs(5), conn.close(200, why.into()))
        .await
        .is_err()
    {
        eprintln!("(closing a connection, {why}, took more than 5 s; left to the process exit)");
    }
}

/// The median of `values` (0 when empty); the mean of the middle two for an even count.
pub fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// The rounds' ratios as they are printed beside their median: `0.68, 0.71, 0.70`.
pub fn listed(ratios: &[f64]) -> String {
    ratios
        .iter()
        .map(|r| format!("{r:.2}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The rate of `count` over `duration` seconds, after `warmup` seconds not measured.
pub async fn measure(count: &AtomicU64, warmup: u64, duration: u64) -> f64 {
    measure_cpu(count, warmup, duration, &[]).await.0
}

/// [`measure`], and the CPU `procs` used over the measured seconds.
pub async fn measure_cpu(
    count: &AtomicU64,
    warmup: u64,
    duration: u64,
    procs: &[(&'static str, Option<u32>)],
) -> (f64, procfs::CpuUse) {
    tokio::time::sleep(Duration::from_secs(warmup)).await;
    let cpu = procfs::CpuWindow::start(procs);
    let (n0, t0) = (count.load(Ordering::Relaxed), Instant::now());
    tokio::time::sleep(Duration::from_secs(duration)).await;
    let rate = (count.load(Ordering::Relaxed) - n0) as f64 / t0.elapsed().as_secs_f64();
    (rate, cpu.end())
}

/// Waits until `count` reaches `target` — what a phase published has arrived downstream — at
/// most 60 s, so that the next phase starts on an empty pipeline.
pub async fn drained(count: &AtomicU64, target: u64) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while count.load(Ordering::Relaxed) < target && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `(received_at, arrived)` of each event, in unix ms.
pub type Samples = Arc<std::sync::Mutex<Vec<(i64, i64)>>>;

/// Counts (and acks) what arrives on `queue`; with `latencies`, also records the `received_at`
/// header of each message and when it arrived (unix ms).
pub fn downstream(
    ch: lapin::Channel,
    queue: String,
    count: Arc<AtomicU64>,
    latencies: Option<Samples>,
) -> tokio::task::JoinHandle<()> {
    use futures::StreamExt;
    use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions};
    tokio::spawn(async move {
        let _ = ch.basic_qos(1000, BasicQosOptions::default()).await;
        let Ok(mut consumer) = ch
            .basic_consume(
                queue.as_str().into(),
                "bench-downstream".into(),
                BasicConsumeOptions::default(),
                lapin::types::FieldTable::default(),
            )
            .await
        else {
            return;
        };
        while let Some(Ok(d)) = consumer.next().await {
            if let Some(lat) = &latencies
                && let (Some(sent), Ok(mut l)) = (received_at(&d.properties), lat.lock())
            {
                l.push((sent, common::unix_now_ms()));
            }
            count.fetch_add(1, Ordering::Relaxed);
            // Acked on a task of its own: awaiting each ack here (a hand-off to lapin's I/O
            // thread and back) delayed the next delivery's arrival stamp, inside the latency.
            tokio::spawn(async move { d.ack(BasicAckOptions::default()).await });
        }
    })
}

/// `concurrency` closed-loop publishers of one message (`mandatory`, with confirms) on `ch`
/// until `stop`: the ingress's work as the ceilings do it. Each ack adds one to `acked`.
pub fn confirmed_publishers(
    ch: &lapin::Channel,
    (exchange, routing_key): (&str, &str),
    (body, props): (&Arc<Vec<u8>>, &BasicProperties),
    concurrency: usize,
    stop: &Arc<AtomicBool>,
    acked: &Arc<AtomicU64>,
) -> Vec<tokio::task::JoinHandle<Result<(), lapin::Error>>> {
    (0..concurrency)
        .map(|_| {
            let (ch, exchange, routing_key) =
                (ch.clone(), exchange.to_owned(), routing_key.to_owned());
            let (body, props, stop, acked) =
                (body.clone(), props.clone(), stop.clone(), acked.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let confirm = ch
                        .basic_publish(
                            exchange.as_str().into(),
                            routing_key.as_str().into(),
                            BasicPublishOptions {
                                mandatory: true,
                                ..Default::default()
                            },
                            &body,
                            props.clone(),
                        )
                        .await?
                        .await?;
                    if confirm.is_ack() {
                        acked.fetch_add(1, Ordering::Relaxed);
                    }
                }
                Ok(())
            })
        })
        .collect()
}

/// A connection to `url` with the whole topology of `t`'s namespace declared, and a quorum
/// queue `t.queue(sink)` bound to every `authorizer.#` event: where the decrypt and e2e benches
/// count what comes out.
pub async fn with_sink(url: &str, t: &TestNs, sink: &str) -> anyhow::Result<(Connection, String)> {
    let conn = Connection::connect(url, ConnectionProperties::default()).await?;
    declare(
        &conn,
        &t.ns,
        &Part::everything(common::amqp::RawShards::ONE),
    )
    .await?;
    let sink = bind_sink(url, t, sink).await?;
    Ok((conn, sink))
}

/// Declares the quorum queue `t.queue(sink)` bound to every `authorizer.#` event.
async fn bind_sink(url: &str, t: &TestNs, sink: &str) -> anyhow::Result<String> {
    let sink = t.queue(sink);
    wxpipe_tests::broker::bind_quorum_queue_at(url, &sink, &t.ns.events(), &["authorizer.#"])
        .await?;
    Ok(sink)
}

/// Deletes the sink `old` and binds a new one, `t.queue(name)`, in its place: a phase then
/// starts on a queue in the state a live downstream queue is in, not on one that held a whole
/// throughput phase's events (a classic queue's process kept that phase's heap and stalled its
/// deliveries in 10–70 ms garbage collections every ~1.5 s; docs/performance.md).
pub async fn replace_sink(
    ch: &lapin::Channel,
    url: &str,
    t: &TestNs,
    old: &str,
    name: &str,
) -> anyhow::Result<String> {
    ch.queue_delete(old.into(), Default::default()).await?;
    bind_sink(url, t, name).await
}

/// Waits until the ingress on `port` answers `/readyz` with 200, at most `within`.
pub async fn wait_ready(port: u16, within: Duration) -> anyhow::Result<()> {
    let base = format!("http://127.0.0.1:{port}");
    anyhow::ensure!(
        wxpipe_tests::harness::ready_within(&base, within).await,
        "the ingress did not become ready"
    );
    Ok(())
}

/// Stops a process under test: SIGTERM (so it shuts down as in production), then waits for it
/// at most `within`.
pub async fn terminate(child: &mut tokio::process::Child, within: Duration) {
    if let Some(pid) = child.id() {
        let _ = tokio::process::Command::new("kill")
            .arg(pid.to_string())
            .status()
            .await;
    }
    let _ = tokio::time::timeout(within, child.wait()).await;
}

/// The `p`-quantile (nearest rank) of ascending `sorted` values; 0 when there are none.
pub fn percentile<T: Copy + Into<f64>>(sorted: &[T], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1].into()
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Bench::Ingress(b) => ingress::run(b).await,
        Bench::Decrypt(b) => decrypt::run(b).await,
        Bench::Scheduler(b) => scheduler::run(b).await,
        Bench::Gateway(b) => gateway::run(b).await,
        Bench::Codec(b) => codec::run(b).await,
        Bench::E2e(b) => e2e::run(b).await,
        Bench::Shards(b) => shards::run(b).await,
        Bench::Releases(b) => releases::run(b).await,
    }
}

#[cfg(test)]
mod tests {
    use super::median;

    #[test]
    fn median_of_odd_even_and_no_values() {
        assert_eq!(median(&[0.9, 0.6, 0.7]), 0.7);
        assert_eq!(median(&[0.8, 0.6, 0.7, 0.9]), 0.75);
        assert_eq!(median(&[]), 0.0);
    }
}
