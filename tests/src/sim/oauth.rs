//! Web login on behalf of Official Accounts as WeChat runs it (protocol.md §9): the authorize
//! page `GET /connect/oauth2/authorize` (served on the page port, standing in for
//! open.weixin.qq.com) — silent for `snsapi_base`, a confirm page with 允许 / 拒绝 buttons a
//! headless browser can click for `snsapi_userinfo` — and the component's exchange
//! `sns/oauth2/component/access_token` and `…/refresh_token` on the API port, which mint the
//! user tokens [`super::users`] checks. Codes are single use (40163) and live 5 minutes
//! (40029); `redirect_uri` must be on the platform's web domain when one is configured
//! (10003), the scope one of the two (10005), `component_appid` the platform's.

use super::SimShared;
use super::api::answer;
use super::state::{ApiError, INVALID_APPID, TokenKind};
use axum::Router;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::get;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

const INVALID_CODE: ApiError = ApiError {
    errcode: 40029,
    errmsg: "invalid code",
};
const CODE_BEEN_USED: ApiError = ApiError {
    errcode: 40163,
    errmsg: "code been used",
};
const INVALID_REFRESH_TOKEN: ApiError = ApiError {
    errcode: 40030,
    errmsg: "invalid refresh_token",
};
/// How long a web-login code lives.
const CODE_TTL: Duration = Duration::from_secs(300);

/// A code handed to the browser.
pub struct Code {
    appid: String,
    openid: String,
    scope: String,
    expires: Instant,
    used: bool,
}

/// The web logins in flight.
#[derive(Default)]
pub struct Logins {
    codes: HashMap<String, Code>,
    /// refresh token → (appid, openid, scope)
    refresh: HashMap<String, (String, String, String)>,
    serial: u64,
    /// Codes issued and exchanged, for the tests.
    pub issued: u64,
    pub exchanged: u64,
}

/// The page-port routes.
pub fn page_routes() -> Router<Arc<SimShared>> {
    Router::new()
        .route("/connect/oauth2/authorize", get(authorize))
        .route("/connect/oauth2/confirm", get(confirm))
}

/// The API-port routes.
pub fn api_routes() -> Router<Arc<SimShared>> {
    Router::new()
        .route("/sns/oauth2/component/access_token", get(access_token))
        .route("/sns/oauth2/component/refresh_token", get(refresh_token))
}

type Q = Query<HashMap<String, String>>;

/// The simulated browser user's openid for `appid` (one user per account).
pub fn openid_for(appid: &str) -> String {
    format!("o-sim-{}", &appid[appid.len().saturating_sub(12)..])
}

fn error_page(errcode: i64, why: &str) -> Response {
    let body = format!(
        "<!doctype html><meta charset=\"utf-8\"><title>微信登录</title><h1>出错了</h1><p id=\"error\">{errcode}: {why}</p>"
    );
    (StatusCode::BAD_REQUEST, Html(body)).into_response()
}

/// `redirect_uri` with `pairs` added to its query.
fn back(redirect_uri: &str, pairs: &[(&str, &str)]) -> Option<String> {
    let mut u = url::Url::parse(redirect_uri).ok()?;
    {
        let mut q = u.query_pairs_mut();
        for (k, v) in pairs {
            q.append_pair(k, v);
        }
    }
    Some(u.to_string())
}

