//! The gateway (issue 13): calls arrive at the simulated WeChat with the right token; a token
//! WeChat stopped accepting costs one refresh however many calls hit it; -1 is retried; team
//! keys are scoped, rate-limited and revocable; media pass through unchanged; the component's
//! APIs get the component token and appid.

use serde_json::{Value, json};
use std::time::Duration;
use wxpipe_tests::broker::TestNs;
use wxpipe_tests::harness::{
    ADMIN_TOKEN, GatewayPlatform, Pipeline, admin_get, admin_post, eventually,
};
use wxpipe_tests::sim::SimHandle;

/// The gateway tests' platform, as the tuple these tests were written against.
async fn platform(
    t: &TestNs,
) -> (
    SimHandle,
    Pipeline,
    String,
    wxpipe_tests::harness::WorkerHandle,
    String,
) {
    let g = GatewayPlatform::start(&t.ns).await;
    (g.sim, g.pipeline, g.appid, g.gateway, g.gw)
}

use wxpipe_tests::harness::team_key as key;

async fn get(url: String, bearer: &str) -> reqwest::Response {
    wxpipe_tests::http()
        .get(url)
        .bearer_auth(bearer)
        .send()
        .await
        .unwrap()
}

async fn call(gw: &str, key: &str, path: &str, body: Value) -> (u16, Value) {
    wxpipe_tests::harness::post_json(&format!("{gw}{path}"), key, body).await
}

fn calls(sim: &SimHandle, api: &str) -> u64 {
    sim.stats()["calls"][api].as_u64().unwrap_or(0)
}

