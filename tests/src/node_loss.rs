//! A RabbitMQ node lost under load, on the local 3-node cluster of `scripts/cluster`: the
//! scenario behind `tests/tests/cluster.rs` and `wxpipe-node-loss` (`scripts/node-loss`), which
//! repeats it.
//!
//! One run: a fresh namespace with a 3-shard intake; an in-process ingress and two decrypt
//! workers consuming every shard; each account's shard learned first (one probe push each,
//! drained before any worker runs); then steady load — every account sends its next push once
//! the previous one is answered `success`, retrying every 200 ms as WeChat retries — while one
//! node is SIGKILLed (or frozen with SIGSTOP) for [`Plan::down`], then brought back. Every answer
//! is timed, so that each shard's **refusal window** (from the fault to its last refused push)
//! is measured, and every push answered `success` is looked for, by its content, among the
//! events a downstream quorum queue received: **lost** must be empty; a push published twice
//! must carry one event id both times.

use crate::broker::{TestNs, bind_quorum_queue_at, drain_acked, drain_at};
use crate::cluster::Clusters;
use crate::harness::{IngressHandle, decrypt_config, spawn_decrypt, test_config};
use crate::intake;
use crate::push::PushBuilder;
use common::amqp::RawShards;
use common::event::CloudEvent;
use common::ids::Namespace;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// Which node is lost, and how.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Loss {
    /// The node leading shard 0, which every role is connected to, SIGKILLed.
    Connected,
    /// The node leading shard 0, which no role is connected to, SIGKILLed.
    Leader,
    /// The node leading shard 0, which every role is connected to, frozen with SIGSTOP (its
    /// peers see a partition; `pause_minority`), then resumed with SIGCONT.
    Freeze,
}

/// One run's settings.
#[derive(Debug, Clone)]
pub struct Plan {
    pub loss: Loss,
    /// How long the node stays down (or frozen).
    pub down: Duration,
    /// Accounts sending at once.
    pub accounts: u64,
    /// Between one account's pushes.
    pub pause: Duration,
    /// Load before the fault.
    pub before: Duration,
    /// Load after the node is back (and running again).
    pub after: Duration,
    /// Print what happens as it happens.
    pub progress: bool,
}

impl Plan {
    /// The test command's run: node 1's shard leader killed for 4 s.
    pub fn quick() -> Self {
        Self {
            loss: Loss::Connected,
            down: Duration::from_secs(4),
            accounts: 12,
            pause: Duration::from_millis(40),
            before: Duration::from_secs(2),
            after: Duration::from_secs(3),
            progress: false,
        }
    }
}

/// What one run measured.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Report {
    /// The node lost (1-3).
    pub node: u8,
    pub accepted: usize,
    /// Answers other than `success` (each retried).
    pub refused: usize,
    /// Per shard: from the fault to the shard's last refused answer (`None`: none refused).
    pub windows: Vec<Option<Duration>>,
    /// Pushes answered `success` that never became an event.
    pub lost: Vec<String>,
    /// Pushes that became two events with one id (allowed: a confirm lost with a node).
    pub duplicated: usize,
    /// Pushes that became events with different ids (never allowed).
    pub split: Vec<String>,
    /// For a lost push: where it is (shards, dead letters, its dedup key) and every answer its
    /// sender got.
    pub evidence: String,
}

impl Report {
    /// Nothing lost, nothing published under two ids.
    pub fn ok(&self) -> bool {
        self.lost.is_empty() && self.split.is_empty()
    }

    /// The longest refusal window of any shard.
    pub fn worst_window(&self) -> Duration {
        self.windows
            .iter()
            .flatten()
            .max()
            .copied()
            .unwrap_or_default()
    }
}

/// Every answer one push got: (when, relative to the fault's start, in ms; HTTP status or
/// `None` for no answer).
type Answers = Vec<(i64, Option<u16>)>;

/// One account's sending.
#[derive(Debug, Default)]
struct Account {
    accepted: Vec<String>,
    refusals: Vec<Instant>,
    answers: HashMap<String, Answers>,
}

