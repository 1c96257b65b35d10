//! A purge deletes exactly the dead letters counted (issue 32), never one that died after the
//! count. Before: `queue.purge` deleted whatever the queue held by then.

use common::amqp::RawShards;
use common::amqp::topology::{self, Part};
use common::wire::dead::DeadLetter;
use lapin::BasicProperties;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use std::time::Duration;
use workers::dlq::DeadLetters;
use wxpipe_tests::broker::{TestNs, connect, drain};

/// Publishes `n` dead letters (bodies `{prefix}-{i}`, reasons alternating `r0`/`r1`, first
/// sent to `{ns}.raw` with the routing key `component`) straight to `{ns}.dead`, confirmed.
async fn letters(t: &TestNs, prefix: &str, n: usize) {
    let conn = connect().await.unwrap();
    let ch = conn.create_channel().await.unwrap();
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let queue = t.ns.dead();
    let mut pending = Vec::new();
    for i in 0..n {
        let info = DeadLetter {
            source_queue: t.ns.raw(),
            reason: format!("r{}", i % 2),
            detail: format!("letter {i}"),
            original_exchange: t.ns.raw(),
            original_routing_key: "component".into(),
            dead_at_ms: 1_700_000_000_000 + i as i64,
        };
        let props = info.apply(&BasicProperties::default().with_delivery_mode(2));
        let confirm = ch
            .basic_publish(
                "".into(),
                queue.as_str().into(),
                BasicPublishOptions::default(),
                format!("{prefix}-{i}").as_bytes(),
                props,
            )
            .await
            .unwrap();
        pending.push(confirm);
        if pending.len() == 5_000 {
            for c in pending.drain(..) {
                c.await.unwrap();
            }
        }
    }
    for c in pending {
        c.await.unwrap();
    }
    let _ = conn.close(200, "letters written".into()).await;
}

async fn topology_of(t: &TestNs) {
    let conn = connect().await.unwrap();
    topology::declare(&conn, &t.ns, &Part::Raw(RawShards::ONE))
        .await
        .unwrap();
    let _ = conn.close(200, "declared".into()).await;
}

fn bodies(taken: &[wxpipe_tests::broker::Taken]) -> Vec<String> {
    taken
        .iter()
        .map(|m| String::from_utf8_lossy(&m.body).into_owned())
        .collect()
}

#[tokio::test]
async fn a_purge_deletes_exactly_the_letters_counted() {
    let t = TestNs::new("t-dlq-purge");
    topology_of(&t).await;
    letters(&t, "letter", 1_200).await;
    let dlq = DeadLetters::connect(&[wxpipe_tests::amqp_url()], &t.ns, "t-dlq")
        .await
        .unwrap();
    assert_eq!(dlq.depth().await.unwrap(), 1_200);
    // Five letters die after an operator counted 1,200: the purge deletes those 1,200 only.
    letters(&t, "late", 5).await;
    assert_eq!(dlq.purge(1_200).await.unwrap(), 1_200);
    // Asking for more than there is deletes what there is, no more.
    let t2 = TestNs::new("t-dlq-purge-short");
    topology_of(&t2).await;
    letters(&t2, "few", 3).await;
    let short = DeadLetters::connect(&[wxpipe_tests::amqp_url()], &t2.ns, "t-dlq")
        .await
        .unwrap();
    assert_eq!(short.purge(10).await.unwrap(), 3);
    short.close().await;
    dlq.close().await;
    let left = bodies(
        &drain(&t.ns.dead(), Duration::from_millis(500))
            .await
            .unwrap(),
    );
    assert_eq!(left, ["late-0", "late-1", "late-2", "late-3", "late-4"]);
}