#[tokio::test]
async fn calls_carry_the_right_token_and_scopes_refuse_what_they_should() {
    let t = TestNs::new("t-gateway-scope");
    let (sim, p, appid, gw_handle, gw) = platform(&t).await;
    let crm = key(
        &p.admin,
        json!({ "team": "crm", "appids": ["*"], "paths": ["cgi-bin/message/custom/send"], "rate_per_sec": 1000 }),
    )
    .await;

    // A customer-service message arrives at WeChat with the account's own token.
    let (s, v) = call(
        &gw,
        &crm,
        &format!("/v1/wechat/{appid}/cgi-bin/message/custom/send"),
        json!({ "touser": "o-user", "msgtype": "text", "text": { "content": "hi" } }),
    )
    .await;
    assert_eq!((s, v["errcode"].as_i64()), (200, Some(0)), "{v}");
    let sent = &sim.stats()["custom_messages"][0];
    assert_eq!(sent["authorizer_appid"], appid.as_str());
    assert_eq!(sent["text"]["content"], "hi");

    // A token the caller put in the query is never forwarded: ours replaces it (the simulator
    // records every token value a request carried, not the one it used).
    let before = sim.gateway_requests().len();
    let (s, v) = call(
        &gw,
        &crm,
        &format!("/v1/wechat/{appid}/cgi-bin/message/custom/send?access_token=forged&access_token=forged2"),
        json!({ "touser": "o-user", "msgtype": "text", "text": { "content": "again" } }),
    )
    .await;
    assert_eq!((s, v["errcode"].as_i64()), (200, Some(0)), "{v}");
    let (_, stored) = admin_get(&p.admin, &format!("/v1/authorizers/{appid}/access_token")).await;
    let arrived = sim.gateway_requests();
    assert_eq!(arrived.len(), before + 1, "{:?}", &arrived[before..]);
    assert_eq!(
        arrived[before].tokens,
        vec![stored["access_token"].as_str().unwrap().to_owned()],
        "only our token reached WeChat"
    );

    // Refusals: no key, an unknown key, a path or an account outside the scope, the component.
    let anonymous = wxpipe_tests::http()
        .post(format!(
            "{gw}/v1/wechat/{appid}/cgi-bin/message/custom/send"
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), 401);
    let (s, _) = call(
        &gw,
        "wxpk_0000",
        &format!("/v1/wechat/{appid}/cgi-bin/message/custom/send"),
        json!({}),
    )
    .await;
    assert_eq!(s, 401);
    let (s, v) = call(
        &gw,
        &crm,
        &format!("/v1/wechat/{appid}/cgi-bin/menu/create"),
        json!({}),
    )
    .await;
    assert_eq!(s, 403, "{v}");
    let narrow = key(
        &p.admin,
        json!({ "team": "mini", "appids": ["wx0000000000000001"], "paths": ["*"], "rate_per_sec": 10 }),
    )
    .await;
    let (s, _) = call(
        &gw,
        &narrow,
        &format!("/v1/wechat/{appid}/cgi-bin/user/info"),
        json!({}),
    )
    .await;
    assert_eq!(s, 403);
    let (s, _) = call(
        &gw,
        &crm,
        "/v1/wechat/component/cgi-bin/component/api_get_authorizer_list",
        json!({}),
    )
    .await;
    assert_eq!(s, 403, "'*' is not the component");
    // No raw token without the scope saying so; the component token never through here.
    let r = get(format!("{gw}/v1/tokens/{appid}"), &crm).await;
    assert_eq!(r.status(), 403);
    let raw = key(
        &p.admin,
        json!({ "team": "ops", "appids": [appid], "paths": ["*"], "rate_per_sec": 10, "raw_tokens": true }),
    )
    .await;
    let r: Value = get(format!("{gw}/v1/tokens/{appid}"), &raw)
        .await
        .json()
        .await
        .unwrap();
    let (_, stored) = admin_get(&p.admin, &format!("/v1/authorizers/{appid}/access_token")).await;
    assert_eq!(r["access_token"], stored["access_token"]);
    let r = get(format!("{gw}/v1/tokens/component"), &raw).await;
    assert_eq!(r.status(), 400);

    // Keys are listed without the key and revoked at once.
    let (_, list) = admin_get(&p.admin, "/v1/gateway/keys").await;
    assert_eq!(list["keys"].as_array().unwrap().len(), 3, "{list}");
    assert!(!list.to_string().contains(&crm));
    let id = list["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["team"] == "crm")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let r = wxpipe_tests::http()
        .delete(format!("{}/v1/gateway/keys/{id}", p.admin))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let (s, _) = call(
        &gw,
        &crm,
        &format!("/v1/wechat/{appid}/cgi-bin/message/custom/send"),
        json!({}),
    )
    .await;
    assert_eq!(s, 401, "a revoked key");

    // Metrics per team, path and errcode.
    let metrics = wxpipe_tests::get_text(format!("{gw}/metrics")).await;
    assert!(
        // `path` is the key's pattern that allowed the call, never the path a caller chose.
        metrics.contains("wxpipe_gateway_calls_total{team=\"crm\",path=\"cgi-bin/message/custom/send\",outcome=\"ok\"}"),
        "{metrics}"
    );
    gw_handle.stop().await;
    p.stop().await;
    sim.stop().await;
}

#[tokio::test]
async fn a_refused_token_costs_one_refresh_for_fifty_concurrent_calls() {
    let t = TestNs::new("t-gateway-refresh");
    let (sim, p, appid, gw_handle, gw) = platform(&t).await;
    let team = key(
        &p.admin,
        json!({ "team": "bulk", "appids": ["*"], "paths": ["cgi-bin/user/info", "cgi-bin/openapi/*"], "rate_per_sec": 1000 }),
    )
    .await;
    let refreshes = calls(&sim, "api_authorizer_token");
    // WeChat stops accepting the stored token (refreshed elsewhere, say).
    assert_eq!(
        sim.post(
            &format!("/sim/authorizers/{appid}/invalidate-token"),
            json!({})
        )
        .await["invalidated"],
        true
    );
    let results = futures::future::join_all((0..50).map(|i| {
        let (gw, team, appid) = (gw.clone(), team.clone(), appid.clone());
        async move {
            let r = get(
                format!("{gw}/v1/wechat/{appid}/cgi-bin/user/info?openid=o-{i}&lang=zh_CN"),
                &team,
            )
            .await;
            let status = r.status().as_u16();
            let body: Value = r.json().await.unwrap();
            (status, body)
        }
    }))
    .await;
    for (status, body) in &results {
        assert_eq!(*status, 200, "{body}");
        assert_eq!(body["errcode"], 0, "{body}");
        assert_eq!(body["caller"], appid.as_str(), "the account's own token");
        assert_eq!(
            body["query"],
            json!(["lang", "openid"]),
            "the caller's query, no token of its own"
        );
    }
    assert_eq!(
        calls(&sim, "api_authorizer_token"),
        refreshes + 1,
        "one refresh for 50 callers"
    );

    // -1 (system busy) twice, then an answer: the call is retried with a backoff.
    sim.post("/sim/busy", json!({ "count": 2 })).await;
    let r = wxpipe_tests::http()
        .post(format!("{gw}/v1/wechat/{appid}/cgi-bin/openapi/quota/get"))
        .bearer_auth(&team)
        .json(&json!({ "cgi_path": "/cgi-bin/message/custom/send" }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["x-wxpipe-retries"], "2");
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["errcode"], 0, "{v}");
    assert!(v["quota"]["daily_limit"].is_u64(), "{v}");
    // Every other errcode is WeChat's answer, unchanged.
    let (s, v) = call(
        &gw,
        &team,
        &format!("/v1/wechat/{appid}/cgi-bin/openapi/rid/get"),
        json!({}),
    )
    .await;
    assert_eq!((s, v["errcode"].as_i64()), (200, Some(40097)), "{v}");
    gw_handle.stop().await;
    p.stop().await;
    sim.stop().await;
}

#[tokio::test]
async fn media_pass_through_and_a_keys_rate_holds() {
    let t = TestNs::new("t-gateway-media");
    let (sim, p, appid, gw_handle, gw) = platform(&t).await;
    let media = key(
        &p.admin,
        json!({ "team": "media", "appids": ["*"], "paths": ["cgi-bin/media/*"], "rate_per_sec": 5 }),
    )
    .await;
    // 5 MB of bytes that are not text, up as multipart and back down unchanged.
    let file: Vec<u8> = (0..5 * 1024 * 1024u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    let form = reqwest::multipart::Form::new().part(
        "media",
        reqwest::multipart::Part::bytes(file.clone())
            .file_name("big.jpg")
            .mime_str("image/jpeg")
            .unwrap(),
    );
    let up: Value = wxpipe_tests::http()
        .post(format!(
            "{gw}/v1/wechat/{appid}/cgi-bin/media/upload?type=image"
        ))
        .bearer_auth(&media)
        .multipart(form)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let media_id = up["media_id"]
        .as_str()
        .unwrap_or_else(|| panic!("{up}"))
        .to_owned();
    let down = get(
        format!("{gw}/v1/wechat/{appid}/cgi-bin/media/get?media_id={media_id}"),
        &media,
    )
    .await;
    assert_eq!(down.status(), 200);
    assert_eq!(down.headers()["content-type"], "image/jpeg");
    let got = down.bytes().await.unwrap();
    assert!(
        got == file,
        "the download differs from the upload ({} bytes)",
        got.len()
    );

    // 5 per second: of 12 calls at once, at most 5 (this second's rest of 3) pass.
    let results = futures::future::join_all((0..12).map(|_| {
        let (gw, media, appid) = (gw.clone(), media.clone(), appid.clone());
        async move {
            get(
                format!("{gw}/v1/wechat/{appid}/cgi-bin/media/get?media_id=none"),
                &media,
            )
            .await
            .status()
            .as_u16()
        }
    }))
    .await;
    let limited = results.iter().filter(|s| **s == 429).count();
    assert!(limited >= 7, "{results:?}");
    assert!(
        results.iter().all(|s| *s == 200 || *s == 429),
        "{results:?}"
    );
    gw_handle.stop().await;
    p.stop().await;
    sim.stop().await;
}

#[tokio::test]
async fn the_components_apis_get_the_component_token_and_appid() {
    let t = TestNs::new("t-gateway-component");
    let (sim, p, appid, gw_handle, gw) = platform(&t).await;
    // A mini-program team logs its users in: jscode2session through the component.
    let login = key(
        &p.admin,
        json!({ "team": "mp-login", "appids": ["component"], "paths": ["sns/component/jscode2session"], "rate_per_sec": 100 }),
    )
    .await;
    let v: Value = get(format!(
            "{gw}/v1/wechat/component/sns/component/jscode2session?appid={appid}&js_code=abc123&grant_type=authorization_code"
        ), &login).await
        .json()
        .await
        .unwrap();
    assert_eq!(v["openid"], "o-abc123", "{v}");
    assert!(v["session_key"].is_string());
    // Platform-level calls with the admin token: an option, the component's quota.
    let (s, v) = call(
        &gw,
        ADMIN_TOKEN,
        "/v1/wechat/component/cgi-bin/component/api_get_authorizer_option",
        json!({ "authorizer_appid": appid, "option_name": "voice_recognize" }),
    )
    .await;
    assert_eq!(s, 200);
    assert_eq!(v["option_name"], "voice_recognize", "{v}");
    let (_, v) = call(
        &gw,
        ADMIN_TOKEN,
        "/v1/wechat/component/cgi-bin/component/clear_quota",
        json!({}),
    )
    .await;
    assert_eq!(
        v["errcode"], 0,
        "component_appid was added to the body: {v}"
    );
    let (_, v) = call(
        &gw,
        ADMIN_TOKEN,
        &format!("/v1/wechat/{appid}/cgi-bin/clear_quota"),
        json!({ "appid": appid }),
    )
    .await;
    assert_eq!(v["errcode"], 0, "{v}");
    gw_handle.stop().await;
    p.stop().await;
    sim.stop().await;
}

/// Answers the first event of `queue` that waits for a passive reply with a text reply.
async fn reply_once(queue: String) -> anyhow::Result<()> {
    use futures::StreamExt;
    let conn = wxpipe_tests::broker::connect().await?;
    let ch = conn.create_channel().await?;
    let mut consumer = ch
        .basic_consume(
            queue.as_str().into(),
            "replier".into(),
            Default::default(),
            Default::default(),
        )
        .await?;
    while let Some(delivery) = consumer.next().await {
        let d = delivery?;
        d.ack(Default::default()).await?;
        let event: common::event::CloudEvent = serde_json::from_slice(&d.data)?;
        let (Some(reply_to), Some(id)) = (event.reply_to, event.correlation_id) else {
            continue;
        };
        let reply = "<xml><ToUserName><![CDATA[o-user]]></ToUserName><FromUserName><![CDATA[gh_x]]></FromUserName><CreateTime>1</CreateTime><MsgType><![CDATA[text]]></MsgType><Content><![CDATA[auto reply]]></Content></xml>";
        ch.basic_publish(
            "".into(),
            reply_to.as_str().into(),
            Default::default(),
            reply.as_bytes(),
            lapin::BasicProperties::default().with_correlation_id(id.as_str().into()),
        )
        .await?;
        break;
    }
    let _ = conn.close(200, "done".into()).await;
    Ok(())
}

#[tokio::test]
async fn passive_replies_for_any_account_at_run_time_and_the_account_list_pages() {
    let t = TestNs::new("t-gateway-runtime");
    let (sim, p, appid, gw_handle, _gw) = platform(&t).await;
    let mp = sim
        .post("/sim/authorize", json!({ "mini_program": true }))
        .await["appid"]
        .as_str()
        .unwrap()
        .to_owned();
    eventually(
        Duration::from_secs(20),
        "the second account's profile",
        || async {
            let (_, v) = admin_get(&p.admin, "/v1/authorizers?type=mini_program").await;
            (v["count"] == 1).then_some(())
        },
    )
    .await;

    // The account list, paged with a cursor and filtered.
    let (first, second) = if appid < mp {
        (&appid, &mp)
    } else {
        (&mp, &appid)
    };
    let (_, page1) = admin_get(&p.admin, "/v1/authorizers?limit=1").await;
    assert_eq!(page1["total"], 2);
    assert_eq!(page1["authorizers"][0]["appid"], first.as_str(), "{page1}");
    assert_eq!(page1["next_cursor"], first.as_str());
    let (_, page2) = admin_get(&p.admin, &format!("/v1/authorizers?limit=1&cursor={first}")).await;
    assert_eq!(page2["authorizers"][0]["appid"], second.as_str(), "{page2}");
    assert!(page2["next_cursor"].is_null(), "{page2}");
    let (_, mps) = admin_get(&p.admin, "/v1/authorizers?type=mini_program").await;
    assert_eq!(mps["authorizers"][0]["appid"], mp.as_str());
    assert_eq!(mps["authorizers"][0]["profile"]["mini_program"], true);
    let (_, perm) = admin_get(&p.admin, "/v1/authorizers?permission=15").await;
    assert_eq!(perm["count"], 2, "{perm}");
    let (_, none) = admin_get(&p.admin, "/v1/authorizers?status=revoked").await;
    assert_eq!(none["count"], 0);

    // Before: a push for the account is answered `success` at once.
    let queue = t.queue("replies");
    wxpipe_tests::broker::bind_queue(&queue, &t.ns.events(), &[&format!("authorizer.{appid}.#")])
        .await
        .unwrap();
    let before = sim
        .post(
            "/sim/push/text",
            json!({ "appid": appid, "content": "hello" }),
        )
        .await;
    assert_eq!(before["outcome"]["body"], "success", "{before}");
    // The account is made a sync-reply account through the admin API, at run time.
    let (s, v) = admin_post(&p.admin, "/v1/sync-reply/appids", json!({ "add": [appid] })).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["appids"], json!([appid]));
    let (s, _) = admin_post(
        &p.admin,
        "/v1/sync-reply/appids",
        json!({ "add": ["not-an-appid"] }),
    )
    .await;
    assert_eq!(s, 400);
    tokio::time::sleep(ingress::sync_reply::FOLLOW_EVERY + Duration::from_millis(700)).await;
    // Drain the first push's event, then answer the next one's.
    let _ = wxpipe_tests::broker::collect(&queue, 1, Duration::from_secs(5)).await;
    let replier = tokio::spawn(reply_once(queue.clone()));
    let after = sim
        .post(
            "/sim/push/text",
            json!({ "appid": appid, "content": "hello again" }),
        )
        .await;
    replier.await.unwrap().unwrap();
    let body = after["outcome"]["body"].as_str().unwrap_or_default();
    assert!(
        body.contains("<Encrypt>"),
        "the passive reply, encrypted: {after}"
    );
    let (_, v) = admin_post(
        &p.admin,
        "/v1/sync-reply/appids",
        json!({ "remove": [appid] }),
    )
    .await;
    assert_eq!(v["appids"], json!([]));
    assert!(v.get("warning").is_none(), "{v}");
    // `*` is accepted, and the answer says what it costs each ingress replica.
    let (s, v) = admin_post(&p.admin, "/v1/sync-reply/appids", json!({ "add": ["*"] })).await;
    assert_eq!((s, &v["appids"]), (200, &json!(["*"])), "{v}");
    let warning = v["warning"]
        .as_str()
        .unwrap_or_else(|| panic!("no warning: {v}"));
    assert!(
        warning.contains("WXPIPE_SYNC_REPLY_TIMEOUT_MS"),
        "{warning}"
    );
    let (_, v) = admin_get(&p.admin, "/v1/sync-reply/appids").await;
    assert!(v["warning"].is_string(), "{v}");
    let (_, v) = admin_post(
        &p.admin,
        "/v1/sync-reply/appids",
        json!({ "remove": ["*"] }),
    )
    .await;
    assert!(v.get("warning").is_none(), "{v}");
    gw_handle.stop().await;
    p.stop().await;
    sim.stop().await;
}

/// Each API gets the token its documentation names, under that name, as it arrives at WeChat
/// (`workers/src/gateway/credential.rs`): the template library the component token as
/// `access_token` (the simulator, like WeChat's documentation, takes no other name there), the
/// component's web-login APIs `component_access_token` and `component_appid`, and the user-token
/// APIs (`sns/userinfo`, `sns/auth`) the caller's own user token and never one of ours — a
/// refusal of it is the caller's answer, not a reason to refresh the account's token.
#[tokio::test]
async fn each_api_gets_the_token_it_documents_and_user_tokens_pass_through() {
    let t = TestNs::new("t-gateway-credentials");
    let (sim, p, appid, gw_handle, gw) = platform(&t).await;
    let (_, component) = admin_get(&p.admin, "/v1/component/access_token").await;
    let component = component["access_token"].as_str().unwrap().to_owned();
    let (_, account) = admin_get(&p.admin, &format!("/v1/authorizers/{appid}/access_token")).await;
    let account = account["access_token"].as_str().unwrap().to_owned();

    // The template library, end to end: drafts → a template → listed → deleted.
    let before = sim.gateway_requests().len();
    let v: Value = get(
        format!("{gw}/v1/wechat/component/wxa/gettemplatedraftlist"),
        ADMIN_TOKEN,
    )
    .await
    .json()
    .await
    .unwrap();
    assert_eq!(v["errcode"], 0, "{v}");
    assert_eq!(v["draft_list"].as_array().map(Vec::len), Some(2), "{v}");
    let (_, v) = call(
        &gw,
        ADMIN_TOKEN,
        "/v1/wechat/component/wxa/addtotemplate",
        json!({ "draft_id": 1, "template_type": 0 }),
    )
    .await;
    assert_eq!(v["errcode"], 0, "{v}");
    let v: Value = get(
        format!("{gw}/v1/wechat/component/wxa/gettemplatelist?template_type=0"),
        ADMIN_TOKEN,
    )
    .await
    .json()
    .await
    .unwrap();
    let template = &v["template_list"][0];
    assert_eq!(template["user_version"], "1.1.0", "{v}");
    let (_, v) = call(
        &gw,
        ADMIN_TOKEN,
        "/v1/wechat/component/wxa/deletetemplate",
        json!({ "template_id": template["template_id"] }),
    )
    .await;
    assert_eq!(v["errcode"], 0, "{v}");
    let arrived = sim.gateway_requests();
    assert_eq!(arrived.len(), before + 4, "{:?}", &arrived[before..]);
    for r in &arrived[before..] {
        let query = r.query.as_deref().unwrap_or("");
        assert!(
            query.starts_with("access_token=") || query.contains("&access_token="),
            "{} carried the component token as access_token: {query}",
            r.path
        );
        assert!(!query.contains("component_access_token"), "{query}");
        assert_eq!(r.tokens, vec![component.clone()], "{}", r.path);
    }

    // The component's web-login code exchange: component_access_token and component_appid.
    let before = sim.gateway_requests().len();
    let _ = get(
        format!("{gw}/v1/wechat/component/sns/oauth2/component/access_token?appid={appid}&code=CODE&grant_type=authorization_code"),
        ADMIN_TOKEN,
    )
    .await;
    let sent = &sim.gateway_requests()[before];
    let pairs: Vec<(String, String)> =
        url::form_urlencoded::parse(sent.query.as_deref().unwrap_or("").as_bytes())
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
    let value = |k: &str| pairs.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    assert_eq!(value("component_access_token"), Some(component.as_str()));
    assert_eq!(
        value("component_appid"),
        Some(wxpipe_tests::test_platform::COMPONENT_APPID)
    );
    assert_eq!(
        (value("appid"), value("code")),
        (Some(appid.as_str()), Some("CODE"))
    );
    assert_eq!(value("access_token"), None);

    // A user's token, through a team key scoped to sns/userinfo.
    let web = key(
        &p.admin,
        json!({ "team": "web", "appids": ["*"], "paths": ["sns/userinfo", "sns/auth"], "rate_per_sec": 100 }),
    )
    .await;
    let mint = |scope: &'static str| {
        let sim_url = format!("http://{}/sim/users/token", sim.api_addr);
        let appid = appid.clone();
        async move {
            let (_, v) = wxpipe_tests::harness::post_json(
                &sim_url,
                "-",
                json!({ "appid": appid, "scope": scope }),
            )
            .await;
            (
                v["access_token"].as_str().unwrap().to_owned(),
                v["openid"].as_str().unwrap().to_owned(),
            )
        }
    };
    let (user, openid) = mint("snsapi_userinfo").await;
    let (base_user, _) = mint("snsapi_base").await;
    let userinfo = |query: String| {
        let url = format!("{gw}/v1/wechat/{appid}/sns/userinfo?{query}");
        let web = web.clone();
        async move {
            let r = get(url, &web).await;
            let status = r.status().as_u16();
            let retries = r.headers().get("x-wxpipe-retries").cloned();
            let v: Value = r.json().await.unwrap_or(Value::Null);
            (status, v, retries)
        }
    };
    let refreshes_before = calls(&sim, "api_authorizer_token");
    let before = sim.gateway_requests().len();
    let (s, v, _) = userinfo(format!("access_token={user}&openid={openid}&lang=zh_CN")).await;
    assert_eq!(
        (s, v["openid"].as_str()),
        (200, Some(openid.as_str())),
        "{v}"
    );
    assert_eq!(v["nickname"], "微信用户");
    let sent = &sim.gateway_requests()[before];
    assert_eq!(
        sent.tokens,
        vec![user.clone()],
        "only the user's token reached WeChat"
    );
    // WeChat's refusals of a user's token are the caller's answer: no retry, no refresh.
    for (query, errcode) in [
        (format!("access_token={base_user}&openid={openid}"), 48001),
        (
            format!("access_token=not-a-user-token&openid={openid}"),
            40001,
        ),
        (format!("access_token={account}&openid={openid}"), 40001),
        (format!("access_token={user}&openid=o-someone-else"), 40003),
    ] {
        let (s, v, retries) = userinfo(query.clone()).await;
        assert_eq!(
            (s, v["errcode"].as_i64()),
            (200, Some(errcode)),
            "{query}: {v}"
        );
        assert_eq!(
            retries.as_ref().and_then(|h| h.to_str().ok()),
            Some("0"),
            "{query}"
        );
    }
    assert_eq!(
        calls(&sim, "api_authorizer_token"),
        refreshes_before,
        "a refused user token never refreshes the account's"
    );
    let (_, stored) = admin_get(&p.admin, &format!("/v1/authorizers/{appid}/access_token")).await;
    assert_eq!(
        stored["access_token"],
        account.as_str(),
        "the account's token was kept"
    );
    let v: Value = get(
        format!("{gw}/v1/wechat/{appid}/sns/auth?access_token={user}&openid={openid}"),
        &web,
    )
    .await
    .json()
    .await
    .unwrap();
    assert_eq!(v["errcode"], 0, "{v}");

    // Hostile inputs: what WeChat receives (the simulator records every token value a request
    // carried), or that nothing was sent.
    for (query, status, on_the_wire) in [
        // No user token: refused, nothing sent.
        (format!("openid={openid}"), 400, None),
        ("access_token=&openid=x".to_owned(), 400, None),
        // Two user tokens: which one WeChat would use is not ours to guess.
        (
            format!("access_token={user}&access_token={base_user}&openid={openid}"),
            400,
            None,
        ),
        // A component token slipped in beside the user's is dropped.
        (
            format!("access_token={user}&component_access_token={component}&openid={openid}"),
            200,
            Some(vec![user.clone()]),
        ),
        // An encoded name is the same name.
        (
            format!("%61ccess_token={user}&openid={openid}"),
            200,
            Some(vec![user.clone()]),
        ),
    ] {
        let before = sim.gateway_requests().len();
        let (s, v, _) = userinfo(query.clone()).await;
        assert_eq!(s, status, "{query}: {v}");
        let arrived = sim.gateway_requests();
        match on_the_wire {
            None => assert_eq!(arrived.len(), before, "{query} reached WeChat"),
            Some(tokens) => assert_eq!(arrived[before].tokens, tokens, "{query}"),
        }
    }
    gw_handle.stop().await;
    p.stop().await;
    sim.stop().await;
}