/// Runs the scenario once.
pub async fn run(c: &Clusters, plan: &Plan) -> Report {
    let urls = c.amqp_urls();
    let t = TestNs::on("t-nodeloss", &c.amqp_url);
    let _keys = c.delete_keys_on_drop(&format!("{}:", t.ns));
    let shards = RawShards::new(3).expect("three shards");
    let say = |what: &str| {
        if plan.progress {
            eprintln!("  {what}");
        }
    };

    // The intake's topology first (declared by the ingress on node 1), then the node to lose:
    // the one leading shard 0. Every role is then pointed at it first (Connected, Freeze) or
    // at the others (Leader).
    let mut config = test_config(&t.ns, urls.clone());
    config.raw_shards = shards;
    config.redis_url = c.redis_cluster_url.clone();
    let probe_ingress = IngressHandle::start(config.clone()).await;
    assert!(
        probe_ingress.wait_ready(Duration::from_secs(30)).await,
        "the ingress became ready"
    );
    let target = shard_leader(c, &t.ns, 0);
    let order: Vec<String> = match plan.loss {
        Loss::Connected | Loss::Freeze => rotate(&urls, target),
        Loss::Leader => rotate(&urls, target % 3 + 1),
    };
    probe_ingress
        .stop()
        .await
        .expect("the probing ingress stops");
    let other = target % 3 + 1;
    let other_url = urls[usize::from(other - 1)].clone();
    let downstream = t.queue("downstream");
    bind_quorum_queue_at(&other_url, &downstream, &t.ns.events(), &["authorizer.#"])
        .await
        .expect("the downstream queue");

    config.amqp_urls = order.clone();
    let ingress = IngressHandle::start(config).await;
    assert!(
        ingress.wait_ready(Duration::from_secs(30)).await,
        "the ingress became ready"
    );
    let base = ingress.url("");
    let accounts = intake::appids(plan.accounts);
    // Each account's shard, from one probe push each, before any worker consumes.
    let probes = intake::send_all(&base, &accounts, 1, "p", 50, Duration::ZERO).await;
    assert!(probes.values().all(|s| s.accepted.len() == 1), "the probes");
    let held = intake::drain_shards(&other_url, &t.ns, shards).await;
    let shard_of = held.shard_of;
    say(&format!(
        "node {target} leads shard 0; roles connect to {}; accounts per shard {:?}",
        order[0].rsplit(':').next().unwrap_or("?"),
        held.per_shard
    ));

    let decrypters: Vec<_> = (0..2)
        .map(|_| {
            let mut d = decrypt_config(&t.ns);
            d.amqp_urls = order.clone();
            d.redis_url = c.redis_cluster_url.clone();
            d.raw_shards = shards;
            d.shards = vec![0, 1, 2];
            spawn_decrypt(d)
        })
        .collect();

    let stop = Arc::new(AtomicBool::new(false));
    let fault_at = Arc::new(std::sync::OnceLock::<Instant>::new());
    let mut senders = tokio::task::JoinSet::new();
    for appid in &accounts {
        let (base, appid) = (base.clone(), appid.clone());
        let (stop, fault_at, pause) = (stop.clone(), fault_at.clone(), plan.pause);
        senders.spawn(async move {
            let sent = send_until_stopped(&base, &appid, pause, &stop, &fault_at).await;
            (appid, sent)
        });
    }
    tokio::time::sleep(plan.before).await;
    let started = Instant::now();
    let _ = fault_at.set(started);
    match plan.loss {
        Loss::Connected | Loss::Leader => c.kill_rabbit(target),
        Loss::Freeze => c.freeze_rabbit(target),
    }
    say(&format!(
        "node {target} {:?} for {:?}",
        plan.loss, plan.down
    ));
    tokio::time::sleep(plan.down).await;
    match plan.loss {
        Loss::Connected | Loss::Leader => c.start_rabbit(target),
        Loss::Freeze => c.thaw_rabbit(target),
    }
    say(&format!("node {target} back after {:?}", started.elapsed()));
    tokio::time::sleep(plan.after).await;
    stop.store(true, Ordering::SeqCst);
    let mut sent: BTreeMap<String, Account> = BTreeMap::new();
    let finishing = async {
        while let Some(done) = senders.join_next().await {
            let (appid, account) = done.expect("a sending task");
            sent.insert(appid, account);
        }
    };
    bounded(120, "the senders' last pushes", finishing).await;

    let mut windows = vec![None; 3];
    for (appid, account) in &sent {
        let Some(&shard) = shard_of.get(appid) else {
            continue;
        };
        let last = account
            .refusals
            .iter()
            .filter(|at| **at >= started)
            .max()
            .map(|at| at.duration_since(started));
        if last > windows[shard] {
            windows[shard] = last;
        }
    }
    let accepted: Vec<&String> = sent.values().flat_map(|a| &a.accepted).collect();
    let refused = sent.values().map(|a| a.refusals.len()).sum();
    say(&format!(
        "{} pushes accepted, {refused} refused; refusal window per shard {windows:?}",
        accepted.len()
    ));

    // Every accepted push must become an event: drain the downstream queue (acknowledging
    // each message only after keeping it) until all are there or two minutes pass.
    let mut events: HashMap<String, HashSet<String>> = HashMap::new();
    let mut copies: HashMap<String, usize> = HashMap::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    while accepted.iter().any(|a| !events.contains_key(*a))
        && tokio::time::Instant::now() < deadline
    {
        let mut taken = Vec::new();
        let drained = tokio::time::timeout(
            Duration::from_secs(30),
            drain_acked(
                &other_url,
                &downstream,
                Duration::from_millis(300),
                &mut taken,
            ),
        )
        .await;
        if !matches!(drained, Ok(Ok(()))) {
            say(&format!(
                "a drain of the downstream queue failed: {drained:?}"
            ));
        }
        for m in taken {
            let Ok(e) = serde_json::from_slice::<CloudEvent>(&m.body) else {
                continue;
            };
            let content = e.data["Content"].as_str().unwrap_or_default().to_owned();
            *copies.entry(content.clone()).or_default() += 1;
            events.entry(content).or_default().insert(e.id);
        }
    }
    let lost: Vec<String> = accepted
        .iter()
        .filter(|a| !events.contains_key(**a))
        .map(|a| (*a).clone())
        .collect();
    let split: Vec<String> = events
        .iter()
        .filter(|(_, ids)| ids.len() > 1)
        .map(|(c, _)| c.clone())
        .collect();
    let duplicated = copies.values().filter(|n| **n > 1).count();
    let evidence = if lost.is_empty() {
        String::new()
    } else {
        whereabouts(c, &other_url, &t.ns, shards, &lost, &sent, &accepted).await
    };
    for d in decrypters {
        bounded(60, "a decrypt worker's stop", d.stop()).await;
    }
    bounded(60, "the ingress's stop", ingress.stop())
        .await
        .expect("the ingress stops");
    Report {
        node: target,
        accepted: accepted.len(),
        refused,
        windows,
        lost,
        duplicated,
        split,
        evidence,
    }
}

