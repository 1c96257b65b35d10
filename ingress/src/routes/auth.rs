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

use super::auth_page::Ui;
use crate::state::SharedState;
use axum::extract::{ConnectInfo, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Redirect, Response};
use common::i18n::Text;
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

/// `GET /auth`: the entry page. In WeChat's browser the phone buttons come first.
pub async fn entry(ui: Ui) -> Html<String> {
    let buttons = [
        (Text::OfficialAccount, "1"),
        (Text::MiniProgram, "2"),
        (Text::Both, "3"),
    ];
    let lang = ui.lang_param();
    let section = |mobile: bool| {
        let (heading, path, class, id) = if mobile {
            (
                Text::OnPhone,
                "/auth/start/mobile",
                "button secondary",
                "mobile",
            )
        } else {
            (Text::OnComputer, "/auth/start", "button", "pc")
        };
        let mut out = format!("<section id=\"{id}\"><h2>{}</h2>", ui.t(heading));
        for (label, t) in buttons {
            out.push_str(&format!(
                "<a class=\"{class}\" id=\"{id}-{t}\" href=\"{path}?auth_type={t}&amp;lang={lang}\">{}</a>",
                ui.t(label)
            ));
        }
        out.push_str("</section>");
        out
    };
    let mut body = format!(
        "<h1>{}</h1><p>{}</p>",
        ui.t(Text::AuthTitle),
        ui.t(Text::AuthIntro)
    );
    let (first, second) = if ui.in_wechat {
        (true, false)
    } else {
        (false, true)
    };
    body.push_str(&section(first));
    body.push_str(&section(second));
    body.push_str(&format!(
        "<h2>{}</h2><form action=\"/auth/start\" method=\"get\"><input type=\"hidden\" name=\"lang\" value=\"{lang}\"><label>{} <input name=\"biz_appid\" pattern=\"wx[0-9a-f]{{16}}\" required></label><button type=\"submit\">{}</button></form>",
        ui.t(Text::SpecificAccount),
        ui.t(Text::AppIdLabel),
        ui.t(Text::AuthorizeButton)
    ));
    Html(ui.page(Text::AuthTitle, &body, None))
}

