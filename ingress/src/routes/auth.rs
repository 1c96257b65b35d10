//! The authorization flow on the platform's own domain (design.md, protocol.md §2).
//!
//! `GET /auth` is the entry page: WeChat's authorization page refuses visitors whose Referer is
//! not the platform's configured domain, so the flow starts here. Its buttons lead to
//! `/auth/start` (PC) and `/auth/start/mobile`, which redirect to WeChat with a fresh,
//! single-use `pre_auth_code` and `{WXPIPE_PUBLIC_BASE_URL}/auth/callback` as `redirect_uri`.
//! `/auth/callback` hands the code to the pipeline (a `component.auth_callback` event, exchanged
//! exactly once by the business workers even when the `authorized` push races it) and sends
//! the browser to `/auth/done`, which names the account once its profile is known.
//!
//! Anonymous visitors cannot make the platform do durable work: `/auth/start` (which spends a
//! `pre_auth_code`) is rate-limited per client and globally, and carries a random, single-use,
//! expiring `state` in the `redirect_uri`; `/auth/callback` accepts only a `state` it issued
//! (a junk `auth_code` becomes no event, no WeChat call and no dead letter). The state is 128
//! random bits kept in Redis rather than an HMAC: single use needs server-side state anyway.
//! The `authorized` push, signed by WeChat, still exchanges every real code.

use crate::state::SharedState;
use axum::extract::{ConnectInfo, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Redirect, Response};
use common::ids::AppId;
use common::wire::auth_callback::{self, AuthCallback};
use quick_xml::escape::escape;
use std::collections::HashMap;

type Q = Query<HashMap<String, String>>;

/// How long an authorization started on our page may take to come back (WeChat's
/// `pre_auth_code` lives 30 minutes).
const STATE_TTL_SECS: u64 = 1800;

/// The authorization pages' limits (`WXPIPE_AUTH_START_*`).
#[derive(Debug, Clone, Copy)]
pub struct AuthLimits {
    /// Starts one client may make per minute.
    pub starts_per_client: u64,
    /// Starts all clients together may make per minute.
    pub starts_per_minute: u64,
    /// Identify clients by the last `X-Forwarded-For` entry.
    pub trust_forwarded_for: bool,
}

/// Who is asking: the peer address, or the entry our own reverse proxy added.
fn client_id(
    limits: &AuthLimits,
    peer: Option<std::net::SocketAddr>,
    headers: &HeaderMap,
) -> String {
    if limits.trust_forwarded_for
        && let Some(last) = headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .rfind(|v| !v.is_empty())
    {
        return last.chars().take(64).collect();
    }
    peer.map(|p| p.ip().to_string())
        .unwrap_or_else(|| "unknown".into())
}

fn page(title: &str, body: &str, refresh: Option<u32>) -> String {
    let meta = refresh
        .map(|s| format!("<meta http-equiv=\"refresh\" content=\"{s}\">"))
        .unwrap_or_default();
    format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">{meta}<title>{title}</title>\
<style>body{{font-family:system-ui,sans-serif;max-width:40rem;margin:3rem auto;padding:0 1rem;line-height:1.5}}\
a.button{{display:inline-block;margin:.3rem .3rem .3rem 0;padding:.6rem 1rem;border-radius:.4rem;background:#07c160;color:#fff;text-decoration:none}}\
a.button.secondary{{background:#576b95}}</style></head><body>{body}</body></html>",
        title = escape(title)
    )
}

fn problem(status: StatusCode, what: &str) -> Response {
    metrics::counter!("wxpipe_auth_pages_total", "outcome" => "error").increment(1);
    (
        status,
        Html(page(
            "Authorization",
            &format!(
                "<h1>Authorization</h1><p id=\"error\">{}</p><p><a href=\"/auth\">Back</a></p>",
                escape(what)
            ),
            None,
        )),
    )
        .into_response()
}

/// `GET /auth`: the entry page.
pub async fn entry() -> Html<String> {
    let buttons = [
        ("Authorize an Official Account", "auth_type=1"),
        ("Authorize a Mini Program", "auth_type=2"),
        ("Authorize both", "auth_type=3"),
    ];
    let mut body = String::from(
        "<h1>Authorize this platform</h1><p>Choose what to authorize. You will be taken to WeChat, where the account's administrator scans and confirms.</p><h2>On a computer</h2>",
    );
    for (label, q) in buttons {
        body.push_str(&format!(
            "<a class=\"button\" id=\"pc-{}\" href=\"/auth/start?{q}\">{label}</a>",
            &q[10..]
        ));
    }
    body.push_str("<h2>On a phone, inside WeChat</h2>");
    for (label, q) in buttons {
        body.push_str(&format!("<a class=\"button secondary\" id=\"mobile-{}\" href=\"/auth/start/mobile?{q}\">{label}</a>", &q[10..]));
    }
    body.push_str("<h2>A specific account</h2><form action=\"/auth/start\" method=\"get\"><label>AppID <input name=\"biz_appid\" pattern=\"wx[0-9a-f]{16}\" required></label> <button type=\"submit\">Authorize</button></form>");
    Html(page("Authorize this platform", &body, None))
}

