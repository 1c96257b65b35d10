//! Web login on behalf of an authorized Official Account (issue 37): the whole flow in headless
//! Chromium for both scopes — silent `snsapi_base`, confirmed `snsapi_userinfo`, and a refusal —
//! ending at a team's page whose server redeems the one-time result code through the gateway;
//! and the hostile inputs: open redirects, replayed states and result codes, another team's
//! key, an appid swapped on the way back.

use axum::extract::{Query, State};
use axum::response::Html;
use serde_json::json;
use std::collections::HashMap;
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use wxpipe_tests::broker::TestNs;
use wxpipe_tests::harness::{Pipeline, WorkerHandle, free_port, spawn_gateway, spawn_pipeline};
use wxpipe_tests::sim::{self, SimConfig, SimHandle};

#[derive(Clone)]
struct App {
    gw: String,
    key: Arc<OnceLock<String>>,
}

/// The team's page at `/team/app/`: its server redeems `wxpipe_code` with the team's key and
/// shows who logged in.
async fn team_page(
    State(app): State<App>,
    Query(q): Query<HashMap<String, String>>,
) -> Html<String> {
    if let Some(e) = q.get("wxpipe_error") {
        return Html(format!(
            "<!doctype html><meta charset=utf-8><p id=\"denied\">{e}</p>"
        ));
    }
    let code = q.get("wxpipe_code").cloned().unwrap_or_default();
    let (status, who) = wxpipe_tests::harness::post_json(
        &format!("{}/v1/oauth/result", app.gw),
        app.key.get().map(String::as_str).unwrap_or(""),
        json!({ "code": code }),
    )
    .await;
    Html(format!(
        "<!doctype html><meta charset=utf-8><title>team</title><h1>团队页面</h1>\
<p id=\"status\">{status}</p><p id=\"openid\">{}</p><p id=\"nickname\">{}</p>\
<p id=\"unionid\">{}</p><p id=\"scope\">{}</p><p id=\"from\">{}</p>",
        who["openid"].as_str().unwrap_or("-"),
        who["user_info"]["nickname"].as_str().unwrap_or("-"),
        who["unionid"].as_str().unwrap_or("-"),
        who["scope"].as_str().unwrap_or("-"),
        q.get("from").cloned().unwrap_or_default(),
    ))
}

struct World {
    sim: SimHandle,
    p: Pipeline,
    gateway: WorkerHandle,
    gw: String,
    appid: String,
    /// `http://127.0.0.1:{port}/team/`: the team's registered return_to prefix.
    team: String,
    team_task: tokio::task::JoinHandle<()>,
    key: String,
}