/// The checks of the authorize page; the redirect target and the scope.
fn check(
    sim: &SimShared,
    q: &HashMap<String, String>,
) -> Result<(String, String, String), (i64, &'static str)> {
    let get = |k: &str| q.get(k).map(String::as_str).unwrap_or("");
    let st = sim.state.lock().expect("sim state");
    if get("component_appid") != st.component_appid {
        return Err((41002, "component_appid is not this platform"));
    }
    if get("response_type") != "code" {
        return Err((10004, "response_type must be code"));
    }
    let scope = get("scope");
    if scope != "snsapi_base" && scope != "snsapi_userinfo" {
        return Err((10005, "scope is not snsapi_base or snsapi_userinfo"));
    }
    let appid = get("appid");
    let ok = st
        .authorizers
        .get(appid)
        .is_some_and(|a| !a.revoked && !a.mini_program);
    if !ok {
        return Err((
            10016,
            "appid has not authorized this platform, or is not an Official Account",
        ));
    }
    let redirect = get("redirect_uri");
    let host = url::Url::parse(redirect)
        .ok()
        .and_then(|u| u.host_str().map(str::to_owned));
    let on_domain = match (&sim.config.web_domain, &host) {
        (_, None) => false,
        (None, Some(_)) => true,
        (Some(d), Some(h)) => h == d || h.ends_with(&format!(".{d}")),
    };
    if !on_domain {
        return Err((
            10003,
            "redirect_uri domain is not the platform's web domain",
        ));
    }
    Ok((appid.to_owned(), redirect.to_owned(), scope.to_owned()))
}

fn issue_code(sim: &SimShared, appid: &str, scope: &str) -> String {
    let mut l = sim.logins.lock().expect("logins");
    l.serial += 1;
    l.issued += 1;
    let code = format!(
        "sim-oauth-code-{}-{}",
        l.serial,
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    );
    l.codes.insert(
        code.clone(),
        Code {
            appid: appid.to_owned(),
            openid: openid_for(appid),
            scope: scope.to_owned(),
            expires: Instant::now() + CODE_TTL,
            used: false,
        },
    );
    code
}

/// `GET /connect/oauth2/authorize?appid&redirect_uri&response_type=code&scope&state&component_appid`.
async fn authorize(State(sim): State<Arc<SimShared>>, Query(q): Q) -> Response {
    let (appid, redirect_uri, scope) = match check(&sim, &q) {
        Ok(v) => v,
        Err((errcode, why)) => return error_page(errcode, why),
    };
    let state = q.get("state").cloned().unwrap_or_default();
    if scope == "snsapi_base" {
        let code = issue_code(&sim, &appid, &scope);
        return match back(
            &redirect_uri,
            &[("code", &code), ("state", &state), ("appid", &appid)],
        ) {
            Some(to) => Redirect::to(&to).into_response(),
            None => error_page(10003, "redirect_uri is not a URL"),
        };
    }
    // snsapi_userinfo: the user confirms.
    let carry = url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs(q.iter())
        .finish();
    let nick = sim
        .state
        .lock()
        .expect("sim state")
        .authorizers
        .get(&appid)
        .map(|a| a.nick_name.clone())
        .unwrap_or_default();
    let body = format!(
        "<!doctype html><html lang=\"zh-CN\"><head><meta charset=\"utf-8\">\
<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"><title>微信登录</title>\
<style>body{{font-family:sans-serif;max-width:30rem;margin:2rem auto;padding:1rem}}\
a{{display:block;margin:.6rem 0;padding:.9rem;text-align:center;border-radius:.4rem;text-decoration:none}}\
#allow{{background:#07c160;color:#fff}}#deny{{background:#eee;color:#333}}</style></head><body>\
<h1 id=\"title\">{nick} 申请获得以下权限</h1><p>获得你的公开信息（昵称、头像等）</p>\
<a id=\"allow\" href=\"/connect/oauth2/confirm?allow=1&amp;{c}\">允许</a>\
<a id=\"deny\" href=\"/connect/oauth2/confirm?allow=0&amp;{c}\">拒绝</a></body></html>",
        nick = quick_xml::escape::escape(nick.as_str()),
        c = quick_xml::escape::escape(carry.as_str()),
    );
    Html(body).into_response()
}

