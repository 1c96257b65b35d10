//! Dead letters read in bounded memory (issue 32): `list`, `show`, `replay` and `purge` walk
//! `{ns}.dead` a window at a time, keep every letter that they do not replay or delete — once,
//! none lost, none twice — and a purge deletes exactly the letters counted, never one that died
//! after the count. Before: every operation took the whole queue into memory, unacknowledged,
//! and a purge deleted whatever the queue held by then.

use common::amqp::RawShards;
use common::amqp::topology::{self, Part};
use common::wire::dead::DeadLetter;
use lapin::BasicProperties;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use std::time::{Duration, Instant};
use workers::dlq::{DeadLetters, Filter};
use wxpipe_tests::broker::{TestNs, connect, drain, message_count};
use wxpipe_tests::harness::{ADMIN_TOKEN, ChildProcess, free_port, workspace_bin};

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
async fn walks_keep_every_letter_once_and_a_purge_takes_only_what_was_counted() {
    let t = TestNs::new("t-dlq-walk");
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
    // A letter far in is shown; walking never loses or doubles one.
    let platform = common::config::PlatformArgs::default();
    for position in [1, 1_150, 1_200] {
        let shown = dlq.show(position, &platform).await.unwrap();
        assert!(shown.body.starts_with("letter-"), "{}", shown.body);
        assert_eq!(shown.position, position);
    }
    assert!(dlq.show(1_201, &platform).await.is_err());
    assert_eq!(message_count(&t.ns.dead()).await.unwrap(), 1_200);

    // A dry run changes nothing; a replay moves exactly the chosen letters.
    let filter = Filter {
        reason: Some("r1".into()),
        limit: Some(10),
        ..Filter::default()
    };
    let dry = dlq.replay(&filter, true, &|_, _| {}).await.unwrap();
    assert_eq!(
        (dry.chosen_total, dry.replayed, dry.chosen.len()),
        (10, 0, 10)
    );
    assert!(dry.chosen.iter().all(|c| c.reason == "r1"), "{dry:?}");
    let done = dlq.replay(&filter, false, &|_, _| {}).await.unwrap();
    assert_eq!(
        (done.replayed, done.failed_total, done.left),
        (10, 0, 1_190),
        "{done:?}"
    );
    assert_eq!(message_count(&t.ns.raw()).await.unwrap(), 10);

    // Five letters die after an operator counted 1,190: the purge deletes those 1,190 only.
    letters(&t, "late", 5).await;
    assert_eq!(dlq.purge(1_190).await.unwrap(), 1_190);
    dlq.close().await;
    let left = bodies(
        &drain(&t.ns.dead(), Duration::from_millis(500))
            .await
            .unwrap(),
    );
    assert_eq!(left, ["late-0", "late-1", "late-2", "late-3", "late-4"]);
    let replayed = bodies(
        &drain(&t.ns.raw(), Duration::from_millis(500))
            .await
            .unwrap(),
    );
    // Ten distinct r1 letters (odd numbers), each once.
    let mut distinct = replayed.clone();
    distinct.sort();
    distinct.dedup();
    assert_eq!(distinct.len(), 10, "{replayed:?}");
    assert!(
        replayed.iter().all(|b| b
            .strip_prefix("letter-")
            .and_then(|n| n.parse::<u32>().ok())
            .is_some_and(|n| n % 2 == 1)),
        "{replayed:?}"
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

/// The console's listing of 200,000 letters, from a real `workers scheduler` process: its peak
/// RSS grows by less than [`BOUND`] (holding the letters would take hundreds of MiB).
const BOUND: u64 = 48 * 1024 * 1024;

#[tokio::test]
async fn two_hundred_thousand_letters_cost_the_scheduler_bounded_memory() {
    let t = TestNs::new("t-dlq-200k");
    topology_of(&t).await;
    let started = Instant::now();
    letters(&t, "many", 200_000).await;
    println!("200,000 letters written in {:?}", started.elapsed());
    let port = free_port();
    let child = std::process::Command::new(workspace_bin("workers"))
        .arg("scheduler")
        .env(
            "WXPIPE_COMPONENT_APPID",
            wxpipe_tests::test_platform::COMPONENT_APPID,
        )
        .env(
            "WXPIPE_COMPONENT_SECRET",
            wxpipe_tests::test_platform::COMPONENT_SECRET,
        )
        .env("WXPIPE_TOKEN", wxpipe_tests::test_platform::TOKEN)
        .env(
            "WXPIPE_ENCODING_AES_KEY",
            wxpipe_tests::test_platform::ENCODING_AES_KEY,
        )
        .env("WXPIPE_NAMESPACE", t.name())
        .env("WXPIPE_AMQP_URL", wxpipe_tests::amqp_url())
        .env("WXPIPE_REDIS_URL", wxpipe_tests::redis_url())
        .env("WXPIPE_ADMIN_TOKEN", ADMIN_TOKEN)
        .env("WXPIPE_ADMIN_ADDR", format!("127.0.0.1:{port}"))
        .env("WXPIPE_WECHAT_API_BASE", "http://127.0.0.1:9")
        .env("RUST_LOG", "warn")
        .spawn()
        .expect("workers scheduler starts");
    let pid = child.id();
    let _child = ChildProcess::new(child);
    let admin = format!("http://127.0.0.1:{port}");
    assert!(
        wxpipe_tests::harness::ready_within(&admin, Duration::from_secs(20)).await,
        "the scheduler's admin API"
    );
    let before = peak_rss(pid);
    let started = Instant::now();
    let listing: serde_json::Value = wxpipe_tests::http_builder()
        .timeout(Duration::from_secs(600))
        .build()
        .unwrap()
        .get(format!("{admin}/v1/dlq"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
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
    assert_eq!(
        message_count(&t.ns.dead()).await.unwrap(),
        200_000,
        "every letter kept"
    );
}