impl World {
    async fn start(t: &TestNs) -> World {
        let port = free_port();
        let mut settings = SimConfig::for_tests(&format!("http://127.0.0.1:{port}"));
        // Like WeChat, the sim accepts a redirect_uri only on the platform's web domain.
        settings.web_domain = Some("127.0.0.1".into());
        let sim = sim::start(settings).await.unwrap();
        let p = spawn_pipeline(&t.ns, &sim, port, Duration::from_secs(600)).await;
        p.ticket_and_component_token(&sim).await;
        let appid = p.authorize(&sim, false).await;
        let (gateway, gw) = spawn_gateway(p.tokens.clone(), &sim.api_base()).await;
        let app = App {
            gw: gw.clone(),
            key: Arc::new(OnceLock::new()),
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let team = format!("http://{}/team/", listener.local_addr().unwrap());
        let key = wxpipe_tests::harness::team_key(
            &p.admin,
            json!({ "team": "h5", "appids": ["*"], "paths": ["oauth", "jssdk"],
                    "rate_per_sec": 1000, "return_to": [team] }),
        )
        .await;
        let _ = app.key.set(key.clone());
        let router = axum::Router::new()
            .route("/team/app/", axum::routing::get(team_page))
            .with_state(app);
        let team_task = tokio::spawn(async move {
            let _ = axum::serve(listener, router).await;
        });
        World {
            sim,
            p,
            gateway,
            gw,
            appid,
            team,
            team_task,
            key,
        }
    }

    fn start_url(&self, appid: &str, scope: &str, return_to: &str) -> String {
        let q = url::form_urlencoded::Serializer::new(String::new())
            .append_pair("scope", scope)
            .append_pair("return_to", return_to)
            .finish();
        format!("{}/oauth/{appid}/start?{q}", self.p.base)
    }

    async fn stop(self) {
        self.team_task.abort();
        self.gateway.stop().await;
        self.p.stop().await;
        self.sim.stop().await;
    }
}

fn no_redirects() -> reqwest::Client {
    wxpipe_tests::http_builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap()
}

/// GET without following: the status, the Location (if any) and the body.
async fn fetch(url: &str) -> (u16, Option<String>, String) {
    let r = no_redirects().get(url).send().await.unwrap();
    let status = r.status().as_u16();
    let location = r
        .headers()
        .get("location")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    (status, location, r.text().await.unwrap_or_default())
}

/// Walks a silent login by hand: start → WeChat's page → our callback; returns the callback
/// URL and where it sent the browser.
async fn walk(w: &World, return_to: &str) -> (String, String) {
    let (s, to_wechat, body) = fetch(&w.start_url(&w.appid, "snsapi_base", return_to)).await;
    assert_eq!(s, 302, "{body}");
    let (s, to_callback, body) = fetch(&to_wechat.unwrap()).await;
    assert!(s == 302 || s == 303, "{s} {body}");
    let callback = to_callback.unwrap();
    let (s, to_team, body) = fetch(&callback).await;
    assert_eq!(s, 302, "{body}");
    (callback, to_team.unwrap())
}

fn screenshot(tab: &headless_chrome::Tab, name: &str) -> anyhow::Result<()> {
    wxpipe_tests::browser::screenshot(tab, "web-login", name).map(|_| ())
}

/// What the team's page showed (by element id) and its URL.
type Seen = HashMap<String, String>;

const WECHAT_UA: &str = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Mobile/15E148 MicroMessenger/8.0.50";

#[tokio::test]
async fn the_whole_web_login_in_a_real_headless_browser_for_both_scopes() {
    let t = TestNs::new("t-web-login-browser");
    let w = World::start(&t).await;
    let page = format!("{}app/?from=menu", w.team);
    let silent = w.start_url(&w.appid, "snsapi_base", &page);
    let confirmed = w.start_url(&w.appid, "snsapi_userinfo", &page);
    let (base, userinfo, denied) =
        tokio::task::spawn_blocking(move || -> anyhow::Result<(Seen, Seen, String)> {
            let browser = wxpipe_tests::browser::launch((390, 844))?;
            let read = |tab: &headless_chrome::Tab| -> anyhow::Result<Seen> {
                let mut out = HashMap::new();
                for id in ["status", "openid", "nickname", "unionid", "scope", "from"] {
                    let text = tab
                        .wait_for_element_with_custom_timeout(
                            &format!("#{id}"),
                            Duration::from_secs(30),
                        )?
                        .get_inner_text()?;
                    out.insert(id.to_owned(), text);
                }
                out.insert("url".into(), tab.get_url());
                Ok(out)
            };
            // snsapi_base: no page at WeChat; the team's page at once.
            let tab = browser.new_tab()?;
            tab.set_user_agent(WECHAT_UA, Some("zh-CN,zh;q=0.9"), None)?;
            tab.navigate_to(&silent)?.wait_until_navigated()?;
            let base = read(&tab)?;
            screenshot(&tab, "base-team-page")?;
            // snsapi_userinfo: WeChat asks; the user allows.
            let tab = browser.new_tab()?;
            tab.set_user_agent(WECHAT_UA, Some("zh-CN,zh;q=0.9"), None)?;
            tab.navigate_to(&confirmed)?.wait_until_navigated()?;
            tab.wait_for_element("#allow")?;
            screenshot(&tab, "userinfo-confirm")?;
            tab.wait_for_element("#allow")?.click()?;
            let userinfo = read(&tab)?;
            screenshot(&tab, "userinfo-team-page")?;
            // …and refuses.
            let tab = browser.new_tab()?;
            tab.set_user_agent(WECHAT_UA, Some("zh-CN,zh;q=0.9"), None)?;
            tab.navigate_to(&confirmed)?.wait_until_navigated()?;
            tab.wait_for_element("#deny")?.click()?;
            let denied = tab
                .wait_for_element_with_custom_timeout("#denied", Duration::from_secs(30))?
                .get_inner_text()?;
            screenshot(&tab, "userinfo-denied")?;
            Ok((base, userinfo, denied))
        })
        .await
        .unwrap()
        .unwrap();
    let openid = sim::oauth::openid_for(&w.appid);
    assert_eq!(base["status"], "200", "{base:?}");
    assert_eq!(base["openid"], openid);
    assert_eq!(base["scope"], "snsapi_base");
    assert_eq!(base["nickname"], "-", "no profile for snsapi_base");
    assert_eq!(base["from"], "menu", "the team's own query survives");
    assert_eq!(userinfo["status"], "200", "{userinfo:?}");
    assert_eq!(userinfo["openid"], openid);
    assert_eq!(userinfo["scope"], "snsapi_userinfo");
    assert_eq!(userinfo["nickname"], "微信用户");
    assert_eq!(userinfo["unionid"], sim::users::unionid(&w.appid, &openid));
    assert_eq!(denied, "access_denied");
    // What the browser carried back: a one-time code only — never a token or the openid.
    for seen in [&base["url"], &userinfo["url"]] {
        assert!(seen.contains("wxpipe_code="), "{seen}");
        assert!(!seen.contains(&openid) && !seen.contains("token"), "{seen}");
    }
    for shot in [
        "base-team-page",
        "userinfo-confirm",
        "userinfo-team-page",
        "userinfo-denied",
    ] {
        let png = wxpipe_tests::browser::artifacts("web-login").join(format!("{shot}.png"));
        assert!(
            std::fs::metadata(&png).unwrap().len() > 1000,
            "{}",
            png.display()
        );
    }
    let stats = w.sim.shared.logins.lock().unwrap().exchanged;
    assert_eq!(stats, 2, "two codes exchanged (the refusal had none)");
    w.stop().await;
}

#[tokio::test]
async fn open_redirects_replays_and_other_teams_are_refused() {
    let t = TestNs::new("t-web-login-hostile");
    let w = World::start(&t).await;
    let team = w.team.clone();
    let host = team
        .trim_start_matches("http://")
        .trim_end_matches("/team/")
        .to_owned();

    // What a good start sends to WeChat, as sent.
    let (s, location, _) =
        fetch(&w.start_url(&w.appid, "snsapi_userinfo", &format!("{team}app/"))).await;
    assert_eq!(s, 302);
    let sent = url::Url::parse(&location.unwrap()).unwrap();
    assert_eq!(sent.path(), "/connect/oauth2/authorize");
    assert_eq!(sent.fragment(), Some("wechat_redirect"));
    let pairs: HashMap<String, String> = sent.query_pairs().into_owned().collect();
    assert_eq!(pairs["appid"], w.appid);
    assert_eq!(
        pairs["component_appid"],
        wxpipe_tests::test_platform::COMPONENT_APPID
    );
    assert_eq!(
        pairs["redirect_uri"],
        format!("{}/oauth/callback", w.p.base)
    );
    assert_eq!(pairs["response_type"], "code");
    assert_eq!(pairs["scope"], "snsapi_userinfo");
    assert!(common::web_login::well_formed(&pairs["state"]), "{pairs:?}");
    assert!(
        !sent.as_str().contains(&team),
        "return_to stays on our side: {sent}"
    );

    // Open redirects: every return_to outside the registered prefix is refused with a page,
    // never a Location.
    for hostile in [
        "".to_owned(),
        "https://evil.example/".to_owned(),
        format!("http://{host}.evil.example/team/app/"),
        format!("http://{host}/teamx/app/"),
        format!("http://{host}/team"),
        format!("http://{host}/team/../admin/"),
        format!("http://{host}/team/%2e%2e/admin/"),
        format!("http://user@{host}/team/app/"),
        format!("https://{host}/team/app/"),
        format!("//{host}/team/app/"),
        "javascript:alert(1)//".to_owned(),
        format!("http://{host}/team/app/\r\nSet-Cookie: a=b"),
        format!("http://evil.example\\@{host}/team/app/"),
    ] {
        let (s, location, body) = fetch(&w.start_url(&w.appid, "snsapi_base", &hostile)).await;
        assert_eq!(s, 400, "{hostile:?}");
        assert!(location.is_none(), "{hostile:?} → {location:?}");
        assert!(
            body.contains("未在本平台登记"),
            "{hostile:?}: Chinese first: {body}"
        );
    }
    // A bad scope, an unknown account, a mini program, an account outside the key's appids.
    let page = format!("{team}app/");
    assert_eq!(
        fetch(&w.start_url(&w.appid, "snsapi_login", &page)).await.0,
        400
    );
    assert_eq!(
        fetch(&w.start_url("wx00000000000000ff", "snsapi_base", &page))
            .await
            .0,
        404
    );
    let mini = w.p.authorize(&w.sim, true).await;
    assert_eq!(
        fetch(&w.start_url(&mini, "snsapi_base", &page)).await.0,
        404
    );

    // A whole silent login by hand, then its replays.
    let (callback, to_team) = walk(&w, &page).await;
    assert!(to_team.starts_with(&page), "{to_team}");
    let code = url::Url::parse(&to_team)
        .unwrap()
        .query_pairs()
        .find(|(k, _)| k == "wxpipe_code")
        .map(|(_, v)| v.into_owned())
        .unwrap();
    // The callback again (a reload, or a stolen URL): the state was single use.
    let (s, location, body) = fetch(&callback).await;
    assert_eq!(s, 400);
    assert!(location.is_none());
    assert!(body.contains("已过期或已使用"), "{body}");
    // Another team's key finds nothing, and leaves the code to its owner.
    let other = wxpipe_tests::harness::team_key(
        &w.p.admin,
        json!({ "team": "crm", "appids": ["*"], "paths": ["oauth"], "rate_per_sec": 100 }),
    )
    .await;
    let redeem = |key: String, code: String| {
        let gw = w.gw.clone();
        async move {
            wxpipe_tests::harness::post_json(
                &format!("{gw}/v1/oauth/result"),
                &key,
                json!({ "code": code }),
            )
            .await
        }
    };
    let (s, v) = redeem(other.clone(), code.clone()).await;
    assert_eq!(s, 404, "{v}");
    let (s, v) = redeem(w.key.clone(), code.clone()).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["openid"], sim::oauth::openid_for(&w.appid));
    assert_eq!(v["appid"], w.appid.as_str());
    assert!(
        v.get("access_token").is_none() && !v.to_string().contains("token"),
        "{v}"
    );
    // Redeemed once: a replay finds nothing.
    let (s, _) = redeem(w.key.clone(), code.clone()).await;
    assert_eq!(s, 404);
    for junk in ["", "x", "../../", "0123456789abcdef0123456789abcdeg"] {
        assert_eq!(redeem(w.key.clone(), junk.into()).await.0, 404, "{junk:?}");
    }
    assert_eq!(
        wxpipe_tests::harness::post_json(
            &format!("{}/v1/oauth/result", w.gw),
            "wxpk_bogus",
            json!({ "code": code })
        )
        .await
        .0,
        401
    );

