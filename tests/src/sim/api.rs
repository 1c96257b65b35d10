//! The component API of protocol.md §2 (and `message/custom/send`), as WeChat answers it:
//! POST JSON, errors as `{"errcode","errmsg"}` with HTTP 200, tokens in the query
//! (`component_access_token=` or `access_token=`).

use super::SimShared;
use super::state::{ApiError, BUSY, INVALID_ARGS, State, TokenKind};
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Query, State as AxState};
use axum::http::{HeaderMap, Method, Uri, header};
use axum::response::Json;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::Arc;

type Q = Query<HashMap<String, String>>;

/// Every API route.
pub fn routes() -> Router<Arc<SimShared>> {
    Router::new()
        .route(
            "/cgi-bin/component/api_component_token",
            post(component_token),
        )
        .route(
            "/cgi-bin/component/api_start_push_ticket",
            post(start_push_ticket),
        )
        .route(
            "/cgi-bin/component/api_create_preauthcode",
            post(create_preauthcode),
        )
        .route("/cgi-bin/component/api_query_auth", post(query_auth))
        .route(
            "/cgi-bin/component/api_authorizer_token",
            post(authorizer_token),
        )
        .route(
            "/cgi-bin/component/api_get_authorizer_info",
            post(authorizer_info),
        )
        .route(
            "/cgi-bin/component/api_get_authorizer_list",
            post(authorizer_list),
        )
        .route(
            "/cgi-bin/component/api_get_authorizer_option",
            post(get_option_old),
        )
        .route(
            "/cgi-bin/component/api_set_authorizer_option",
            post(set_option_old),
        )
        .route(
            "/cgi-bin/component/get_authorizer_option",
            post(get_option_new),
        )
        .route(
            "/cgi-bin/component/set_authorizer_option",
            post(set_option_new),
        )
        .route("/cgi-bin/component/clear_quota", post(clear_quota))
        .route("/cgi-bin/component/clear_quota/v2", post(clear_quota_v2))
        .route("/cgi-bin/message/custom/send", post(custom_send))
        .route("/sns/component/jscode2session", get(jscode2session))
        .route("/cgi-bin/media/upload", post(media_upload))
        .route("/cgi-bin/media/get", get(media_get))
        .route("/cgi-bin/openapi/quota/get", post(quota_get))
        .route("/cgi-bin/openapi/rid/get", post(rid_get))
        .route("/cgi-bin/clear_quota", post(account_clear_quota))
        .merge(super::library::routes())
        .merge(super::code::routes())
        .merge(super::users::routes())
        .merge(super::tickets::routes())
        .merge(super::oauth::api_routes())
        // Any other API: the token is checked and the call recorded (for the gateway's tests).
        .fallback(generic)
}

/// Records every API request as it arrived ([`super::state::ApiRequest`]): its raw path and
/// query and every token value it carried, in the query or in a form body. `/sim/*` is not
/// recorded.
pub async fn record(
    AxState(sim): AxState<Arc<SimShared>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    if req.uri().path().starts_with("/sim/") {
        return next.run(req).await;
    }
    let is_token = |k: &str| k == "access_token" || k == "component_access_token";
    let mut tokens: Vec<String> =
        url::form_urlencoded::parse(req.uri().query().unwrap_or("").as_bytes())
            .filter(|(k, _)| is_token(k))
            .map(|(_, v)| v.into_owned())
            .collect();
    let form = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|c| c.to_ascii_lowercase().contains("x-www-form-urlencoded"));
    let req = if form {
        let (parts, body) = req.into_parts();
        let Ok(bytes) = axum::body::to_bytes(body, 32 * 1024 * 1024).await else {
            return (axum::http::StatusCode::PAYLOAD_TOO_LARGE, "body too large").into_response();
        };
        tokens.extend(
            url::form_urlencoded::parse(&bytes)
                .filter(|(k, _)| is_token(k))
                .map(|(_, v)| v.into_owned()),
        );
        axum::extract::Request::from_parts(parts, axum::body::Body::from(bytes))
    } else {
        req
    };
    {
        let mut st = sim.state.lock().expect("sim state");
        st.stats.requests_total += 1;
        if st.stats.requests.len() < super::state::MAX_RECORDED {
            st.stats.requests.push(super::state::ApiRequest {
                method: req.method().as_str().to_owned(),
                path: req.uri().path().to_owned(),
                query: req.uri().query().map(str::to_owned),
                user_agent: req
                    .headers()
                    .get(header::USER_AGENT)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned),
                tokens,
            });
        }
    }
    next.run(req).await
}

