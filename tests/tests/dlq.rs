//! Dead letters read in bounded memory (issue 32, item 6): `list`, `show` and `replay` read
//! `{ns}.dead` a window at a time, unacknowledged, and keep every letter they do not replay —
//! once (not in its place: the broker requeues in an order of its own); a purge deletes exactly the letters counted, never one that died after the
//! count. Before: every read took the whole queue into the process's memory (200,000 letters
//! grew the scheduler by hundreds of MiB), and `queue.purge` deleted whatever the queue held.

use common::amqp::RawShards;
use common::amqp::topology::{self, Part};
use common::wire::dead::DeadLetter;
use lapin::BasicProperties;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use std::time::{Duration, Instant};
use workers::dlq::{DeadLetters, Filter};
use wxpipe_tests::broker::{TestNs, connect, drain, message_count};
use wxpipe_tests::harness::{ChildProcess, workspace_bin};

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

#[tokio::test]
async fn reads_keep_every_letter_once_and_a_replay_moves_only_the_chosen() {
    let t = TestNs::new("t-dlq-read");
    topology_of(&t).await;
    letters(&t, "letter", 1_200).await;
    let dlq = DeadLetters::connect(&[wxpipe_tests::amqp_url()], &t.ns, "t-dlq")
        .await
        .unwrap();

    let listing = dlq.list().await.unwrap();
    assert_eq!(listing.total, 1_200);
    let counts: Vec<_> = listing
        .groups
        .iter()
        .map(|g| (g.reason.as_str(), g.count))
        .collect();
    assert_eq!(counts, vec![("r0", 600), ("r1", 600)]);
    assert_eq!(listing.groups[0].oldest_ms, 1_700_000_000_000);
    assert_eq!(listing.groups[1].oldest_ms, 1_700_000_000_001);
    // RabbitMQ 3.10's quorum queues put letters returned to them back in an order of their own
    // (measured: returned in order, one nack each or one for all, they come back shuffled past
    // the first few dozen), so a position is where a letter is now, not where it was put.
    let platform = common::config::PlatformArgs::default();
    for position in [1, 64, 65, 129, 1_150, 1_200] {
        let shown = dlq.show(position, &platform).await.unwrap();
        assert!(shown.body.starts_with("letter-"), "{}", shown.body);
        assert_eq!(shown.position, position);
        assert!(shown.reason == "r0" || shown.reason == "r1", "{shown:?}");
    }
    let past = dlq.show(1_201, &platform).await.unwrap_err().to_string();
    assert!(past.contains("holds 1200 letters"), "{past}");
    assert_eq!(message_count(&t.ns.dead()).await.unwrap(), 1_200);

    // A dry run changes nothing; a replay moves exactly the chosen letters.
    let filter = Filter {
        reason: Some("r1".into()),
        limit: Some(10),
        ..Filter::default()
    };
    let dry = dlq.replay(&filter, true, &|_, _| {}).await.unwrap();
    assert_eq!(
        (dry.total, dry.chosen_total, dry.replayed, dry.chosen.len()),
        (1_200, 10, 0, 10)
    );
    assert!(dry.chosen.iter().all(|c| c.reason == "r1"), "{dry:?}");
    assert!(
        dry.chosen.windows(2).all(|w| w[0].position < w[1].position),
        "{dry:?}"
    );
    assert_eq!(message_count(&t.ns.dead()).await.unwrap(), 1_200);
    let done = dlq.replay(&filter, false, &|_, _| {}).await.unwrap();
    assert_eq!(
        (done.replayed, done.failed_total, done.left),
        (10, 0, 1_190),
        "{done:?}"
    );
    // Every r0 letter, dry: the report names the first SHOWN and counts them all.
    let all_r0 = Filter {
        reason: Some("r0".into()),
        ..Filter::default()
    };
    let dry = dlq.replay(&all_r0, true, &|_, _| {}).await.unwrap();
    assert_eq!((dry.chosen_total, dry.chosen.len()), (600, 600));
    dlq.close().await;

    let replayed = bodies(
        &drain(&t.ns.raw(), Duration::from_millis(500))
            .await
            .unwrap(),
    );
    let number = |b: &String| {
        b.strip_prefix("letter-")
            .and_then(|n| n.parse::<usize>().ok())
            .unwrap_or(usize::MAX)
    };
    // Ten distinct r1 letters (odd numbers), each once.
    let mut moved: Vec<usize> = replayed.iter().map(number).collect();
    moved.sort_unstable();
    moved.dedup();
    assert_eq!(moved.len(), 10, "{replayed:?}");
    assert!(moved.iter().all(|n| n % 2 == 1), "{replayed:?}");
    // Every other letter is still dead, once.
    let mut left: Vec<usize> = bodies(
        &drain(&t.ns.dead(), Duration::from_millis(500))
            .await
            .unwrap(),
    )
    .iter()
    .map(number)
    .collect();
    left.sort_unstable();
    let expected: Vec<usize> = (0..1_200).filter(|n| !moved.contains(n)).collect();
    assert!(
        left == expected,
        "{} letters left, expected {}",
        left.len(),
        expected.len()
    );
}

/// Peak resident memory of a process (`VmHWM`), bytes.
fn peak_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kb| kb * 1024)
        .unwrap_or(0)
}

/// How much the scheduler's peak RSS may grow while it lists 200,000 letters: the reader holds
/// one letter per channel at most, so what grows is the allocator's and lapin's working set, not the
/// queue (holding the letters took hundreds of MiB).
const BOUND: u64 = 32 * 1024 * 1024;

#[tokio::test]
async fn two_hundred_thousand_letters_cost_the_scheduler_bounded_memory() {
    let t = TestNs::new("t-dlq-200k");
    topology_of(&t).await;
    let started = Instant::now();
    letters(&t, "many", 200_000).await;
    println!("200,000 letters written in {:?}", started.elapsed());
    let port = wxpipe_tests::harness::free_port();
    let child = std::process::Command::new(workspace_bin("workers"))
        .arg("scheduler")
        .envs(wxpipe_tests::harness::scheduler_env(&t, port))
        .spawn()
        .expect("workers scheduler starts");
    let pid = child.id();
    let _child = ChildProcess::new(child);
    let admin = format!("http://127.0.0.1:{port}");
    assert!(
        wxpipe_tests::harness::ready_within(&admin, Duration::from_secs(20)).await,
        "the scheduler's admin API"
    );
    // The scheduler's own start-up (its first ticks, its connections) settles first, so that
    // what grows after is the listing's.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let before = peak_rss(pid);
    let started = Instant::now();
    let (status, listing) = wxpipe_tests::harness::admin_get(&admin, "/v1/dlq").await;
    assert_eq!(status, 200, "{listing}");
    let took = started.elapsed();
    let after = peak_rss(pid);
    println!(
        "listing 200,000 letters: {took:?}; scheduler peak RSS {} MiB before, {} MiB after",
        before / 1024 / 1024,
        after / 1024 / 1024
    );
    assert_eq!(listing["total"], 200_000, "{listing}");
    assert!(before > 0, "no VmHWM for pid {pid}");
    assert!(
        after - before < BOUND,
        "peak RSS grew by {} MiB",
        (after - before) / 1024 / 1024
    );
    // Every letter kept: the broker makes 200,000 returned letters ready again in its own time.
    let returned = Instant::now();
    let mut ready = 0;
    while returned.elapsed() < Duration::from_secs(120) {
        ready = message_count(&t.ns.dead()).await.unwrap();
        if ready == 200_000 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    println!("all ready again {:?} after the answer", returned.elapsed());
    assert_eq!(ready, 200_000, "every letter kept");
}