    // A state used with another account's appid on the way back.
    let (s, to_wechat, _) = fetch(&w.start_url(&w.appid, "snsapi_base", &page)).await;
    assert_eq!(s, 302);
    let state = url::Url::parse(&to_wechat.unwrap())
        .unwrap()
        .query_pairs()
        .find(|(k, _)| k == "state")
        .map(|(_, v)| v.into_owned())
        .unwrap();
    let (s, location, _) = fetch(&format!(
        "{}/oauth/callback?code=whatever&state={state}&appid=wx00000000000000ff",
        w.p.base
    ))
    .await;
    assert_eq!(s, 400);
    assert!(location.is_none());
    // A forged state, a missing state.
    for forged in ["0123456789abcdef0123456789abcdef", "", "../../x"] {
        let (s, location, _) = fetch(&format!(
            "{}/oauth/callback?code=c&state={forged}",
            w.p.base
        ))
        .await;
        assert_eq!(s, 400, "{forged:?}");
        assert!(location.is_none());
    }
    w.stop().await;
}

#[tokio::test]
async fn a_teams_own_code_exchange_refresh_and_userinfo_go_through_the_gateway() {
    // A team that runs the exchange itself (holding the user's tokens) calls the component's
    // sns/oauth2/component/* through the gateway — which adds the component token and appid —
    // and sns/userinfo with the user's own token, which the gateway passes through.
    let t = TestNs::new("t-web-login-own");
    let w = World::start(&t).await;
    let key = wxpipe_tests::harness::team_key(
        &w.p.admin,
        json!({ "team": "h5own", "appids": ["component", "*"],
                "paths": ["sns/oauth2/component/*", "sns/userinfo"], "rate_per_sec": 100 }),
    )
    .await;
    // WeChat's page hands a code to the team's own redirect_uri (on the web domain).
    let authorize = format!(
        "{}/connect/oauth2/authorize?appid={}&redirect_uri={}&response_type=code&scope=snsapi_userinfo&state=s1&component_appid={}",
        w.sim.page_base(),
        w.appid,
        url::form_urlencoded::byte_serialize(b"http://127.0.0.1:9/own").collect::<String>(),
        wxpipe_tests::test_platform::COMPONENT_APPID
    );
    let (s, _, page) = fetch(&authorize).await;
    assert_eq!(s, 200, "the confirm page: {page}");
    let (s, back, _) = fetch(&format!(
        "{}/connect/oauth2/confirm?allow=1&{}",
        w.sim.page_base(),
        authorize.split_once('?').unwrap().1
    ))
    .await;
    assert!(s == 302 || s == 303, "{s}");
    let back = url::Url::parse(&back.unwrap()).unwrap();
    let code = back
        .query_pairs()
        .find(|(k, _)| k == "code")
        .map(|(_, v)| v.into_owned())
        .unwrap();
    let get = |path: String| {
        let (gw, key) = (w.gw.clone(), key.clone());
        async move {
            let r = wxpipe_tests::http()
                .get(format!("{gw}{path}"))
                .bearer_auth(&key)
                .send()
                .await
                .unwrap();
            let s = r.status().as_u16();
            (s, r.json::<serde_json::Value>().await.unwrap_or_default())
        }
    };
    let (s, grant) = get(format!(
        "/v1/wechat/component/sns/oauth2/component/access_token?appid={}&code={code}&grant_type=authorization_code",
        w.appid
    ))
    .await;
    assert_eq!(s, 200, "{grant}");
    let (openid, refresh) = (
        grant["openid"].as_str().unwrap().to_owned(),
        grant["refresh_token"].as_str().unwrap().to_owned(),
    );
    assert_eq!(openid, sim::oauth::openid_for(&w.appid));
    // The code was single use (40163 the second time).
    let (_, again) = get(format!(
        "/v1/wechat/component/sns/oauth2/component/access_token?appid={}&code={code}&grant_type=authorization_code",
        w.appid
    ))
    .await;
    assert_eq!(again["errcode"], 40163, "{again}");
    let (s, refreshed) = get(format!(
        "/v1/wechat/component/sns/oauth2/component/refresh_token?appid={}&grant_type=refresh_token&refresh_token={refresh}",
        w.appid
    ))
    .await;
    assert_eq!(s, 200);
    let user_token = refreshed["access_token"].as_str().unwrap().to_owned();
    assert_ne!(user_token, grant["access_token"].as_str().unwrap());
    let (s, info) = get(format!(
        "/v1/wechat/{}/sns/userinfo?access_token={user_token}&openid={openid}&lang=zh_CN",
        w.appid
    ))
    .await;
    assert_eq!(s, 200);
    assert_eq!(info["nickname"], "微信用户", "{info}");
    // On the wire: the component's calls carried the component token and appid, the userinfo
    // call the user's token alone.
    let requests = w.sim.shared.state.lock().unwrap().stats.requests.clone();
    for r in requests
        .iter()
        .filter(|r| r.path.starts_with("/sns/oauth2/component/"))
    {
        let q = r.query.clone().unwrap_or_default();
        assert!(q.contains("component_appid="), "{q}");
        assert_eq!(r.tokens.len(), 1, "{r:?}");
        assert!(q.contains("component_access_token="), "{q}");
    }
    let info_call = requests
        .iter()
        .rfind(|r| r.path == "/sns/userinfo")
        .unwrap();
    assert_eq!(info_call.tokens, vec![user_token]);
    w.stop().await;
}
