//! wxpipe on the local clusters of `scripts/cluster` (skipped, saying why, when they are not up):
//! the whole pipeline on a 3-node RabbitMQ cluster with a 3-shard intake, and its Redis on the
//! Redis Cluster (the decrypt workers' dedup, the ingress's readiness), while a RabbitMQ node is
//! SIGKILLed and restarted.

use common::amqp::RawShards;
use common::event::CloudEvent;
use std::collections::HashMap;
use std::time::Duration;
use wxpipe_tests::broker::{TestNs, bind_quorum_queue_at, drain_at, drain_into};
use wxpipe_tests::cluster::Clusters;
use wxpipe_tests::harness::{IngressHandle, decrypt_config, spawn_decrypt, test_config};
use wxpipe_tests::intake;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_killed_rabbitmq_node_costs_no_accepted_push() {
    let Some(c) = Clusters::find("a_killed_rabbitmq_node_costs_no_accepted_push") else {
        return;
    };
    wxpipe_tests::log_to_test_output("warn");
    let urls = c.amqp_urls();
    let t = TestNs::on("t-cluster", &c.amqp_url);
    let _keys = c.delete_keys_on_drop(&format!("{}:", t.ns));
    let shards = RawShards::new(3).unwrap();
    // A downstream team's quorum queue, declared through node 2 (node 1 is the one killed).
    let downstream = t.queue("downstream");
    bind_quorum_queue_at(&urls[1], &downstream, &t.ns.events(), &["authorizer.#"])
        .await
        .unwrap();

    // Every role is given all three nodes and tries them in order: all start on node 1.
    let mut config = test_config(&t.ns, urls.clone());
    config.raw_shards = shards;
    config.redis_url = c.redis_cluster_url.clone();
    let ingress = IngressHandle::start(config).await;
    assert!(ingress.wait_ready(Duration::from_secs(30)).await);
    let decrypters: Vec<_> = (0..2)
        .map(|_| {
            let mut d = decrypt_config(&t.ns);
            d.amqp_urls = urls.clone();
            d.redis_url = c.redis_cluster_url.clone();
            d.raw_shards = shards;
            d.shards = vec![0, 1, 2];
            spawn_decrypt(d)
        })
        .collect();

    // The shards' leaders are spread over the nodes: the balanced leader locator usually does
    // it, and when it did not (it counts every queue of the node, other tests' too), the
    // quorum queues are rebalanced.
    let pattern = format!("^{}\\.raw\\.", t.ns);
    let mut leaders = shard_leaders(&c, &t.ns);
    for _ in 0..5 {
        if leaders.len() >= 2 {
            break;
        }
        let (ok, out) = c.rabbitmq_queues(2, &["rebalance", "quorum", "--queue-pattern", &pattern]);
        assert!(ok, "rebalancing the shards: {out}");
        tokio::time::sleep(Duration::from_secs(1)).await;
        leaders = shard_leaders(&c, &t.ns);
    }
    assert!(
        leaders.len() >= 2,
        "shard leaders all on one node after rebalancing: {leaders:?}"
    );

    // Steady load: 12 accounts, one push each every 40 ms (each retried until `success`, as
    // WeChat retries), while node 1 is SIGKILLed, then restarted.
    let accounts = intake::appids(12);
    const N: usize = 120;
    let load = tokio::spawn({
        let (base, accounts) = (ingress.url(""), accounts.clone());
        async move { intake::send_all(&base, &accounts, N, "k", 100, Duration::from_millis(40)).await }
    });
    tokio::time::sleep(Duration::from_secs(2)).await;
    c.kill_rabbit(1);
    tokio::time::sleep(Duration::from_secs(4)).await;
    c.start_rabbit(1);
    // Every step that waits on the system is bounded, so that a stall fails this test with a
    // message rather than hanging the whole test command.
    let sent = bounded(180, "the load (every push answered success)", load)
        .await
        .unwrap();
    let accepted: Vec<&String> = sent.values().flat_map(|s| &s.accepted).collect();
    let refused: usize = sent.values().map(|s| s.refused).sum();
    eprintln!(
        "cluster: {} pushes accepted, {refused} answers other than success (retried)",
        accepted.len()
    );
    assert_eq!(
        accepted.len(),
        accounts.len() * N,
        "every push accepted in the end"
    );

    // Every accepted push becomes an event. A node's death can lose a confirm after the event
    // was stored, so a push may be published twice (dedup.rs: "after a crash, a duplicate
    // carries the same id"): then both copies must carry one id.
    let mut events: HashMap<String, Vec<String>> = HashMap::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    while accepted.iter().any(|a| !events.contains_key(*a))
        && tokio::time::Instant::now() < deadline
    {
        // Messages are taken without acknowledgement: keep what was taken even when the drain
        // fails or stalls (node 1 rejoining), else the test itself would lose events.
        let mut taken = Vec::new();
        let drained = tokio::time::timeout(
            Duration::from_secs(10),
            drain_into(
                &urls[1],
                &downstream,
                Duration::from_millis(200),
                &mut taken,
            ),
        )
        .await;
        if !matches!(drained, Ok(Ok(()))) {
            eprintln!("cluster: a drain of the downstream queue failed: {drained:?}");
        }
        for m in taken {
            let e: CloudEvent = serde_json::from_slice(&m.body).unwrap();
            let content = e.data["Content"].as_str().unwrap_or_default().to_owned();
            events.entry(content).or_default().push(e.id);
        }
    }
    let missing: Vec<&&String> = accepted
        .iter()
        .filter(|a| !events.contains_key(**a))
        .collect();
    if !missing.is_empty() {
        let whereabouts = whereabouts(&c, &t.ns, shards, &missing).await;
        panic!(
            "{} accepted pushes never became events, e.g. {:?}; {whereabouts}",
            missing.len(),
            missing.iter().take(5).collect::<Vec<_>>()
        );
    }
    let duplicated: Vec<&Vec<String>> = events.values().filter(|ids| ids.len() > 1).collect();
    assert!(
        duplicated
            .iter()
            .all(|ids| ids.iter().all(|id| *id == ids[0])),
        "a push published twice under two ids: {duplicated:?}"
    );
    eprintln!(
        "cluster: {} events, {} pushes published twice (same id)",
        events.len(),
        duplicated.len()
    );

    // Per-account order within a shard, on the healed cluster: with the workers stopped, each
    // account's pushes wait in one shard in the order they were answered.
    for d in decrypters {
        bounded(60, "a decrypt worker's stop", d.stop()).await;
    }
    const M: usize = 10;
    let base = ingress.url("");
    let ordered = intake::send_all(&base, &accounts, M, "o", 20, Duration::ZERO);
    let sent = bounded(60, "the ordered pushes", ordered).await;
    assert!(sent.values().all(|s| s.accepted.len() == M));
    let held = bounded(
        60,
        "draining the shards",
        intake::drain_shards(&urls[1], &t.ns, shards),
    )
    .await;
    held.assert_in_order(&accounts, M);
    bounded(60, "the ingress's stop", ingress.stop())
        .await
        .unwrap();
}

