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
use common::ids::AppId;
use common::wire::raw::{RawPush, RawRoute};
use common::xml::envelope::Envelope;
use std::time::Instant;

/// The metric label of a route.
fn label(route: RawRoute) -> &'static str {
    route.routing_key()
}

/// `POST /wechat/component`: the authorization-event URL.
pub async fn component_push(
    State(state): State<SharedState>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> Response {
    handle_push(&state, RawRoute::Component, None, query, &headers, body).await
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
        RawRoute::Authorizer,
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
    verify_url(&state, RawRoute::Component, query)
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
    verify_url(&state, RawRoute::Authorizer, query)
}

fn not_found() -> Response {
    metrics::counter!("wxpipe_ingress_pushes_total", "route" => "authorizer", "outcome" => "not_found")
        .increment(1);
    (axum::http::StatusCode::NOT_FOUND, "not found\n").into_response()
}

fn verify_url(state: &AppState, route: RawRoute, raw_query: Option<String>) -> Response {
    let r = label(route);
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
    route: RawRoute,
    appid: Option<&str>,
    raw_query: Option<String>,
    headers: &HeaderMap,
    body: Body,
) -> Response {
    let r = label(route);
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
        Err(outcome) => return outcome.respond(r, "body too large, too slow or unreadable"),
    };
    let envelope = match Envelope::parse(&body) {
        Ok(e) => e,
        Err(e) => return Outcome::Malformed.respond(r, e.to_string()),
    };
    if let Err(e) =
        state
            .crypt
            .verify_msg_signature(&q.timestamp, &q.nonce, envelope.encrypt(), msg_signature)
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
            raw_push(route, appid, &q).to_properties(),
        )
        .await;
    metrics::histogram!("wxpipe_ingress_publish_seconds", "route" => r)
        .record(started.elapsed().as_secs_f64());
    match result {
        Ok(()) => {
            // Follow one push: this nonce and timestamp are on the decrypt worker's
            // "event published" line, with the event id the business worker logs.
            tracing::debug!(
                route = r,
                appid = appid.unwrap_or("-"),
                nonce = %q.nonce,
                timestamp = %q.timestamp,
                "push accepted"
            );
            Outcome::Accepted.respond(r, "success")
        }
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
    route: RawRoute,
    appid: &str,
    q: &SignedQuery,
    body: &Bytes,
    started: Instant,
) -> Option<Response> {
    let r = label(route);
    let wait = match state
        .replier
        .publish(
            &state.raw_exchange,
            route.routing_key(),
            body,
            raw_push(route, Some(appid), q).to_properties(),
        )
        .await
    {
        Ok(wait) => wait,
        // The push then takes the plain path (`success`, no reply): nothing is lost, but its
        // reply is. Counted by why.
        Err(e) => {
            let reason = if matches!(e, PublishError::Unavailable) {
                "channel_down"
            } else {
                tracing::warn!(error = %e, "sync-reply publish failed; using the plain path");
                "publish_failed"
            };
            metrics::counter!("wxpipe_ingress_reply_fallbacks_total", "reason" => reason)
                .increment(1);
            return None;
        }
    };
    metrics::histogram!("wxpipe_ingress_publish_seconds", "route" => r)
        .record(started.elapsed().as_secs_f64());
    let remaining = state.sync_reply_timeout.saturating_sub(started.elapsed());
    let reply = match wait.reply(remaining).await {
        Some(reply) => reply,
        None => {
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
            let mut source: Option<&(dyn std::error::Error + 'static)> =
                std::error::Error::source(&e);
            let mut outcome = Outcome::Malformed;
            while let Some(s) = source {
                if s.is::<http_body_util::LengthLimitError>() {
                    outcome = Outcome::TooLarge;
                } else if s.is::<tower_http::timeout::TimeoutError>() {
                    outcome = Outcome::SlowBody;
                }
                source = s.source();
            }
            if outcome == Outcome::Malformed && e.to_string().contains("length limit") {
                outcome = Outcome::TooLarge;
            }
            Err(outcome)
        }
    }
}

/// The raw message's headers: every signed query parameter, the URL's appid and the reception
/// time, so a decrypt worker can verify the push exactly as the ingress did.
fn raw_push(route: RawRoute, appid: Option<&str>, q: &SignedQuery) -> RawPush {
    RawPush {
        route,
        timestamp: q.timestamp.clone(),
        nonce: q.nonce.clone(),
        msg_signature: q.msg_signature.clone().unwrap_or_default(),
        signature: q.signature.clone(),
        encrypt_type: q.encrypt_type.clone(),
        openid: q.openid.clone(),
        appid: appid.map(str::to_owned),
        received_at_ms: Some(common::unix_now_ms()),
    }
}
