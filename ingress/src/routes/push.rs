//! WeChat's two push URLs.
//!
//! Each push goes through the same steps, cheapest first, and each refusal is counted:
//! query shape → freshness → body size → envelope → signature(s) → confirmed publish.
//! `success` is answered only after the broker's confirm; anything else is 503, so WeChat
//! retries and nothing acknowledged is ever lost.

use crate::outcome::Outcome;
use crate::signed_query::SignedQuery;
use crate::state::{AppState, SharedState};
use axum::body::{Body, Bytes};
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Response};
use common::amqp::PublishError;
use common::amqp::topology::{RAW_AUTHORIZER, RAW_COMPONENT};
use common::ids::AppId;
use common::xml::envelope::Envelope;
use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable, LongString};
use std::time::Instant;

/// Which URL a push arrived on.
#[derive(Clone, Copy)]
enum Route {
    Component,
    Authorizer,
}

impl Route {
    fn label(self) -> &'static str {
        match self {
            Route::Component => "component",
            Route::Authorizer => "authorizer",
        }
    }

    fn routing_key(self) -> &'static str {
        match self {
            Route::Component => RAW_COMPONENT,
            Route::Authorizer => RAW_AUTHORIZER,
        }
    }
}

/// `POST /wechat/component`: the authorization-event URL.
pub async fn component_push(
    State(state): State<SharedState>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> Response {
    handle_push(&state, Route::Component, None, query, &headers, body).await
}

/// `POST /wechat/authorizers/{appid}`: the message URL (`…/$APPID$` at WeChat).
pub async fn authorizer_push(
    State(state): State<SharedState>,
    Path(appid): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> Response {
    if !AppId::is_valid(&appid) {
        return not_found();
    }
    handle_push(
        &state,
        Route::Authorizer,
        Some(&appid),
        query,
        &headers,
        body,
    )
    .await
}

/// `GET /wechat/component?echostr=…`: URL verification.
pub async fn verify_component_url(
    State(state): State<SharedState>,
    RawQuery(query): RawQuery,
) -> Response {
    verify_url(&state, Route::Component, query)
}

/// `GET /wechat/authorizers/{appid}?echostr=…`: URL verification.
pub async fn verify_authorizer_url(
    State(state): State<SharedState>,
    Path(appid): Path<String>,
    RawQuery(query): RawQuery,
) -> Response {
    if !AppId::is_valid(&appid) {
        return not_found();
    }
    verify_url(&state, Route::Authorizer, query)
}

fn not_found() -> Response {
    metrics::counter!("wxpipe_ingress_pushes_total", "route" => "authorizer", "outcome" => "not_found")
        .increment(1);
    (axum::http::StatusCode::NOT_FOUND, "not found\n").into_response()
}

fn verify_url(state: &AppState, route: Route, raw_query: Option<String>) -> Response {
    let r = route.label();
    let q = match SignedQuery::parse(raw_query.as_deref()) {
        Ok(q) => q,
        Err(e) => return Outcome::BadQuery.respond(r, e.to_string()),
    };
    let (Some(signature), Some(echostr)) = (&q.signature, &q.echostr) else {
        return Outcome::BadQuery.respond(r, "URL verification needs signature and echostr");
    };
    if !q.is_fresh(common::unix_now(), state.timestamp_window) {
        return Outcome::Stale.respond(r, "timestamp outside the accepted window");
    }
    match state
        .crypt
        .verify_signature(&q.timestamp, &q.nonce, signature)
    {
        Ok(()) => Outcome::Verified.respond(r, echostr.clone()),
        Err(e) => Outcome::BadSignature.respond(r, e.to_string()),
    }
}

async fn handle_push(
    state: &AppState,
    route: Route,
    appid: Option<&str>,
    raw_query: Option<String>,
    headers: &HeaderMap,
    body: Body,
) -> Response {
    let r = route.label();
    let q = match SignedQuery::parse(raw_query.as_deref()) {
        Ok(q) => q,
        Err(e) => return Outcome::BadQuery.respond(r, e.to_string()),
    };
    let Some(msg_signature) = q.msg_signature.as_deref() else {
        return Outcome::BadQuery.respond(r, "query parameter msg_signature is missing");
    };
    if !q.is_fresh(common::unix_now(), state.timestamp_window) {
        return Outcome::Stale.respond(r, "timestamp outside the accepted window");
    }
    let body = match read_body(headers, body, state.max_body_bytes).await {
        Ok(b) => b,
        Err(outcome) => return outcome.respond(r, "body too large or unreadable"),
    };
    let envelope = match Envelope::parse(&body) {
        Ok(e) => e,
        Err(e) => return Outcome::Malformed.respond(r, e.to_string()),
    };
    if let Err(e) =
        state
            .crypt
            .verify_msg_signature(&q.timestamp, &q.nonce, &envelope.encrypt, msg_signature)
    {
        return Outcome::BadSignature.respond(r, e.to_string());
    }
    if let Some(signature) = q.signature.as_deref()
        && let Err(e) = state
            .crypt
            .verify_signature(&q.timestamp, &q.nonce, signature)
    {
        return Outcome::BadSignature.respond(r, e.to_string());
    }

    let started = Instant::now();
    if let Some(appid) = appid
        && state.replier.wants(appid)
        && let Some(response) =
            publish_awaiting_reply(state, route, appid, &q, &body, started).await
    {
        return response;
    }
    let result = state
        .publisher
        .publish(
            &state.raw_exchange,
            route.routing_key(),
            &body,
            raw_properties(appid, &q),
        )
        .await;
    metrics::histogram!("wxpipe_ingress_publish_seconds", "route" => r)
        .record(started.elapsed().as_secs_f64());
    match result {
        Ok(()) => Outcome::Accepted.respond(r, "success"),
        Err(e) => {
            if !matches!(e, PublishError::Unavailable) {
                tracing::warn!(route = r, error = %e, "publish not confirmed");
            }
            Outcome::BrokerUnavailable.respond(r, e.to_string())
        }
    }
}

/// The sync-reply path (see [`crate::sync_reply`]): `None` when the reply channel could not
/// take the push, so that the plain path publishes it instead.
async fn publish_awaiting_reply(
    state: &AppState,
    route: Route,
    appid: &str,
    q: &SignedQuery,
    body: &Bytes,
    started: Instant,
) -> Option<Response> {
    let r = route.label();
    let rx = match state
        .replier
        .publish(
            &state.raw_exchange,
            route.routing_key(),
            body,
            raw_properties(Some(appid), q),
        )
        .await
    {
        Ok(rx) => rx,
        Err(e) => {
            tracing::warn!(error = %e, "sync-reply publish failed; using the plain path");
            return None;
        }
    };
    metrics::histogram!("wxpipe_ingress_publish_seconds", "route" => r)
        .record(started.elapsed().as_secs_f64());
    let remaining = state.sync_reply_timeout.saturating_sub(started.elapsed());
    let reply = match tokio::time::timeout(remaining, rx).await {
        Ok(Ok(reply)) => reply,
        Ok(Err(_)) | Err(_) => {
            metrics::counter!("wxpipe_ingress_reply_timeouts_total").increment(1);
            return Some(Outcome::Accepted.respond(r, "success"));
        }
    };
    match std::str::from_utf8(&reply) {
        Ok(plain) if !plain.trim().is_empty() => {
            let ts = common::unix_now().to_string();
            let nonce = (u32::from_le_bytes(
                common::crypto::random_prefix()[..4]
                    .try_into()
                    .unwrap_or_default(),
            ) % 1_000_000_000)
                .to_string();
            Some(Outcome::Replied.respond(r, state.crypt.encrypt_reply(plain, &ts, &nonce)))
        }
        // An empty reply means "no passive reply": acknowledge.
        _ => Some(Outcome::Accepted.respond(r, "success")),
    }
}

/// Reads the body, refusing it as soon as it exceeds `limit`.
async fn read_body(headers: &HeaderMap, body: Body, limit: usize) -> Result<Bytes, Outcome> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(Outcome::TooLarge);
    }
    match axum::body::to_bytes(body, limit).await {
        Ok(bytes) => Ok(bytes),
        Err(e) => {
            let too_large = std::error::Error::source(&e)
                .is_some_and(|s| s.is::<http_body_util::LengthLimitError>())
                || e.to_string().contains("length limit");
            Err(if too_large {
                Outcome::TooLarge
            } else {
                Outcome::Malformed
            })
        }
    }
}

/// Headers of a raw message: every signed query parameter, the URL's appid and the reception
/// time (ms since the epoch), so a decrypt worker can verify the push exactly as the ingress
/// did. The URL it came from is the routing key (`component` or `authorizer`).
fn raw_properties(appid: Option<&str>, q: &SignedQuery) -> BasicProperties {
    let mut headers = FieldTable::default();
    for (name, value) in q.pairs() {
        headers.insert(name.into(), AMQPValue::LongString(LongString::from(value)));
    }
    if let Some(appid) = appid {
        headers.insert("appid".into(), AMQPValue::LongString(appid.into()));
    }
    let now_ms = common::unix_now_ms();
    headers.insert("received_at".into(), AMQPValue::LongLongInt(now_ms));
    BasicProperties::default()
        .with_delivery_mode(2)
        .with_content_type("application/xml".into())
        .with_timestamp((now_ms / 1000) as u64)
        .with_headers(headers)
}
