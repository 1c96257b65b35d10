//! Mini-program fleet releases (issue 36): one template committed, audited and released across
//! simulated mini programs as one job — every WeChat call of a step made exactly once (also when
//! a releases replica is SIGKILLed mid-job), audit results from WeChat's pushes with a poll for
//! the pushes that never come, the monthly audit quota never overdrawn, failures and skips
//! listed with their reasons, `release.*` events for every move, cancel, and hostile requests
//! refused before anything is stored.

use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::time::Duration;
use wxpipe_tests::broker::{self, TestNs};
use wxpipe_tests::harness::{
    ADMIN_TOKEN, ChildProcess, Pipeline, admin_get, admin_post, eventually, pipeline_with_sim,
    platform_env, workspace_bin,
};
use wxpipe_tests::sim::SimHandle;

/// Authorizes `n` accounts in the simulator through the pipeline (`body` for `/sim/authorize`)
/// and waits until each one's token and profile are stored.
async fn authorize(p: &Pipeline, sim: &SimHandle, n: usize, body: Value) -> Vec<String> {
    let mut appids = Vec::new();
    for chunk in 0..n.div_ceil(25) {
        let batch = (chunk * 25..n.min((chunk + 1) * 25)).map(|_| async {
            sim.post("/sim/authorize", body.clone()).await["appid"]
                .as_str()
                .expect("the simulator names the account")
                .to_owned()
        });
        appids.extend(futures::future::join_all(batch).await);
    }
    for appid in &appids {
        eventually(
            Duration::from_secs(60),
            "the account's token and profile",
            || async {
                let (s, v) = admin_get(&p.admin, &format!("/v1/console/accounts/{appid}")).await;
                (s == 200 && v["profile"].is_object() && v["account"]["expires_at"].is_i64())
                    .then_some(())
            },
        )
        .await;
    }
    appids
}

/// The Redis keys matching `pattern*`.
async fn redis_keys(pattern: &str) -> Vec<String> {
    let client = deadpool_redis::redis::Client::open(wxpipe_tests::redis_url()).unwrap();
    let mut c = client.get_multiplexed_async_connection().await.unwrap();
    let mut keys = Vec::new();
    broker::scan_keys(&mut c, pattern, &mut keys).await.unwrap();
    keys
}

/// A template promoted from the simulator's first draft; its id.
fn template(sim: &SimHandle) -> u64 {
    sim.shared
        .library
        .lock()
        .unwrap()
        .promote(0, 0)
        .expect("draft 0 exists")
}

fn calls(sim: &SimHandle, api: &str, appid: &str) -> u64 {
    sim.shared.code.lock().unwrap().calls(api, appid)
}

fn total_calls(sim: &SimHandle, api: &str) -> u64 {
    sim.shared
        .code
        .lock()
        .unwrap()
        .calls
        .get(api)
        .map(|m| m.values().sum())
        .unwrap_or(0)
}

/// Runs the releases role in this process (fast timings for tests).
fn spawn_releases(
    t: &TestNs,
    sim: &SimHandle,
    audit_poll: Duration,
    quota_recheck: Duration,
) -> tokio::sync::watch::Sender<bool> {
    let tokens = std::sync::Arc::new(wxpipe_tests::harness::token_service(
        &t.ns,
        &sim.api_base(),
        Duration::from_secs(600),
    ));
    let config = workers::releases::ReleasesConfig {
        tokens,
        namespace: t.ns.clone(),
        raw_shards: common::amqp::RawShards::ONE,
        amqp_urls: vec![wxpipe_tests::amqp_url()],
        settings: workers::releases::Settings {
            lease: Duration::from_secs(15),
            audit_poll,
            quota_recheck,
            retry_base: Duration::from_millis(300),
            privacy_retry: Duration::from_millis(300),
            tick: Duration::from_millis(100),
        },
    };
    let (stop, rx) = tokio::sync::watch::channel(false);
    tokio::spawn(workers::releases::run(config, rx));
    stop
}

/// A `workers releases` process, killed (SIGKILL) when dropped.
fn releases_process(t: &TestNs, sim: &SimHandle, extra: &[(&str, &str)]) -> ChildProcess {
    let child = std::process::Command::new(workspace_bin("workers"))
        .arg("releases")
        .envs(platform_env())
        .env("WXPIPE_NAMESPACE", t.name())
        .env("WXPIPE_AMQP_URL", wxpipe_tests::amqp_url())
        .env("WXPIPE_REDIS_URL", wxpipe_tests::redis_url())
        .env("WXPIPE_WECHAT_API_BASE", sim.api_base())
        .env("WXPIPE_RELEASES_TICK_MS", "100")
        .env("WXPIPE_RELEASES_RETRY_MS", "300")
        .env("WXPIPE_RELEASES_LEASE_SECS", "15")
        .env("RUST_LOG", "warn")
        .envs(extra.iter().copied())
        .spawn()
        .expect("workers releases starts");
    ChildProcess::new(child)
}

