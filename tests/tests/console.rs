//! The operator console (issue 14): its JSON endpoints against the real pipeline, and the page
//! itself in a real headless Chromium — log in, find an account, replay a dead letter, see the
//! counters move — with screenshots in `target/test-artifacts/console/`.

use common::wire::dead::DeadLetter;
use lapin::options::BasicPublishOptions;
use serde_json::json;
use std::time::Duration;
use wxpipe_tests::broker::{TestNs, bind_queue, collect, message_count};
use wxpipe_tests::harness::{
    ADMIN_TOKEN, Pipeline, admin_get, admin_post, eventually, pipeline_with_sim,
};
use wxpipe_tests::push::{PushBuilder, text_message};
use wxpipe_tests::sim::SimHandle;

/// A pipeline with a ticket, a component token and two accounts authorized through the
/// simulator's pushes (an official account and a mini program), their profiles stored.
async fn platform(t: &TestNs) -> (SimHandle, Pipeline, String, String) {
    let (sim, p) = pipeline_with_sim(&t.ns).await;
    let oa = p.authorize(&sim, false).await;
    let mp = p.authorize(&sim, true).await;
    (sim, p, oa, mp)
}

/// Puts on `{ns}.dead` a push that died of a cause now gone (Redis was down): a correctly
/// signed text message to `appid`, with the headers a consumer writes on a dead letter.
async fn dead_push(t: &TestNs, appid: &str, content: &str) {
    let now = common::unix_now();
    let push = PushBuilder::test_platform().authorizer(
        "gh_dead00000001",
        "o-dead",
        &text_message(
            "gh_dead00000001",
            "o-dead",
            now,
            content,
            77_000 + now as u64,
        ),
        now,
        "deadnonce",
    );
    let props = lapin::BasicProperties::default()
        .with_content_type("application/xml".into())
        .with_headers(push.raw_headers(appid));
    let dead = DeadLetter {
        source_queue: t.ns.raw(),
        reason: "redis_unavailable".into(),
        detail: "Redis unavailable while claiming a push (test)".into(),
        original_exchange: t.ns.raw(),
        original_routing_key: "authorizer".into(),
        dead_at_ms: common::unix_now_ms(),
    };
    let conn = wxpipe_tests::broker::connect().await.unwrap();
    let ch = conn.create_channel().await.unwrap();
    ch.confirm_select(Default::default()).await.unwrap();
    ch.basic_publish(
        "".into(),
        t.ns.dead().as_str().into(),
        BasicPublishOptions::default(),
        push.body.as_bytes(),
        dead.apply(&props),
    )
    .await
    .unwrap()
    .await
    .unwrap();
    let _ = conn.close(200, "done".into()).await;
}

