//! Web login on behalf of the authorized Official Accounts (代公众号发起网页授权, protocol.md
//! §9; the flow and what is stored in [`common::web_login`]).
//!
//! `GET /oauth/{appid}/start?return_to=…&scope=snsapi_base|snsapi_userinfo` sends the user to
//! WeChat's authorize page (`WXPIPE_WECHAT_OPEN_BASE`, open.weixin.qq.com) with
//! `component_appid` and a single-use `state`, once `return_to` starts with a prefix a team key
//! registered (and that key may use `oauth` for the account): there is no open redirect.
//! `GET /oauth/callback?code=&state=&appid=` — on the platform's 公众号开发域名, where WeChat
//! requires the `redirect_uri` (`WXPIPE_PUBLIC_BASE_URL` must be on it) — takes the state,
//! exchanges the code with the component token (`sns/oauth2/component/access_token`), reads
//! `sns/userinfo` for `snsapi_userinfo`, and sends the user to `return_to` with
//! `wxpipe_code=…`, a one-time result code the team's server redeems through the gateway. A
//! refused login (WeChat sends `state` without `code`) goes back with `wxpipe_error=access_denied`.
//! Expired or replayed states are refused with a page, Chinese first.

use super::auth::Client;
use super::auth_page::Ui;
use crate::state::SharedState;
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use common::i18n::Text;
use common::ids::AppId;
use common::web_login::{LoginResult, LoginScope, LoginState};
use std::collections::HashMap;

type Q = Query<HashMap<String, String>>;

/// The path a key's patterns must allow for web login on an account.
pub const SCOPE: &str = "oauth";

/// Logins one client may start per minute.
const STARTS_PER_CLIENT: u64 = 60;

fn counted(outcome: &'static str) {
    metrics::counter!("wxpipe_web_logins_total", "outcome" => outcome).increment(1);
}

/// An error page of the login, counted.
fn problem(ui: &Ui, status: StatusCode, outcome: &'static str, what: Text) -> Response {
    counted(outcome);
    let body = format!(
        "<h1>{}</h1><p id=\"error\">{}</p>",
        ui.t(Text::LoginErrorTitle),
        ui.t(what)
    );
    (status, Html(ui.page(Text::LoginErrorTitle, &body, None))).into_response()
}

/// A redirect the browser follows at once (302, never cached).
fn redirect(to: &str) -> Response {
    (
        StatusCode::FOUND,
        [
            (header::LOCATION, to.to_owned()),
            (header::CACHE_CONTROL, "no-store".to_owned()),
        ],
    )
        .into_response()
}

/// `GET /oauth/{appid}/start?return_to=…&scope=…`.
pub async fn start(
    State(state): State<SharedState>,
    ui: Ui,
    client: Client,
    Path(appid): Path<String>,
    Query(q): Q,
) -> Response {
    let Ok(appid) = appid.parse::<AppId>() else {
        return problem(
            &ui,
            StatusCode::NOT_FOUND,
            "unknown_account",
            Text::LoginUnknownAccount,
        );
    };
    let scope = match q.get("scope").map(String::as_str) {
        None | Some("") => LoginScope::Base,
        Some(s) => match LoginScope::parse(s) {
            Some(s) => s,
            None => {
                return problem(
                    &ui,
                    StatusCode::BAD_REQUEST,
                    "bad_scope",
                    Text::LoginBadScope,
                );
            }
        },
    };
    // The URL the browser will really be sent to: parsed as a browser parses it, compared
    // re-serialised with the registered prefixes.
    let return_to = q
        .get("return_to")
        .filter(|r| r.len() <= 2048 && !r.chars().any(char::is_control))
        .and_then(|r| url::Url::parse(r).ok())
        .filter(|u| u.username().is_empty() && u.password().is_none());
    let Some(return_to) = return_to else {
        return problem(
            &ui,
            StatusCode::BAD_REQUEST,
            "bad_return_to",
            Text::LoginBadReturn,
        );
    };
    let keys = match state.team_keys.list().await {
        Ok(k) => k,
        Err(e) => return unavailable(&ui, &e),
    };
    let Some(key) = keys.iter().find(|k| {
        k.scope.allows(&appid, SCOPE) && k.scope.return_to_matching(&return_to).is_some()
    }) else {
        tracing::info!(appid = %appid, "web login refused: return_to matches no team's registered prefix");
        return problem(
            &ui,
            StatusCode::BAD_REQUEST,
            "bad_return_to",
            Text::LoginBadReturn,
        );
    };
    match state
        .tokens
        .store
        .within_limit(
            &format!("web_login:client:{}", client.id()),
            STARTS_PER_CLIENT,
            60,
        )
        .await
    {
        Ok(true) => {}
        Ok(false) => {
            return problem(
                &ui,
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                Text::TooManyStarts,
            );
        }
        Err(e) => return unavailable(&ui, &e),
    }
    match state.tokens.store.authorizer(&appid).await {
        Ok(Some(r))
            if r.status != common::token::AuthorizerStatus::Revoked
                && r.account_type() != "mini_program" => {}
        Ok(_) => {
            return problem(
                &ui,
                StatusCode::NOT_FOUND,
                "unknown_account",
                Text::LoginUnknownAccount,
            );
        }
        Err(e) => return unavailable(&ui, &e),
    }
    let login = LoginState {
        appid: appid.to_string(),
        team: key.scope.team.clone(),
        key_id: key.id.clone(),
        return_to: return_to.to_string(),
        scope,
        created_at: common::unix_now(),
    };
    let flow = match state.logins.begin(&login).await {
        Ok(f) => f,
        Err(e) => return unavailable(&ui, &e),
    };
    let query = url::form_urlencoded::Serializer::new(String::new())
        .append_pair("appid", appid.as_str())
        .append_pair(
            "redirect_uri",
            &format!(
                "{}/oauth/callback",
                state.public_base_url.trim_end_matches('/')
            ),
        )
        .append_pair("response_type", "code")
        .append_pair("scope", scope.as_str())
        .append_pair("state", &flow)
        .append_pair("component_appid", state.crypt.appid())
        .finish();
    counted("started");
    redirect(&format!(
        "{}/connect/oauth2/authorize?{query}#wechat_redirect",
        state.wechat_open_base.trim_end_matches('/')
    ))
}

