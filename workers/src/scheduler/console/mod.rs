//! The operator console: `GET /console` (a page of plain HTML, CSS and JavaScript embedded in
//! the binary, no build step) and the JSON endpoints it uses, on the admin port behind the
//! admin bearer token. The page asks for the token once and keeps it in the tab's
//! `sessionStorage`; it never puts it in a URL.
//!
//! Endpoints (besides the admin API's own):
//! - `GET /v1/console/accounts?q=&status=&page=&per_page=`: a page of accounts (search in appid,
//!   name and gh_ id);
//! - `GET /v1/console/accounts/{appid}`: one account with its permission sets and schedule;
//! - `POST /v1/console/accounts/{appid}/invalidate`: drop the current token and get a new
//!   one (compare-and-invalidate of the token stored now); at most once per account per 10 s
//!   together with `/refresh` (429 with `Retry-After` otherwise);
//! - `GET /v1/console/platform`: ticket age, component token, failures, quotas, accounts by
//!   status, recent WeChat errors by errcode;
//! - `GET /v1/console/auth-link`: the link to send to account administrators and its QR code;
//! - `GET /v1/console/traffic`: live processes and rates over the last 15 minutes;
//! - `GET /v1/dlq`, `GET /v1/dlq/{position}`, `POST /v1/dlq/replay`, `POST /v1/dlq/purge`:
//!   the dead letters, through the same code as `workers dlq`.

pub mod traffic;

use super::admin::{Admin, BadRequest, PathAppId, error};
use crate::dlq::{DeadLetters, DlqError, Filter};
use axum::Router;
use axum::extract::{Path, Query, State, rejection::JsonRejection};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Json, Response};
use axum::routing::{get, post};
use common::token::{AuthorizerStatus, TicketKind};
use serde::Deserialize;
use serde_json::json;
use std::collections::BTreeMap;
use std::sync::Arc;
use tokio::sync::watch;

/// What the console needs beyond the token service.
#[derive(Clone, Debug)]
pub struct ConsoleConfig {
    pub amqp_urls: Vec<String>,
    pub namespace: common::ids::Namespace,
    /// `WXPIPE_RAW_SHARDS`: the topology declared, the intake queues watched.
    pub raw_shards: common::amqp::RawShards,
    /// To show dead raw pushes decrypted.
    pub platform: common::config::PlatformArgs,
    /// `WXPIPE_PUBLIC_BASE_URL`: where the authorization page is (`{base}/auth`).
    pub public_base_url: Option<String>,
}

/// The page and its assets (no authentication: they hold no data).
pub fn page_routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    const CSP: &str = "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'; form-action 'none'";
    let asset = |body: &'static str, kind: &'static str| {
        move || async move {
            (
                [
                    (header::CONTENT_TYPE, kind),
                    (header::CONTENT_SECURITY_POLICY, CSP),
                    (header::CACHE_CONTROL, "no-cache"),
                    (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
                ],
                body,
            )
        }
    };
    Router::new()
        .route(
            "/console",
            get(asset(include_str!("page.html"), "text/html; charset=utf-8")),
        )
        .route(
            "/console/app.js",
            get(asset(
                include_str!("app.js"),
                "text/javascript; charset=utf-8",
            )),
        )
        .route(
            "/console/app.css",
            get(asset(include_str!("app.css"), "text/css; charset=utf-8")),
        )
}

/// The JSON endpoints (to be put behind the bearer check).
pub fn api_routes() -> Router<Arc<Admin>> {
    Router::new()
        .route("/v1/console/accounts", get(accounts))
        .route("/v1/console/accounts/{appid}", get(account))
        .route("/v1/console/accounts/{appid}/invalidate", post(invalidate))
        .route("/v1/console/platform", get(platform))
        .route("/v1/console/auth-link", get(auth_link))
        .route("/v1/console/traffic", get(traffic_view))
        .route("/v1/dlq", get(dlq_list))
        .route("/v1/dlq/{position}", get(dlq_show))
        .route("/v1/dlq/replay", post(dlq_replay))
        .route("/v1/dlq/purge", post(dlq_purge))
}

/// Samples the processes' counters into the admin's traffic history until `shutdown`.
pub async fn sample(admin: Arc<Admin>, shutdown: watch::Receiver<bool>) {
    let store = &admin.tokens.store;
    let mut every = common::shutdown::every(traffic::SAMPLE_EVERY, shutdown);
    while every.tick().await {
        match common::beacon::read_all(store.pool(), &store.keys).await {
            Ok(a) => {
                if let Ok(mut t) = admin.traffic.lock() {
                    t.sample(a, common::unix_now_ms());
                }
            }
            Err(e) => tracing::debug!(error = %e, "could not read the processes' counters"),
        }
    }
}

#[derive(Deserialize)]
struct AccountQuery {
    #[serde(default)]
    q: String,
    #[serde(default)]
    status: String,
    #[serde(default)]
    page: Option<usize>,
    #[serde(default)]
    per_page: Option<usize>,
}

