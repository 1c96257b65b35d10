//! The admin/token API (design.md): bearer-token protected JSON.
//!
//! `GET /v1/component/access_token`, `GET /v1/authorizers`, `GET /v1/authorizers/{appid}`,
//! `GET /v1/authorizers/{appid}/access_token`, `POST /v1/authorizers/{appid}/refresh` (at most
//! once per [`FORCE_EVERY_SECS`] s per account across replicas, else 429), and compare-and-invalidate:
//! `POST /v1/authorizers/{appid}/invalidate` and `POST /v1/component/invalidate` with
//! `{"access_token": "<the token WeChat refused>"}` — invalidated only if still current, then
//! refreshed once however many callers report it.
//! `GET /v1/component/status`: the ticket, the component token's expiry, its consecutive
//! failures and backoff, and the daily quotas known to be used up (45009);
//! `POST /v1/quota/clear`: after an operator cleared the quota at WeChat (`clear_quota`), calls
//! resume at once.
//! Token answers are `{"access_token","expires_at"}`; a token is served only while it has more
//! than 30 s left (else it is refreshed first). A malformed appid is 400; unknown or revoked
//! accounts are 404.

use super::SchedulerConfig;
use super::console::ConsoleConfig;
use super::console::traffic::Traffic;
use axum::Router;
use axum::extract::{Path, Request, State, rejection::JsonRejection};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Json, Response};
use axum::routing::{get, post};
use common::ids::AppId;
use common::token::{RefreshMode, RefreshOutcome, StoredToken, TokenError, TokenService};
use serde_json::json;
use std::sync::{Arc, Mutex};
use tokio::sync::watch;

/// A forced refresh of one account happens at most once per this, across replicas.
pub const FORCE_EVERY_SECS: u64 = 10;

/// What the admin API and the console share.
pub struct Admin {
    pub tokens: Arc<TokenService>,
    bearer: String,
    pub console: ConsoleConfig,
    /// The console's traffic history (sampled by [`super::console::sample`]).
    pub traffic: Mutex<Traffic>,
}

impl Admin {
    pub fn new(config: &SchedulerConfig) -> Arc<Self> {
        Arc::new(Self {
            tokens: config.tokens.clone(),
            bearer: config.admin_token.clone(),
            console: config.console.clone(),
            traffic: Mutex::new(Traffic::default()),
        })
    }
}

/// The routes (for tests that serve them themselves).
pub fn router(state: Arc<Admin>) -> Router {
    let redis = state.tokens.store.pool().clone();
    Router::new()
        .route("/v1/component/access_token", get(component_token))
        .route("/v1/authorizers", get(list))
        .route("/v1/authorizers/{appid}", get(one))
        .route(
            "/v1/authorizers/{appid}/access_token",
            get(authorizer_token),
        )
        .route("/v1/authorizers/{appid}/refresh", post(refresh))
        .route("/v1/authorizers/{appid}/invalidate", post(invalidate))
        .route("/v1/component/invalidate", post(invalidate_component))
        .route("/v1/component/status", get(component_status))
        .route("/v1/quota/clear", post(clear_quota))
        .merge(super::console::api_routes())
        .merge(super::team_keys::routes())
        .merge(super::sync_reply::routes())
        .merge(super::releases::routes())
        .layer(middleware::from_fn_with_state(state.clone(), authenticate))
        .merge(super::console::page_routes())
        .merge(crate::serve::health_routes(redis))
        .route(
            "/metrics",
            get(|| async { common::telemetry::metrics_handle().render() }),
        )
        .with_state(state)
}

/// Serves the admin API and the console until `shutdown` turns true, with the console's
/// traffic sampler and the platform gauges ([`super::gauges`]).
pub async fn serve(
    listener: tokio::net::TcpListener,
    config: &SchedulerConfig,
    mut shutdown: watch::Receiver<bool>,
) -> std::io::Result<()> {
    tracing::info!(addr = ?listener.local_addr().ok(), "admin API and console listening");
    let state = Admin::new(config);
    tokio::spawn(super::console::sample(state.clone(), shutdown.clone()));
    tokio::spawn(super::gauges::run(
        config.tokens.clone(),
        config.console.clone(),
        shutdown.clone(),
    ));
    common::edge::serve(
        listener,
        router(state),
        config.limits,
        common::edge::ADMIN,
        async move {
            let _ = shutdown.wait_for(|s| *s).await;
        },
    )
    .await;
    Ok(())
}

