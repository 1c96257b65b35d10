//! A claim (lock, lease, authorization-code exchange) taken on a replicated Redis counts only
//! once a replica has it: when `WAIT` reaches no replica, the claim is let go and the caller
//! finds the key held, as docs/scaling-out.md promises (issue 32, item 7). Before: only a
//! `WAIT` that failed let it go; one answered "0 replicas" kept a claim a failover could forget.

use common::redis::claim::{Claim, Taken};
use std::time::Duration;
use wxpipe_tests::redis_nodes::Replicated;

#[tokio::test]
async fn a_claim_no_replica_confirmed_is_let_go() {
    let redis = Replicated::start().expect("a master, a replica and a Sentinel");
    let pool = common::redis::pool(&redis.url()).unwrap();
    let key = "t-claim:{a01}:lock";
    let lease = Duration::from_secs(30);

    let Taken::Won(claim) = Claim::take(&pool, key, lease).await.unwrap() else {
        panic!("a free key, with its replica up, is won");
    };
    assert!(claim.release().await.unwrap());

    // The replica stops answering: WAIT 1 500 answers 0.
    redis.replica.freeze();
    let taken = Claim::take(&pool, key, lease).await.unwrap();
    let stored = redis.master.cli(&["GET", key]);
    redis.replica.thaw();
    assert!(matches!(taken, Taken::Held), "{taken:?}");
    assert_eq!(stored, "", "the unconfirmed claim stayed in Redis");

    let Taken::Won(claim) = Claim::take(&pool, key, lease).await.unwrap() else {
        panic!("won again once the replica answers");
    };
    assert_eq!(redis.master.cli(&["GET", key]), claim.value());
    assert!(claim.release().await.unwrap());
}