async fn accounts(State(admin): State<Arc<Admin>>, Query(query): Query<AccountQuery>) -> Response {
    let store = &admin.tokens.store;
    let result = async {
        let appids = store.authorizer_appids().await?;
        store.authorizers(&appids).await
    }
    .await;
    let all = match result {
        Ok(r) => r,
        Err(e) => return error(e.into()),
    };
    let needle = query.q.trim().to_lowercase();
    let status = query.status.trim();
    let mut by_status: BTreeMap<&str, usize> = BTreeMap::new();
    for r in &all {
        *by_status.entry(r.status.as_str()).or_default() += 1;
    }
    let matching: Vec<_> = all
        .iter()
        .filter(|r| status.is_empty() || r.status.as_str() == status)
        .filter(|r| {
            needle.is_empty()
                || r.appid.to_lowercase().contains(&needle)
                || r.nick_name
                    .as_deref()
                    .is_some_and(|n| n.to_lowercase().contains(&needle))
                || r.user_name
                    .as_deref()
                    .is_some_and(|n| n.to_lowercase().contains(&needle))
        })
        .collect();
    let per_page = query.per_page.unwrap_or(25).clamp(1, 500);
    let pages = matching.len().div_ceil(per_page).max(1);
    let page = query.page.unwrap_or(1).clamp(1, pages);
    let shown: Vec<_> = matching
        .iter()
        .skip((page - 1) * per_page)
        .take(per_page)
        .map(|r| {
            let mut v = json!(r);
            v["type"] = json!(r.account_type());
            v
        })
        .collect();
    Json(json!({
        "total": all.len(),
        "matching": matching.len(),
        "by_status": by_status,
        "page": page,
        "pages": pages,
        "per_page": per_page,
        "accounts": shown,
    }))
    .into_response()
}

async fn account(State(admin): State<Arc<Admin>>, PathAppId(appid): PathAppId) -> Response {
    let store = &admin.tokens.store;
    let result = async {
        let r = store.authorizer(&appid).await?;
        let due = store.due_at(&appid).await?;
        let attempts = store.due_attempts(&appid).await?;
        // The JS-SDK tickets' state, never a ticket.
        let mut tickets = serde_json::Map::new();
        for kind in [TicketKind::Jsapi, TicketKind::WxCard] {
            if let Some(t) = store.js_ticket(&appid, kind.as_str()).await? {
                tickets.insert(
                    kind.as_str().into(),
                    json!({ "expires_at": t.expires_at, "first_seen": t.first_seen,
                            "fetched_at": t.fetched_at, "birth_known": t.certain }),
                );
            }
        }
        let next_ticket = store.ticket_due_at(&appid).await?;
        Ok::<_, common::redis::RedisError>((r, due, attempts, tickets, next_ticket))
    }
    .await;
    match result {
        Ok((Some(r), due, attempts, tickets, next_ticket)) => Json(json!({
            "account": r,
            "type": r.account_type(),
            "profile": r.profile_summary(),
            "next_refresh_ms": due,
            "failed_attempts": attempts,
            "tickets": tickets,
            "next_ticket_ms": next_ticket,
        }))
        .into_response(),
        Ok((None, ..)) => error(common::token::TokenError::Unknown(appid.to_string())),
        Err(e) => error(e.into()),
    }
}

async fn invalidate(State(admin): State<Arc<Admin>>, PathAppId(appid): PathAppId) -> Response {
    // Whatever it invalidates, it forces a refresh: limited like `/refresh`.
    if let Err(r) = super::admin::may_force(&admin, &appid).await {
        return r;
    }
    let current = match admin.tokens.store.authorizer(&appid).await {
        Ok(Some(r)) if r.status == AuthorizerStatus::Revoked => {
            return error(common::token::TokenError::Revoked(appid.to_string()));
        }
        Ok(Some(r)) => r.access_token,
        Ok(None) => return error(common::token::TokenError::Unknown(appid.to_string())),
        Err(e) => return error(e.into()),
    };
    let Some(current) = current else {
        return BadRequest(format!("{appid} has no token to invalidate")).into_response();
    };
    match admin
        .tokens
        .invalidate_authorizer_token(&appid, current.expose())
        .await
    {
        Ok((done, t)) => {
            tracing::info!(appid = %appid, "token invalidated from the console");
            Json(json!({ "invalidated": done, "expires_at": t.expires_at })).into_response()
        }
        Err(e) => error(e),
    }
}

async fn platform(State(admin): State<Arc<Admin>>) -> Response {
    let store = &admin.tokens.store;
    let mut v = match super::admin::platform_status(store).await {
        Ok(v) => v,
        Err(e) => return error(e.into()),
    };
    v["component_appid"] = json!(store.keys.prefix().trim_end_matches(':').rsplit(':').next());
    v["wechat_errors_15m"] = json!(
        admin
            .traffic
            .lock()
            .map(|t| t.wechat_errors())
            .unwrap_or_default()
    );
    Json(v).into_response()
}

