//! JS-SDK for the teams' pages (protocol.md §9): `GET /v1/jssdk/{appid}/config?url=…` answers
//! what `wx.config` needs — `{appId, timestamp, nonceStr, signature}` — signed with the
//! account's `jsapi_ticket` (kept fresh by the scheduler, [`common::token::tickets`]) for the
//! page's URL, which must be on the platform's 公众号开发域名 (`WXPIPE_WEB_DOMAINS`). The key's
//! path patterns must allow `jssdk` for the account. The ticket itself is served only to keys
//! with `raw_tokens`: `GET /v1/tickets/{appid}/{jsapi|wx_card}`.

use super::proxy::{Gateway, caller, raw_access, refuse, token_error, within_rate};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Json, Response};
use common::ids::AppId;
use common::token::TicketKind;
use serde_json::json;
use std::collections::HashMap;
use std::sync::Arc;

/// The path a key's patterns must allow for the JS-SDK config of an account.
pub const SCOPE: &str = "jssdk";

/// `GET /v1/jssdk/{appid}/config?url=…`.
pub async fn config(
    State(gw): State<Arc<Gateway>>,
    Path(appid): Path<String>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    let caller = match caller(&gw, &headers).await {
        Ok(c) => c,
        Err(r) => return r,
    };
    let appid: AppId = match appid.parse() {
        Ok(a) => a,
        Err(e) => {
            return refuse(
                StatusCode::BAD_REQUEST,
                &caller.team,
                "bad_request",
                format!("{e}"),
            );
        }
    };
    if caller.allows(&appid, SCOPE).is_none() {
        return refuse(
            StatusCode::FORBIDDEN,
            &caller.team,
            "forbidden",
            format!(
                "this key may not sign JS-SDK pages of {appid} (its paths must allow \"{SCOPE}\")"
            ),
        );
    }
    if let Err(r) = within_rate(&gw, &caller).await {
        return r;
    }
    let url = match gw
        .web_domains
        .page(q.get("url").map(String::as_str).unwrap_or_default())
    {
        Ok(u) => u.to_owned(),
        Err(e) => {
            return refuse(
                StatusCode::BAD_REQUEST,
                &caller.team,
                "bad_request",
                e.to_string(),
            );
        }
    };
    let ticket = match gw.tokens.ticket(&appid, TicketKind::Jsapi).await {
        Ok(t) => t,
        Err(e) => return token_error(&caller.team, e),
    };
    let timestamp = common::unix_now();
    let nonce = common::jssdk::nonce();
    let signature = common::jssdk::signature(ticket.ticket.expose(), &nonce, timestamp, &url);
    metrics::counter!("wxpipe_jssdk_signatures_total", "team" => caller.team.clone()).increment(1);
    Json(json!({
        "appId": appid.as_str(),
        "timestamp": timestamp,
        "nonceStr": nonce,
        "signature": signature,
        "url": url,
    }))
    .into_response()
}

/// `GET /v1/tickets/{appid}/{jsapi|wx_card}`: the ticket itself, for keys with `raw_tokens`.
pub async fn raw_ticket(
    State(gw): State<Arc<Gateway>>,
    Path((appid, kind)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    let caller = match caller(&gw, &headers).await {
        Ok(c) => c,
        Err(r) => return r,
    };
    let (appid, kind): (AppId, TicketKind) = match (appid.parse(), TicketKind::parse(&kind)) {
        (Ok(a), Some(k)) => (a, k),
        (Err(e), _) => {
            return refuse(
                StatusCode::BAD_REQUEST,
                &caller.team,
                "bad_request",
                format!("{e}"),
            );
        }
        (_, None) => {
            return refuse(
                StatusCode::BAD_REQUEST,
                &caller.team,
                "bad_request",
                "the ticket's type is jsapi or wx_card".into(),
            );
        }
    };
    if let Err(r) = raw_access(&gw, &caller, &appid, "tickets").await {
        return r;
    }
    match gw.tokens.ticket(&appid, kind).await {
        Ok(t) => {
            tracing::info!(target: "wxpipe_gateway_access", team = %caller.team, key = %caller.id, appid = %appid, kind = kind.as_str(), "raw ticket served");
            Json(json!({ "ticket": t.ticket.expose(), "expires_at": t.expires_at, "type": kind.as_str() }))
                .into_response()
        }
        Err(e) => token_error(&caller.team, e),
    }
}