/// The query WeChat's page takes besides the code: `auth_type` or `biz_appid`.
fn choice(q: &HashMap<String, String>) -> Result<Vec<(&'static str, String)>, String> {
    let auth_type = q.get("auth_type").filter(|v| !v.is_empty());
    let biz = q.get("biz_appid").filter(|v| !v.is_empty());
    match (auth_type, biz) {
        (Some(_), Some(_)) => Err("auth_type and biz_appid cannot be combined".into()),
        (Some(t), None) if matches!(t.as_str(), "1" | "2" | "3") => {
            Ok(vec![("auth_type", t.clone())])
        }
        (Some(_), None) => {
            Err("auth_type must be 1 (official accounts), 2 (mini programs) or 3 (both)".into())
        }
        (None, Some(b)) if AppId::is_valid(b) => Ok(vec![("biz_appid", b.clone())]),
        (None, Some(_)) => Err("biz_appid must be an appid (wx + 16 hex digits)".into()),
        (None, None) => Ok(vec![("auth_type", "3".into())]),
    }
}

/// Whether another authorization may start now (per client, then globally).
async fn may_start(state: &SharedState, client: &str) -> Result<bool, common::redis::RedisError> {
    let limits = state.auth_limits;
    let store = &state.tokens.store;
    Ok(store
        .within_limit(
            &format!("auth_start:client:{client}"),
            limits.starts_per_client,
            60,
        )
        .await?
        && store
            .within_limit("auth_start:all", limits.starts_per_minute, 60)
            .await?)
}

async fn start(
    state: &SharedState,
    q: &HashMap<String, String>,
    mobile: bool,
    client: String,
) -> Response {
    let extra = match choice(q) {
        Ok(e) => e,
        Err(why) => return problem(StatusCode::BAD_REQUEST, &why),
    };
    match may_start(state, &client).await {
        Ok(true) => {}
        Ok(false) => {
            metrics::counter!("wxpipe_auth_pages_total", "outcome" => "rate_limited").increment(1);
            return problem(
                StatusCode::TOO_MANY_REQUESTS,
                "Too many authorizations were started just now. Please try again in a minute.",
            );
        }
        Err(e) => return problem(StatusCode::SERVICE_UNAVAILABLE, &e.to_string()),
    }
    let flow = uuid::Uuid::new_v4().simple().to_string();
    if let Err(e) = state
        .tokens
        .store
        .issue_auth_state(&flow, STATE_TTL_SECS)
        .await
    {
        return problem(StatusCode::SERVICE_UNAVAILABLE, &e.to_string());
    }
    let code = state
        .tokens
        .with_component_token("api_create_preauthcode", |ct| {
            let client = state.tokens.client.clone();
            async move { client.create_preauthcode(ct.expose()).await }
        })
        .await;
    let (pre_auth_code, _) = match code {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(error = %e, "cannot create a pre_auth_code");
            return problem(
                StatusCode::SERVICE_UNAVAILABLE,
                &format!(
                    "The platform cannot start an authorization right now ({e}). Try again in a minute."
                ),
            );
        }
    };
    let path = if mobile {
        "/safe/bindcomponent"
    } else {
        "/cgi-bin/componentloginpage"
    };
    let mut query = url::form_urlencoded::Serializer::new(String::new());
    if mobile {
        query
            .append_pair("action", "bindcomponent")
            .append_pair("no_scan", "1");
    }
    query
        .append_pair("component_appid", state.crypt.appid())
        .append_pair("pre_auth_code", &pre_auth_code)
        .append_pair(
            "redirect_uri",
            &format!("{}/auth/callback?state={flow}", state.public_base_url),
        );
    for (k, v) in &extra {
        query.append_pair(k, v);
    }
    let fragment = if mobile { "#wechat_redirect" } else { "" };
    metrics::counter!("wxpipe_auth_pages_total", "outcome" => "started").increment(1);
    Redirect::to(&format!(
        "{}{path}?{}{fragment}",
        state.wechat_page_base,
        query.finish()
    ))
    .into_response()
}

/// Who is asking (see [`client_id`]): the peer address the server ([`crate::http`]) puts on
/// every request, or our own proxy's `X-Forwarded-For` entry.
pub struct Client(String);