/// The nodes leading `ns`'s shard queues.
fn shard_leaders(c: &Clusters, ns: &common::ids::Namespace) -> std::collections::HashSet<String> {
    let (ok, listing) = c.rabbitmqctl(
        2,
        &["list_queues", "name", "leader", "--no-table-headers", "-q"],
    );
    assert!(ok, "{listing}");
    listing
        .lines()
        .filter(|l| l.starts_with(&format!("{ns}.raw.")))
        .filter_map(|l| l.split_whitespace().nth(1))
        .map(str::to_owned)
        .collect()
}

/// Where the missing pushes are, for the failure message: in a shard (never consumed), in
/// `{ns}.dead` (dead-lettered), and their dedup keys (`done`: the event was confirmed; a claim:
/// a worker holds it; none: no worker finished it).
async fn whereabouts(
    c: &Clusters,
    ns: &common::ids::Namespace,
    shards: RawShards,
    missing: &[&&String],
) -> String {
    let url = &c.amqp_urls()[1];
    let nonces: Vec<String> = missing.iter().map(|m| m.replace(':', "-")).collect();
    let mut found = Vec::new();
    let queues = shards.queues(ns).into_iter().chain([ns.dead()]);
    for queue in queues {
        let held = drain_at(url, &queue, Duration::from_millis(300))
            .await
            .unwrap_or_default();
        let hits = held
            .iter()
            .filter(|m| m.headers.get("nonce").is_some_and(|n| nonces.contains(n)))
            .count();
        found.push(format!(
            "{queue}: {} messages, {hits} of the missing",
            held.len()
        ));
    }
    let pool = common::redis::pool(&c.redis_cluster_url).expect("a Redis Cluster pool");
    let mut redis = pool.get().await.expect("a Redis Cluster connection");
    let keys = common::redis::Keys::new(ns, wxpipe_tests::test_platform::COMPONENT_APPID);
    for m in missing.iter().take(5) {
        // `{tag}:{appid}:{seq}` is the text message 7_000_000_000 + seq of that account.
        let mut parts = m.split(':');
        let (appid, seq) = (parts.nth(1).unwrap_or(""), parts.next().unwrap_or(""));
        let seq: u64 = seq.parse().unwrap_or(0);
        let key = keys.dedup(&format!("authorizer:{appid}:msg:{}", 7_000_000_000 + seq));
        let state: Option<String> = deadpool_redis::redis::cmd("GET")
            .arg(&key)
            .query_async(&mut redis)
            .await
            .unwrap_or(None);
        found.push(format!("{m}: dedup key {state:?}"));
    }
    found.join("; ")
}

/// `step`, or a panic naming it after `secs` seconds.
async fn bounded<T>(secs: u64, what: &str, step: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(secs), step)
        .await
        .unwrap_or_else(|_| panic!("{what} took more than {secs} s"))
}
