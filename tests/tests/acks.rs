//! Deliveries handed over and acknowledged in batches (`common::amqp::consumer`'s linger,
//! `common::amqp::acks`), through a real `workers decrypt` process. A test binary of its own,
//! whose tests run one at a time ([`ONE_AT_A_TIME`]): how many acks share a frame depends on
//! how promptly the worker is scheduled, so no other test shares the cores with it.

use common::event::CloudEvent;
use std::collections::HashSet;
use std::time::Duration;
use wxpipe_tests::broker::{TestNs, bind_queue, collect, message_count};
use wxpipe_tests::harness::{
    ChildProcess, eventually, free_port, ready_within, spawn_decrypt_process,
};
use wxpipe_tests::intake::{Burst, queue_burst};

/// Held by each test for its whole run. Run side by side, the linger test's worker starting up
/// (twice) took the cores from the backlog's drain: a handler delayed past `acks::STUCK` sends
/// every ack behind it on its own, and 12 runs of this binary measured 21 – 149 frames for the
/// backlog (168 in one CI run), against 18 – 33 in 12 runs of the backlog test alone and 18 – 34
/// in 12 runs of the binary with this lock.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Draining a backlog, the worker acknowledges many deliveries per `basic.ack(multiple)` frame
/// (one frame per delivery cost the broker more CPU per message; docs/performance.md), hands
/// them to their handlers in batches (every delivery already received at once, counted by
/// `wxpipe_amqp_delivery_batches_total`), and after SIGTERM no delivery was left
/// unacknowledged: the raw queue stays empty once the connection is closed, where an unacked
/// delivery would come back.
///
/// Before: a delivery counted as stuck — and the acks behind it went one by one — 25 ms after
/// its arrival, which in a full prefetch window every delivery waiting its turn was: this
/// backlog took 298 frames, 289 of them single.
#[tokio::test]
async fn a_backlog_is_handed_over_and_acknowledged_in_batches() {
    let _alone = ONE_AT_A_TIME.lock().await;
    const N: u64 = 600;
    let t = TestNs::new("t-acks-backlog");
    let events = events_queue(&t).await;
    queue_burst(&t.ns, N, 300_000, "backlog").await;
    let (worker, metrics_addr) = start_worker(&t, &[]);
    let drained = finish(&t, &events, N, worker, &metrics_addr).await;
    eprintln!(
        "{N} deliveries: {} batches, {} ack frames ({} single)",
        drained.batches, drained.ack_frames, drained.single_frames
    );
    assert!(
        drained.ack_frames >= 1.0 && drained.ack_frames <= (N / 4) as f64,
        "{N} deliveries were acknowledged in {} frames, {} of them single (at most {} expected)",
        drained.ack_frames,
        drained.single_frames,
        N / 4
    );
    assert!(
        drained.batches >= 1.0 && drained.batches <= (N / 4) as f64,
        "{N} deliveries were handed over in {} batches (at most {} expected)",
        drained.batches,
        N / 4
    );
}

/// A delivery arriving alone waits `WXPIPE_DECRYPT_LINGER_US` for company (docs/operating.md, "Workers"):
/// with 100 ms (the most it may be), one push and nine more queued 10 ms after its confirm are
/// handled as one batch; with 0 the first is handled on its own.
#[tokio::test]
async fn a_lone_delivery_lingers_for_company() {
    let _alone = ONE_AT_A_TIME.lock().await;
    for (linger, name) in [("100000", "t-acks-linger"), ("0", "t-acks-no-linger")] {
        let t = TestNs::new(name);
        let events = events_queue(&t).await;
        let (worker, metrics_addr) = start_worker(&t, &[("WXPIPE_DECRYPT_LINGER_US", linger)]);
        assert!(
            ready_within(&format!("http://{metrics_addr}"), Duration::from_secs(30)).await,
            "the worker did not become ready"
        );
        let burst = Burst::open(&t.ns).await;
        burst.queue(1, 400_000, "first").await;
        let first = std::time::Instant::now();
        tokio::time::sleep(Duration::from_millis(10)).await;
        burst.queue(9, 400_001, "then nine").await;
        eprintln!("the nine queued {:?} after the first", first.elapsed());
        burst.close().await;
        let drained = finish(&t, &events, 10, worker, &metrics_addr).await;
        eprintln!("linger {linger} µs: {} batches", drained.batches);
        if linger == "0" {
            assert!(
                drained.batches >= 2.0,
                "without a linger the first push is handled on its own ({} batches)",
                drained.batches
            );
        } else {
            assert_eq!(
                drained.batches, 1.0,
                "the first push waited for the nine and they were handled together"
            );
        }
    }
}

struct Drained {
    /// `basic.ack` frames sent.
    ack_frames: f64,
    /// Of those, the ones acknowledging one delivery on its own (behind a stuck one, or at
    /// shutdown).
    single_frames: f64,
    /// Batches of deliveries handed to handlers.
    batches: f64,
}

/// A `workers decrypt` process on `t` (with `env`) serving its metrics, and where.
fn start_worker(t: &TestNs, env: &[(&str, &str)]) -> (ChildProcess, String) {
    let metrics_addr = format!("127.0.0.1:{}", free_port());
    let mut env = env.to_vec();
    env.push(("WXPIPE_METRICS_ADDR", metrics_addr.as_str()));
    (spawn_decrypt_process(t, &env), metrics_addr)
}

/// A queue of every event of `t`, bound before anything is pushed.
async fn events_queue(t: &TestNs) -> String {
    let events = t.queue("all");
    bind_queue(&events, &t.ns.events(), &["#"]).await.unwrap();
    events
}

/// Waits until `n` pushes became `n` distinct events on `events` and were counted, stops
/// `worker` with SIGTERM (it must exit 0 and leave nothing unacknowledged on the raw queue);
/// what its metrics counted.
async fn finish(
    t: &TestNs,
    events: &str,
    n: u64,
    mut worker: ChildProcess,
    metrics_addr: &str,
) -> Drained {
    let mut ids = HashSet::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while ids.len() < n as usize && tokio::time::Instant::now() < deadline {
        for m in collect(events, 1, Duration::from_millis(200))
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
    let frames = |kind: &str| {
        let series = format!("wxpipe_amqp_ack_frames_total{{kind=\"{kind}\"}}");
        wxpipe_tests::metric_value(&exposition, &series).unwrap_or(0.0)
    };
    let single_frames = frames("single");
    let ack_frames = frames("multiple") + single_frames;
    let batches = wxpipe_tests::metric_value(&exposition, "wxpipe_amqp_delivery_batches_total")
        .unwrap_or(0.0);
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
        single_frames,
        batches,
    }
}