impl axum::extract::FromRequestParts<SharedState> for Client {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &SharedState,
    ) -> Result<Self, Self::Rejection> {
        let peer = parts
            .extensions
            .get::<ConnectInfo<std::net::SocketAddr>>()
            .map(|c| c.0);
        Ok(Client(client_id(&state.auth_limits, peer, &parts.headers)))
    }
}

/// `GET /auth/start`: PC authorization.
pub async fn start_pc(State(state): State<SharedState>, client: Client, Query(q): Q) -> Response {
    start(&state, &q, false, client.0).await
}

/// `GET /auth/start/mobile`: authorization inside WeChat on a phone.
pub async fn start_mobile(
    State(state): State<SharedState>,
    client: Client,
    Query(q): Q,
) -> Response {
    start(&state, &q, true, client.0).await
}

/// `GET /auth/callback?auth_code=&expires_in=`: publishes the code as an event, confirmed.
pub async fn callback(State(state): State<SharedState>, Query(q): Q) -> Response {
    let Some(code) = q
        .get("auth_code")
        .filter(|c| !c.is_empty() && c.len() <= 512 && !c.chars().any(char::is_control))
    else {
        return problem(
            StatusCode::BAD_REQUEST,
            "auth_code is missing or malformed.",
        );
    };
    let done = url::form_urlencoded::Serializer::new(String::new())
        .append_pair("code", code)
        .finish();
    let flow = q.get("state").map(String::as_str).unwrap_or_default();
    let ours = if flow.len() == 32 && flow.bytes().all(|b| b.is_ascii_hexdigit()) {
        match state.tokens.store.take_auth_state(flow).await {
            Ok(ours) => ours,
            Err(e) => return problem(StatusCode::SERVICE_UNAVAILABLE, &e.to_string()),
        }
    } else {
        false
    };
    if !ours {
        // A reload of a callback already handled: show its outcome.
        if let Ok(Some(_)) = state.tokens.code_outcome(code).await {
            return Redirect::to(&format!("/auth/done?{done}")).into_response();
        }
        metrics::counter!("wxpipe_auth_pages_total", "outcome" => "bad_state").increment(1);
        return problem(
            StatusCode::BAD_REQUEST,
            "This authorization link was not started here, has expired or was already used. Please start again from the authorization page.",
        );
    }
    let callback = AuthCallback {
        component_appid: state.crypt.appid().to_owned(),
        code: code.clone(),
        expires_in: q.get("expires_in").cloned().unwrap_or_default(),
        at: common::unix_now(),
    };
    let body = match serde_json::to_vec(&callback.to_event()) {
        Ok(b) => b,
        Err(e) => return problem(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    };
    if let Err(e) = state
        .publisher
        .publish(
            &state.namespace.events(),
            &auth_callback::routing_key(),
            &body,
            callback.properties().to_properties(),
        )
        .await
    {
        tracing::warn!(error = %e, "cannot hand the auth code to the pipeline");
        return problem(
            StatusCode::SERVICE_UNAVAILABLE,
            "The authorization could not be recorded right now; please open this link again.",
        );
    }
    metrics::counter!("wxpipe_auth_pages_total", "outcome" => "callback").increment(1);
    Redirect::to(&format!("/auth/done?{done}")).into_response()
}

/// `GET /auth/done?code=`: names the account once its code is exchanged and its profile known.
pub async fn done(State(state): State<SharedState>, Query(q): Q) -> Response {
    let Some(code) = q.get("code").filter(|c| !c.is_empty() && c.len() <= 512) else {
        return problem(StatusCode::BAD_REQUEST, "code is missing.");
    };
    let appid = match state.tokens.code_outcome(code).await {
        Ok(a) => a,
        Err(e) => return problem(StatusCode::SERVICE_UNAVAILABLE, &e.to_string()),
    };
    let Some(appid) = appid else {
        return Html(page("Authorization received", "<h1>Authorization received</h1><p id=\"status\">Waiting for WeChat to confirm the account…</p>", Some(1))).into_response();
    };
    match state.tokens.store.authorizer(&appid).await {
        Ok(Some(r)) if r.nick_name.is_some() => {
            let name = r.nick_name.unwrap_or_default();
            Html(page(
                "Authorized",
                &format!("<h1>Authorized</h1><p id=\"status\">Thank you: <strong id=\"account\">{}</strong> ({}) has authorized this platform.</p>", escape(&name), escape(appid.as_str())),
                None,
            ))
            .into_response()
        }
        _ => Html(page("Authorization received", &format!("<h1>Authorization received</h1><p id=\"status\">{} is authorized; fetching its profile…</p>", escape(appid.as_str())), Some(1))).into_response(),
    }
}
