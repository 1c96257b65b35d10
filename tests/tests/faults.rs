//! The fault suite, shortened (every fault but the 50-second scheduler freeze, 4 s of traffic
//! each): real processes, the real broker, a Redis of its own, `wechat-sim`'s load generator.
//! `scripts/faults` runs the full version. Runs alone in its test binary: it stops and starts
//! the broker application, which the other test binaries (run one after another) never see.

use std::time::Duration;
use wxpipe_tests::faults::{self, Plan};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_fault_loses_nothing() {
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("faults-{}", std::process::id()));
    let plan = Plan {
        traffic: Duration::from_secs(4),
        ..Plan::quick()
    };
    let rows = faults::run(&plan, &dir).await.expect("the fault suite ran");
    let table = faults::table(&rows);
    println!("{table}");
    assert_eq!(rows.len(), plan.faults.len());
    for r in &rows {
        assert!(
            r.accepted > 0,
            "traffic flowed during {}:\n{table}",
            r.fault
        );
        assert!(r.ok(), "{} lost or duplicated pushes:\n{table}", r.fault);
    }
    let _ = std::fs::remove_dir_all(&dir);
}
