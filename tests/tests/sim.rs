//! `wechat-sim` itself: the API's rules over real HTTP (expiry, single-use codes, invalidation,
//! error codes, quotas, faults), the authorization page, WeChat's retries, crypto interop with
//! `common` on the shared vectors, and the load generator against a real ingress.

use serde_json::{Value, json};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;
use wxpipe_tests::broker::TestNs;
use wxpipe_tests::harness::{IngressHandle, test_config};
use wxpipe_tests::sim::{self, SimConfig, state::Rules};
use wxpipe_tests::test_platform;

const APPID: &str = test_platform::COMPONENT_APPID;

struct Api {
    http: reqwest::Client,
    base: String,
}

impl Api {
    async fn call(&self, path: &str, token: Option<&str>, body: Value) -> Value {
        let url = match token {
            Some(t) => format!("{}{path}?component_access_token={t}", self.base),
            None => format!("{}{path}", self.base),
        };
        self.http
            .post(url)
            .json(&body)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    async fn sim(&self, path: &str, body: Value) -> Value {
        self.http
            .post(format!("{}{path}", self.base))
            .json(&body)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    async fn component_token(&self) -> String {
        let ticket = self.sim("/sim/push/ticket", json!({})).await["ticket"]
            .as_str()
            .unwrap()
            .to_owned();
        let r = self
            .call("/cgi-bin/component/api_component_token", None, json!({"component_appid": APPID, "component_appsecret": test_platform::COMPONENT_SECRET, "component_verify_ticket": ticket}))
            .await;
        r["component_access_token"]
            .as_str()
            .unwrap_or_else(|| panic!("{r}"))
            .to_owned()
    }
}

async fn start(settings: SimConfig) -> (sim::SimHandle, Api) {
    let handle = sim::start(settings).await.unwrap();
    let api = Api {
        http: wxpipe_tests::http_builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap(),
        base: handle.api_base(),
    };
    (handle, api)
}

fn errcode(v: &Value) -> i64 {
    v["errcode"].as_i64().unwrap_or(0)
}

#[tokio::test]
async fn the_authorization_flow_over_http_with_single_use_codes() {
    // No ingress: pushes fail, which the sim records; the API works regardless.
    let (sim, api) = start(SimConfig::for_tests("http://127.0.0.1:9")).await;
    let bad = api
        .call("/cgi-bin/component/api_component_token", None, json!({"component_appid": APPID, "component_appsecret": test_platform::COMPONENT_SECRET, "component_verify_ticket": "not-pushed"}))
        .await;
    assert_eq!(errcode(&bad), 61006);
    let ct = api.component_token().await;

    let pre = api
        .call(
            "/cgi-bin/component/api_create_preauthcode",
            Some(&ct),
            json!({"component_appid": APPID}),
        )
        .await;
    let pre = pre["pre_auth_code"].as_str().unwrap().to_owned();
    let page = |code: &str| {
        format!(
            "{}/cgi-bin/componentloginpage?component_appid={APPID}&pre_auth_code={}&redirect_uri={}&auth_type=1",
            sim.page_base(),
            url::form_urlencoded::byte_serialize(code.as_bytes()).collect::<String>(),
            url::form_urlencoded::byte_serialize(b"https://platform.example/auth/callback")
                .collect::<String>()
        )
    };
    let r = api.http.get(page(&pre)).send().await.unwrap();
    assert_eq!(r.status(), 303);
    let location = url::Url::parse(r.headers()["location"].to_str().unwrap()).unwrap();
    assert_eq!(location.path(), "/auth/callback");
    let q: std::collections::HashMap<String, String> =
        location.query_pairs().into_owned().collect();
    assert_eq!(q["expires_in"], "600");
    let code = q["auth_code"].clone();
    // The pre_auth_code is single use.
    let again = api.http.get(page(&pre)).send().await.unwrap();
    assert_eq!(again.status(), 400);

    let auth = api
        .call(
            "/cgi-bin/component/api_query_auth",
            Some(&ct),
            json!({"component_appid": APPID, "authorization_code": code}),
        )
        .await;
    let info = &auth["authorization_info"];
    let authorizer = info["authorizer_appid"].as_str().unwrap().to_owned();
    let refresh = info["authorizer_refresh_token"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(info["expires_in"], 7200);
    assert!(info["func_info"].as_array().is_some_and(|f| !f.is_empty()));
    let reuse = api
        .call(
            "/cgi-bin/component/api_query_auth",
            Some(&ct),
            json!({"component_appid": APPID, "authorization_code": code}),
        )
        .await;
    assert_eq!(errcode(&reuse), 61010);

    let t = api
        .call("/cgi-bin/component/api_authorizer_token", Some(&ct), json!({"component_appid": APPID, "authorizer_appid": authorizer, "authorizer_refresh_token": refresh}))
        .await;
    let at = t["authorizer_access_token"].as_str().unwrap().to_owned();
    let wrong = api
        .call("/cgi-bin/component/api_authorizer_token", Some(&ct), json!({"component_appid": APPID, "authorizer_appid": authorizer, "authorizer_refresh_token": "nope"}))
        .await;
    assert_eq!(errcode(&wrong), 61023);

    let profile = api
        .call(
            "/cgi-bin/component/api_get_authorizer_info",
            Some(&ct),
            json!({"component_appid": APPID, "authorizer_appid": authorizer}),
        )
        .await;
    assert!(
        profile["authorizer_info"]["user_name"]
            .as_str()
            .unwrap()
            .starts_with("gh_")
    );
    assert_eq!(profile["authorizer_info"]["service_type_info"]["id"], 2);

    let list = api
        .call(
            "/cgi-bin/component/api_get_authorizer_list",
            Some(&ct),
            json!({"component_appid": APPID, "offset": 0, "count": 500}),
        )
        .await;
    assert_eq!(list["total_count"], 1);
    assert_eq!(list["list"][0]["refresh_token"], refresh.as_str());
    let too_many = api
        .call(
            "/cgi-bin/component/api_get_authorizer_list",
            Some(&ct),
            json!({"component_appid": APPID, "offset": 0, "count": 501}),
        )
        .await;
    assert_ne!(errcode(&too_many), 0);

    // Options, both flavours.
    let set = api
        .call("/cgi-bin/component/api_set_authorizer_option", Some(&ct), json!({"component_appid": APPID, "authorizer_appid": authorizer, "option_name": "voice_recognize", "option_value": "1"}))
        .await;
    assert_eq!(errcode(&set), 0);
    let got = api
        .http
        .post(format!(
            "{}/cgi-bin/component/get_authorizer_option?access_token={at}",
            api.base
        ))
        .json(&json!({"option_name": "voice_recognize"}))
        .send()
        .await
        .unwrap()
        .json::<Value>()
        .await
        .unwrap();
    assert_eq!(got["option_value"], "1");

    // The customer-service API records what it was sent, with the authorizer's token only.
    let sent = api
        .http
        .post(format!(
            "{}/cgi-bin/message/custom/send?access_token={at}",
            api.base
        ))
        .json(&json!({"touser": "o-1", "msgtype": "text", "text": {"content": "hi"}}))
        .send()
        .await
        .unwrap()
        .json::<Value>()
        .await
        .unwrap();
    assert_eq!(errcode(&sent), 0);
    let with_component_token = api
        .http
        .post(format!(
            "{}/cgi-bin/message/custom/send?access_token={ct}",
            api.base
        ))
        .json(&json!({"touser": "o-1", "msgtype": "text", "text": {"content": "hi"}}))
        .send()
        .await
        .unwrap()
        .json::<Value>()
        .await
        .unwrap();
    assert_eq!(errcode(&with_component_token), 40001);

    // Revocation: the token dies and the push says so.
    let revoked = api
        .sim(&format!("/sim/authorizers/{authorizer}/revoke"), json!({}))
        .await;
    assert_eq!(revoked["appid"], authorizer.as_str());
    let dead = api.call("/cgi-bin/component/api_authorizer_token", Some(&ct), json!({"component_appid": APPID, "authorizer_appid": authorizer, "authorizer_refresh_token": refresh})).await;
    assert_eq!(errcode(&dead), 61003);

    let stats = sim.stats();
    assert_eq!(stats["custom_messages"].as_array().unwrap().len(), 1);
    assert_eq!(stats["component_tokens_issued"], 1);
    assert_eq!(stats["authorizer_tokens_issued"][&authorizer], 2);
    assert!(stats["rejected_token_calls"].as_u64().unwrap() >= 1);
    // Pushes to a missing ingress were tried 3 times each, as WeChat does.
    assert_eq!(stats["pushes"]["ticket"]["error"], 3);
    sim.stop().await;
}

#[tokio::test]
async fn tokens_expire_and_are_invalidated_by_newer_ones() {
    let mut settings = SimConfig::for_tests("http://127.0.0.1:9");
    settings.rules = Rules {
        component_token_ttl: Duration::from_secs(2),
        supersede_grace: Duration::from_millis(500),
        ..Rules::default()
    };
    let (sim, api) = start(settings).await;
    let first = api.component_token().await;
    let create = |t: String| {
        let api = &api;
        async move {
            api.call(
                "/cgi-bin/component/api_create_preauthcode",
                Some(&t),
                json!({"component_appid": APPID}),
            )
            .await
        }
    };
    assert_eq!(errcode(&create(first.clone()).await), 0);
    let second = api.component_token().await;
    assert_eq!(
        errcode(&create(first.clone()).await),
        0,
        "the old token works during the grace"
    );
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(
        errcode(&create(first.clone()).await),
        40001,
        "superseded past the grace"
    );
    assert_eq!(errcode(&create(second.clone()).await), 0);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(errcode(&create(second).await), 42001, "expired");
    let missing = api
        .call(
            "/cgi-bin/component/api_create_preauthcode",
            None,
            json!({"component_appid": APPID}),
        )
        .await;
    assert_eq!(errcode(&missing), 41001);
    sim.stop().await;
}

#[tokio::test]
async fn quotas_and_faults() {
    let mut settings = SimConfig::for_tests("http://127.0.0.1:9");
    settings.rules.daily_quota = 3;
    let (sim, api) = start(settings).await;
    let ct = api.component_token().await;
    for _ in 0..3 {
        api.call(
            "/cgi-bin/component/api_create_preauthcode",
            Some(&ct),
            json!({"component_appid": APPID}),
        )
        .await;
    }
    let over = api
        .call(
            "/cgi-bin/component/api_create_preauthcode",
            Some(&ct),
            json!({"component_appid": APPID}),
        )
        .await;
    assert_eq!(errcode(&over), 45009);
    let cleared = api
        .call(
            "/cgi-bin/component/clear_quota/v2",
            None,
            json!({"component_appid": APPID, "appsecret": test_platform::COMPONENT_SECRET}),
        )
        .await;
    assert_eq!(errcode(&cleared), 0);
    let again = api
        .call(
            "/cgi-bin/component/api_create_preauthcode",
            Some(&ct),
            json!({"component_appid": APPID}),
        )
        .await;
    assert_eq!(errcode(&again), 0);
    let bad_secret = api
        .call(
            "/cgi-bin/component/api_start_push_ticket",
            None,
            json!({"component_appid": APPID, "component_secret": "wrong"}),
        )
        .await;
    assert_eq!(errcode(&bad_secret), 40125);
    sim.stop().await;

    let mut busy = SimConfig::for_tests("http://127.0.0.1:9");
    busy.busy_rate = 1.0;
    let (sim, api) = start(busy).await;
    let r = api
        .call(
            "/cgi-bin/component/api_start_push_ticket",
            None,
            json!({"component_appid": APPID, "component_secret": test_platform::COMPONENT_SECRET}),
        )
        .await;
    assert_eq!(errcode(&r), -1);
    sim.stop().await;

    let mut slow = SimConfig::for_tests("http://127.0.0.1:9");
    slow.slow_rate = 1.0;
    slow.slow_delay = Duration::from_millis(400);
    let (sim, api) = start(slow).await;
    let t0 = std::time::Instant::now();
    api.call(
        "/cgi-bin/component/api_start_push_ticket",
        None,
        json!({"component_appid": APPID, "component_secret": test_platform::COMPONENT_SECRET}),
    )
    .await;
    assert!(t0.elapsed() >= Duration::from_millis(400));
    sim.stop().await;
}

#[tokio::test]
async fn the_authorization_page_checks_the_referer_when_asked() {
    let mut settings = SimConfig::for_tests("http://127.0.0.1:9");
    settings.referer_domain = Some("platform.example".into());
    let (sim, api) = start(settings).await;
    let ct = api.component_token().await;
    let pre = api
        .call(
            "/cgi-bin/component/api_create_preauthcode",
            Some(&ct),
            json!({"component_appid": APPID}),
        )
        .await;
    let url = format!(
        "{}/cgi-bin/componentloginpage?component_appid={APPID}&pre_auth_code={}&redirect_uri=https%3A%2F%2Fplatform.example%2Fauth%2Fcallback",
        sim.page_base(),
        url::form_urlencoded::byte_serialize(pre["pre_auth_code"].as_str().unwrap().as_bytes())
            .collect::<String>()
    );
    assert_eq!(api.http.get(&url).send().await.unwrap().status(), 403);
    assert_eq!(
        api.http
            .get(&url)
            .header("referer", "https://evil.example/")
            .send()
            .await
            .unwrap()
            .status(),
        403
    );
    let ok = api
        .http
        .get(&url)
        .header("referer", "https://platform.example/auth")
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 303);
    sim.stop().await;
}

/// A stand-in ingress that fails the first `failures` tries of every push.
async fn flaky_ingress(failures: u32) -> (String, Arc<AtomicU32>) {
    let tries = Arc::new(AtomicU32::new(0));
    let counter = tries.clone();
    let app = axum::Router::new().fallback(move || {
        let counter = counter.clone();
        async move {
            let n = counter.fetch_add(1, Ordering::SeqCst) + 1;
            if n <= failures {
                (axum::http::StatusCode::SERVICE_UNAVAILABLE, "busy")
            } else {
                (axum::http::StatusCode::OK, "success")
            }
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}"), tries)
}

#[tokio::test]
async fn pushes_are_retried_like_wechat_does() {
    let (url, tries) = flaky_ingress(2).await;
    let (sim, api) = start(SimConfig::for_tests(&url)).await;
    let r = api.sim("/sim/push/ticket", json!({})).await;
    assert_eq!(r["outcome"]["status"], 200);
    assert_eq!(r["outcome"]["tries"], 3);
    assert_eq!(tries.load(Ordering::SeqCst), 3);
    let stats = sim.stats();
    assert_eq!(stats["pushes"]["ticket"]["503"], 2);
    assert_eq!(stats["pushes"]["ticket"]["200"], 1);
    sim.stop().await;

    // Never more than 3 tries.
    let (url, tries) = flaky_ingress(10).await;
    let (sim, api) = start(SimConfig::for_tests(&url)).await;
    let r = api.sim("/sim/push/ticket", json!({})).await;
    assert_eq!(r["outcome"]["status"], 503);
    assert_eq!(tries.load(Ordering::SeqCst), 3);
    sim.stop().await;
}

#[tokio::test]
async fn its_crypto_interoperates_with_common_on_the_shared_vectors() {
    let vectors: Value =
        serde_json::from_str(include_str!("../../common/tests/data/crypto.json")).unwrap();
    for v in vectors.as_array().unwrap() {
        let s = |k: &str| v[k].as_str().unwrap();
        let builder =
            wxpipe_tests::push::PushBuilder::new(s("token"), s("encoding_aes_key"), s("appid"));
        // What the sim would send decrypts to the vector's plaintext, and the vector decrypts
        // with the sim's credentials.
        assert_eq!(
            builder.crypt().decrypt(s("encrypt")).unwrap(),
            s("plaintext")
        );
        if let Some(random) = v["random"].as_str() {
            let random: [u8; 16] = random.as_bytes().try_into().unwrap();
            assert_eq!(
                builder.crypt().encrypt_with_random(s("plaintext"), &random),
                s("encrypt")
            );
        }
        let push = builder.component(s("plaintext"), 1_700_000_000, "nonce");
        let q: std::collections::HashMap<String, String> =
            url::form_urlencoded::parse(push.query.as_bytes())
                .into_owned()
                .collect();
        let env = common::xml::envelope::Envelope::parse(push.body.as_bytes()).unwrap();
        assert_eq!(
            builder
                .crypt()
                .verify_and_decrypt(
                    &q["timestamp"],
                    &q["nonce"],
                    env.encrypt(),
                    &q["msg_signature"]
                )
                .unwrap(),
            s("plaintext")
        );
        assert!(
            builder
                .crypt()
                .verify_signature(&q["timestamp"], &q["nonce"], &q["signature"])
                .is_ok()
        );
    }
}

#[tokio::test]
async fn its_pushes_are_accepted_by_the_real_ingress_and_the_load_generator_reports() {
    let t = TestNs::new("t-sim-load");
    let ingress = IngressHandle::start(test_config(&t.ns, vec![wxpipe_tests::amqp_url()])).await;
    assert!(ingress.wait_ready(Duration::from_secs(15)).await);
    let base = format!("http://{}", ingress.addr);
    let (sim, api) = start(SimConfig::for_tests(&base)).await;
    let r = api.sim("/sim/push/ticket", json!({})).await;
    assert_eq!(r["outcome"]["status"], 200, "{r}");
    assert_eq!(r["outcome"]["body"], "success");
    let auth = api.sim("/sim/authorize", json!({})).await;
    assert_eq!(auth["outcome"]["status"], 200, "{auth}");
    let text = api
        .sim(
            "/sim/push/text",
            json!({"appid": auth["appid"], "content": "hello"}),
        )
        .await;
    assert_eq!(text["outcome"]["status"], 200, "{text}");
    sim.stop().await;

    let summary = sim::load::run(sim::load::LoadPlan {
        ingress_url: base,
        rate: 200.0,
        duration: Duration::from_secs(2),
        authorizers: 10,
        concurrency: 8,
        builder: wxpipe_tests::push::PushBuilder::test_platform(),
        progress: false,
        record: false,
        stop: None,
    })
    .await
    .unwrap();
    assert_eq!(summary.rejected, 0, "{summary}");
    assert!(
        summary.accepted >= 300 && summary.accepted <= 460,
        "a steady 200/s for 2 s: {summary}"
    );
    let queued = wxpipe_tests::broker::message_count(&t.ns.raw())
        .await
        .unwrap() as u64;
    assert_eq!(
        queued,
        summary.accepted + 3,
        "every accepted push is in {}",
        t.ns.raw()
    );
    ingress.stop().await.unwrap();
}

#[test]
fn the_binaries_explain_themselves() {
    let run = |bin: &str, args: &[&str]| {
        let out = std::process::Command::new(bin).args(args).output().unwrap();
        assert!(out.status.success(), "{bin} {args:?}");
        String::from_utf8(out.stdout).unwrap()
    };
    let sim = env!("CARGO_BIN_EXE_wechat-sim");
    let help = run(sim, &["--help"]);
    for mode in ["serve", "load", "release-test", "WXPIPE_WECHAT_API_BASE"] {
        assert!(help.contains(mode), "wechat-sim --help lacks {mode}");
    }
    let serve = run(sim, &["serve", "--help"]);
    for flag in [
        "--ticket-interval",
        "--authorizer-token-ttl",
        "--busy-rate",
        "--referer-domain",
        "WXPIPE_SIM_INGRESS_URL",
    ] {
        assert!(serve.contains(flag), "wechat-sim serve --help lacks {flag}");
    }
    let load = run(sim, &["load", "--help"]);
    for flag in ["--rate", "--duration", "--authorizers", "--concurrency"] {
        assert!(load.contains(flag), "wechat-sim load --help lacks {flag}");
    }
    assert!(run(sim, &["--version"]).starts_with("wechat-sim "));
    let bench = run(env!("CARGO_BIN_EXE_wxpipe-bench"), &["--help"]);
    for b in ["ingress", "decrypt", "scheduler"] {
        assert!(bench.contains(b), "wxpipe-bench --help lacks {b}");
    }
}