async fn auth_link(State(admin): State<Arc<Admin>>) -> Response {
    let Some(base) = admin.console.public_base_url.as_deref() else {
        return (
            StatusCode::NOT_FOUND,
            Json(json!({ "error": "WXPIPE_PUBLIC_BASE_URL is not set for the scheduler: set it to the ingress's public URL to get the authorization link here" })),
        )
            .into_response();
    };
    let url = format!("{}/auth", base.trim_end_matches('/'));
    let svg = match qrcode::QrCode::new(url.as_bytes()) {
        Ok(code) => code
            .render::<qrcode::render::svg::Color>()
            .min_dimensions(200, 200)
            .build(),
        Err(e) => return BadRequest(format!("no QR code for {url}: {e}")).into_response(),
    };
    Json(json!({ "url": url, "qr_svg": svg })).into_response()
}

async fn traffic_view(State(admin): State<Arc<Admin>>) -> Response {
    match admin.traffic.lock() {
        Ok(t) => Json(t.view(common::unix_now_ms())).into_response(),
        Err(_) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            "traffic history unavailable",
        )
            .into_response(),
    }
}

fn dlq_error(e: DlqError) -> Response {
    let status = match &e {
        DlqError::Invalid(_) => StatusCode::BAD_REQUEST,
        DlqError::NoQueue { .. } => StatusCode::NOT_FOUND,
        _ => StatusCode::SERVICE_UNAVAILABLE,
    };
    (status, Json(json!({ "error": e.to_string() }))).into_response()
}

async fn dead_letters(admin: &Admin) -> Result<DeadLetters, Response> {
    let c = &admin.console;
    DeadLetters::connect(&c.amqp_urls, &c.namespace, "wxpipe-console")
        .await
        .map_err(dlq_error)
}

async fn dlq_list(State(admin): State<Arc<Admin>>) -> Response {
    let dlq = match dead_letters(&admin).await {
        Ok(d) => d,
        Err(r) => return r,
    };
    let r = dlq.list().await;
    dlq.close().await;
    match r {
        Ok(l) => Json(l).into_response(),
        Err(e) => dlq_error(e),
    }
}

async fn dlq_show(State(admin): State<Arc<Admin>>, Path(position): Path<String>) -> Response {
    let Ok(position) = position.parse::<usize>() else {
        return BadRequest("a letter's position is a number from 1".into()).into_response();
    };
    let dlq = match dead_letters(&admin).await {
        Ok(d) => d,
        Err(r) => return r,
    };
    let r = dlq.show(position, &admin.console.platform).await;
    dlq.close().await;
    match r {
        Ok(l) => Json(l).into_response(),
        Err(e) => dlq_error(e),
    }
}

#[derive(Deserialize)]
struct ReplayRequest {
    #[serde(flatten)]
    filter: Filter,
    #[serde(default)]
    dry_run: bool,
}

async fn dlq_replay(
    State(admin): State<Arc<Admin>>,
    body: Result<Json<ReplayRequest>, JsonRejection>,
) -> Response {
    let Ok(Json(req)) = body else {
        return BadRequest(
            "send {\"source\", \"reason\", \"since\", \"limit\", \"dry_run\"} (each optional)"
                .into(),
        )
        .into_response();
    };
    let dlq = match dead_letters(&admin).await {
        Ok(d) => d,
        Err(r) => return r,
    };
    let r = dlq.replay(&req.filter, req.dry_run, &|_, _| {}).await;
    dlq.close().await;
    match r {
        Ok(report) => {
            if !report.dry_run {
                tracing::info!(
                    replayed = report.replayed,
                    failed = report.failed_total,
                    "dead letters replayed from the console"
                );
            }
            Json(report).into_response()
        }
        Err(e) => dlq_error(e),
    }
}

#[derive(Deserialize)]
struct PurgeRequest {
    /// How many letters the operator saw: the purge happens only if that is still the count.
    expected: u32,
}

async fn dlq_purge(
    State(admin): State<Arc<Admin>>,
    body: Result<Json<PurgeRequest>, JsonRejection>,
) -> Response {
    let Ok(Json(req)) = body else {
        return BadRequest(
            "send {\"expected\": <the number of letters you mean to delete>}".into(),
        )
        .into_response();
    };
    let dlq = match dead_letters(&admin).await {
        Ok(d) => d,
        Err(r) => return r,
    };
    let result = async {
        let now = dlq.depth().await?;
        if now != req.expected {
            return Ok(Err(now));
        }
        // Exactly the letters counted, never one that died after the count.
        dlq.purge(req.expected as usize).await.map(Ok)
    }
    .await;
    dlq.close().await;
    match result {
        Ok(Ok(purged)) => {
            tracing::info!(purged, "dead letters purged from the console");
            Json(json!({ "purged": purged })).into_response()
        }
        Ok(Err(now)) => (
            StatusCode::CONFLICT,
            Json(json!({
                "error": format!("the queue holds {now} letters, not {}: look again before purging", req.expected),
                "count": now,
            })),
        )
            .into_response(),
        Err(e) => dlq_error(e),
    }
}
