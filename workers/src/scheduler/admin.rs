//! The admin/token API (design.md): bearer-token protected JSON.
//!
//! `GET /v1/component/access_token`, `GET /v1/authorizers`, `GET /v1/authorizers/{appid}`,
//! `GET /v1/authorizers/{appid}/access_token`, `POST /v1/authorizers/{appid}/refresh`.
//! Token answers are `{"access_token","expires_at"}`; a token is served only while it has more
//! than 30 s left (else it is refreshed first). Unknown or revoked accounts are 404.

use axum::Router;
use axum::extract::{Path, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Json, Response};
use axum::routing::{get, post};
use common::token::{RefreshMode, RefreshOutcome, StoredToken, TokenError, TokenService};
use serde_json::json;
use std::sync::Arc;
use subtle::ConstantTimeEq;
use tokio::sync::watch;

struct Admin {
    tokens: Arc<TokenService>,
    bearer: String,
}

/// The routes (for tests that serve them themselves).
pub fn router(tokens: Arc<TokenService>, bearer: String) -> Router {
    let state = Arc::new(Admin { tokens, bearer });
    Router::new()
        .route("/v1/component/access_token", get(component_token))
        .route("/v1/authorizers", get(list))
        .route("/v1/authorizers/{appid}", get(one))
        .route(
            "/v1/authorizers/{appid}/access_token",
            get(authorizer_token),
        )
        .route("/v1/authorizers/{appid}/refresh", post(refresh))
        .layer(middleware::from_fn_with_state(state.clone(), authenticate))
        .route("/healthz", get(|| async { "ok\n" }))
        .route(
            "/metrics",
            get(|| async { common::telemetry::metrics_handle().render() }),
        )
        .with_state(state)
}

/// Serves until `shutdown` turns true.
pub async fn serve(
    listener: tokio::net::TcpListener,
    tokens: Arc<TokenService>,
    bearer: String,
    mut shutdown: watch::Receiver<bool>,
) -> std::io::Result<()> {
    tracing::info!(addr = ?listener.local_addr().ok(), "admin API listening");
    axum::serve(listener, router(tokens, bearer))
        .with_graceful_shutdown(async move {
            let _ = shutdown.wait_for(|s| *s).await;
        })
        .await
}

async fn authenticate(State(admin): State<Arc<Admin>>, req: Request, next: Next) -> Response {
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    // Constant time: the comparison does not reveal how much of the token was right.
    let ok: bool = given.as_bytes().ct_eq(admin.bearer.as_bytes()).into();
    if !ok {
        metrics::counter!("wxpipe_admin_requests_total", "outcome" => "unauthorized").increment(1);
        return (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Bearer")],
            Json(json!({ "error": "missing or wrong bearer token" })),
        )
            .into_response();
    }
    next.run(req).await
}

fn error(e: TokenError) -> Response {
    let status = match &e {
        TokenError::Unknown(_) | TokenError::Revoked(_) => StatusCode::NOT_FOUND,
        TokenError::Wechat(_) => StatusCode::BAD_GATEWAY,
        _ => StatusCode::SERVICE_UNAVAILABLE,
    };
    (status, Json(json!({ "error": e.to_string() }))).into_response()
}

fn token(t: StoredToken) -> Response {
    Json(json!({ "access_token": t.access_token, "expires_at": t.expires_at })).into_response()
}

async fn component_token(State(admin): State<Arc<Admin>>) -> Response {
    let svc = &admin.tokens;
    if let Ok(Some(t)) = svc.store.component_token().await
        && t.expires_at - common::unix_now() > svc.serve_margin()
    {
        return token(t);
    }
    match svc.refresh_component_token(RefreshMode::IfDue).await {
        Ok(t) => token(t),
        Err(e) => error(e),
    }
}

async fn list(State(admin): State<Arc<Admin>>) -> Response {
    let svc = &admin.tokens;
    let appids = match svc.store.authorizer_appids().await {
        Ok(a) => a,
        Err(e) => return error(e.into()),
    };
    let mut out = Vec::with_capacity(appids.len());
    for appid in appids {
        match svc.store.authorizer(&appid).await {
            Ok(Some(r)) => out.push(r),
            Ok(None) => {}
            Err(e) => return error(e.into()),
        }
    }
    Json(json!({ "total": out.len(), "authorizers": out })).into_response()
}

async fn one(State(admin): State<Arc<Admin>>, Path(appid): Path<String>) -> Response {
    match admin.tokens.store.authorizer(&appid).await {
        Ok(Some(r)) => Json(json!(r)).into_response(),
        Ok(None) => error(TokenError::Unknown(appid)),
        Err(e) => error(e.into()),
    }
}

async fn authorizer_token(State(admin): State<Arc<Admin>>, Path(appid): Path<String>) -> Response {
    match admin.tokens.authorizer_token(&appid).await {
        Ok(t) => token(t),
        Err(e) => error(e),
    }
}

async fn refresh(State(admin): State<Arc<Admin>>, Path(appid): Path<String>) -> Response {
    match admin
        .tokens
        .refresh_authorizer(&appid, RefreshMode::Force)
        .await
    {
        Ok(RefreshOutcome::Refreshed(t)) => token(t),
        Ok(_) => match admin.tokens.authorizer_token(&appid).await {
            Ok(t) => token(t),
            Err(e) => error(e),
        },
        Err(e) => error(e),
    }
}
