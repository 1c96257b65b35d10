//! What a misconfiguration or WeChat's hard refusals cost (issue 9, defect 3): a failing
//! component token is asked for at most once per backoff step across every replica and caller,
//! a used-up daily quota stops calls until it is cleared, and a refused refresh token is never
//! used again but replaced from WeChat's list.

use serde_json::json;
use std::sync::Arc;
use std::time::{Duration, Instant};
use wxpipe_tests::broker::TestNs;
use wxpipe_tests::harness::{
    admin_get, admin_post, eventually, lease_holders, spawn_scheduler, token_service,
    token_service_with_ticket,
};
use wxpipe_tests::sim::{self, SimConfig, SimHandle, state::Rules};
use wxpipe_tests::test_platform;

fn calls(sim: &SimHandle, api: &str) -> u64 {
    sim.stats()["calls"][api].as_u64().unwrap_or(0)
}

/// Before: a wrong secret made every replica ask for the component token every tick, and
/// every caller once more.
#[tokio::test]
async fn a_wrong_secret_backs_off_across_replicas_and_callers() {
    let t = TestNs::new("t-fail-secret");
    let sim = sim::start(SimConfig::for_tests("http://127.0.0.1:9"))
        .await
        .unwrap();
    let wrong = || {
        let mut svc = token_service(&t.ns, &sim.api_base(), Duration::from_secs(600));
        svc.client = common::wechat::WechatClient::new(
            &sim.api_base(),
            test_platform::COMPONENT_APPID,
            Some("not-the-secret".to_owned().into()),
        )
        .unwrap();
        Arc::new(svc)
    };
    let ticket = sim.shared.state.lock().unwrap().issue_ticket();
    wrong().store.save_ticket(&ticket).await.unwrap();
    let mut replicas = Vec::new();
    let mut admins = Vec::new();
    for _ in 0..3 {
        let (h, admin) = spawn_scheduler(wrong(), 4).await;
        replicas.push(h);
        admins.push(admin);
    }
    // Callers keep asking meanwhile.
    let started = Instant::now();
    let mut refused = 0;
    while started.elapsed() < Duration::from_secs(7) {
        for admin in &admins {
            let (status, _) = admin_get(admin, "/v1/component/access_token").await;
            assert_ne!(status, 200);
            refused += 1;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(refused > 50);
    // 2 s, 4 s, 8 s: at most 3 or 4 calls in 7 s, whatever the replicas and callers.
    let n = calls(&sim, "api_component_token");
    assert!((2..=4).contains(&n), "api_component_token called {n} times");
    let (_, status) = admin_get(&admins[0], "/v1/component/status").await;
    assert!(
        status["failures"]["failures"].as_u64().unwrap_or(0) >= 2,
        "{status}"
    );
    assert!(
        status["failures"]["last_error"]
            .as_str()
            .unwrap_or_default()
            .contains("40125"),
        "{status}"
    );
    assert!(
        !status.to_string().contains("not-the-secret"),
        "no secret in the status"
    );
    for r in replicas {
        r.stop().await;
    }
    sim.stop().await;
}

/// Before: 45009 was retried every 10 minutes by every account, and not at all tracked for
/// the component token.
#[tokio::test]
async fn a_used_up_quota_stops_calls_until_it_is_cleared() {
    let t = TestNs::new("t-fail-quota");
    let mut settings = SimConfig::for_tests("http://127.0.0.1:9");
    settings.rules = Rules {
        daily_quota: 2,
        ..Rules::default()
    };
    let sim = sim::start(settings).await.unwrap();
    let svc = token_service_with_ticket(&t.ns, &sim, Duration::from_secs(600)).await;
    let (scheduler, admin) = spawn_scheduler(svc.clone(), 4).await;
    let token = |admin: String| async move {
        let (status, v) = admin_get(&admin, "/v1/component/access_token").await;
        (
            status,
            v["access_token"].as_str().unwrap_or_default().to_owned(),
        )
    };
    let (_, first) = eventually(Duration::from_secs(10), "a component token", || async {
        let (s, tok) = token(admin.clone()).await;
        (s == 200).then_some((s, tok))
    })
    .await;
    // Refused once: the second call of the day still works.
    let (s, v) = admin_post(
        &admin,
        "/v1/component/invalidate",
        json!({ "access_token": first }),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    let second = v["access_token"].as_str().unwrap().to_owned();
    // Refused again: the third call is answered 45009 and closes the quota.
    let (s, _) = admin_post(
        &admin,
        "/v1/component/invalidate",
        json!({ "access_token": second }),
    )
    .await;
    assert_ne!(s, 200);
    let used = calls(&sim, "api_component_token");
    assert_eq!(used, 3);
    let (_, status) = admin_get(&admin, "/v1/component/status").await;
    assert!(
        status["quota_exhausted"]["api_component_token"]["closed_until_ms"].is_i64(),
        "{status}"
    );
    // Nobody calls WeChat for it any more, however often they ask.
    for _ in 0..20 {
        let (s, _) = token(admin.clone()).await;
        assert_ne!(s, 200);
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(calls(&sim, "api_component_token"), used);
    // The operator clears the quota at WeChat, then tells wxpipe: calls resume at once.
    sim.shared.state.lock().unwrap().clear_quota();
    let (s, v) = admin_post(&admin, "/v1/quota/clear", json!({})).await;
    assert_eq!(s, 200, "{v}");
    let (s, _) = token(admin.clone()).await;
    assert_eq!(s, 200);
    assert_eq!(calls(&sim, "api_component_token"), used + 1);
    scheduler.stop().await;
    sim.stop().await;
}

/// Before: a refused refresh token (61023) was retried hourly, and `HSETNX` meant the list
/// could never replace it. Now it is set aside, never used again, and the list's token
/// replaces it.
#[tokio::test]
async fn a_refused_refresh_token_is_replaced_from_the_list() {
    let t = TestNs::new("t-fail-61023");
    let sim = sim::start(SimConfig::for_tests("http://127.0.0.1:9"))
        .await
        .unwrap();
    let appid: common::ids::AppId = sim.authorized_account().parse().unwrap();
    let svc = token_service_with_ticket(&t.ns, &sim, Duration::from_secs(600)).await;
    // Redis holds a stale refresh token for it (say, from a backup).
    // (Restoring it schedules its refresh: it has no access token.)
    assert!(
        svc.store
            .restore_account(&appid, "stale-refresh-token", common::unix_now_ms())
            .await
            .unwrap()
    );
    let (scheduler, admin) = spawn_scheduler(svc.clone(), 4).await;
    eventually(
        Duration::from_secs(20),
        "the account refreshed with the list's token",
        || async {
            let (_, r) = admin_get(&admin, &format!("/v1/authorizers/{appid}")).await;
            (r["status"] == "active" && r["refreshes"].as_u64().unwrap_or(0) >= 1).then_some(())
        },
    )
    .await;
    let errors = sim.stats()["errors"].clone();
    assert_eq!(
        errors["api_authorizer_token:61023"].as_u64(),
        Some(1),
        "the refused token was used exactly once: {errors}"
    );
    // The refused token can never be restored again.
    assert!(
        !svc.store
            .restore_account(&appid, "stale-refresh-token", common::unix_now_ms())
            .await
            .unwrap()
    );
    scheduler.stop().await;
    sim.stop().await;
}

/// Before: the fenced write of a refresh forced `status=active`, so a refresh in flight while
/// `unauthorized` arrived brought the revoked account back with a token.
#[tokio::test]
async fn a_refresh_in_flight_cannot_bring_a_revoked_account_back() {
    let t = TestNs::new("t-fail-revoke-race");
    let mut settings = SimConfig::for_tests("http://127.0.0.1:9");
    settings.slow_rate = 1.0;
    settings.slow_delay = Duration::from_millis(1500);
    let sim = sim::start(settings).await.unwrap();
    let appid: common::ids::AppId = sim.authorized_account().parse().unwrap();
    let svc = token_service_with_ticket(&t.ns, &sim, Duration::from_secs(600)).await;
    assert_eq!(svc.restore_from_list().await.unwrap(), 1);
    // A forced refresh starts; its WeChat call takes 1.5 s.
    let refresh = {
        let (svc, appid) = (svc.clone(), appid.clone());
        tokio::spawn(async move {
            svc.refresh_authorizer(&appid, common::token::RefreshMode::Force)
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(700)).await;
    // Meanwhile the account removes the platform.
    svc.store.revoke(&appid).await.unwrap();
    let outcome = refresh.await.unwrap().unwrap();
    assert_eq!(outcome, common::token::RefreshOutcome::Superseded);
    let r = svc.store.authorizer(&appid).await.unwrap().unwrap();
    assert_eq!(r.status, common::token::AuthorizerStatus::Revoked);
    assert!(r.access_token.is_none() && r.refresh_token.is_none());
    assert_eq!(svc.store.due_at(&appid).await.unwrap(), None);
    sim.stop().await;
}

/// Before: a lock's lease (45 s) was shorter than the worst case of the calls it guards, so a
/// second replica could take it mid-call and refresh again. Now the holder renews it.
#[tokio::test]
async fn a_lock_is_renewed_while_its_holder_works() {
    use common::redis::lock::Lock;
    let t = TestNs::new("t-fail-renew");
    let pool = common::redis::pool(&wxpipe_tests::redis_url()).unwrap();
    let key = format!("{}:lock:renewed", t.name());
    let lease = Duration::from_millis(400);
    let mut held = Lock::acquire(&pool, &key, lease, Duration::ZERO)
        .await
        .unwrap()
        .unwrap();
    held.keep_alive(lease);
    // Four leases later it is still ours.
    tokio::time::sleep(lease * 4).await;
    assert!(
        Lock::acquire(&pool, &key, lease, Duration::ZERO)
            .await
            .unwrap()
            .is_none()
    );
    assert!(held.still_held().await.unwrap());
    assert!(held.release().await.unwrap());
    // Released: anyone may take it.
    let next = Lock::acquire(&pool, &key, lease, Duration::ZERO)
        .await
        .unwrap();
    assert!(next.is_some());
    // Without renewal, the lease runs out.
    tokio::time::sleep(lease * 2).await;
    assert!(
        Lock::acquire(&pool, &key, lease, Duration::ZERO)
            .await
            .unwrap()
            .is_some()
    );
    let _ = wxpipe_tests::broker::delete_redis_keys(&format!("{}:", t.name())).await;
}

/// Before: a list restore read an account, and scheduled it "soon" if it had no access token —
/// two steps. A refresh landing between them had its due time pulled back to now, and the
/// token was refreshed twice in one window (the Redis Cluster test caught it, 16 s apart).
/// Now the decision is taken in Redis with the scheduling: an account with a token keeps its
/// due time, one in backoff keeps its backoff, a revoked one stays out of the schedule.
#[tokio::test]
async fn a_list_restore_never_pulls_back_a_refreshed_account() {
    let t = TestNs::new("t-fail-restore");
    let sim = sim::start(SimConfig::for_tests("http://127.0.0.1:9"))
        .await
        .unwrap();
    let svc = token_service_with_ticket(&t.ns, &sim, Duration::from_secs(600)).await;
    let now = common::unix_now_ms();
    let soon = now + 1_000;

    // An account with a token, its next refresh an hour away (what a code exchange leaves).
    let code = {
        let mut st = sim.shared.state.lock().unwrap();
        st.authorize(None, false).1
    };
    let refreshed = svc.exchange_code(&code, None).await.unwrap();
    let record = svc.store.authorizer(&refreshed).await.unwrap().unwrap();
    assert!(record.access_token.is_some());
    let due = svc.store.due_at(&refreshed).await.unwrap().unwrap();
    assert!(due > now + 60_000, "scheduled ahead: {due}");
    let rt = record.refresh_token.unwrap();
    assert!(
        !svc.store
            .restore_account(&refreshed, rt.expose(), soon)
            .await
            .unwrap(),
        "its refresh token is kept"
    );
    assert_eq!(svc.store.due_at(&refreshed).await.unwrap(), Some(due));

    // An account without a token, new to Redis: scheduled soon.
    let fresh: common::ids::AppId = sim.authorized_account().parse().unwrap();
    assert!(
        svc.store
            .restore_account(&fresh, "listed-refresh-token", soon)
            .await
            .unwrap()
    );
    assert_eq!(svc.store.due_at(&fresh).await.unwrap(), Some(soon));
    // Still without a token, in backoff: a later restore leaves the backoff alone.
    let backoff = now + 3_600_000;
    svc.store.schedule(&fresh, backoff).await.unwrap();
    assert!(
        !svc.store
            .restore_account(&fresh, "listed-refresh-token", soon)
            .await
            .unwrap()
    );
    assert_eq!(svc.store.due_at(&fresh).await.unwrap(), Some(backoff));

    // A revoked account is neither given a refresh token nor scheduled.
    let revoked: common::ids::AppId = sim.authorized_account().parse().unwrap();
    assert!(
        svc.store
            .restore_account(&revoked, "listed-refresh-token", soon)
            .await
            .unwrap()
    );
    svc.store.revoke(&revoked).await.unwrap();
    assert_eq!(svc.store.due_at(&revoked).await.unwrap(), None);
    assert!(
        !svc.store
            .restore_account(&revoked, "another-refresh-token", soon)
            .await
            .unwrap()
    );
    assert_eq!(svc.store.due_at(&revoked).await.unwrap(), None);
    let r = svc.store.authorizer(&revoked).await.unwrap().unwrap();
    assert!(!r.has_refresh_token);
    sim.stop().await;
}

/// Before: a replica renewed its bucket leases only between rounds of refreshes, so a round
/// longer than the lease — WeChat answering slowly, or a round of hundreds of refreshes at a
/// few dozen per second — let every bucket lease lapse mid-round, and the buckets moved to
/// other replicas (the Redis Cluster test failed that way twice). Now the leases are renewed
/// during the round. Here one replica with a 3 s lease runs rounds of 4 refreshes one after
/// the other, each WeChat call answered after 1.5 s (6 s a round): every bucket lease stays
/// in Redis all along.
#[tokio::test]
async fn bucket_leases_outlast_a_round_longer_than_the_lease() {
    let t = TestNs::new("t-fail-lease-round");
    let mut settings = SimConfig::for_tests("http://127.0.0.1:9");
    settings.slow_rate = 1.0;
    settings.slow_delay = Duration::from_millis(1500);
    let sim = sim::start(settings).await.unwrap();
    let accounts: Vec<String> = (0..8).map(|_| sim.authorized_account()).collect();
    let svc = token_service_with_ticket(&t.ns, &sim, Duration::from_secs(600)).await;
    // Known to Redis, refresh tokens and all, every account due now.
    assert_eq!(svc.restore_from_list().await.unwrap(), accounts.len());

    let lease = Duration::from_secs(3);
    let config = workers::scheduler::SchedulerConfig {
        tokens: svc.clone(),
        admin_addr: "127.0.0.1:0".parse().unwrap(),
        admin_token: wxpipe_tests::harness::ADMIN_TOKEN.into(),
        refresh_concurrency: 1,
        list_sync: Duration::from_secs(3600),
        tick: Duration::from_millis(250),
        lease,
        console: wxpipe_tests::harness::console_config(&t.ns, None),
        limits: common::edge::Limits::default(),
    };
    let (stop, rx) = tokio::sync::watch::channel(false);
    let replica = tokio::spawn(workers::scheduler::run_loop(config, rx));

    let held = || async { lease_holders(&svc).await.len() };
    let refreshed = || {
        let st = sim.shared.state.lock().unwrap();
        accounts
            .iter()
            .filter(|a| {
                st.stats
                    .authorizer_token_times
                    .get(*a)
                    .is_some_and(|t| t.len() >= 2)
            })
            .count()
    };
    let started = Instant::now();
    eventually(Duration::from_secs(10), "every bucket claimed", || async {
        (held().await == common::redis::BUCKETS as usize).then_some(())
    })
    .await;
    // Two rounds (8 refreshes of 1.5 s, one at a time): 12 s, four leases.
    let mut lowest = usize::MAX;
    while refreshed() < accounts.len() {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "{} of {} refreshed after 60 s",
            refreshed(),
            accounts.len()
        );
        lowest = lowest.min(held().await);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        started.elapsed() > lease * 3,
        "the rounds outlasted the lease"
    );
    assert_eq!(
        lowest,
        common::redis::BUCKETS as usize,
        "bucket leases lapsed during a round"
    );
    stop.send(true).unwrap();
    replica.await.unwrap();
    sim.stop().await;
}
