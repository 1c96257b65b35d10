//! A publisher confirm belongs to the publish it answers, however many tasks share a channel
//! (issue 38: a push answered `success` was lost through a node kill).
//!
//! lapin numbers a confirm-mode publish (its delivery tag) and queues its frames in two steps
//! under two different locks; the broker numbers publishes in the order their frames arrive. Two
//! threads publishing on one channel at once can therefore be numbered in one order and sent
//! in the other, and the broker's ack for one then settles the other's confirm. While every
//! publish is acked nobody notices; when a queue refuses publishes (a quorum queue whose leader
//! changed under the channel nacks every publish to it — docs/robustness.md), a refused
//! publish can be told "acked" — the ingress answered `success` for a push nobody stored —
//! and a stored one "nacked".
//!
//! This test makes the broker answer both ways on one channel at once: queue `ok` takes every
//! message, queue `full` (`x-max-length = 0`, `x-overflow = reject-publish`) refuses every
//! one. Many tasks on a multi-threaded runtime publish through `publish_on` — the one confirmed
//! publish of wxpipe — to both, while other threads keep the cores busy so that a publishing
//! thread is preempted between the two steps; then every answer must match its queue, and `ok`
//! must hold exactly the messages answered `Ok`.

use common::amqp::PublishError;
use common::amqp::publisher::{ConfirmChannel, Routing, publish_on};
use lapin::options::{ConfirmSelectOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Connection, ConnectionProperties};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;
use wxpipe_tests::broker::{TestNs, message_count};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_confirm_answers_its_own_publish_on_a_shared_channel() {
    let t = TestNs::new("t-confirm");
    let (ok, full) = (t.queue("ok"), t.queue("full"));
    let conn = Connection::connect(&wxpipe_tests::amqp_url(), ConnectionProperties::default())
        .await
        .expect("the broker");
    let setup = conn.create_channel().await.unwrap();
    let durable = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    setup
        .queue_declare(ok.as_str().into(), durable, FieldTable::default())
        .await
        .unwrap();
    let mut refusing = FieldTable::default();
    refusing.insert("x-max-length".into(), AMQPValue::LongLongInt(0));
    refusing.insert(
        "x-overflow".into(),
        AMQPValue::LongString("reject-publish".into()),
    );
    setup
        .queue_declare(full.as_str().into(), durable, refusing)
        .await
        .unwrap();

    let ch = conn.create_channel().await.unwrap();
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let ch = Arc::new(ConfirmChannel::new(ch));

    // Keep a core busy, so that publishing threads are preempted at any instruction (one
    // core only: the tests running beside this one need the other).
    let burning = Arc::new(AtomicBool::new(true));
    let burners: Vec<_> = (0..1)
        .map(|_| {
            let burning = burning.clone();
            std::thread::spawn(move || {
                let mut x = 0u64;
                while burning.load(Ordering::Relaxed) {
                    x = std::hint::black_box(x.wrapping_mul(6_364_136_223_846_793_005) + 1);
                }
            })
        })
        .collect();

    const TASKS: usize = 16;
    const EACH: usize = 1_500;
    let acked_ok = Arc::new(AtomicUsize::new(0));
    let wrong = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let mut tasks = tokio::task::JoinSet::new();
    for task in 0..TASKS {
        let (ch, ok, full) = (ch.clone(), ok.clone(), full.clone());
        let (acked_ok, wrong) = (acked_ok.clone(), wrong.clone());
        tasks.spawn(async move {
            for i in 0..EACH {
                let refused = (task + i) % 2 == 0;
                let queue = if refused { &full } else { &ok };
                let body = format!("{task}:{i}");
                let result = publish_on(
                    &ch,
                    "",
                    queue,
                    body.as_bytes(),
                    BasicProperties::default(),
                    Routing::Mandatory,
                    Duration::from_secs(10),
                )
                .await;
                match (refused, result) {
                    (false, Ok(())) => {
                        acked_ok.fetch_add(1, Ordering::Relaxed);
                    }
                    (true, Err(PublishError::Nacked)) => {}
                    (refused, other) => wrong.lock().unwrap().push(format!(
                        "{body} to {} answered {other:?}",
                        if refused { "full" } else { "ok" }
                    )),
                }
            }
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.expect("a publishing task");
    }
    burning.store(false, Ordering::Relaxed);
    for b in burners {
        let _ = b.join();
    }
    let wrong = wrong.lock().unwrap().clone();
    let stored = message_count(&ok).await.unwrap() as usize;
    let _ = conn.close(200, "done".into()).await;
    assert!(
        wrong.is_empty(),
        "{} of {} confirms answered another publish, e.g. {:?}; `ok` holds {stored}, {} answered Ok",
        wrong.len(),
        TASKS * EACH,
        &wrong[..wrong.len().min(5)],
        acked_ok.load(Ordering::Relaxed)
    );
    assert_eq!(stored, acked_ok.load(Ordering::Relaxed));
}