/// `return_to` with one more query pair (before any fragment).
fn back_to(return_to: &str, key: &str, value: &str) -> Option<String> {
    let mut u = url::Url::parse(return_to).ok()?;
    u.query_pairs_mut().append_pair(key, value);
    Some(u.to_string())
}

/// `GET /oauth/callback?code=&state=&appid=`.
pub async fn callback(State(state): State<SharedState>, ui: Ui, Query(q): Q) -> Response {
    let flow = q.get("state").map(String::as_str).unwrap_or_default();
    let login = match state.logins.take_state(flow).await {
        Ok(Some(l)) => l,
        Ok(None) => {
            return problem(
                &ui,
                StatusCode::BAD_REQUEST,
                "bad_state",
                Text::LoginBadLink,
            );
        }
        Err(e) => return unavailable(&ui, &e),
    };
    if q.get("appid").is_some_and(|a| *a != login.appid) {
        return problem(
            &ui,
            StatusCode::BAD_REQUEST,
            "bad_state",
            Text::LoginBadLink,
        );
    }
    let Some(code) = q
        .get("code")
        .filter(|c| !c.is_empty() && c.len() <= 512 && !c.chars().any(char::is_control))
    else {
        // The user refused (WeChat sends the state back without a code).
        counted("denied");
        return match back_to(&login.return_to, "wxpipe_error", "access_denied") {
            Some(to) => redirect(&to),
            None => problem(
                &ui,
                StatusCode::BAD_REQUEST,
                "bad_state",
                Text::LoginBadLink,
            ),
        };
    };
    let grant = state
        .tokens
        .with_component_token("sns_oauth2_component_access_token", |ct| {
            let (client, appid, code) = (
                state.tokens.client.clone(),
                login.appid.clone(),
                code.clone(),
            );
            async move { client.oauth_access_token(ct.expose(), &appid, &code).await }
        })
        .await;
    let grant = match grant {
        Ok(g) => g,
        Err(e) => {
            tracing::warn!(appid = %login.appid, error = %e, "web login: the code could not be exchanged");
            return problem(&ui, StatusCode::BAD_GATEWAY, "failed", Text::LoginFailed);
        }
    };
    let user_info = if login.scope == LoginScope::UserInfo {
        match state
            .tokens
            .client
            .sns_userinfo(grant.access_token.expose(), &grant.openid)
            .await
        {
            Ok(v) => Some(v),
            Err(e) => {
                tracing::warn!(appid = %login.appid, error = %e, "web login: sns/userinfo failed; the login goes on without the profile");
                None
            }
        }
    } else {
        None
    };
    let unionid = grant.unionid.clone().or_else(|| {
        user_info
            .as_ref()
            .and_then(|u| u["unionid"].as_str().map(str::to_owned))
    });
    let result = LoginResult {
        appid: login.appid.clone(),
        team: login.team.clone(),
        openid: grant.openid.clone(),
        unionid,
        scope: login.scope,
        user_info,
        is_snapshotuser: grant.is_snapshotuser,
        logged_in_at: common::unix_now(),
    };
    let code = match state.logins.put_result(&result).await {
        Ok(c) => c,
        Err(e) => return unavailable(&ui, &e),
    };
    counted("completed");
    match back_to(&login.return_to, "wxpipe_code", &code) {
        Some(to) => redirect(&to),
        None => problem(
            &ui,
            StatusCode::BAD_REQUEST,
            "bad_state",
            Text::LoginBadLink,
        ),
    }
}

fn unavailable(ui: &Ui, e: &dyn std::fmt::Display) -> Response {
    tracing::warn!(error = %e, "web login unavailable");
    problem(
        ui,
        StatusCode::SERVICE_UNAVAILABLE,
        "unavailable",
        Text::TryAgainLater,
    )
}
