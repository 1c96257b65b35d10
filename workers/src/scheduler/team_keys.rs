//! The admin API's management of the gateway's team keys ([`crate::gateway::keys`]):
//! `POST /v1/gateway/keys` (a scope → the key, shown once), `GET /v1/gateway/keys` (every
//! key's scope, never a key), `DELETE /v1/gateway/keys/{id}`.

use super::admin::{Admin, BadRequest};
use crate::gateway::keys::{KeyStore, Scope, ScopeError};
use axum::Router;
use axum::extract::{Path, State, rejection::JsonRejection};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Json, Response};
use axum::routing::{delete, get};
use serde_json::json;
use std::sync::Arc;

pub fn routes() -> Router<Arc<Admin>> {
    Router::new()
        .route("/v1/gateway/keys", get(list).post(create))
        .route("/v1/gateway/keys/{id}", delete(revoke))
}

fn store(admin: &Admin) -> KeyStore {
    let s = &admin.tokens.store;
    KeyStore::new(s.pool().clone(), s.keys.clone())
}

fn unavailable(e: impl std::fmt::Display) -> Response {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        Json(json!({ "error": e.to_string() })),
    )
        .into_response()
}

async fn create(
    State(admin): State<Arc<Admin>>,
    body: Result<Json<Scope>, JsonRejection>,
) -> Response {
    let Ok(Json(scope)) = body else {
        return BadRequest(
            "send {\"team\", \"appids\": [patterns], \"paths\": [patterns], \"rate_per_sec\", \"raw_tokens\"?, \"return_to\": [url prefixes]?}".into(),
        )
        .into_response();
    };
    match store(&admin).create(scope).await {
        Ok((key, record)) => {
            tracing::info!(team = %record.scope.team, id = %record.id, "gateway key created");
            let mut v = json!(record);
            v["key"] = json!(key);
            (StatusCode::CREATED, Json(v)).into_response()
        }
        Err(ScopeError::Invalid(m)) => BadRequest(m).into_response(),
        Err(ScopeError::Redis(e)) => unavailable(e),
    }
}

async fn list(State(admin): State<Arc<Admin>>) -> Response {
    match store(&admin).list().await {
        Ok(keys) => Json(json!({ "keys": keys })).into_response(),
        Err(e) => unavailable(e),
    }
}

async fn revoke(State(admin): State<Arc<Admin>>, Path(id): Path<String>) -> Response {
    match store(&admin).revoke(&id).await {
        Ok(true) => {
            tracing::info!(id = %id, "gateway key revoked");
            Json(json!({ "revoked": id })).into_response()
        }
        Ok(false) => (
            StatusCode::NOT_FOUND,
            Json(json!({ "error": format!("no key {id}") })),
        )
            .into_response(),
        Err(e) => unavailable(e),
    }
}
