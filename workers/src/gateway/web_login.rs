//! `POST /v1/oauth/result {"code"}`: a team's server redeems the one-time result code the
//! ingress's web login handed to its page ([`common::web_login`]) for who logged in —
//! `{appid, openid, unionid?, scope, user_info?, is_snapshotuser?, logged_in_at}`. Any key of
//! the team whose `return_to` prefix the login went back to may redeem it, once, within 5
//! minutes; another team's key finds nothing (and leaves the code to its owner).

use super::proxy::{Gateway, caller, refuse, within_rate};
use axum::extract::{State, rejection::JsonRejection};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Json, Response};
use common::web_login::Redeemed;
use serde_json::{Value, json};
use std::sync::Arc;

pub async fn redeem(
    State(gw): State<Arc<Gateway>>,
    headers: HeaderMap,
    body: Result<Json<Value>, JsonRejection>,
) -> Response {
    let caller = match caller(&gw, &headers).await {
        Ok(c) => c,
        Err(r) => return r,
    };
    if let Err(r) = within_rate(&gw, &caller).await {
        return r;
    }
    let Some(code) = body
        .ok()
        .and_then(|Json(v)| v["code"].as_str().map(str::to_owned))
    else {
        return refuse(
            StatusCode::BAD_REQUEST,
            &caller.team,
            "bad_request",
            "send {\"code\": the wxpipe_code your page received}".into(),
        );
    };
    let team = caller.scope.as_ref().map(|_| caller.team.as_str());
    match gw.logins.redeem(&code, team).await {
        Ok(Redeemed::Result(r)) => {
            metrics::counter!("wxpipe_web_logins_total", "outcome" => "redeemed").increment(1);
            tracing::info!(target: "wxpipe_gateway_access", team = %caller.team, key = %caller.id, appid = %r.appid, "web login redeemed");
            Json(json!(r)).into_response()
        }
        Ok(Redeemed::Gone | Redeemed::OtherTeam) => {
            metrics::counter!("wxpipe_web_logins_total", "outcome" => "redeem_refused")
                .increment(1);
            refuse(
                StatusCode::NOT_FOUND,
                &caller.team,
                "unknown_code",
                "unknown, expired (5 minutes) or already redeemed result code".into(),
            )
        }
        Err(e) => refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            &caller.team,
            "redis_unavailable",
            e.to_string(),
        ),
    }
}