#[tokio::test]
async fn the_console_endpoints_answer_what_the_page_shows() {
    let t = TestNs::new("t-console-api");
    let (sim, p, oa, mp) = platform(&t).await;
    let admin = p.admin.clone();

    // The page and its assets need no token, carry a strict CSP and no data; the API does.
    let page = wxpipe_tests::http()
        .get(format!("{admin}/console"))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    let csp = page.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(csp.contains("default-src 'self'"), "{csp}");
    let html = page.text().await.unwrap();
    assert!(
        html.contains("/console/app.js") && !html.contains("http://") && !html.contains("https://")
    );
    for asset in ["/console/app.js", "/console/app.css"] {
        let r = wxpipe_tests::http()
            .get(format!("{admin}{asset}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{asset}");
    }
    let anonymous = wxpipe_tests::http()
        .get(format!("{admin}/v1/console/accounts"))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), 401);

    // Accounts: paged, searchable, with their type; the detail has the permission sets and
    // never a token.
    let (s, all) = admin_get(&admin, "/v1/console/accounts?per_page=1").await;
    assert_eq!(s, 200);
    assert_eq!(all["total"], 2);
    assert_eq!(all["pages"], 2);
    assert_eq!(all["accounts"].as_array().unwrap().len(), 1);
    let (_, found) = admin_get(&admin, &format!("/v1/console/accounts?q={}", &mp[12..])).await;
    assert_eq!(found["matching"], 1, "{found}");
    assert_eq!(found["accounts"][0]["appid"], mp.as_str());
    assert_eq!(found["accounts"][0]["type"], "mini_program");
    let (_, none) = admin_get(&admin, "/v1/console/accounts?status=revoked").await;
    assert_eq!(none["matching"], 0);
    // The Official Account's jsapi_ticket: when it expires and whether its birth is known,
    // never the ticket.
    let detail = eventually(Duration::from_secs(15), "the account's ticket", || async {
        let (_, d) = admin_get(&admin, &format!("/v1/console/accounts/{oa}")).await;
        d["tickets"]["jsapi"]["expires_at"].is_i64().then_some(d)
    })
    .await;
    assert_eq!(detail["tickets"]["jsapi"]["birth_known"], false, "{detail}");
    assert!(detail["next_ticket_ms"].is_i64(), "{detail}");
    let issued = sim.shared.tickets.lock().unwrap().issued[&oa].clone();
    assert!(!detail.to_string().contains(&issued[0].ticket));
    assert_eq!(detail["type"], "official_account");
    assert_eq!(
        detail["profile"]["permissions"],
        json!([1, 7, 15]),
        "{detail}"
    );
    assert!(detail["next_refresh_ms"].is_i64());
    let text = detail.to_string();
    assert!(
        !text.contains("refresh_token\":\"") && !text.contains("access_token"),
        "{text}"
    );

    // Invalidate from the console: the stored token is dropped and a new one fetched, once.
    let before = sim.stats()["calls"]["api_authorizer_token"]
        .as_u64()
        .unwrap_or(0);
    let (s, inv) = admin_post(
        &admin,
        &format!("/v1/console/accounts/{oa}/invalidate"),
        json!({}),
    )
    .await;
    assert_eq!(s, 200, "{inv}");
    assert_eq!(inv["invalidated"], true);
    assert_eq!(
        sim.stats()["calls"]["api_authorizer_token"]
            .as_u64()
            .unwrap_or(0),
        before + 1
    );
    // Pressed again at once (or a refresh forced by anyone): refused for 10 s, no WeChat call.
    for path in [
        "console/accounts/{oa}/invalidate",
        "authorizers/{oa}/refresh",
    ] {
        let path = format!("/v1/{}", path.replace("{oa}", &oa));
        let (s, again) = admin_post(&admin, &path, json!({})).await;
        assert_eq!(s, 429, "{path}: {again}");
    }
    assert_eq!(
        sim.stats()["calls"]["api_authorizer_token"]
            .as_u64()
            .unwrap_or(0),
        before + 1,
        "no refresh while limited"
    );

    // The platform: ticket age, component token, WeChat errors.
    let (_, platform) = admin_get(&admin, "/v1/console/platform").await;
    assert_eq!(platform["ticket"], true);
    assert!(
        platform["ticket_age_secs"].as_i64().unwrap() < 60,
        "{platform}"
    );
    assert!(
        platform["component_token_expires_in_secs"]
            .as_i64()
            .unwrap()
            > 600
    );

    // The authorization link and its QR code.
    let (s, link) = admin_get(&admin, "/v1/console/auth-link").await;
    assert_eq!(s, 200);
    assert_eq!(link["url"], format!("{}/auth", p.base));
    assert!(link["qr_svg"].as_str().unwrap().contains("<svg"));

    // Dead letters through the same code as `workers dlq`.
    dead_push(&t, &oa, "console-api").await;
    eventually(Duration::from_secs(5), "the dead letter", || async {
        (message_count(&t.ns.dead()).await.ok()? == 1).then_some(())
    })
    .await;
    let (_, listing) = admin_get(&admin, "/v1/dlq").await;
    assert_eq!(listing["total"], 1, "{listing}");
    assert_eq!(listing["groups"][0]["reason"], "redis_unavailable");
    let (_, letter) = admin_get(&admin, "/v1/dlq/1").await;
    assert_eq!(letter["decrypted"]["Content"], "console-api", "{letter}");
    let (s, _) = admin_get(&admin, "/v1/dlq/2").await;
    assert_eq!(s, 400);
    let (_, dry) = admin_post(
        &admin,
        "/v1/dlq/replay",
        json!({ "reason": "redis_unavailable", "dry_run": true }),
    )
    .await;
    assert_eq!(dry["chosen"].as_array().unwrap().len(), 1, "{dry}");
    assert_eq!(dry["replayed"], 0);
    // A purge names the count it means; a different count is refused.
    let (s, conflict) = admin_post(&admin, "/v1/dlq/purge", json!({ "expected": 5 })).await;
    assert_eq!(s, 409, "{conflict}");
    assert_eq!(conflict["count"], 1);
    eventually(
        Duration::from_secs(5),
        "the letter back in its queue",
        || async { (message_count(&t.ns.dead()).await.ok()? == 1).then_some(()) },
    )
    .await;
    let (s, purged) = admin_post(&admin, "/v1/dlq/purge", json!({ "expected": 1 })).await;
    assert_eq!(s, 200, "{purged}");
    assert_eq!(purged["purged"], 1);

    // Readiness means the same on the admin port as on the ingress.
    let (s, ready) = admin_get(&admin, "/readyz").await;
    assert_eq!(s, 200, "{ready}");
    assert_eq!(ready["redis"], true);

    // The processes announce themselves: the ingress and every worker role of this process.
    let (_, traffic) = eventually(Duration::from_secs(20), "the processes", || async {
        let (s, v) = admin_get(&admin, "/v1/console/traffic").await;
        let roles = v["processes"].to_string();
        (s == 200 && roles.contains("ingress") && roles.contains("decrypt")).then_some((s, v))
    })
    .await;
    assert!(
        traffic["processes"].to_string().contains("scheduler"),
        "{traffic}"
    );
    p.stop().await;
    sim.stop().await;
}

