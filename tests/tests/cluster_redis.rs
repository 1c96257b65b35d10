//! Token schedulers on the local Redis Cluster of `scripts/cluster` (skipped, saying why, when it
//! is not up): three replicas share 10,000 accounts by buckets; one replica dies mid-run and a
//! Redis master is killed; every token is still refreshed exactly once per window, no served
//! token is ever refused, and the dead replica's buckets are taken over.

use common::redis::{BUCKETS, Keys};
use common::token::{TokenService, TokenStore};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use wxpipe_tests::broker::TestNs;
use wxpipe_tests::cluster::Clusters;
use wxpipe_tests::harness::{lease_holders, spawn_scheduler, use_served_token};
use wxpipe_tests::sim::{self, SimConfig, SimHandle, state::Rules};
use wxpipe_tests::test_platform;

const N: usize = 10_000;
/// Tokens live 60 s and are refreshed 10 s (plus up to 5 s of jitter) before they expire: one
/// refresh wave every 45–50 s, with quiet time between waves.
const TTL: u64 = 60;
const MARGIN: Duration = Duration::from_secs(10);

/// A token service on the Redis at `redis_url` talking to `sim`.
fn service(redis_url: &str, keys: &Keys, sim: &SimHandle, margin: Duration) -> TokenService {
    TokenService {
        store: TokenStore::new(
            common::redis::pool(redis_url).expect("the clusters' Redis URL"),
            keys.clone(),
        ),
        client: common::wechat::WechatClient::new(
            &sim.api_base(),
            test_platform::COMPONENT_APPID,
            Some(test_platform::COMPONENT_SECRET.to_owned().into()),
        )
        .expect("a WeChat client"),
        margin,
    }
}

/// How many accounts the simulator has issued at least `n` tokens to.
fn issued_at_least(sim: &SimHandle, n: usize) -> usize {
    let st = sim.shared.state.lock().expect("sim state");
    st.stats
        .authorizer_token_times
        .values()
        .filter(|t| t.len() >= n)
        .count()
}

