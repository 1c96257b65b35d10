//! Coalesced acknowledgements on the wire (`common::amqp::acks`), through a real
//! `workers decrypt` process. A test binary of its own: how many acks share a frame depends on
//! how promptly the worker is scheduled, so no sibling test shares the cores with it.

use common::event::CloudEvent;
use std::collections::HashSet;
use std::time::Duration;
use wxpipe_tests::broker::{TestNs, bind_queue, collect, message_count};
use wxpipe_tests::harness::{eventually, free_port, spawn_decrypt_process};
use wxpipe_tests::intake::queue_burst;

/// Draining a backlog, the worker acknowledges many deliveries per `basic.ack(multiple)` frame
/// (one frame per delivery cost the broker more CPU per message; README, Performance), and
/// after SIGTERM no delivery was left unacknowledged: the raw queue stays empty once the
/// connection is closed, where an unacked delivery would come back.
///
/// Before: a delivery counted as stuck — and the acks behind it went one by one — 25 ms after
/// its arrival, which in a full prefetch window every delivery waiting its turn was: this
/// backlog took 298 frames, 289 of them single.
///
/// The same backlog also shows the consumer's linger (`WXPIPE_DECRYPT_LINGER_US`, README,
/// "Workers"): with the default, deliveries are handed to their handlers in batches (counted by
/// `wxpipe_amqp_delivery_batches_total`); with 0, one by one.
#[tokio::test]
async fn a_backlog_is_handed_over_and_acknowledged_in_batches() {
    const N: u64 = 600;
    let lingering = drain_backlog("t-acks-backlog", N, &[]).await;
    eprintln!(
        "default linger: {} batches, {} ack frames",
        lingering.batches, lingering.ack_frames
    );
    assert!(
        lingering.batches >= 1.0 && lingering.batches <= (N / 4) as f64,
        "{N} deliveries were handed over in {} batches (at most {} expected)",
        lingering.batches,
        N / 4
    );
    let at_once = drain_backlog("t-acks-at-once", N, &[("WXPIPE_DECRYPT_LINGER_US", "0")]).await;
    eprintln!(
        "no linger: {} batches, {} ack frames",
        at_once.batches, at_once.ack_frames
    );
    assert_eq!(
        at_once.batches, N as f64,
        "without a linger every delivery is handed over on its own"
    );
}

struct Drained {
    /// `basic.ack` frames sent.
    ack_frames: f64,
    /// Batches of deliveries handed to handlers.
    batches: f64,
}

/// Queues `n` pushes, drains them with a `workers decrypt` process (with `env`), checks that
/// every one became an event, that acks shared frames (at most `n / 4`) and that nothing comes
/// back after SIGTERM; what its metrics counted.
async fn drain_backlog(name: &str, n: u64, env: &[(&str, &str)]) -> Drained {
    let t = TestNs::new(name);
    let events = t.queue("all");
    bind_queue(&events, &t.ns.events(), &["#"]).await.unwrap();
    queue_burst(&t.ns, n, 300_000, "backlog").await;
    let metrics_addr = format!("127.0.0.1:{}", free_port());
    let mut env = env.to_vec();
    env.push(("WXPIPE_METRICS_ADDR", metrics_addr.as_str()));
    let mut worker = spawn_decrypt_process(&t, &env);
    let mut ids = HashSet::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while ids.len() < n as usize && tokio::time::Instant::now() < deadline {
        for m in collect(&events, 1, Duration::from_millis(200))
            .await
            .unwrap()
        {
            let event: CloudEvent = serde_json::from_slice(&m.body).expect("a CloudEvent");
            ids.insert(event.id);
        }
    }
    assert_eq!(ids.len(), n as usize, "every queued push became an event");
    let url = format!("http://{metrics_addr}/metrics");
    let published = "wxpipe_decrypt_messages_total{outcome=\"published\"}";
    let exposition = eventually(Duration::from_secs(10), "every push counted", || {
        let url = url.clone();
        async move {
            let text = wxpipe_tests::get_text(url).await;
            (wxpipe_tests::metric_value(&text, published) == Some(n as f64)).then_some(text)
        }
    })
    .await;
    let ack_frames: f64 = ["multiple", "single"]
        .iter()
        .filter_map(|kind| {
            let series = format!("wxpipe_amqp_ack_frames_total{{kind=\"{kind}\"}}");
            wxpipe_tests::metric_value(&exposition, &series)
        })
        .sum();
    let batches = wxpipe_tests::metric_value(&exposition, "wxpipe_amqp_delivery_batches_total")
        .unwrap_or(0.0);
    assert!(
        ack_frames >= 1.0 && ack_frames <= (n / 4) as f64,
        "{n} deliveries were acknowledged in {ack_frames} frames (at most {} expected):\n{exposition}",
        n / 4
    );
    let status = worker.terminate(Duration::from_secs(15)).await;
    assert!(
        status.is_some_and(|s| s.success()),
        "the worker exited with {status:?} after SIGTERM"
    );
    assert_eq!(
        message_count(&t.ns.raw()).await.unwrap(),
        0,
        "a delivery came back to the raw queue: it was never acknowledged"
    );
    Drained {
        ack_frames,
        batches,
    }
}
