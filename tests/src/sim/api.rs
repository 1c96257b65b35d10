//! The component API of protocol.md §2 (and `message/custom/send`), as WeChat answers it:
//! POST JSON, errors as `{"errcode","errmsg"}` with HTTP 200, tokens in the query
//! (`component_access_token=` or `access_token=`).

use super::SimShared;
use super::state::{ApiError, BUSY, INVALID_ARGS, State, TokenKind};
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Query, State as AxState};
use axum::response::Json;
use axum::routing::post;
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
    if sim.faults.busy() {
        let _ = state.count_call(api);
        state.count_error(api, &BUSY);
        return Json(err(&BUSY));
    }
    let parsed: Value = match serde_json::from_slice(body) {
        Ok(v) => v,
        Err(_) => {
            let e = ApiError {
                errcode: 47001,
                errmsg: "data format error",
            };
            state.count_error(api, &e);
            return Json(err(&e));
        }
    };
    let result = state
        .count_call(api)
        .and_then(|()| rule(&mut state, &parsed));
    match result {
        // WeChat omits errcode on success for most calls; the rules answer as it does.
        Ok(v) => Json(v),
        Err(e) => {
            state.count_error(api, &e);
            Json(err(&e))
        }
    }
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