fn err(e: &ApiError) -> Value {
    json!({ "errcode": e.errcode, "errmsg": e.errmsg })
}

fn s<'a>(body: &'a Value, key: &str) -> Result<&'a str, ApiError> {
    body.get(key)
        .and_then(Value::as_str)
        .filter(|v| !v.is_empty())
        .ok_or(INVALID_ARGS)
}

fn n(body: &Value, key: &str) -> Result<u64, ApiError> {
    body.get(key)
        .and_then(|v| {
            v.as_u64()
                .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
        })
        .ok_or(INVALID_ARGS)
}

fn token(q: &HashMap<String, String>) -> Option<&str> {
    q.get("component_access_token")
        .or_else(|| q.get("access_token"))
        .map(String::as_str)
}

/// The shape of every call: faults, quota, then the rule; errors are counted.
async fn call(
    sim: &SimShared,
    api: &'static str,
    body: &Bytes,
    rule: impl FnOnce(&mut State, &Value) -> Result<Value, ApiError>,
) -> Json<Value> {
    if let Some(delay) = sim.faults.delay() {
        tokio::time::sleep(delay).await;
    }
    let mut state = sim.state.lock().expect("sim state");
    if sim.faults.busy() || state.take_busy() {
        let _ = state.count_call(api);
        state.count_error(api, &BUSY);
        return Json(err(&BUSY));
    }
    let parsed = match parse_body(body) {
        Ok(v) => v,
        Err(e) => {
            state.count_error(api, &e);
            return Json(err(&e));
        }
    };
    let result = state
        .count_call(api)
        .and_then(|()| rule(&mut state, &parsed));
    if let Err(e) = &result {
        state.count_error(api, e);
    }
    answer(result)
}

/// A JSON body, or WeChat's 47001.
pub(super) fn parse_body(body: &Bytes) -> Result<Value, ApiError> {
    serde_json::from_slice(body).map_err(|_| ApiError {
        errcode: 47001,
        errmsg: "data format error",
    })
}

/// A rule's answer: its JSON (WeChat omits errcode on success for most calls; the rules answer
/// as it does), or the error as WeChat encodes it.
pub(super) fn answer(result: Result<Value, ApiError>) -> Json<Value> {
    Json(result.unwrap_or_else(|e| err(&e)))
}

async fn component_token(AxState(sim): AxState<Arc<SimShared>>, body: Bytes) -> Json<Value> {
    call(&sim, "api_component_token", &body, |st, b| {
        st.component_token(
            s(b, "component_appid")?,
            s(b, "component_appsecret")?,
            s(b, "component_verify_ticket")?,
        )
    })
    .await
}

async fn start_push_ticket(AxState(sim): AxState<Arc<SimShared>>, body: Bytes) -> Json<Value> {
    let answer = call(&sim, "api_start_push_ticket", &body, |st, b| {
        st.start_push_ticket(s(b, "component_appid")?, s(b, "component_secret")?)
    })
    .await;
    if answer.0["errcode"] == 0 {
        // WeChat starts pushing tickets again shortly after.
        let pusher = sim.pusher.clone();
        tokio::spawn(async move {
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            pusher.ticket().await;
        });
    }
    answer
}

async fn create_preauthcode(
    AxState(sim): AxState<Arc<SimShared>>,
    q: Q,
    body: Bytes,
) -> Json<Value> {
    call(&sim, "api_create_preauthcode", &body, |st, b| {
        st.check_token(token(&q), TokenKind::Component)?;
        st.create_pre_auth_code(s(b, "component_appid")?)
    })
    .await
}

async fn query_auth(AxState(sim): AxState<Arc<SimShared>>, q: Q, body: Bytes) -> Json<Value> {
    call(&sim, "api_query_auth", &body, |st, b| {
        st.check_token(token(&q), TokenKind::Component)?;
        st.query_auth(s(b, "component_appid")?, s(b, "authorization_code")?)
    })
    .await
}