/// Polls the page until `script` (a JavaScript expression) is true.
#[tokio::test]
async fn the_console_in_a_real_headless_browser() {
    use wxpipe_tests::browser::{text_of, wait_until};
    let t = TestNs::new("t-console-browser");
    let (sim, p, oa, mp) = platform(&t).await;
    let events = t.queue("events");
    bind_queue(&events, &t.ns.events(), &[&format!("authorizer.{oa}.#")])
        .await
        .unwrap();
    dead_push(&t, &oa, "replayed from the console").await;
    for n in 0..10 {
        let r = sim
            .post(
                "/sim/push/text",
                json!({ "appid": oa, "content": format!("m{n}") }),
            )
            .await;
        assert_eq!(r["outcome"]["status"], 200, "{r}");
    }
    let console = format!("{}/console", p.admin);
    let mp_part = mp[12..].to_owned();
    let mp_for_browser = mp.clone();
    let shots = tokio::task::spawn_blocking(move || -> anyhow::Result<Vec<std::path::PathBuf>> {
        let dir = "console";
        let browser = wxpipe_tests::browser::launch((1366, 900))?;
        // Log in: the token is typed once; it never appears in the URL.
        let (tab, login) = wxpipe_tests::browser::console_tab(&browser, &console, ADMIN_TOKEN, Some(dir))?;
        let mut shots: Vec<std::path::PathBuf> = login.into_iter().collect();
        // Chinese first.
        wait_until(&tab, "document.querySelector('[data-tab=accounts]').innerText === '授权账号'", "Chinese labels", Duration::from_secs(5))?;

        // Find the mini program by a piece of its appid and open it.
        wait_until(&tab, "document.querySelectorAll('#account-table tbody tr').length === 2", "both accounts", Duration::from_secs(10))?;
        tab.wait_for_element("#q")?.click()?;
        tab.type_str(&mp_part)?;
        tab.press_key("Enter")?;
        wait_until(&tab, "document.querySelectorAll('#account-table tbody tr').length === 1", "one match", Duration::from_secs(10))?;
        tab.wait_for_element("#account-table tbody tr")?.click()?;
        wait_until(&tab, "!document.querySelector('#account-detail').hidden", "the account's detail", Duration::from_secs(10))?;
        let detail = text_of(&tab, "#account-detail")?;
        shots.push(wxpipe_tests::browser::screenshot(&tab, dir, "account")?);
        // "Refresh now" gets the account a new token.
        tab.wait_for_element("#refresh-now")?.click()?;
        wait_until(&tab, "document.querySelector('#toast').innerText === '完成'", "the refresh", Duration::from_secs(10))?;

        // Dead letters: the group is listed; replay it for real.
        tab.wait_for_element("[data-tab=dead]")?.click()?;
        wait_until(&tab, "document.querySelectorAll('#dead-groups tbody tr').length === 1", "the dead letter", Duration::from_secs(10))?;
        shots.push(wxpipe_tests::browser::screenshot(&tab, dir, "dead-letters")?);
        tab.wait_for_element("#dead-groups tbody button")?.click()?;
        tab.wait_for_element("#r-dry")?.click()?;
        tab.wait_for_element("#replay-form button[type=submit]")?.click()?;
        wait_until(&tab, "document.querySelector('#replay-result').innerText.startsWith('replayed 1;')", "the replay", Duration::from_secs(15))?;
        let replay = text_of(&tab, "#replay-result")?;

        // Traffic: the counters move (ten pushes, eleven events with the replayed one).
        tab.wait_for_element("[data-tab=traffic]")?.click()?;
        wait_until(
            &tab,
            "(() => { const c = [...document.querySelectorAll('#traffic-cards .card')].map(e => e.innerText); \
              const n = (label) => parseInt((c.find(x => x.startsWith(label)) || '').split('\\n')[1] || '0', 10); \
              return n('已接收推送') >= 10 && n('已发布事件') >= 11; })()",
            "the counters to move",
            Duration::from_secs(30),
        )?;
        wait_until(&tab, "document.querySelector('#processes tbody').innerText.includes('ingress')", "the processes", Duration::from_secs(10))?;
        shots.push(wxpipe_tests::browser::screenshot(&tab, dir, "traffic")?);

        // The authorization link with its QR code, then the platform in English.
        tab.wait_for_element("[data-tab=authorize]")?.click()?;
        wait_until(&tab, "!!document.querySelector('#qr img') && document.querySelector('#qr img').naturalWidth > 0", "the QR code", Duration::from_secs(10))?;
        shots.push(wxpipe_tests::browser::screenshot(&tab, dir, "authorize")?);
        tab.wait_for_element("#lang")?.click()?;
        tab.wait_for_element("[data-tab=platform]")?.click()?;
        wait_until(&tab, "document.querySelector('#platform-cards').innerText.includes('Ticket age')", "the platform in English", Duration::from_secs(10))?;
        shots.push(wxpipe_tests::browser::screenshot(&tab, dir, "platform-en")?);
        // The mini program's own detail: its appid, and the kind in Chinese.
        anyhow::ensure!(detail.contains(&mp_for_browser) && detail.contains("小程序"), "{detail}");
        anyhow::ensure!(replay.starts_with("replayed 1; 0 left"), "{replay}");
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
    // The replayed letter became an event; nothing is left dead.
    let got = collect(&events, 11, Duration::from_secs(15)).await.unwrap();
    assert!(
        got.iter()
            .any(|m| String::from_utf8_lossy(&m.body).contains("replayed from the console")),
        "the replayed push is not among the events"
    );
    assert_eq!(message_count(&t.ns.dead()).await.unwrap(), 0);
    p.stop().await;
    sim.stop().await;
}