/// Waits until `count()` reaches `target`, printing the progress every 10 s.
async fn wait_for(
    what: &str,
    within: Duration,
    target: usize,
    count: impl Fn() -> usize,
) -> Duration {
    let started = Instant::now();
    let mut shown = Instant::now();
    loop {
        let n = count();
        if n >= target {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < within,
            "{what}: {n} of {target} after {within:?}"
        );
        if shown.elapsed() >= Duration::from_secs(10) {
            eprintln!("cluster scheduler: {what}: {n} of {target}");
            shown = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Prints what a few accounts that have fewer than `n` tokens look like in Redis.
async fn explain_stuck(sim: &SimHandle, svc: &TokenService, n: usize) {
    let stuck: Vec<String> = {
        let st = sim.shared.state.lock().unwrap();
        st.stats
            .authorizer_token_times
            .iter()
            .filter(|(_, t)| t.len() < n)
            .map(|(a, _)| a.clone())
            .take(5)
            .collect()
    };
    for appid in &stuck {
        let id: common::ids::AppId = appid.parse().unwrap();
        let record = svc.store.authorizer(&id).await;
        let due = svc.store.due_at(&id).await;
        let attempts = svc.store.due_attempts(&id).await;
        eprintln!(
            "stuck {appid}: bucket {} record {:?} due {due:?} (now {}) attempts {attempts:?}",
            common::redis::bucket(appid),
            record.map(|r| r.map(|r| (r.status, r.has_refresh_token, r.expires_at, r.last_error))),
            common::unix_now_ms()
        );
    }
}

fn count_by_holder(holders: &BTreeMap<u16, String>) -> BTreeMap<String, usize> {
    let mut n = BTreeMap::new();
    for h in holders.values() {
        *n.entry(h.clone()).or_default() += 1;
    }
    n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_schedulers_share_ten_thousand_accounts_through_a_replica_and_a_master_dying() {
    let Some(c) = Clusters::find(
        "three_schedulers_share_ten_thousand_accounts_through_a_replica_and_a_master_dying",
    ) else {
        return;
    };
    let t = TestNs::new("t-rcluster");
    let keys = Keys::new(&t.ns, test_platform::COMPONENT_APPID);
    let _keys = c.delete_keys_on_drop(keys.prefix());
    let mut settings = SimConfig::for_tests("http://127.0.0.1:9");
    settings.rules = Rules {
        authorizer_token_ttl: Duration::from_secs(TTL),
        // Four waves of 10,000 refreshes: more than the simulator's default daily quota.
        daily_quota: 1_000_000,
        ..Rules::default()
    };
    let sim = sim::start(settings).await.unwrap();
    let appids: Vec<String> = {
        let mut st = sim.shared.state.lock().unwrap();
        (0..N)
            .map(|_| {
                let (account, code, _) = st.authorize(None, false);
                st.query_auth(test_platform::COMPONENT_APPID, &code)
                    .unwrap();
                account.appid
            })
            .collect()
    };
    let ticket = sim.shared.state.lock().unwrap().issue_ticket();
    let first = service(&c.redis_cluster_url, &keys, &sim, MARGIN);
    first.store.save_ticket(&ticket).await.unwrap();

    let mut replicas = Vec::new();
    let mut admins = Vec::new();
    for _ in 0..3 {
        let (h, admin) = spawn_scheduler(
            Arc::new(service(&c.redis_cluster_url, &keys, &sim, MARGIN)),
            32,
        )
        .await;
        replicas.push(Some(h));
        admins.push(admin);
    }

    // Wave 1: every account restored from the list and given a token (the authorization
    // issued the first one, which wxpipe never saw).
    let wave1 = tokio::time::timeout(
        Duration::from_secs(240),
        wait_for("first refreshes", Duration::from_secs(3600), N, || {
            issued_at_least(&sim, 2)
        }),
    )
    .await;
    let Ok(took) = wave1 else {
        explain_stuck(&sim, &first, 2).await;
        panic!("the first refresh of every account did not happen within 240 s");
    };
    eprintln!("cluster scheduler: {N} accounts refreshed once in {took:?}");
    let holders = lease_holders(&first).await;
    let shares = count_by_holder(&holders);
    assert_eq!(
        holders.len(),
        BUCKETS as usize,
        "every bucket held: {shares:?}"
    );
    assert_eq!(
        shares.len(),
        3,
        "three replicas share the buckets: {shares:?}"
    );
    assert!(shares.values().all(|n| (20..=23).contains(n)), "{shares:?}");

    // From now on a team keeps reading tokens from the two surviving replicas and using them.
    let stop_reading = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reader = {
        let (admins, api, appids, stop) = (
            admins[1..].to_vec(),
            sim.api_base(),
            appids.clone(),
            stop_reading.clone(),
        );
        tokio::spawn(async move {
            let mut used = 0u64;
            let mut i = 0usize;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                i += 1;
                let appid = &appids[(i * 7919) % appids.len()];
                if use_served_token(&admins[i % admins.len()], &api, appid).await {
                    used += 1;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            used
        })
    };

    // Wave 2: one replica dies (no graceful step) once the wave is under way; the others take
    // its buckets over within a lease, and every account is refreshed again.
    wait_for("wave 2 starting", Duration::from_secs(120), N / 10, || {
        issued_at_least(&sim, 3)
    })
    .await;
    let dead = replicas[0].take().unwrap();
    dead.kill().await;
    let took = wait_for("wave 2", Duration::from_secs(180), N, || {
        issued_at_least(&sim, 3)
    })
    .await;
    eprintln!("cluster scheduler: wave 2 finished {took:?} after a replica died");
    let shares = count_by_holder(&lease_holders(&first).await);
    assert_eq!(
        shares.len(),
        2,
        "the survivors hold every bucket: {shares:?}"
    );
    assert_eq!(
        shares.values().sum::<usize>(),
        BUCKETS as usize,
        "{shares:?}"
    );

    // Between waves a Redis master is SIGKILLed: its replica takes over, and wave 3 finds every
    // token, refresh token and due time it needs. (A write in flight at the very instant of a
    // kill could still be lost with Redis's asynchronous replication; token writes wait for a
    // replica's acknowledgement to make that window as small as Redis allows — README.)
    let masters = c.redis_masters().await;
    assert_eq!(masters.len(), 3, "{masters:?}");
    let victim = masters[1];
    c.kill_redis(victim);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let now = c.redis_masters().await;
        if !now.contains(&victim) && now.len() == 3 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no failover of {victim}: {now:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    c.start_redis(victim);
    let took = wait_for("wave 3", Duration::from_secs(240), N, || {
        issued_at_least(&sim, 4)
    })
    .await;
    eprintln!("cluster scheduler: wave 3 finished {took:?} after the master of {victim} died");

    stop_reading.store(true, std::sync::atomic::Ordering::Relaxed);
    let used = reader.await.unwrap();
    for r in replicas.into_iter().flatten() {
        r.stop().await;
    }
    let stats = sim.shared.state.lock().unwrap().stats.clone();
    assert!(used > 100, "the reader used {used} tokens");
    assert_eq!(
        stats.rejected_token_calls, 0,
        "a served token was expired or invalidated"
    );
    assert_eq!(
        stats.component_tokens_issued, 1,
        "one component token for three replicas"
    );
    // Exactly one refresh per token per window: consecutive issuances are never closer than
    // the shortest legitimate window (TTL − margin − the largest jitter − 1 s − one tick).
    let min_gap_ms =
        ((TTL - MARGIN.as_secs()) * 1000) as i64 - (MARGIN.as_millis() as i64 / 2) - 1250;
    for (appid, times) in &stats.authorizer_token_times {
        for pair in times[1..].windows(2) {
            assert!(
                pair[1] - pair[0] >= min_gap_ms,
                "{appid} refreshed twice within a window: {times:?}"
            );
        }
    }
}

/// The port of the master Sentinel names now.
async fn sentinel_master() -> Option<u16> {
    for port in [26391, 26392, 26393] {
        let Ok(client) = deadpool_redis::redis::Client::open(format!("redis://127.0.0.1:{port}"))
        else {
            continue;
        };
        let Ok(mut c) = client.get_multiplexed_async_connection().await else {
            continue;
        };
        let addr: Result<Vec<String>, _> = deadpool_redis::redis::cmd("SENTINEL")
            .arg("get-master-addr-by-name")
            .arg("wxpipe")
            .query_async(&mut c)
            .await;
        if let Ok(addr) = addr {
            return addr.get(1).and_then(|p| p.parse().ok());
        }
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_scheduler_on_sentinel_rides_out_a_master_failover() {
    let Some(c) = Clusters::find("a_scheduler_on_sentinel_rides_out_a_master_failover") else {
        return;
    };
    const ACCOUNTS: usize = 50;
    const SHORT_TTL: u64 = 16;
    let t = TestNs::new("t-sentinel");
    let keys = Keys::new(&t.ns, test_platform::COMPONENT_APPID);
    let _keys = c.delete_keys_on_drop(keys.prefix());
    let mut settings = SimConfig::for_tests("http://127.0.0.1:9");
    settings.rules = Rules {
        authorizer_token_ttl: Duration::from_secs(SHORT_TTL),
        ..Rules::default()
    };
    let sim = sim::start(settings).await.unwrap();
    {
        let mut st = sim.shared.state.lock().unwrap();
        for _ in 0..ACCOUNTS {
            let (_, code, _) = st.authorize(None, false);
            st.query_auth(test_platform::COMPONENT_APPID, &code)
                .unwrap();
        }
    }
    let svc = |sim: &SimHandle| service(&c.sentinel_url, &keys, sim, Duration::from_secs(4));
    let first = svc(&sim);
    let ticket = sim.shared.state.lock().unwrap().issue_ticket();
    first.store.save_ticket(&ticket).await.unwrap();
    let (scheduler, _admin) = spawn_scheduler(Arc::new(svc(&sim)), 8).await;
    wait_for(
        "first refreshes on Sentinel",
        Duration::from_secs(60),
        ACCOUNTS,
        || issued_at_least(&sim, 2),
    )
    .await;

    let master = sentinel_master().await.expect("Sentinel names a master");
    c.kill_redis(master);
    let deadline = Instant::now() + Duration::from_secs(30);
    while sentinel_master().await == Some(master) {
        assert!(
            Instant::now() < deadline,
            "Sentinel did not fail over from {master}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    c.start_redis(master);
    // The promoted replica has every account, and refreshing goes on against it.
    let appids = first.store.authorizer_appids().await.unwrap();
    assert_eq!(appids.len(), ACCOUNTS, "no account lost in the failover");
    // An account whose refresh fell into the failover waits out its retry backoff (a fifth
    // of the margin, doubling), then is refreshed like the others.
    let after = tokio::time::timeout(
        Duration::from_secs(120),
        wait_for(
            "refreshes after the failover",
            Duration::from_secs(3600),
            ACCOUNTS,
            || issued_at_least(&sim, 4),
        ),
    )
    .await;
    if after.is_err() {
        explain_stuck(&sim, &first, 4).await;
        panic!("refreshing did not go on after the failover");
    }
    scheduler.stop().await;
    let stats = sim.shared.state.lock().unwrap().stats.clone();
    assert_eq!(stats.rejected_token_calls, 0);
    let min_gap_ms = ((SHORT_TTL - 4) * 1000) as i64 - 2000 - 1250;
    for (appid, times) in &stats.authorizer_token_times {
        for pair in times[1..].windows(2) {
            assert!(
                pair[1] - pair[0] >= min_gap_ms,
                "{appid} refreshed twice within a window: {times:?}"
            );
        }
    }
}