async fn authorizer_token(AxState(sim): AxState<Arc<SimShared>>, q: Q, body: Bytes) -> Json<Value> {
    call(&sim, "api_authorizer_token", &body, |st, b| {
        st.check_token(token(&q), TokenKind::Component)?;
        st.authorizer_token(
            s(b, "component_appid")?,
            s(b, "authorizer_appid")?,
            s(b, "authorizer_refresh_token")?,
        )
    })
    .await
}

async fn authorizer_info(AxState(sim): AxState<Arc<SimShared>>, q: Q, body: Bytes) -> Json<Value> {
    call(&sim, "api_get_authorizer_info", &body, |st, b| {
        st.check_token(token(&q), TokenKind::Component)?;
        st.authorizer_info(s(b, "component_appid")?, s(b, "authorizer_appid")?)
    })
    .await
}

async fn authorizer_list(AxState(sim): AxState<Arc<SimShared>>, q: Q, body: Bytes) -> Json<Value> {
    call(&sim, "api_get_authorizer_list", &body, |st, b| {
        st.check_token(token(&q), TokenKind::Component)?;
        st.authorizer_list(s(b, "component_appid")?, n(b, "offset")?, n(b, "count")?)
    })
    .await
}

async fn get_option_old(AxState(sim): AxState<Arc<SimShared>>, q: Q, body: Bytes) -> Json<Value> {
    call(&sim, "api_get_authorizer_option", &body, |st, b| {
        st.check_token(token(&q), TokenKind::Component)?;
        st.check_component_appid(s(b, "component_appid")?)?;
        st.get_option(s(b, "authorizer_appid")?, s(b, "option_name")?)
    })
    .await
}

async fn set_option_old(AxState(sim): AxState<Arc<SimShared>>, q: Q, body: Bytes) -> Json<Value> {
    call(&sim, "api_set_authorizer_option", &body, |st, b| {
        st.check_token(token(&q), TokenKind::Component)?;
        st.check_component_appid(s(b, "component_appid")?)?;
        st.set_option(
            s(b, "authorizer_appid")?,
            s(b, "option_name")?,
            s(b, "option_value")?,
        )
    })
    .await
}

async fn get_option_new(AxState(sim): AxState<Arc<SimShared>>, q: Q, body: Bytes) -> Json<Value> {
    call(&sim, "get_authorizer_option", &body, |st, b| {
        let appid = st
            .check_token(token(&q), TokenKind::Authorizer)?
            .unwrap_or_default();
        st.get_option(&appid, s(b, "option_name")?)
    })
    .await
}

async fn set_option_new(AxState(sim): AxState<Arc<SimShared>>, q: Q, body: Bytes) -> Json<Value> {
    call(&sim, "set_authorizer_option", &body, |st, b| {
        let appid = st
            .check_token(token(&q), TokenKind::Authorizer)?
            .unwrap_or_default();
        st.set_option(&appid, s(b, "option_name")?, s(b, "option_value")?)
    })
    .await
}

async fn clear_quota(AxState(sim): AxState<Arc<SimShared>>, q: Q, body: Bytes) -> Json<Value> {
    call(&sim, "clear_quota", &body, |st, b| {
        st.check_token(token(&q), TokenKind::Component)?;
        st.check_component_appid(s(b, "component_appid")?)?;
        st.clear_quota();
        Ok(json!({ "errcode": 0, "errmsg": "ok" }))
    })
    .await
}

async fn clear_quota_v2(AxState(sim): AxState<Arc<SimShared>>, body: Bytes) -> Json<Value> {
    call(&sim, "clear_quota_v2", &body, |st, b| {
        st.check_component_appid(s(b, "component_appid")?)?;
        st.checked_secret(s(b, "appsecret")?)?;
        st.clear_quota();
        Ok(json!({ "errcode": 0, "errmsg": "ok" }))
    })
    .await
}