/// The query WeChat's page takes besides the code: `auth_type` or `biz_appid`.
fn choice(q: &HashMap<String, String>) -> Result<Vec<(&'static str, String)>, Text> {
    let auth_type = q.get("auth_type").filter(|v| !v.is_empty());
    let biz = q.get("biz_appid").filter(|v| !v.is_empty());
    match (auth_type, biz) {
        (Some(_), Some(_)) => Err(Text::AuthTypeWithBiz),
        (Some(t), None) if matches!(t.as_str(), "1" | "2" | "3") => {
            Ok(vec![("auth_type", t.clone())])
        }
        (Some(_), None) => Err(Text::BadAuthType),
        (None, Some(b)) if AppId::is_valid(b) => Ok(vec![("biz_appid", b.clone())]),
        (None, Some(_)) => Err(Text::BadBizAppid),
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
    ui: &Ui,
    q: &HashMap<String, String>,
    mobile: bool,
    client: String,
) -> Response {
    let extra = match choice(q) {
        Ok(e) => e,
        Err(why) => return ui.problem(StatusCode::BAD_REQUEST, why),
    };
    match may_start(state, &client).await {
        Ok(true) => {}
        Ok(false) => {
            metrics::counter!("wxpipe_auth_pages_total", "outcome" => "rate_limited").increment(1);
            return ui.problem(StatusCode::TOO_MANY_REQUESTS, Text::TooManyStarts);
        }
        Err(e) => return unavailable(ui, &e),
    }
    let flow = uuid::Uuid::new_v4().simple().to_string();
    if let Err(e) = state
        .tokens
        .store
        .issue_auth_state(&flow, STATE_TTL_SECS)
        .await
    {
        return unavailable(ui, &e);
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
            return ui.problem(StatusCode::SERVICE_UNAVAILABLE, Text::CannotStart);
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
            &format!(
                "{}/auth/callback?state={flow}&lang={}",
                state.public_base_url,
                ui.lang_param()
            ),
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

/// Who is asking (see [`client_id`]): the peer address the server ([`common::edge`]) puts on
/// every request, or our own proxy's `X-Forwarded-For` entry.
pub struct Client(String);

impl Client {
    /// Who is asking (see `client_id`).
    pub fn id(&self) -> &str {
        &self.0
    }
}

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
pub async fn start_pc(
    State(state): State<SharedState>,
    ui: Ui,
    client: Client,
    Query(q): Q,
) -> Response {
    start(&state, &ui, &q, false, client.0).await
}

/// `GET /auth/start/mobile`: authorization inside WeChat on a phone.
pub async fn start_mobile(
    State(state): State<SharedState>,
    ui: Ui,
    client: Client,
    Query(q): Q,
) -> Response {
    start(&state, &ui, &q, true, client.0).await
}

/// `GET /auth/callback?auth_code=&expires_in=`: publishes the code as an event, confirmed.
pub async fn callback(State(state): State<SharedState>, ui: Ui, Query(q): Q) -> Response {
    let Some(code) = q
        .get("auth_code")
        .filter(|c| !c.is_empty() && c.len() <= 512 && !c.chars().any(char::is_control))
    else {
        return ui.problem(StatusCode::BAD_REQUEST, Text::AuthCodeMalformed);
    };
    let done = url::form_urlencoded::Serializer::new(String::new())
        .append_pair("code", code)
        .append_pair("lang", ui.lang_param())
        .finish();
    let flow = q.get("state").map(String::as_str).unwrap_or_default();
    let ours = if flow.len() == 32 && flow.bytes().all(|b| b.is_ascii_hexdigit()) {
        match state.tokens.store.take_auth_state(flow).await {
            Ok(ours) => ours,
            Err(e) => return unavailable(&ui, &e),
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
        return ui.problem(StatusCode::BAD_REQUEST, Text::BadLink);
    }
    let callback = AuthCallback {
        component_appid: state.crypt.appid().to_owned(),
        code: code.clone(),
        expires_in: q.get("expires_in").cloned().unwrap_or_default(),
        at: common::unix_now(),
    };
    let body = match serde_json::to_vec(&callback.to_event()) {
        Ok(b) => b,
        Err(e) => return unavailable(&ui, &e),
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
        return ui.problem(StatusCode::SERVICE_UNAVAILABLE, Text::CannotRecord);
    }
    metrics::counter!("wxpipe_auth_pages_total", "outcome" => "callback").increment(1);
    Redirect::to(&format!("/auth/done?{done}")).into_response()
}

/// `GET /auth/done?code=`: names the account once its code is exchanged and its profile known.
pub async fn done(State(state): State<SharedState>, ui: Ui, Query(q): Q) -> Response {
    let Some(code) = q.get("code").filter(|c| !c.is_empty() && c.len() <= 512) else {
        return ui.problem(StatusCode::BAD_REQUEST, Text::CodeMissing);
    };
    let appid = match state.tokens.code_outcome(code).await {
        Ok(a) => a,
        Err(e) => return unavailable(&ui, &e),
    };
    let received = |status: String| {
        let body = format!(
            "<h1>{}</h1><p id=\"status\">{status}</p>",
            ui.t(Text::ReceivedTitle)
        );
        Html(ui.page(Text::ReceivedTitle, &body, Some(1))).into_response()
    };
    let Some(appid) = appid else {
        return received(ui.t(Text::Waiting).to_owned());
    };
    match state.tokens.store.authorizer(&appid).await {
        Ok(Some(r)) if r.nick_name.is_some() => {
            let name = r.nick_name.unwrap_or_default();
            let thanks = ui.fill(Text::Thanks, &[("appid", appid.as_str())]).replace(
                "{name}",
                &format!("<strong id=\"account\">{}</strong>", escape(name.as_str())),
            );
            let body = format!(
                "<h1>{}</h1><p id=\"status\">{thanks}</p>",
                ui.t(Text::AuthorizedTitle)
            );
            Html(ui.page(Text::AuthorizedTitle, &body, None)).into_response()
        }
        _ => received(ui.fill(Text::FetchingProfile, &[("appid", appid.as_str())])),
    }
}

/// A Redis or other internal failure: logged, and a generic page for the visitor.
fn unavailable(ui: &Ui, e: &dyn std::fmt::Display) -> Response {
    tracing::warn!(error = %e, "authorization page unavailable");
    ui.problem(StatusCode::SERVICE_UNAVAILABLE, Text::TryAgainLater)
}
