//! wxpipe on the local clusters of `scripts/cluster` (skipped, saying why, when they are not up):
//! the whole pipeline on a 3-node RabbitMQ cluster with a 3-shard intake, and its Redis on the
//! Redis Cluster (the decrypt workers' dedup, the ingress's readiness), while a RabbitMQ node is
//! SIGKILLed and restarted.

use common::amqp::RawShards;
use common::event::CloudEvent;
use std::collections::HashMap;
use std::time::Duration;
use wxpipe_tests::broker::{TestNs, bind_quorum_queue_at, drain_at};
use wxpipe_tests::cluster::Clusters;
use wxpipe_tests::harness::{IngressHandle, decrypt_config, spawn_decrypt, test_config};
use wxpipe_tests::intake;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_killed_rabbitmq_node_costs_no_accepted_push() {
    let Some(c) = Clusters::find("a_killed_rabbitmq_node_costs_no_accepted_push") else {
        return;
    };
    let urls = c.amqp_urls();
    let t = TestNs::on("t-cluster", &c.amqp_url);
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

    // The shards' leaders are spread over the nodes (the balanced leader locator).
    let (ok, listing) = c.rabbitmqctl(
        2,
        &["list_queues", "name", "leader", "--no-table-headers", "-q"],
    );
    assert!(ok, "{listing}");
    let leaders: std::collections::HashSet<&str> = listing
        .lines()
        .filter(|l| l.starts_with(&format!("{}.raw.", t.ns)))
        .filter_map(|l| l.split_whitespace().nth(1))
        .collect();
    assert!(
        leaders.len() >= 2,
        "shard leaders all on one node: {listing}"
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
    let sent = load.await.unwrap();
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
        for m in drain_at(&urls[1], &downstream, Duration::from_millis(200))
            .await
            .unwrap_or_default()
        {
            let e: CloudEvent = serde_json::from_slice(&m.body).unwrap();
            let content = e.data["Content"].as_str().unwrap_or_default().to_owned();
            events.entry(content).or_default().push(e.id);
        }
    }
    let missing: Vec<&&String> = accepted
        .iter()
        .filter(|a| !events.contains_key(**a))
        .collect();
    assert!(
        missing.is_empty(),
        "{} accepted pushes never became events, e.g. {:?}",
        missing.len(),
        missing.iter().take(5).collect::<Vec<_>>()
    );
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
        d.stop().await;
    }
    const M: usize = 10;
    let sent = intake::send_all(&ingress.url(""), &accounts, M, "o", 20, Duration::ZERO).await;
    assert!(sent.values().all(|s| s.accepted.len() == M));
    let held = intake::drain_shards(&urls[1], &t.ns, shards).await;
    held.assert_in_order(&accounts, M);
    ingress.stop().await.unwrap();
    c.delete_cluster_keys(&format!("{}:", t.ns)).await;
}