async fn job(admin: &str, id: &str) -> Value {
    let (s, v) = admin_get(admin, &format!("/v1/releases/{id}")).await;
    assert_eq!(s, 200, "{v}");
    v
}

/// Waits until the job's status is `status`.
async fn until_status(admin: &str, id: &str, status: &str, within: Duration) -> Value {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let v = job(admin, id).await;
        if v["status"] == status {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the job never became {status}: {v}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Every account of the job in `state` (or all), read page by page with `limit`.
async fn accounts(admin: &str, id: &str, state: Option<&str>, limit: usize) -> Vec<Value> {
    let mut out = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut path = format!("/v1/releases/{id}/accounts?limit={limit}");
        if let Some(s) = state {
            path.push_str(&format!("&state={s}"));
        }
        if let Some(c) = &cursor {
            path.push_str(&format!("&cursor={c}"));
        }
        let (s, v) = admin_get(admin, &path).await;
        assert_eq!(s, 200, "{v}");
        out.extend(v["accounts"].as_array().cloned().unwrap_or_default());
        match v["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => return out,
        }
    }
}

#[tokio::test]
async fn a_job_over_200_mini_programs_commits_submits_and_releases_each_once() {
    let t = TestNs::new("t-releases-fleet");
    let (sim, p) = pipeline_with_sim(&t.ns).await;
    let events = t.queue("release-events");
    broker::bind_queue(&events, &t.ns.events(), &["release.#"])
        .await
        .unwrap();
    let minis = authorize(&p, &sim, 200, json!({ "mini_program": true })).await;
    let no_permission = authorize(
        &p,
        &sim,
        4,
        json!({ "mini_program": true, "code_management": false }),
    )
    .await;
    let official = authorize(&p, &sim, 2, json!({ "mini_program": false })).await;
    let failing: Vec<String> = minis.iter().step_by(10).cloned().collect();
    sim.post("/sim/code/config", json!({ "review_ms": 300, "fail_appids": failing, "quota_rest": 1000, "quota_limit": 1000 })).await;
    let template_id = template(&sim);
    let _releases = spawn_releases(&t, &sim, Duration::from_secs(30), Duration::from_secs(5));

    let mut targets: Vec<String> = minis.clone();
    targets.extend(no_permission.iter().cloned());
    targets.extend(official.iter().cloned());
    targets.push("wx0000000000000001".into()); // not an account of this platform
    let (s, created) = admin_post(&p.admin, "/v1/releases", json!({
        "template_id": template_id, "user_version": "1.0.0", "user_desc": "fleet test",
        "ext_json": { "extAppid": "${appid}", "ext": { "tenant": "t-${appid}" } },
        "targets": { "appids": targets },
        "audit": { "item_list": [{ "address": "pages/index/index", "tag": "工具", "title": "首页" }] },
        "release": "auto", "concurrency": 25,
    })).await;
    assert_eq!(s, 201, "{created}");
    assert_eq!(created["total"], 207, "{created}");
    assert_eq!(created["pending"], 200, "{created}");
    assert_eq!(created["skipped"], 7, "{created}");
    let id = created["id"].as_str().unwrap().to_owned();

    let done = until_status(&p.admin, &id, "finished", Duration::from_secs(180)).await;
    let counts = &done["counts"];
    assert_eq!(counts["released"], 180, "{done}");
    assert_eq!(counts["audit_failed"], 20, "{done}");
    assert_eq!(counts["skipped"], 7, "{done}");
    assert!(done["finished_ms"].is_i64(), "{done}");

    // Every eligible account: exactly one commit and one submit; one release when it passed.
    for appid in &minis {
        assert_eq!(calls(&sim, "wxa_commit", appid), 1, "{appid} commits");
        assert_eq!(calls(&sim, "wxa_submit_audit", appid), 1, "{appid} submits");
        let want = u64::from(!failing.contains(appid));
        assert_eq!(calls(&sim, "wxa_release", appid), want, "{appid} releases");
    }
    for appid in no_permission.iter().chain(&official) {
        assert_eq!(
            calls(&sim, "wxa_commit", appid),
            0,
            "{appid} was not eligible"
        );
    }
    // What WeChat got: the account's own ext_json, as a JSON string; its release is online.
    {
        let code = sim.shared.code.lock().unwrap();
        let a = &code.accounts[&minis[1]];
        let ext: Value = serde_json::from_str(&a.exp.as_ref().unwrap().ext_json).unwrap();
        assert_eq!(ext["extAppid"], minis[1].as_str());
        assert_eq!(ext["ext"]["tenant"], format!("t-{}", minis[1]));
        assert_eq!(a.release.as_ref().unwrap().user_version, "1.0.0");
    }

    // Failures with WeChat's reason and screenshots, listed page by page.
    let failed = accounts(&p.admin, &id, Some("audit_failed"), 7).await;
    assert_eq!(failed.len(), 20);
    for f in &failed {
        assert!(
            failing.contains(&f["appid"].as_str().unwrap().to_owned()),
            "{f}"
        );
        assert!(f["reason"].as_str().unwrap().contains("不符合规范"), "{f}");
        assert_eq!(f["screenshots"].as_array().unwrap().len(), 2, "{f}");
    }
    let skipped = accounts(&p.admin, &id, Some("skipped"), 100).await;
    let reasons: BTreeMap<String, String> = skipped
        .iter()
        .map(|a| {
            (
                a["appid"].as_str().unwrap().to_owned(),
                a["reason"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    for a in &no_permission {
        assert!(reasons[a].contains("permission set 18"), "{reasons:?}");
    }
    for a in &official {
        assert!(reasons[a].contains("not a mini program"), "{reasons:?}");
    }
    assert!(
        reasons["wx0000000000000001"].contains("not an account"),
        "{reasons:?}"
    );
    assert_eq!(accounts(&p.admin, &id, None, 50).await.len(), 207);

    // A release.* event for every move: 200 × (committed, audit_submitted, then passed and
    // released, or failed).
    let want = 200 * 2 + 180 * 2 + 20;
    let got = broker::collect(&events, want, Duration::from_secs(30))
        .await
        .unwrap();
    let mut by_key: BTreeMap<String, usize> = BTreeMap::new();
    for m in &got {
        *by_key.entry(m.routing_key.clone()).or_default() += 1;
        let e: Value = serde_json::from_slice(&m.body).unwrap();
        assert_eq!(e["specversion"], "1.0");
        assert_eq!(e["data"]["job"], id.as_str());
    }
    assert_eq!(by_key.get("release.released"), Some(&180), "{by_key:?}");
    assert_eq!(by_key.get("release.audit_failed"), Some(&20), "{by_key:?}");
    assert_eq!(by_key.get("release.committed"), Some(&200), "{by_key:?}");

    // The list shows the job; it is finished.
    let (s, list) = admin_get(&p.admin, "/v1/releases").await;
    assert_eq!(s, 200);
    assert_eq!(list["releases"][0]["id"], id.as_str(), "{list}");
    assert_eq!(list["releases"][0]["status"], "finished");
    p.stop().await;
    sim.stop().await;
}

#[tokio::test]
async fn a_replica_killed_mid_job_leaves_no_call_made_twice_and_a_lost_push_is_polled() {
    let t = TestNs::new("t-releases-kill");
    let (sim, p) = pipeline_with_sim(&t.ns).await;
    let minis = authorize(&p, &sim, 60, json!({ "mini_program": true })).await;
    // Reviews take 1 s; five results are never pushed (the poll finds them, every 3 s); the
    // calls that change something answer 400 ms after they took effect, so the killed replica
    // dies with calls made whose outcome it never wrote down.
    sim.post(
        "/sim/code/config",
        json!({ "review_ms": 1000, "lose_pushes": 5, "quota_rest": 1000, "answer_delay_ms": 400 }),
    )
    .await;
    let template_id = template(&sim);
    let env = [("WXPIPE_RELEASES_AUDIT_POLL_SECS", "3")];
    // The first replica alone takes the job's whole concurrency; the second starts only
    // before the first is killed, so the kill always leaves calls in flight.
    let mut first = releases_process(&t, &sim, &env);
    let (s, created) = admin_post(
        &p.admin,
        "/v1/releases",
        json!({
            "template_id": template_id, "user_version": "2.0.0",
            "targets": { "filter": { "type": "mini_program", "permission": 18 } },
            "concurrency": 30,
        }),
    )
    .await;
    assert_eq!(s, 201, "{created}");
    assert_eq!(created["pending"], 60, "{created}");
    let id = created["id"].as_str().unwrap().to_owned();
    // Kill one replica while calls are in flight.
    eventually(Duration::from_secs(60), "the first commits", || async {
        (total_calls(&sim, "wxa_commit") >= 15).then_some(())
    })
    .await;
    let _second = releases_process(&t, &sim, &env);
    first.kill();
    let done = until_status(&p.admin, &id, "finished", Duration::from_secs(180)).await;
    assert_eq!(done["counts"]["released"], 60, "{done}");
    for appid in &minis {
        assert_eq!(calls(&sim, "wxa_commit", appid), 1, "{appid} commits");
        assert_eq!(calls(&sim, "wxa_submit_audit", appid), 1, "{appid} submits");
        assert_eq!(calls(&sim, "wxa_release", appid), 1, "{appid} releases");
    }
    // The survivor read back what the killed replica had done instead of doing it again:
    // one getversioninfo per account is the version check, the rest are read-backs.
    let read_backs = total_calls(&sim, "wxa_getversioninfo") - 60
        + total_calls(&sim, "wxa_get_latest_auditstatus");
    eprintln!("read-backs after the kill: {read_backs}");
    assert!(
        read_backs >= 1,
        "the kill left no call to read back: the test did not test"
    );
    let lost = sim.shared.code.lock().unwrap().pushes.1;
    assert_eq!(lost, 5, "five pushes were lost");
    assert!(
        total_calls(&sim, "wxa_get_auditstatus") >= 5,
        "the lost results were polled"
    );
    drop(first);
    p.stop().await;
    sim.stop().await;
}

#[tokio::test]
async fn the_audit_quota_is_never_overdrawn_and_the_job_resumes_when_it_grows() {
    let t = TestNs::new("t-releases-quota");
    let (sim, p) = pipeline_with_sim(&t.ns).await;
    let minis = authorize(&p, &sim, 12, json!({ "mini_program": true })).await;
    sim.post(
        "/sim/code/config",
        json!({ "review_ms": 200, "quota_rest": 5, "quota_limit": 20 }),
    )
    .await;
    let template_id = template(&sim);
    let _releases = spawn_releases(&t, &sim, Duration::from_secs(30), Duration::from_secs(1));
    let (s, created) = admin_post(&p.admin, "/v1/releases", json!({
        "template_id": template_id, "user_version": "1.1.0", "targets": { "appids": minis }, "concurrency": 12,
    })).await;
    assert_eq!(s, 201, "{created}");
    let id = created["id"].as_str().unwrap().to_owned();
    let waiting = eventually(
        Duration::from_secs(60),
        "seven accounts waiting for quota",
        || async {
            let v = job(&p.admin, &id).await;
            (v["counts"]["waiting_quota"] == 7 && v["counts"]["released"] == 5).then_some(v)
        },
    )
    .await;
    assert_eq!(waiting["status"], "running", "{waiting}");
    let w = accounts(&p.admin, &id, Some("waiting_quota"), 100).await;
    assert!(
        w[0]["reason"].as_str().unwrap().contains("audit quota"),
        "{w:?}"
    );
    // Never beyond the quota: five submits, none refused with 85085.
    assert_eq!(total_calls(&sim, "wxa_submit_audit"), 5);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        total_calls(&sim, "wxa_submit_audit"),
        5,
        "still none beyond the quota"
    );
    // WeChat grants more (a new month): the job goes on by itself.
    sim.post("/sim/code/config", json!({ "quota_rest": 20 }))
        .await;
    let done = until_status(&p.admin, &id, "finished", Duration::from_secs(60)).await;
    assert_eq!(done["counts"]["released"], 12, "{done}");
    assert_eq!(total_calls(&sim, "wxa_submit_audit"), 12);
    p.stop().await;
    sim.stop().await;
}

#[tokio::test]
async fn cancel_stops_what_has_not_reached_review_and_undoes_the_audits_in_review() {
    let t = TestNs::new("t-releases-cancel");
    let (sim, p) = pipeline_with_sim(&t.ns).await;
    let events = t.queue("cancelled-events");
    broker::bind_queue(&events, &t.ns.events(), &["release.cancelled"])
        .await
        .unwrap();
    let minis = authorize(&p, &sim, 10, json!({ "mini_program": true })).await;
    // Reviews never end during the test; the quota has two audits left.
    sim.post(
        "/sim/code/config",
        json!({ "review_ms": 600000, "quota_rest": 2 }),
    )
    .await;
    let template_id = template(&sim);
    let _releases = spawn_releases(&t, &sim, Duration::from_secs(600), Duration::from_secs(5));
    let (_, created) = admin_post(&p.admin, "/v1/releases", json!({
        "template_id": template_id, "user_version": "3.0.0", "targets": { "appids": minis }, "concurrency": 2,
    })).await;
    let id = created["id"].as_str().unwrap().to_owned();
    eventually(
        Duration::from_secs(30),
        "two audits in review, the rest waiting for quota",
        || async {
            let v = job(&p.admin, &id).await;
            (v["counts"]["audit_submitted"] == 2 && v["counts"]["waiting_quota"] == 8).then_some(())
        },
    )
    .await;
    let (s, paused) = admin_post(&p.admin, &format!("/v1/releases/{id}/pause"), json!({})).await;
    assert_eq!(s, 200, "{paused}");
    assert_eq!(paused["status"], "paused");
    let (s, again) = admin_post(&p.admin, &format!("/v1/releases/{id}/pause"), json!({})).await;
    assert_eq!(s, 409, "{again}");
    let (s, bad) = admin_post(
        &p.admin,
        &format!("/v1/releases/{id}/cancel"),
        json!({ "undo_audits": "yes" }),
    )
    .await;
    assert_eq!(s, 400, "{bad}");
    let (s, cancelled) =
        admin_post(&p.admin, &format!("/v1/releases/{id}/cancel"), json!({})).await;
    assert_eq!(s, 200, "{cancelled}");
    assert_eq!(cancelled["cancelled"], 8, "{cancelled}");
    assert_eq!(cancelled["undoing_audits"], 2, "{cancelled}");
    assert_eq!(cancelled["status"], "cancelling", "{cancelled}");
    let commits = total_calls(&sim, "wxa_commit");
    // The releases role undoes the two audits, once each; then the job is cancelled.
    let v = until_status(&p.admin, &id, "cancelled", Duration::from_secs(30)).await;
    assert_eq!(v["counts"]["cancelled"], 10, "{v}");
    assert_eq!(total_calls(&sim, "wxa_undocodeaudit"), 2);
    {
        let code = sim.shared.code.lock().unwrap();
        let withdrawn = code
            .accounts
            .values()
            .flat_map(|a| a.audits.iter())
            .filter(|a| a.status == 3)
            .count();
        assert_eq!(withdrawn, 2, "both audits withdrawn at WeChat");
    }
    let undone = accounts(&p.admin, &id, Some("cancelled"), 100).await;
    assert_eq!(
        undone
            .iter()
            .filter(|a| a["reason"].as_str().unwrap().contains("audit was undone"))
            .count(),
        2,
        "{undone:?}"
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        total_calls(&sim, "wxa_commit"),
        commits,
        "nothing more after cancel"
    );
    let (s, again) = admin_post(&p.admin, &format!("/v1/releases/{id}/cancel"), json!({})).await;
    assert_eq!(s, 409, "{again}");
    // A job cancelled at once (nothing in review): its accounts' events are published too, by
    // the releases role, though the job is no longer running.
    let (_, second) = admin_post(&p.admin, "/v1/releases", json!({
        "template_id": template_id, "user_version": "3.0.0", "targets": { "appids": minis[..2] },
    })).await;
    let second = second["id"].as_str().unwrap().to_owned();
    eventually(
        Duration::from_secs(30),
        "both waiting for quota",
        || async { (job(&p.admin, &second).await["counts"]["waiting_quota"] == 2).then_some(()) },
    )
    .await;
    let (s, v) = admin_post(
        &p.admin,
        &format!("/v1/releases/{second}/cancel"),
        json!({ "undo_audits": false }),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["status"], "cancelled", "{v}");
    // Every account's cancellation was published, those the admin API moved included.
    let got = broker::collect(&events, 12, Duration::from_secs(15))
        .await
        .unwrap();
    assert_eq!(got.len(), 12, "release.cancelled events");
    p.stop().await;
    sim.stop().await;
}

/// Hostile or wrong requests: refused with a reason, and nothing stored for them.
#[tokio::test]
async fn hostile_release_requests_are_refused_and_store_nothing() {
    let t = TestNs::new("t-releases-hostile");
    let (sim, p) = pipeline_with_sim(&t.ns).await;
    let minis = authorize(&p, &sim, 1, json!({ "mini_program": true })).await;
    let official = authorize(&p, &sim, 1, json!({ "mini_program": false })).await;
    let template_id = template(&sim);
    let ok = json!({ "template_id": template_id, "user_version": "1.0.0", "targets": { "appids": minis } });
    let with = |k: &str, v: Value| {
        let mut b = ok.clone();
        b[k] = v;
        b
    };
    let cases: Vec<(Value, u16, &str)> = vec![
        (
            with("template_id", json!(999)),
            400,
            "not in the platform's template library",
        ),
        (with("user_version", json!("")), 400, "user_version"),
        (
            with("targets", json!({ "appids": official })),
            400,
            "no eligible account",
        ),
        (
            with("targets", json!({ "appids": ["wx1'; DROP"] })),
            400,
            "not an appid",
        ),
        (
            with(
                "targets",
                json!({ "filter": { "type": "official_account" } }),
            ),
            400,
            "no eligible account",
        ),
        (
            with("audit", json!({ "access_token": "steal" })),
            400,
            "audit.access_token",
        ),
        (with("ext_json", json!("{not json")), 400, "ext_json"),
        (with("concurrency", json!(-1)), 400, "not a release job"),
        (json!("just a string"), 400, "not a release job"),
    ];
    for (body, status, expect) in cases {
        let (s, v) = admin_post(&p.admin, "/v1/releases", body.clone()).await;
        assert_eq!(s, status, "{body}: {v}");
        assert!(
            v["error"].as_str().unwrap_or_default().contains(expect),
            "{body}: {v}"
        );
    }
    // No key, no job.
    let (s, _) = wxpipe_tests::harness::post_json(
        &format!("{}/v1/releases", p.admin),
        "wrong-token-wrong-token",
        ok.clone(),
    )
    .await;
    assert_eq!(s, 401);
    // Paths and queries.
    for (path, status) in [
        ("/v1/releases/..%2F..%2Fetc", 400),
        ("/v1/releases/r0123456789ab}", 400),
        ("/v1/releases/r0123456789ab", 404),
        ("/v1/releases/r0123456789ab/accounts", 404),
    ] {
        let (s, v) = admin_get(&p.admin, path).await;
        assert_eq!(s, status, "{path}: {v}");
    }
    // Nothing was stored by any refusal: no release key in Redis.
    for pattern in [
        format!("{}:*releases", t.name()),
        format!("{}:*{{r:", t.name()),
    ] {
        let keys = redis_keys(&pattern).await;
        assert!(keys.is_empty(), "{keys:?}");
    }
    // A real job, then hostile queries on it.
    let (s, created) = admin_post(&p.admin, "/v1/releases", ok.clone()).await;
    assert_eq!(s, 201, "{created}");
    let id = created["id"].as_str().unwrap();
    for q in [
        "state=bogus",
        "state=released%27",
        "cursor=%7Bx%7D",
        "cursor=..%2F",
    ] {
        let (s, v) = admin_get(&p.admin, &format!("/v1/releases/{id}/accounts?{q}")).await;
        assert_eq!(s, 400, "{q}: {v}");
    }
    let _ = ADMIN_TOKEN;
    p.stop().await;
    sim.stop().await;
}

#[tokio::test]
async fn a_delayed_audit_is_not_final_and_busy_or_privacy_checking_answers_are_retried() {
    let t = TestNs::new("t-releases-delay");
    let (sim, p) = pipeline_with_sim(&t.ns).await;
    let events = t.queue("release-events");
    broker::bind_queue(
        &events,
        &t.ns.events(),
        &["release.audit_delayed", "release.released"],
    )
    .await
    .unwrap();
    let minis = authorize(&p, &sim, 3, json!({ "mini_program": true })).await;
    // Every review is delayed first (weapp_audit_delay), then passes; submits answer 61039
    // for 800 ms after each commit (the privacy check); the first five calls answer -1.
    sim.post(
        "/sim/code/config",
        json!({ "review_ms": 500, "delay_rate": 1.0, "quota_rest": 10, "privacy_check_ms": 800 }),
    )
    .await;
    let template_id = template(&sim);
    sim.post("/sim/busy", json!({ "count": 5 })).await;
    let _releases = spawn_releases(&t, &sim, Duration::from_secs(30), Duration::from_secs(5));
    let (_, created) = admin_post(
        &p.admin,
        "/v1/releases",
        json!({
            "template_id": template_id, "user_version": "1.0.0", "targets": { "appids": minis },
        }),
    )
    .await;
    let id = created["id"].as_str().unwrap().to_owned();
    let done = until_status(&p.admin, &id, "finished", Duration::from_secs(60)).await;
    assert_eq!(done["counts"]["released"], 3, "{done}");
    let got = broker::collect(&events, 6, Duration::from_secs(15))
        .await
        .unwrap();
    let delayed = got
        .iter()
        .filter(|m| m.routing_key == "release.audit_delayed")
        .count();
    assert_eq!(
        delayed, 3,
        "each account was audit_delayed before it was released"
    );
    assert_eq!(
        total_calls(&sim, "wxa_get_auditstatus"),
        0,
        "every result came as a push"
    );
    for appid in &minis {
        // -1 and 61039 made nothing: one commit each, and submits until the check was done.
        assert_eq!(calls(&sim, "wxa_commit", appid), 1, "{appid}");
        assert!(
            calls(&sim, "wxa_submit_audit", appid) >= 2,
            "{appid}: 61039 first"
        );
        assert_eq!(calls(&sim, "wxa_release", appid), 1, "{appid}");
    }
    let audits: usize = sim
        .shared
        .code
        .lock()
        .unwrap()
        .accounts
        .values()
        .map(|a| a.audits.len())
        .sum();
    assert_eq!(audits, 3, "one audit per account");
    p.stop().await;
    sim.stop().await;
}

#[tokio::test]
async fn gray_steps_then_the_full_release_then_a_rollback_and_a_version_not_newer_is_skipped() {
    let t = TestNs::new("t-releases-gray");
    let (sim, p) = pipeline_with_sim(&t.ns).await;
    let minis = authorize(&p, &sim, 5, json!({ "mini_program": true })).await;
    sim.post(
        "/sim/code/config",
        json!({ "review_ms": 100, "quota_rest": 100 }),
    )
    .await;
    let template_id = template(&sim);
    let _releases = spawn_releases(&t, &sim, Duration::from_secs(30), Duration::from_secs(5));
    let create = |body: Value| {
        let admin = p.admin.clone();
        async move {
            let (s, v) = admin_post(&admin, "/v1/releases", body).await;
            assert_eq!(s, 201, "{v}");
            v["id"].as_str().unwrap().to_owned()
        }
    };
    // 1.0.0 online for four accounts; the fifth has nothing online yet.
    let first = create(json!({ "template_id": template_id, "user_version": "1.0.0",
        "targets": { "appids": minis[..4] } }))
    .await;
    until_status(&p.admin, &first, "finished", Duration::from_secs(60)).await;
    // 1.1.0 in gray steps of 10 % and 50 %, one a second, then everyone.
    let gray = create(json!({ "template_id": template_id, "user_version": "1.1.0",
        "targets": { "appids": minis }, "release": { "gray": [10, 50] }, "gray_step_secs": 1 }))
    .await;
    let done = until_status(&p.admin, &gray, "finished", Duration::from_secs(60)).await;
    assert_eq!(done["counts"]["released"], 5, "{done}");
    for appid in &minis[..4] {
        assert_eq!(
            calls(&sim, "wxa_grayrelease", appid),
            2,
            "{appid}: two gray steps"
        );
    }
    assert_eq!(
        calls(&sim, "wxa_grayrelease", &minis[4]),
        0,
        "no gray without a version online"
    );
    {
        let code = sim.shared.code.lock().unwrap();
        for appid in &minis {
            assert_eq!(
                code.accounts[appid].release.as_ref().unwrap().user_version,
                "1.1.0"
            );
            assert_eq!(code.accounts[appid].gray, None, "{appid} fully released");
        }
    }
    // Roll 1.1.0 back: one step, to 1.0.0; not where it was the first release.
    let (s, rb) = admin_post(
        &p.admin,
        &format!("/v1/releases/{gray}/rollback"),
        json!({}),
    )
    .await;
    assert_eq!(s, 200, "{rb}");
    assert_eq!(rb["rolling_back"], 4, "{rb}");
    assert_eq!(rb["not_rolled_back_first_release"], 1, "{rb}");
    let back = until_status(&p.admin, &gray, "finished", Duration::from_secs(60)).await;
    assert_eq!(back["counts"]["rolled_back"], 4, "{back}");
    {
        let code = sim.shared.code.lock().unwrap();
        for appid in &minis[..4] {
            assert_eq!(
                code.accounts[appid].release.as_ref().unwrap().user_version,
                "1.0.0"
            );
        }
        assert_eq!(
            code.accounts[&minis[4]]
                .release
                .as_ref()
                .unwrap()
                .user_version,
            "1.1.0"
        );
    }
    for appid in &minis[..4] {
        assert_eq!(calls(&sim, "wxa_revertcoderelease", appid), 1);
    }
    let (s, hostile) = admin_post(
        &p.admin,
        &format!("/v1/releases/{gray}/rollback"),
        json!({ "appids": ["x\"y"] }),
    )
    .await;
    assert_eq!(s, 400, "{hostile}");
    // 1.2.0 to 10 % of users, the next step an hour away: withdrawn by a rollback.
    let held = create(json!({ "template_id": template_id, "user_version": "1.2.0",
        "targets": { "appids": minis[..4] }, "release": { "gray": [10, 50] }, "gray_step_secs": 3600 })).await;
    eventually(Duration::from_secs(60), "four accounts at 10 %", || async {
        (job(&p.admin, &held).await["counts"]["gray_released"] == 4).then_some(())
    })
    .await;
    let (s, rb) = admin_post(
        &p.admin,
        &format!("/v1/releases/{held}/rollback"),
        json!({}),
    )
    .await;
    assert_eq!(s, 200, "{rb}");
    assert_eq!(rb["rolling_back"], 4, "{rb}");
    let back = until_status(&p.admin, &held, "finished", Duration::from_secs(60)).await;
    assert_eq!(back["counts"]["rolled_back"], 4, "{back}");
    {
        let code = sim.shared.code.lock().unwrap();
        for appid in &minis[..4] {
            assert_eq!(code.accounts[appid].gray, None, "{appid}: gray withdrawn");
            assert_eq!(
                code.accounts[appid].release.as_ref().unwrap().user_version,
                "1.0.0"
            );
        }
    }
    for appid in &minis[..4] {
        assert_eq!(calls(&sim, "wxa_revertgrayrelease", appid), 1);
        assert_eq!(
            calls(&sim, "wxa_revertcoderelease", appid),
            1,
            "only the earlier rollback"
        );
    }
    // 1.0.0 again is not newer than what is online: skipped with the reason, nothing committed.
    let commits = total_calls(&sim, "wxa_commit");
    let same = create(json!({ "template_id": template_id, "user_version": "1.0.0",
        "targets": { "appids": minis[..4] } }))
    .await;
    let skipped = until_status(&p.admin, &same, "finished", Duration::from_secs(60)).await;
    assert_eq!(skipped["counts"]["skipped"], 4, "{skipped}");
    assert_eq!(total_calls(&sim, "wxa_commit"), commits);
    let why = accounts(&p.admin, &same, Some("skipped"), 10).await;
    assert!(
        why[0]["reason"]
            .as_str()
            .unwrap()
            .contains("not greater than 1.0.0"),
        "{why:?}"
    );
    // Four jobs, listed newest first, page by page.
    let (s, first_page) = admin_get(&p.admin, "/v1/releases?limit=3").await;
    assert_eq!(s, 200, "{first_page}");
    assert_eq!(first_page["count"], 3, "{first_page}");
    assert_eq!(first_page["releases"][0]["id"], same.as_str());
    let cursor = first_page["next_cursor"].as_str().unwrap().to_owned();
    let (_, rest) = admin_get(&p.admin, &format!("/v1/releases?limit=3&cursor={cursor}")).await;
    assert_eq!(rest["count"], 1, "{rest}");
    assert_eq!(rest["releases"][0]["id"], first.as_str());
    assert!(rest["next_cursor"].is_null(), "{rest}");
    for bad in ["cursor=..%2F", "cursor=r000000000000"] {
        let (s, v) = admin_get(&p.admin, &format!("/v1/releases?{bad}")).await;
        assert_eq!(s, 400, "{bad}: {v}");
    }
    p.stop().await;
    sim.stop().await;
}

/// The console's 代码发布 page in a real headless Chromium: a release created from the form,
/// its progress and WeChat's reason for a failed audit, the failure fixed and retried from the
/// page — with screenshots in `target/test-artifacts/releases/`.
#[tokio::test]
async fn the_releases_page_in_a_real_headless_browser() {
    use wxpipe_tests::browser::{screenshot, text_of, wait_until};
    let t = TestNs::new("t-releases-console");
    let (sim, p) = pipeline_with_sim(&t.ns).await;
    let minis = authorize(&p, &sim, 8, json!({ "mini_program": true })).await;
    let failing = minis[3].clone();
    sim.post("/sim/code/config", json!({ "review_ms": 300, "fail_appids": [failing], "quota_rest": 100, "quota_limit": 100 })).await;
    template(&sim);
    let _releases = spawn_releases(&t, &sim, Duration::from_secs(30), Duration::from_secs(5));
    let console = format!("{}/console", p.admin);
    let shared = sim.shared.clone();
    let failing_in_page = failing.clone();
    let shots = tokio::task::spawn_blocking(move || -> anyhow::Result<Vec<std::path::PathBuf>> {
        let dir = "releases";
        let browser = wxpipe_tests::browser::launch((1366, 1400))?;
        let (tab, _) = wxpipe_tests::browser::console_tab(&browser, &console, ADMIN_TOKEN, None)?;
        tab.wait_for_element("[data-tab=releases]")?.click()?;
        wait_until(&tab, "document.querySelector('[data-tab=releases]').innerText === '代码发布'", "the tab in Chinese", Duration::from_secs(5))?;
        wait_until(&tab, "document.querySelector('#rel-table tbody').innerText.includes('还没有发布任务')", "the empty list", Duration::from_secs(10))?;
        // The form: the template from the library, a version, every mini program.
        tab.wait_for_element("#rel-new")?.click()?;
        wait_until(&tab, "document.querySelectorAll('#rel-template option').length === 1", "the template list", Duration::from_secs(10))?;
        tab.wait_for_element("#rel-version")?.click()?;
        tab.type_str("1.0.0")?;
        tab.wait_for_element("#rel-desc")?.click()?;
        tab.type_str("首个版本")?;
        let mut shots = vec![screenshot(&tab, dir, "form")?];
        tab.wait_for_element("#rel-form button[type=submit]")?.click()?;
        wait_until(&tab, "document.querySelectorAll('#rel-table tbody tr.clickable').length === 1", "the job in the list", Duration::from_secs(10))?;
        // It runs to its end: seven released, one audit failed with WeChat's reason.
        wait_until(&tab, "document.querySelector('#rel-detail h3') && document.querySelector('#rel-detail h3').innerText.includes('已完成')", "the job finished", Duration::from_secs(60))?;
        wait_until(&tab, "!!document.querySelector('table.rel-accounts[data-list=audit_failed]')", "the failures", Duration::from_secs(10))?;
        let failures = text_of(&tab, "table.rel-accounts[data-list=audit_failed]")?;
        let legend = text_of(&tab, "#rel-detail .legend")?;
        shots.push(screenshot(&tab, dir, "finished-with-a-failure")?);
        anyhow::ensure!(failures.contains(&failing_in_page) && failures.contains("不符合规范") && failures.contains("审核未通过"), "{failures}");
        anyhow::ensure!(legend.contains("已发布: 7") && legend.contains("审核未通过: 1"), "{legend}");
        // The failure is fixed at WeChat's side; retried from the page, it is released too.
        shared.code.lock().unwrap().config.fail_appids.clear();
        tab.wait_for_element("#rel-detail button[data-action=retry]")?.click()?;
        wait_until(&tab, "document.querySelector('#rel-detail .legend').innerText.includes('已发布: 8')", "every account released", Duration::from_secs(60))?;
        shots.push(screenshot(&tab, dir, "all-released")?);
        Ok(shots)
    })
    .await
    .unwrap()
    .unwrap();
    for shot in shots {
        assert!(
            std::fs::metadata(&shot).unwrap().len() > 5000,
            "{}",
            shot.display()
        );
    }
    assert_eq!(
        calls(&sim, "wxa_submit_audit", &failing),
        2,
        "submitted again after the retry"
    );
    assert_eq!(calls(&sim, "wxa_release", &failing), 1);
    p.stop().await;
    sim.stop().await;
}