/// Sends one account's pushes until `stop`: each retried every 200 ms until answered `success`
/// (the one in hand when `stop` is set is still finished, for at most a minute).
async fn send_until_stopped(
    base: &str,
    appid: &str,
    pause: Duration,
    stop: &AtomicBool,
    fault_at: &std::sync::OnceLock<Instant>,
) -> Account {
    let b = PushBuilder::test_platform();
    let http = crate::http_builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("an HTTP client");
    let mut account = Account::default();
    let mut seq = 0usize;
    while !stop.load(Ordering::SeqCst) {
        let content = intake::content("k", appid, seq);
        let began = Instant::now();
        let mut answers = Answers::new();
        loop {
            let (status, ok) = intake::send_once(&http, &b, base, appid, "k", seq).await;
            let at = Instant::now();
            let since = fault_at.get().map_or(i64::MIN, |f| millis_between(*f, at));
            answers.push((since, status));
            if ok {
                account.accepted.push(content.clone());
                break;
            }
            account.refusals.push(at);
            if began.elapsed() > Duration::from_secs(60) && stop.load(Ordering::SeqCst) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        account.answers.insert(content, answers);
        seq += 1;
        tokio::time::sleep(pause).await;
    }
    account
}

/// `at - from` in milliseconds, negative when `at` is earlier.
fn millis_between(from: Instant, at: Instant) -> i64 {
    match at.checked_duration_since(from) {
        Some(d) => i64::try_from(d.as_millis()).unwrap_or(i64::MAX),
        None => -i64::try_from(from.duration_since(at).as_millis()).unwrap_or(i64::MAX),
    }
}

/// `urls` starting with node `first` (1-3).
fn rotate(urls: &[String], first: u8) -> Vec<String> {
    let start = usize::from(first - 1);
    (0..urls.len())
        .map(|i| urls[(start + i) % urls.len()].clone())
        .collect()
}

/// The node (1-3) leading shard `shard` of `ns`.
pub fn shard_leader(c: &Clusters, ns: &Namespace, shard: usize) -> u8 {
    let queue = format!("{ns}.raw.{shard}");
    let (ok, listing) = c.rabbitmqctl(
        2,
        &["list_queues", "name", "leader", "--no-table-headers", "-q"],
    );
    assert!(ok, "{listing}");
    listing
        .lines()
        .filter_map(|l| l.split_once(char::is_whitespace))
        .find(|(name, _)| *name == queue)
        .and_then(|(_, leader)| {
            let leader = leader.trim();
            leader
                .strip_prefix("wxpipe-c")?
                .split('@')
                .next()?
                .parse()
                .ok()
        })
        .unwrap_or_else(|| panic!("no leader listed for {queue}: {listing}"))
}

/// Where the lost pushes are, for the report: in a shard (never consumed), in `{ns}.dead`
/// (dead-lettered), their dedup keys (`done`: the event was confirmed; a claim: a worker holds
/// it; none: no worker finished it) — beside one delivered push's key, which must read `done`
/// — and every answer their senders got.
async fn whereabouts(
    c: &Clusters,
    url: &str,
    ns: &Namespace,
    shards: RawShards,
    lost: &[String],
    sent: &BTreeMap<String, Account>,
    accepted: &[&String],
) -> String {
    let nonces: Vec<String> = lost.iter().map(|m| m.replace(':', "-")).collect();
    let mut out = String::new();
    for queue in shards.queues(ns).into_iter().chain([ns.dead()]) {
        let held = drain_at(url, &queue, Duration::from_millis(300))
            .await
            .unwrap_or_default();
        let hits = held
            .iter()
            .filter(|m| m.headers.get("nonce").is_some_and(|n| nonces.contains(n)))
            .count();
        let _ = write!(
            out,
            "{queue}: {} messages, {hits} of the lost; ",
            held.len()
        );
    }
    let pool = common::redis::pool(&c.redis_cluster_url).expect("a Redis Cluster pool");
    let keys = common::redis::Keys::new(ns, crate::test_platform::COMPONENT_APPID);
    let delivered = accepted
        .iter()
        .find(|a| !lost.contains(a))
        .map(|a| (*a).clone());
    for m in lost.iter().take(5).chain(delivered.iter()) {
        // `{tag}:{appid}:{seq}` is the text message 7_000_000_000 + seq of that account.
        let mut parts = m.split(':');
        let (appid, seq) = (parts.nth(1).unwrap_or(""), parts.next().unwrap_or(""));
        let seq: u64 = seq.parse().unwrap_or(0);
        let key = keys.dedup(&format!("authorizer:{appid}:msg:{}", 7_000_000_000 + seq));
        let state: Option<String> = match pool.get().await {
            Ok(mut redis) => deadpool_redis::redis::cmd("GET")
                .arg(&key)
                .query_async(&mut redis)
                .await
                .unwrap_or(None),
            Err(_) => None,
        };
        let answers = sent
            .get(appid)
            .and_then(|a| a.answers.get(m))
            .cloned()
            .unwrap_or_default();
        let role = if lost.contains(m) {
            "lost"
        } else {
            "delivered"
        };
        let _ = write!(
            out,
            "{role} {m}: dedup key {state:?}, answers (ms after the fault, status) {answers:?}; "
        );
    }
    out
}

/// `step`, or a panic naming it after `secs` seconds.
pub async fn bounded<T>(secs: u64, what: &str, step: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(secs), step)
        .await
        .unwrap_or_else(|_| panic!("{what} took more than {secs} s"))
}

/// The median and range of `values`, as "median (min–max)".
pub fn median_range(values: &mut [Duration]) -> String {
    if values.is_empty() {
        return "-".into();
    }
    values.sort();
    let median = values[values.len() / 2];
    format!(
        "{:.1} s ({:.1}–{:.1})",
        median.as_secs_f64(),
        values[0].as_secs_f64(),
        values[values.len() - 1].as_secs_f64()
    )
}
