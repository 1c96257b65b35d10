//! The sharded intake (`WXPIPE_RAW_SHARDS`) on the test broker: each account's pushes land in one
//! shard in the order they were answered, the shards are all used, decrypt workers consume every
//! shard (or the subset they are given), and a dead letter is replayed into its own shard.

use common::amqp::RawShards;
use common::event::CloudEvent;
use std::collections::HashSet;
use std::time::Duration;
use workers::dlq::letters::{DeadLetters, Filter};
use wxpipe_tests::broker::{TestNs, bind_queue, collect, message_count};
use wxpipe_tests::harness::{IngressHandle, decrypt_config, spawn_decrypt, test_config};
use wxpipe_tests::intake::{self, GH};
use wxpipe_tests::push::{PushBuilder, text_message, ticket_event};
use wxpipe_tests::{amqp_url, test_platform};

async fn sharded_ingress(t: &TestNs, shards: RawShards) -> IngressHandle {
    let mut config = test_config(&t.ns, vec![amqp_url()]);
    config.raw_shards = shards;
    let ingress = IngressHandle::start(config).await;
    assert!(
        ingress.wait_ready(Duration::from_secs(15)).await,
        "the ingress never became ready (is rabbitmq_consistent_hash_exchange enabled? \
         scripts/test enables it)"
    );
    ingress
}

fn base(ingress: &IngressHandle) -> String {
    ingress.url("")
}

fn all_accepted(sent: &std::collections::BTreeMap<String, intake::Sent>, n: usize) -> bool {
    sent.values()
        .all(|s| s.accepted.len() == n && s.refused == 0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn each_account_lands_in_one_shard_in_order_and_every_shard_is_consumed() {
    let t = TestNs::new("t-shards");
    let shards = RawShards::new(3).unwrap();
    let ingress = sharded_ingress(&t, shards).await;
    let accounts = intake::appids(12);
    const N: usize = 15;
    let sent = intake::send_all(&base(&ingress), &accounts, N, "a", 1, Duration::ZERO).await;
    assert!(all_accepted(&sent, N), "{sent:?}");
    // The platform's own pushes have a shard too.
    let b = PushBuilder::test_platform();
    let now = common::unix_now();
    let ticket = b.component(
        &ticket_event(test_platform::COMPONENT_APPID, now, "t-1"),
        now,
        "component-ticket",
    );
    let r = wxpipe_tests::http()
        .post(ingress.url(&format!("/wechat/component?{}", ticket.query)))
        .body(ticket.body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    // Every account's pushes in one shard, in the order they were sent; every shard used.
    let held = intake::drain_shards(&amqp_url(), &t.ns, shards).await;
    assert!(
        held.component_in.is_some(),
        "the component push is in no shard"
    );
    held.assert_in_order(&accounts, N);
    assert!(
        held.per_shard.iter().all(|n| *n > 0),
        "every shard takes some accounts: {:?}",
        held.per_shard
    );
    assert_eq!(
        message_count(&t.ns.raw()).await.ok(),
        None,
        "no unsharded {{ns}}.raw queue is declared when K > 1"
    );

    // Decrypt workers: one takes shards 0 and 1, another shard 2; every push becomes an event.
    let events = t.queue("events");
    bind_queue(&events, &t.ns.events(), &["authorizer.#"])
        .await
        .unwrap();
    let mut first = decrypt_config(&t.ns);
    first.raw_shards = shards;
    first.shards = vec![0, 1];
    let mut second = first.clone();
    second.shards = vec![2];
    let workers = [spawn_decrypt(first), spawn_decrypt(second)];
    let sent = intake::send_all(&base(&ingress), &accounts, 5, "b", 1, Duration::ZERO).await;
    assert!(all_accepted(&sent, 5), "{sent:?}");
    let got = collect(&events, accounts.len() * 5, Duration::from_secs(30))
        .await
        .unwrap();
    let contents: HashSet<String> = got
        .iter()
        .map(|m| {
            let e: CloudEvent = serde_json::from_slice(&m.body).unwrap();
            e.data["Content"].as_str().unwrap_or_default().to_owned()
        })
        .collect();
    assert_eq!(contents.len(), accounts.len() * 5, "one event per push");
    assert!(contents.iter().all(|c| c.starts_with("b:")));
    for queue in shards.queues(&t.ns) {
        assert_eq!(message_count(&queue).await.unwrap(), 0, "{queue} drained");
    }
    for w in workers {
        w.stop().await;
    }
    ingress.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_dead_letter_is_replayed_into_its_own_shard() {
    let t = TestNs::new("t-shards-dlq");
    let shards = RawShards::new(3).unwrap();
    let ingress = sharded_ingress(&t, shards).await;
    let mut config = decrypt_config(&t.ns);
    config.raw_shards = shards;
    config.shards = vec![0, 1, 2];
    let worker = spawn_decrypt(config);

    // A push whose envelope names another account's gh_id… is fine; one whose ciphertext is
    // not the platform's is poison. Build it with another platform's key, signed with ours.
    let appid = &intake::appids(4)[3];
    let now = common::unix_now();
    let other = PushBuilder::new(
        test_platform::TOKEN,
        "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG",
        "wx00000000000000aa",
    );
    let push = other.authorizer(
        GH,
        "o-user",
        &text_message(GH, "o-user", now, "poison", 1),
        now,
        "poison-nonce",
    );
    let r = wxpipe_tests::http()
        .post(ingress.url(&format!("/wechat/authorizers/{appid}?{}", push.query)))
        .body(push.body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "the ingress only checks the signature");

    let letters = DeadLetters::connect(&[amqp_url()], &t.ns, "test")
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while letters.depth().await.unwrap() == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the poison push was not dead-lettered"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let listing = letters.list().await.unwrap();
    let source = listing.groups[0].source.clone();
    assert!(
        source.starts_with(&format!("{}.raw.", t.ns)),
        "dead-lettered from a shard, not {source}"
    );
    // Replay with the worker stopped: the letter must wait in the shard it came from.
    worker.stop().await;
    let report = letters
        .replay(&Filter::default(), false, &|_, _| {})
        .await
        .unwrap();
    assert_eq!(report.replayed, 1, "{report:?}");
    for queue in shards.queues(&t.ns) {
        let expected = u32::from(queue == source);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while message_count(&queue).await.unwrap() != expected
            && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(message_count(&queue).await.unwrap(), expected, "{queue}");
    }
    letters.close().await;
    ingress.stop().await.unwrap();
}

#[tokio::test]
async fn a_shard_count_that_disagrees_with_the_broker_is_named() {
    // K = 1 first declares `{ns}.raw` as a direct exchange; K = 3 on the same namespace must say
    // what to do rather than fail with a bare broker error.
    let t = TestNs::new("t-shards-mismatch");
    let conn = wxpipe_tests::broker::connect().await.unwrap();
    common::amqp::topology::declare(
        &conn,
        &t.ns,
        &common::amqp::topology::Part::Raw(RawShards::ONE),
    )
    .await
    .unwrap();
    let conn = wxpipe_tests::broker::connect().await.unwrap();
    let e = common::amqp::topology::declare(
        &conn,
        &t.ns,
        &common::amqp::topology::Part::Raw(RawShards::new(3).unwrap()),
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("WXPIPE_RAW_SHARDS=3") && e.contains("docs/scaling-out.md"),
        "{e}"
    );
}
