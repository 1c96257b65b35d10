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
        Ok(v) => Json(json!({ "appids": v })).into_response(),
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
            Json(json!({ "appids": v })).into_response()
        }
        Err(e) => error(e.into()),
    }
}
