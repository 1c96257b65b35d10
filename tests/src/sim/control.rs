//! `/sim/*`: inspection and control of the simulator, for tests, demos and people.

use super::SimShared;
use super::pusher;
use axum::Router;
use axum::extract::{Path, State};
use axum::response::Json;
use axum::routing::{get, post};
use serde_json::{Value, json};
use std::sync::Arc;

pub fn routes() -> Router<Arc<SimShared>> {
    Router::new()
        .route("/sim/stats", get(stats))
        .route("/sim/reset", post(reset))
        .route("/sim/push/ticket", post(push_ticket))
        .route("/sim/authorize", post(authorize))
        .route("/sim/authorizers/{appid}/revoke", post(revoke))
        .route(
            "/sim/authorizers/{appid}/invalidate-token",
            post(invalidate_token),
        )
        .route("/sim/busy", post(busy))
        .route("/sim/push/text", post(push_text))
        .route("/sim/push/event", post(push_event))
        .route("/sim/release-test", post(release_test))
        .route("/sim/users/token", post(super::users::mint))
        .route("/sim/jssdk/verify", post(super::tickets::verify))
        .merge(super::code::control_routes())
}

async fn stats(State(sim): State<Arc<SimShared>>) -> Json<Value> {
    Json(sim.state.lock().expect("sim state").stats_json())
}

async fn reset(State(sim): State<Arc<SimShared>>) -> Json<Value> {
    sim.state.lock().expect("sim state").reset();
    Json(json!({ "reset": true }))
}

async fn push_ticket(State(sim): State<Arc<SimShared>>) -> Json<Value> {
    let (ticket, outcome) = sim.pusher.ticket().await;
    Json(json!({ "ticket": ticket, "outcome": outcome }))
}

/// Authorizes an account without the page (as the full-network test accounts are) and pushes
/// `authorized`. Body: `{"appid": "wx…"?, "mini_program": bool?, "code_management": bool?}`
/// (permission set 18; mini programs grant it unless this says `false`).
async fn authorize(State(sim): State<Arc<SimShared>>, body: Option<Json<Value>>) -> Json<Value> {
    let body = body.map(|b| b.0).unwrap_or_default();
    let appid = body.get("appid").and_then(Value::as_str).map(str::to_owned);
    let mini = body
        .get("mini_program")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let code_management = body.get("code_management").and_then(Value::as_bool);
    let (a, code, existed) = {
        let mut st = sim.state.lock().expect("sim state");
        let (mut a, code, existed) = st.authorize(appid.as_deref(), mini);
        if let (Some(granted), Some(stored)) = (code_management, st.authorizers.get_mut(&a.appid)) {
            stored.code = granted;
            a.code = granted;
        }
        (a, code, existed)
    };
    let outcome = sim.pusher.authorized(&a, &code, "", existed).await;
    Json(
        json!({ "appid": a.appid, "user_name": a.user_name, "auth_code": code, "outcome": outcome }),
    )
}

async fn revoke(State(sim): State<Arc<SimShared>>, Path(appid): Path<String>) -> Json<Value> {
    if !sim.state.lock().expect("sim state").revoke(&appid) {
        return Json(json!({ "error": format!("{appid} is not a simulated authorizer") }));
    }
    let outcome = sim.pusher.unauthorized(&appid).await;
    Json(json!({ "appid": appid, "outcome": outcome }))
}

/// WeChat stops accepting the account's current token (it answers 40001 from now on).
async fn invalidate_token(
    State(sim): State<Arc<SimShared>>,
    Path(appid): Path<String>,
) -> Json<Value> {
    let done = sim
        .state
        .lock()
        .expect("sim state")
        .invalidate_token(&appid);
    Json(json!({ "appid": appid, "invalidated": done }))
}

/// The next `count` API calls are answered -1 (system busy). Body: `{"count"}`.
async fn busy(State(sim): State<Arc<SimShared>>, Json(body): Json<Value>) -> Json<Value> {
    let count = body.get("count").and_then(Value::as_u64).unwrap_or(1) as u32;
    sim.state.lock().expect("sim state").busy_next = count;
    Json(json!({ "busy_next": count }))
}

fn account(sim: &SimShared, body: &Value) -> Result<(String, String), Json<Value>> {
    let appid = body
        .get("appid")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let st = sim.state.lock().expect("sim state");
    match st.authorizers.get(appid) {
        Some(a) => Ok((a.appid.clone(), a.user_name.clone())),
        None => Err(Json(
            json!({ "error": format!("{appid:?} is not a simulated authorizer") }),
        )),
    }
}

/// Pushes what `build(gh_id, openid)` makes from a follower of the body's `appid`.
async fn push_from_follower(
    sim: &SimShared,
    body: &Value,
    kind: &str,
    build: impl FnOnce(&str, &str) -> String,
) -> Json<Value> {
    let (appid, gh) = match account(sim, body) {
        Ok(a) => a,
        Err(e) => return e,
    };
    let openid = body
        .get("openid")
        .and_then(Value::as_str)
        .unwrap_or("o-sim-follower");
    let plaintext = build(&gh, openid);
    let outcome = sim
        .pusher
        .message(kind, &appid, &gh, openid, &plaintext, pusher::TRIES)
        .await;
    Json(json!({ "outcome": outcome }))
}

/// A follower's text. Body: `{"appid", "content", "openid"?}`.
async fn push_text(State(sim): State<Arc<SimShared>>, Json(body): Json<Value>) -> Json<Value> {
    let content = body
        .get("content")
        .and_then(Value::as_str)
        .unwrap_or("hello")
        .to_owned();
    push_from_follower(&sim, &body, "text", |gh, openid| {
        pusher::text(gh, openid, &content)
    })
    .await
}

/// A follower's event. Body: `{"appid", "event", "event_key"?, "openid"?}`.
async fn push_event(State(sim): State<Arc<SimShared>>, Json(body): Json<Value>) -> Json<Value> {
    let event = body
        .get("event")
        .and_then(Value::as_str)
        .unwrap_or("subscribe")
        .to_owned();
    let key = body
        .get("event_key")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_owned();
    push_from_follower(&sim, &body, "event", |gh, openid| {
        pusher::event(gh, openid, &event, &key)
    })
    .await
}

/// Body: `{"appid": "wx…"?}` — one of the test accounts.
async fn release_test(State(sim): State<Arc<SimShared>>, body: Option<Json<Value>>) -> Json<Value> {
    let body = body.map(|b| b.0).unwrap_or_default();
    let appid = body.get("appid").and_then(Value::as_str).map(str::to_owned);
    Json(super::release::run(&sim, appid.as_deref()).await)
}