async fn authenticate(State(admin): State<Arc<Admin>>, req: Request, next: Next) -> Response {
    if !crate::serve::is_admin_token(crate::serve::bearer(req.headers()), &admin.bearer) {
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

pub(super) fn error(e: TokenError) -> Response {
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
    match admin.tokens.current_component_token().await {
        Ok(t) => token(t),
        Err(e) => error(e),
    }
}

/// `GET /v1/authorizers?cursor=&limit=&status=&type=&permission=`: accounts by appid, after
/// `cursor`, at most `limit` (all when neither is given), filtered by status, account type
/// (`official_account`, `mini_program`, `unknown`) and a permission set id; records are read in
/// pipelined batches. `next_cursor` continues the listing (null at its end).
#[derive(serde::Deserialize)]
struct ListQuery {
    cursor: Option<String>,
    limit: Option<usize>,
    status: Option<String>,
    #[serde(rename = "type")]
    account_type: Option<String>,
    permission: Option<i64>,
}

async fn list(
    State(admin): State<Arc<Admin>>,
    axum::extract::Query(q): axum::extract::Query<ListQuery>,
) -> Response {
    let store = &admin.tokens.store;
    let appids = match store.authorizer_appids().await {
        Ok(a) => a,
        Err(e) => return error(e.into()),
    };
    let total = appids.len();
    let paged = q.limit.is_some() || q.cursor.is_some();
    let limit = q
        .limit
        .unwrap_or(if paged { 100 } else { usize::MAX })
        .clamp(1, usize::MAX);
    let after = q.cursor.as_deref().unwrap_or("");
    let rest: Vec<AppId> = appids.into_iter().filter(|a| a.as_str() > after).collect();
    let wanted = |r: &common::token::AuthorizerRecord| {
        super::releases::matches(
            r,
            q.status.as_deref(),
            q.account_type.as_deref(),
            q.permission,
        )
    };
    let mut out = Vec::new();
    let mut next_cursor = None;
    'batches: for batch in rest.chunks(500) {
        let records = match store.authorizers(batch).await {
            Ok(r) => r,
            Err(e) => return error(e.into()),
        };
        for r in records {
            if out.len() == limit {
                next_cursor = out
                    .last()
                    .map(|r: &common::token::AuthorizerRecord| r.appid.to_string());
                break 'batches;
            }
            if wanted(&r) {
                out.push(r);
            }
        }
    }
    let authorizers: Vec<serde_json::Value> = out
        .iter()
        .map(|r| {
            let mut v = json!(r);
            v["type"] = json!(r.account_type());
            v["profile"] = json!(r.profile_summary());
            v
        })
        .collect();
    Json(json!({
        "total": total,
        "count": authorizers.len(),
        "authorizers": authorizers,
        "next_cursor": next_cursor,
    }))
    .into_response()
}

/// A request refused at the edge: 400 with a JSON error.
pub(super) struct BadRequest(pub String);

impl IntoResponse for BadRequest {
    fn into_response(self) -> Response {
        metrics::counter!("wxpipe_admin_requests_total", "outcome" => "bad_request").increment(1);
        (StatusCode::BAD_REQUEST, Json(json!({ "error": self.0 }))).into_response()
    }
}

/// The URL's `{appid}`, parsed at the edge; a malformed one is 400.
pub(super) struct PathAppId(pub AppId);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for PathAppId {
    type Rejection = Response;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, Response> {
        let Path(raw) = Path::<String>::from_request_parts(parts, state)
            .await
            .map_err(IntoResponse::into_response)?;
        raw.parse()
            .map(PathAppId)
            .map_err(|e: common::ids::IdError| BadRequest(e.to_string()).into_response())
    }
}

async fn one(State(admin): State<Arc<Admin>>, PathAppId(appid): PathAppId) -> Response {
    match admin.tokens.store.authorizer(&appid).await {
        Ok(Some(r)) => Json(json!(r)).into_response(),
        Ok(None) => error(TokenError::Unknown(appid.to_string())),
        Err(e) => error(e.into()),
    }
}

async fn authorizer_token(
    State(admin): State<Arc<Admin>>,
    PathAppId(appid): PathAppId,
) -> Response {
    match admin.tokens.authorizer_token(&appid).await {
        Ok(t) => token(t),
        Err(e) => error(e),
    }
}

/// Whether a forced refresh of `appid` may happen now: at most one per [`FORCE_EVERY_SECS`]
/// across replicas, whoever asks (`/refresh`, the console's "invalidate"); else the 429 to send.
pub async fn may_force(admin: &Admin, appid: &AppId) -> Result<(), Response> {
    // N callers forcing at once must not cause N refreshes (each would burn quota).
    match admin
        .tokens
        .store
        .rate_limit(&format!("force_refresh:{appid}"), FORCE_EVERY_SECS)
        .await
    {
        Ok(true) => Ok(()),
        Ok(false) => {
            metrics::counter!("wxpipe_admin_requests_total", "outcome" => "refresh_limited")
                .increment(1);
            Err((
                StatusCode::TOO_MANY_REQUESTS,
                [(header::RETRY_AFTER, FORCE_EVERY_SECS.to_string())],
                Json(json!({
                    "error": format!("{appid} was force-refreshed less than {FORCE_EVERY_SECS} s ago; if a call failed with 40001/40014/42001, use POST /v1/authorizers/{appid}/invalidate with the token that failed")
                })),
            )
                .into_response())
        }
        Err(e) => Err(error(e.into())),
    }
}

async fn refresh(State(admin): State<Arc<Admin>>, PathAppId(appid): PathAppId) -> Response {
    if let Err(r) = may_force(&admin, &appid).await {
        return r;
    }
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

/// The body of an invalidation: the token WeChat refused.
#[derive(serde::Deserialize)]
struct Refused {
    access_token: String,
}

fn refused(body: Result<Json<Refused>, JsonRejection>) -> Result<String, BadRequest> {
    match body {
        Ok(Json(r)) if !r.access_token.trim().is_empty() => Ok(r.access_token),
        _ => Err(BadRequest(
            "send {\"access_token\": \"<the token WeChat refused>\"}".into(),
        )),
    }
}

fn invalidated(invalidated: bool, t: StoredToken) -> Response {
    Json(json!({
        "invalidated": invalidated,
        "access_token": t.access_token,
        "expires_at": t.expires_at,
    }))
    .into_response()
}

async fn invalidate(
    State(admin): State<Arc<Admin>>,
    PathAppId(appid): PathAppId,
    body: Result<Json<Refused>, JsonRejection>,
) -> Response {
    let failed = match refused(body) {
        Ok(t) => t,
        Err(r) => return r.into_response(),
    };
    match admin
        .tokens
        .invalidate_authorizer_token(&appid, &failed)
        .await
    {
        Ok((done, t)) => invalidated(done, t),
        Err(e) => error(e),
    }
}

async fn invalidate_component(
    State(admin): State<Arc<Admin>>,
    body: Result<Json<Refused>, JsonRejection>,
) -> Response {
    let failed = match refused(body) {
        Ok(t) => t,
        Err(r) => return r.into_response(),
    };
    match admin.tokens.invalidate_component_token(&failed).await {
        Ok((done, t)) => invalidated(done, t),
        Err(e) => error(e),
    }
}

/// The platform's state: the ticket and its age, the component token's expiry, its
/// consecutive failures and backoff, and the daily quotas known to be used up (45009) — for
/// `GET /v1/component/status` and the console.
pub(super) async fn platform_status(
    store: &common::token::TokenStore,
) -> Result<serde_json::Value, common::redis::RedisError> {
    let ticket = store.ticket().await?.is_some();
    let ticket_at = store.ticket_at().await?;
    let token = store.component_token().await?;
    let failures = store.component_failures().await?;
    let mut quotas = serde_json::Map::new();
    for api in common::token::service::QUOTA_APIS {
        if let Some(until) = store.quota_closed_until(api).await? {
            quotas.insert(api.into(), json!({ "closed_until_ms": until }));
        }
    }
    Ok(json!({
        "ticket": ticket,
        "ticket_age_secs": ticket_at.map(|at| (common::unix_now_ms() - at) / 1000),
        "component_token_expires_at": token.as_ref().map(|t| t.expires_at),
        "component_token_expires_in_secs": token.as_ref().map(|t| t.expires_at - common::unix_now()),
        "failures": failures,
        "quota_exhausted": quotas,
    }))
}

async fn component_status(State(admin): State<Arc<Admin>>) -> Response {
    match platform_status(&admin.tokens.store).await {
        Ok(v) => Json(v).into_response(),
        Err(e) => error(e.into()),
    }
}

async fn clear_quota(State(admin): State<Arc<Admin>>) -> Response {
    match admin
        .tokens
        .store
        .clear_quotas(&common::token::service::QUOTA_APIS)
        .await
    {
        Ok(n) => {
            tracing::info!(reopened = n, "quotas cleared by an operator");
            Json(json!({ "reopened": n })).into_response()
        }
        Err(e) => error(e.into()),
    }
}
