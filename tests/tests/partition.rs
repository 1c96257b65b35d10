//! The scheduler replicas' division of the buckets (issue 32, item 7): membership is timed by
//! Redis's clock, not each replica's, and a bucket's lease is never forgotten by its holder
//! while Redis may still hold it for it.

use common::ids::Namespace;
use common::redis::{BUCKETS, Keys};
use std::time::{Duration, Instant};
use workers::scheduler::partition::Partition;
use wxpipe_tests::broker::TestNs;
use wxpipe_tests::harness::{ChildProcess, free_port, scheduler_env, workspace_bin};
use wxpipe_tests::test_platform::COMPONENT_APPID;

fn keys(ns: &Namespace) -> Keys {
    Keys::new(ns, COMPONENT_APPID)
}

/// `redis-cli args…` on the local Redis.
fn redis_cli(args: &[&str]) -> String {
    wxpipe_tests::redis_nodes::redis_cli(6379, args)
}

/// Bucket leases in Redis held by the replica `id`.
fn leases_of(keys: &Keys, id: &str) -> usize {
    (0..BUCKETS)
        .filter(|b| {
            redis_cli(&["GET", &keys.bucket_lease(*b)]).starts_with(&format!("claim:{id}:"))
        })
        .count()
}

/// A tick whose lease renewal fails — Redis refuses the lease keys (an ACL), while the
/// membership key still answers — keeps every lease it held: they are still ours in Redis, and
/// the next tick renews them. Before: the first bucket's lease was taken out of what was held
/// before its renewal was tried, and the error dropped it (63 of 64 held; its bucket unscanned
/// until its lease ran out).
#[tokio::test]
async fn a_lease_redis_may_still_hold_is_not_forgotten() {
    let t = TestNs::new("t-part-keep");
    let keys = keys(&t.ns);
    let user = format!("wxpipe-{}", t.name());
    let all_keys = format!("~{}*", keys.prefix());
    let ok = redis_cli(&["ACL", "SETUSER", &user, "on", ">pw", &all_keys, "+@all"]);
    assert_eq!(ok, "OK");
    let pool = common::redis::pool(&format!("redis://{user}:pw@127.0.0.1:6379/0")).unwrap();
    let mut p = Partition::new(pool, keys.clone(), Duration::from_secs(30));

    assert_eq!(p.tick().await.unwrap().len(), BUCKETS as usize);
    // Only the membership may be touched now: the lease scripts fail with NOPERM.
    let members = format!("~{}", keys.schedulers());
    redis_cli(&["ACL", "SETUSER", &user, "resetkeys", &members]);
    let failed = p.tick().await;
    redis_cli(&["ACL", "SETUSER", &user, &all_keys]);
    let held_after_error = p.held().len();
    let after = p.tick().await;
    let in_redis = leases_of(&keys, p.id());
    redis_cli(&["ACL", "DELUSER", &user]);

    assert!(failed.is_err(), "the refused renewal is an error");
    assert_eq!(held_after_error, BUCKETS as usize, "a lease was forgotten");
    assert_eq!(after.unwrap().len(), BUCKETS as usize);
    assert_eq!(in_redis, BUCKETS as usize);
    p.leave().await;
}

/// Debian's libfaketime (package `faketime`), for threaded programs.
fn libfaketime() -> Option<std::path::PathBuf> {
    let dirs = std::fs::read_dir("/usr/lib").ok()?;
    dirs.flatten()
        .map(|d| d.path().join("faketime/libfaketimeMT.so.1"))
        .chain([std::path::PathBuf::from(
            "/usr/lib/faketime/libfaketimeMT.so.1",
        )])
        .find(|p| p.exists())
}

/// A replica whose clock runs ten minutes behind (libfaketime) and one on time agree that both
/// are live, and divide the buckets between them. Before, with each replica's own clock as the
/// announcement's score: the one on time forgot the other at every tick (its announcement
/// looked ten minutes old) and took every free bucket, while the late one counted two replicas.
#[tokio::test]
async fn replicas_whose_clocks_disagree_divide_the_buckets_between_them() {
    // libfaketime preloaded into the scheduler itself: the `faketime` wrapper forks, and a
    // signal to it leaves its child running (an orphan that held the test command's output).
    let lib = libfaketime().expect(
        "libfaketime is not installed (the test command installs it: apt-get install faketime)",
    );
    let t = TestNs::new("t-part-clock");
    let keys = keys(&t.ns);
    let port = free_port();
    let late = std::process::Command::new(workspace_bin("workers"))
        .arg("scheduler")
        .envs(scheduler_env(&t, port))
        .env("LD_PRELOAD", lib)
        .env("FAKETIME", "-10m")
        // Timers stay on the real clock; only the wall clock is ten minutes behind.
        .env("FAKETIME_DONT_FAKE_MONOTONIC", "1")
        .spawn()
        .expect("a late workers scheduler starts");
    let mut late = ChildProcess::new(late);
    let pool = common::redis::pool(&wxpipe_tests::redis_url()).unwrap();
    let mut on_time = Partition::new(pool, keys.clone(), Duration::from_secs(10));

    // Each replica ticks every second; after a few, each holds its half.
    let deadline = Instant::now() + Duration::from_secs(30);
    let (mut mine, mut theirs, mut members) = (0, 0, String::new());
    while Instant::now() < deadline {
        mine = on_time.tick().await.unwrap().len();
        members = redis_cli(&["ZRANGE", &keys.schedulers(), "0", "-1", "WITHSCORES"]);
        theirs = members
            .lines()
            .step_by(2)
            .filter(|id| *id != on_time.id())
            .map(|id| leases_of(&keys, id))
            .sum::<usize>();
        if mine == BUCKETS as usize / 2 && theirs == BUCKETS as usize / 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let scores: Vec<i64> = members
        .lines()
        .skip(1)
        .step_by(2)
        .filter_map(|s| s.parse().ok())
        .collect();
    late.terminate(Duration::from_secs(10)).await;
    on_time.leave().await;

    assert_eq!(mine, BUCKETS as usize / 2, "members: {members}");
    assert_eq!(theirs, BUCKETS as usize / 2, "members: {members}");
    // The bytes in Redis: both announcements are stamped by Redis's clock, a tick apart at most.
    assert_eq!(scores.len(), 2, "members: {members}");
    assert!((scores[0] - scores[1]).abs() < 5_000, "members: {members}");
}