/// The confirm page's buttons: a code when allowed, the state alone when refused.
async fn confirm(State(sim): State<Arc<SimShared>>, Query(q): Q) -> Response {
    let (appid, redirect_uri, scope) = match check(&sim, &q) {
        Ok(v) => v,
        Err((errcode, why)) => return error_page(errcode, why),
    };
    let state = q.get("state").cloned().unwrap_or_default();
    let to = if q.get("allow").map(String::as_str) == Some("1") {
        let code = issue_code(&sim, &appid, &scope);
        back(
            &redirect_uri,
            &[("code", &code), ("state", &state), ("appid", &appid)],
        )
    } else {
        back(&redirect_uri, &[("state", &state)])
    };
    match to {
        Some(to) => Redirect::to(&to).into_response(),
        None => error_page(10003, "redirect_uri is not a URL"),
    }
}

/// The component's credentials of an exchange: its token and its appid.
fn component(sim: &SimShared, api: &str, q: &HashMap<String, String>) -> Result<(), ApiError> {
    let mut st = sim.state.lock().expect("sim state");
    let checked = st.count_call(api).and_then(|()| {
        st.check_token(
            q.get("component_access_token").map(String::as_str),
            TokenKind::Component,
        )?;
        if q.get("component_appid") != Some(&st.component_appid) {
            return Err(INVALID_APPID);
        }
        Ok(())
    });
    if let Err(e) = &checked {
        st.count_error(api, e);
    }
    checked
}

fn grant(sim: &SimShared, appid: &str, openid: &str, scope: &str) -> Value {
    let (token, ttl) = sim.users.lock().expect("users").issue(appid, openid, scope);
    let refresh = format!(
        "sim-user-refresh-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..20]
    );
    sim.logins.lock().expect("logins").refresh.insert(
        refresh.clone(),
        (appid.to_owned(), openid.to_owned(), scope.to_owned()),
    );
    let mut v = json!({
        "access_token": token, "expires_in": ttl, "refresh_token": refresh,
        "openid": openid, "scope": scope,
    });
    if scope == "snsapi_userinfo" {
        v["unionid"] = json!(super::users::unionid(appid, openid));
    }
    v
}

/// `GET sns/oauth2/component/access_token?appid&code&grant_type=authorization_code&component_appid&component_access_token`.
async fn access_token(
    State(sim): State<Arc<SimShared>>,
    Query(q): Q,
) -> axum::response::Json<Value> {
    const API: &str = "sns_oauth2_component_access_token";
    let result = component(&sim, API, &q).and_then(|()| {
        if q.get("grant_type").map(String::as_str) != Some("authorization_code") {
            return Err(super::state::INVALID_ARGS);
        }
        let mut l = sim.logins.lock().expect("logins");
        let code = q.get("code").map(String::as_str).unwrap_or("");
        let c = l.codes.get_mut(code).ok_or(INVALID_CODE)?;
        if Some(&c.appid) != q.get("appid") || Instant::now() >= c.expires {
            return Err(INVALID_CODE);
        }
        if c.used {
            return Err(CODE_BEEN_USED);
        }
        c.used = true;
        let (appid, openid, scope) = (c.appid.clone(), c.openid.clone(), c.scope.clone());
        l.exchanged += 1;
        drop(l);
        Ok(grant(&sim, &appid, &openid, &scope))
    });
    if let Err(e) = &result {
        sim.state.lock().expect("sim state").count_error(API, e);
    }
    answer(result)
}

/// `GET sns/oauth2/component/refresh_token?appid&grant_type=refresh_token&component_appid&component_access_token&refresh_token`.
async fn refresh_token(
    State(sim): State<Arc<SimShared>>,
    Query(q): Q,
) -> axum::response::Json<Value> {
    const API: &str = "sns_oauth2_component_refresh_token";
    let result = component(&sim, API, &q).and_then(|()| {
        let found = sim
            .logins
            .lock()
            .expect("logins")
            .refresh
            .get(q.get("refresh_token").map(String::as_str).unwrap_or(""))
            .cloned();
        match found {
            Some((appid, openid, scope)) if Some(&appid) == q.get("appid") => {
                Ok(grant(&sim, &appid, &openid, &scope))
            }
            _ => Err(INVALID_REFRESH_TOKEN),
        }
    });
    if let Err(e) = &result {
        sim.state.lock().expect("sim state").count_error(API, e);
    }
    answer(result)
}
