//! Stand-ins for WeChat's authorization pages (protocol.md §2): the PC page
//! `/cgi-bin/componentloginpage` and the mobile page `/safe/bindcomponent`. They validate the
//! component appid and the single-use `pre_auth_code`, then act as if the administrator had
//! scanned and confirmed: the `authorized` (or `updateauthorized`) event is pushed to the
//! ingress, and the browser is redirected to `redirect_uri?auth_code=…&expires_in=…`.

use super::SimShared;
use axum::Router;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::get;
use std::collections::HashMap;
use std::sync::Arc;

pub fn routes() -> Router<Arc<SimShared>> {
    Router::new()
        .route("/", get(index))
        .route("/cgi-bin/componentloginpage", get(authorize_page))
        .route("/safe/bindcomponent", get(authorize_page))
        .route("/wxaopen/safe/bindcomponent", get(authorize_page))
}

async fn index() -> Html<&'static str> {
    Html(
        "<!doctype html><title>wechat-sim</title><h1>wechat-sim</h1><p>A simulated WeChat authorization page. Start from your platform's own authorization entry page.</p>",
    )
}

fn refuse(status: StatusCode, why: &str) -> Response {
    let body = format!(
        "<!doctype html><title>authorization refused</title><h1>Authorization refused</h1><p id=\"error\">{why}</p>"
    );
    (status, Html(body)).into_response()
}

async fn authorize_page(
    State(sim): State<Arc<SimShared>>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    // WeChat refuses visitors who do not come from the platform's authorization domain.
    if let Some(domain) = &sim.config.referer_domain {
        let referer = headers
            .get(header::REFERER)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let host = url::Url::parse(referer)
            .ok()
            .and_then(|u| u.host_str().map(str::to_owned));
        if host.as_deref() != Some(domain.as_str()) {
            return refuse(
                StatusCode::FORBIDDEN,
                "Please open this page from the platform's authorization page (Referer check failed).",
            );
        }
    }
    let get = |k: &str| q.get(k).map(String::as_str).unwrap_or("");
    let (appid, pre_auth_code, redirect_uri) = (
        get("component_appid"),
        get("pre_auth_code"),
        get("redirect_uri"),
    );
    let Ok(redirect) = url::Url::parse(redirect_uri) else {
        return refuse(
            StatusCode::BAD_REQUEST,
            "redirect_uri is missing or not a URL.",
        );
    };
    if !get("auth_type").is_empty() && !get("biz_appid").is_empty() {
        return refuse(
            StatusCode::BAD_REQUEST,
            "auth_type and biz_appid are mutually exclusive.",
        );
    }
    let mini_program = get("auth_type") == "2";
    let biz = Some(get("biz_appid")).filter(|b| !b.is_empty());
    let outcome = {
        let mut state = sim.state.lock().expect("sim state");
        let _ = state.count_call("componentloginpage");
        match state.use_pre_auth_code(appid, pre_auth_code) {
            Ok(()) => Ok(state.authorize(biz, mini_program)),
            Err(e) => Err(e),
        }
    };
    let (authorizer, code, existed) = match outcome {
        Ok(v) => v,
        Err(e) => {
            return refuse(
                StatusCode::BAD_REQUEST,
                &format!("{} ({})", e.errmsg, e.errcode),
            );
        }
    };
    // The push and the redirect race, as they do at WeChat.
    let pusher = sim.pusher.clone();
    let (a, c, p) = (authorizer.clone(), code.clone(), pre_auth_code.to_owned());
    tokio::spawn(async move {
        pusher.authorized(&a, &c, &p, existed).await;
    });
    let mut target = redirect;
    target
        .query_pairs_mut()
        .append_pair("auth_code", &code)
        .append_pair("expires_in", &sim.auth_code_ttl_secs().to_string());
    Redirect::to(target.as_str()).into_response()
}