async fn custom_send(AxState(sim): AxState<Arc<SimShared>>, q: Q, body: Bytes) -> Json<Value> {
    call(&sim, "message_custom_send", &body, |st, b| {
        let appid = st
            .check_token(token(&q), TokenKind::Authorizer)?
            .unwrap_or_default();
        s(b, "touser")?;
        s(b, "msgtype")?;
        let mut recorded = b.clone();
        recorded["authorizer_appid"] = json!(appid);
        st.stats.custom_messages.push(recorded);
        Ok(json!({ "errcode": 0, "errmsg": "ok" }))
    })
    .await
}

/// The owner of a token-bearing call (`component` for the component token), checked as WeChat
/// does: `component_access_token=` for component APIs, `access_token=` for an account's.
fn owner(st: &mut State, q: &HashMap<String, String>) -> Result<String, ApiError> {
    if let Some(t) = q.get("component_access_token") {
        st.check_token(Some(t), TokenKind::Component)?;
        return Ok("component".into());
    }
    Ok(st
        .check_token(
            q.get("access_token").map(String::as_str),
            TokenKind::Authorizer,
        )?
        .unwrap_or_default())
}

/// Answers an error the way WeChat does (HTTP 200, JSON) and counts it.
fn refuse(st: &mut State, api: &str, e: &ApiError) -> Response {
    st.count_error(api, e);
    Json(err(e)).into_response()
}

/// `sns/component/jscode2session`: a mini program's login code → openid and session key
/// (GET, everything in the query).
async fn jscode2session(AxState(sim): AxState<Arc<SimShared>>, q: Q) -> Response {
    let mut st = sim.state.lock().expect("sim state");
    let api = "jscode2session";
    let _ = st.count_call(api);
    if st.take_busy() {
        return refuse(&mut st, api, &BUSY);
    }
    if let Err(e) = owner(&mut st, &q).and_then(|o| {
        if o == "component" {
            Ok(())
        } else {
            Err(super::state::WRONG_TOKEN_TYPE)
        }
    }) {
        return refuse(&mut st, api, &e);
    }
    let get = |k: &str| q.get(k).map(String::as_str).unwrap_or_default();
    if get("component_appid") != st.component_appid
        || get("grant_type") != "authorization_code"
        || get("js_code").is_empty()
        || !st.authorizers.contains_key(get("appid"))
    {
        return refuse(&mut st, api, &INVALID_ARGS);
    }
    let openid = format!("o-{}", &get("js_code").chars().take(16).collect::<String>());
    Json(json!({ "openid": openid, "session_key": st.fresh("sk-") })).into_response()
}

/// `cgi-bin/media/upload?type=`: the `media` part of a multipart body is kept for `media/get`.
async fn media_upload(
    AxState(sim): AxState<Arc<SimShared>>,
    q: Q,
    mut multipart: axum::extract::Multipart,
) -> Response {
    let mut file: Option<(String, Vec<u8>)> = None;
    while let Ok(Some(field)) = multipart.next_field().await {
        if field.name() == Some("media") {
            let kind = field
                .content_type()
                .unwrap_or("application/octet-stream")
                .to_owned();
            match field.bytes().await {
                Ok(b) => file = Some((kind, b.to_vec())),
                Err(_) => break,
            }
        }
    }
    let mut st = sim.state.lock().expect("sim state");
    let api = "media_upload";
    let _ = st.count_call(api);
    if st.take_busy() {
        return refuse(&mut st, api, &BUSY);
    }
    if let Err(e) = owner(&mut st, &q) {
        return refuse(&mut st, api, &e);
    }
    let Some(file) = file else {
        return refuse(
            &mut st,
            api,
            &ApiError {
                errcode: 41005,
                errmsg: "media data missing",
            },
        );
    };
    let id = st.fresh("media-");
    st.media.insert(id.clone(), file);
    Json(json!({
        "type": q.get("type").cloned().unwrap_or_else(|| "image".into()),
        "media_id": id,
        "created_at": common::unix_now(),
    }))
    .into_response()
}

