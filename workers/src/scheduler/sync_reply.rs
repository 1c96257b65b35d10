//! The run-time set of accounts whose pushes wait for a passive reply produced downstream
//! (beside `WXPIPE_SYNC_REPLY_APPIDS`, which each ingress reads at start): every ingress replica
//! re-reads it from Redis within seconds, so auto-reply and chatbot products need no restart.
//! `GET /v1/sync-reply/appids`, `POST /v1/sync-reply/appids` `{"add": [...], "remove": [...]}`
//! (appids, or `*` for every account).

use super::admin::{Admin, BadRequest, error};
use axum::Router;
use axum::extract::{State, rejection::JsonRejection};
use axum::response::{IntoResponse, Json, Response};
use axum::routing::get;
use common::ids::AppId;
use serde_json::json;
use std::sync::Arc;

/// Said in the answer whenever the set holds `*`: what every account waiting costs.
pub const EVERY_ACCOUNT_WARNING: &str = "\"*\" makes every push of every account wait for a \
passive reply, up to WXPIPE_SYNC_REPLY_TIMEOUT_MS (4.5 s by default) when none comes: each \
ingress replica then holds one connection and one reply waiter per push for that long — at R \
pushes/s, up to R x the timeout connections (4,500 at 1,000/s), against WXPIPE_MAX_CONNECTIONS \
and, behind a proxy, WXPIPE_CLIENT_CONNECTION_SHARE. Reply to every push quickly, or list the \
accounts that need it instead.";

/// The answer of both routes: the set, and the warning when it holds `*`.
fn answer(appids: Vec<String>) -> Response {
    if appids.iter().any(|a| a == "*") {
        Json(json!({ "appids": appids, "warning": EVERY_ACCOUNT_WARNING })).into_response()
    } else {
        Json(json!({ "appids": appids })).into_response()
    }
}

pub fn routes() -> Router<Arc<Admin>> {
    Router::new().route("/v1/sync-reply/appids", get(list).post(edit))
}

#[derive(serde::Deserialize)]
struct Edit {
    #[serde(default)]
    add: Vec<String>,
    #[serde(default)]
    remove: Vec<String>,
}

async fn list(State(admin): State<Arc<Admin>>) -> Response {
    match admin.tokens.store.sync_reply_appids().await {
        Ok(v) => answer(v),
        Err(e) => error(e.into()),
    }
}

async fn edit(
    State(admin): State<Arc<Admin>>,
    body: Result<Json<Edit>, JsonRejection>,
) -> Response {
    let Ok(Json(edit)) = body else {
        return BadRequest("send {\"add\": [appids or \"*\"], \"remove\": [...]}".into())
            .into_response();
    };
    for a in edit.add.iter().chain(&edit.remove) {
        if a != "*"
            && let Err(e) = a.parse::<AppId>()
        {
            return BadRequest(e.to_string()).into_response();
        }
    }
    let store = &admin.tokens.store;
    let result = async {
        store.edit_sync_reply_appids(&edit.add, true).await?;
        store.edit_sync_reply_appids(&edit.remove, false).await?;
        store.sync_reply_appids().await
    }
    .await;
    match result {
        Ok(v) => {
            tracing::info!(added = ?edit.add, removed = ?edit.remove, "sync-reply accounts edited");
            if v.iter().any(|a| a == "*") {
                tracing::warn!("every account's pushes now wait for a passive reply");
            }
            answer(v)
        }
        Err(e) => error(e.into()),
    }
}
