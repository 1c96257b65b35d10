//! wxpipe on the local clusters of `scripts/cluster` (skipped, saying why, when they are not up):
//! the whole pipeline on a 3-node RabbitMQ cluster with a 3-shard intake, and its Redis on the
//! Redis Cluster (the decrypt workers' dedup, the ingress's readiness), while a RabbitMQ node is
//! SIGKILLed and restarted.

use common::amqp::RawShards;
use std::time::Duration;
use wxpipe_tests::broker::TestNs;
use wxpipe_tests::cluster::Clusters;
use wxpipe_tests::harness::{IngressHandle, test_config};
use wxpipe_tests::intake;
use wxpipe_tests::node_loss::{self, Plan, bounded};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_killed_rabbitmq_node_costs_no_accepted_push() {
    let Some(c) = Clusters::find("a_killed_rabbitmq_node_costs_no_accepted_push") else {
        return;
    };
    wxpipe_tests::log_to_test_output("warn");
    // The node leading shard 0, which every role is connected to, SIGKILLed for 4 s under
    // steady load (wxpipe_tests::node_loss; `scripts/node-loss` repeats it, longer).
    let report = bounded(600, "the node-loss run", node_loss::run(&c, &Plan::quick())).await;
    eprintln!(
        "cluster: node {} killed; {} pushes accepted, {} answers other than success (retried), \
         refusal window per shard {:?}, {} published twice (same id)",
        report.node, report.accepted, report.refused, report.windows, report.duplicated
    );
    assert!(
        report.lost.is_empty(),
        "{} accepted pushes never became events, e.g. {:?}; {}",
        report.lost.len(),
        report.lost.iter().take(5).collect::<Vec<_>>(),
        report.evidence
    );
    assert!(
        report.split.is_empty(),
        "pushes published under two ids: {:?}",
        report.split
    );
    // Every shard takes pushes again within 5 s of the kill (docs/robustness.md: a channel
    // stuck on a killed leader is replaced, common::amqp::stuck).
    assert!(
        report.worst_window() <= Duration::from_secs(5),
        "a shard refused pushes for {:?} after the kill: {:?}",
        report.worst_window(),
        report.windows
    );

    // Per-account order within a shard, on the healed cluster: with no worker running, each
    // account's pushes wait in one shard in the order they were answered.
    let urls = c.amqp_urls();
    let t = TestNs::on("t-cluster", &c.amqp_url);
    let _keys = c.delete_keys_on_drop(&format!("{}:", t.ns));
    let shards = RawShards::new(3).unwrap();
    let mut config = test_config(&t.ns, urls.clone());
    config.raw_shards = shards;
    config.redis_url = c.redis_cluster_url.clone();
    let ingress = IngressHandle::start(config).await;
    assert!(ingress.wait_ready(Duration::from_secs(30)).await);
    let accounts = intake::appids(12);
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