/// `cgi-bin/media/get?media_id=`: the bytes as uploaded, or a JSON error.
async fn media_get(AxState(sim): AxState<Arc<SimShared>>, q: Q) -> Response {
    let mut st = sim.state.lock().expect("sim state");
    let api = "media_get";
    let _ = st.count_call(api);
    if let Err(e) = owner(&mut st, &q) {
        return refuse(&mut st, api, &e);
    }
    match q.get("media_id").and_then(|id| st.media.get(id)).cloned() {
        Some((kind, bytes)) => (
            [
                (header::CONTENT_TYPE, kind),
                (
                    header::CONTENT_DISPOSITION,
                    "attachment; filename=\"media\"".to_owned(),
                ),
            ],
            bytes,
        )
            .into_response(),
        None => refuse(
            &mut st,
            api,
            &ApiError {
                errcode: 40007,
                errmsg: "invalid media_id",
            },
        ),
    }
}

/// `cgi-bin/openapi/quota/get` `{cgi_path}`.
async fn quota_get(AxState(sim): AxState<Arc<SimShared>>, q: Q, body: Bytes) -> Json<Value> {
    call(&sim, "openapi_quota_get", &body, |st, b| {
        owner(st, &q)?;
        let path = s(b, "cgi_path")?;
        let used = st
            .stats
            .calls
            .get(path.trim_start_matches('/'))
            .copied()
            .unwrap_or(0);
        Ok(json!({
            "errcode": 0, "errmsg": "ok",
            "quota": { "daily_limit": 10_000_000, "used": used, "remain": 10_000_000 - used },
        }))
    })
    .await
}

/// `cgi-bin/openapi/rid/get` `{rid}`.
async fn rid_get(AxState(sim): AxState<Arc<SimShared>>, q: Q, body: Bytes) -> Json<Value> {
    call(&sim, "openapi_rid_get", &body, |st, b| {
        owner(st, &q)?;
        let rid = s(b, "rid")?;
        Ok(json!({
            "errcode": 0, "errmsg": "ok",
            "request": {
                "invoke_time": common::unix_now(), "cost_in_ms": 5,
                "request_url": format!("rid={rid}"), "request_body": "", "response_body": "{}",
                "client_ip": "127.0.0.1",
            },
        }))
    })
    .await
}

/// `cgi-bin/clear_quota` `{appid}` with the account's own token.
async fn account_clear_quota(
    AxState(sim): AxState<Arc<SimShared>>,
    q: Q,
    body: Bytes,
) -> Json<Value> {
    call(&sim, "clear_quota_account", &body, |st, b| {
        let who = owner(st, &q)?;
        if s(b, "appid")? != who {
            return Err(INVALID_ARGS);
        }
        Ok(json!({ "errcode": 0, "errmsg": "ok" }))
    })
    .await
}

/// Any API the simulator has no rule for: the token is checked and the call recorded
/// (`generic_calls` in `/sim/stats`); the answer echoes what arrived, so a test can see what the
/// caller sent.
async fn generic(
    AxState(sim): AxState<Arc<SimShared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    q: Q,
    body: Bytes,
) -> Response {
    let path = uri.path().trim_start_matches('/').to_owned();
    if !(path.starts_with("cgi-bin/") || path.starts_with("wxa/") || path.starts_with("sns/")) {
        return (axum::http::StatusCode::NOT_FOUND, "not a WeChat API").into_response();
    }
    if let Some(delay) = sim.faults.delay() {
        tokio::time::sleep(delay).await;
    }
    let mut st = sim.state.lock().expect("sim state");
    let _ = st.count_call(&path);
    if sim.faults.busy() || st.take_busy() {
        return refuse(&mut st, &path, &BUSY);
    }
    let who = match owner(&mut st, &q) {
        Ok(w) => w,
        Err(e) => return refuse(&mut st, &path, &e),
    };
    st.stats
        .generic_calls
        .entry(path.clone())
        .or_default()
        .push(who.clone());
    let mut query: Vec<&String> = q
        .keys()
        .filter(|k| *k != "access_token" && *k != "component_access_token")
        .collect();
    query.sort();
    Json(json!({
        "errcode": 0,
        "errmsg": "ok",
        "method": method.as_str(),
        "path": path,
        "caller": who,
        "query": query,
        "raw_query": uri.query(),
        "content_type": headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()),
        "body_bytes": body.len(),
        "body": serde_json::from_slice::<Value>(&body).ok(),
    }))
    .into_response()
}
