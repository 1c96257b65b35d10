//! WeChat users of the authorized Official Accounts, as web login makes them (protocol.md §9):
//! a user's own `access_token`, taken by `sns/userinfo` and `sns/auth`, which accept a user's
//! token only — an account's or the component's is 40001 there, as at WeChat. Tokens come from
//! the simulated web login ([`super::oauth`]), or are minted by the control API
//! (`POST /sim/users/token {appid, openid?, scope?}`).

use super::SimShared;
use super::api::answer;
use super::state::{ApiError, INVALID_CREDENTIAL, TOKEN_EXPIRED, TOKEN_MISSING};
use axum::Router;
use axum::extract::{Query, State};
use axum::response::Json;
use axum::routing::get;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

const INVALID_OPENID: ApiError = ApiError {
    errcode: 40003,
    errmsg: "invalid openid",
};
/// `sns/userinfo` with a `snsapi_base` token.
const SCOPE_UNAUTHORIZED: ApiError = ApiError {
    errcode: 48001,
    errmsg: "api unauthorized",
};

/// How long a user's token lives at WeChat.
const USER_TOKEN_TTL: Duration = Duration::from_secs(7200);

struct UserToken {
    appid: String,
    openid: String,
    scope: String,
    expires: Instant,
}

#[derive(Default)]
pub struct Users {
    tokens: HashMap<String, UserToken>,
    serial: u64,
}

pub fn routes() -> Router<Arc<SimShared>> {
    Router::new()
        .route("/sns/userinfo", get(userinfo))
        .route("/sns/auth", get(auth))
}

type Q = Query<HashMap<String, String>>;

/// `POST /sim/users/token {appid, openid?, scope?}` → `{access_token, openid, scope, expires_in}`.
pub async fn mint(State(sim): State<Arc<SimShared>>, Json(body): Json<Value>) -> Json<Value> {
    let Some(appid) = body["appid"].as_str() else {
        return Json(json!({ "error": "appid is required" }));
    };
    let openid = body["openid"].as_str().unwrap_or("o-sim-web-user");
    let scope = body["scope"].as_str().unwrap_or("snsapi_userinfo");
    let (token, _) = sim.users.lock().expect("users").issue(appid, openid, scope);
    Json(
        json!({ "access_token": token, "openid": openid, "scope": scope, "expires_in": USER_TOKEN_TTL.as_secs() }),
    )
}

impl Users {
    /// A new user token (and its lifetime in seconds).
    pub fn issue(&mut self, appid: &str, openid: &str, scope: &str) -> (String, u64) {
        self.serial += 1;
        let token = format!("sim-user-token-{}-{openid}", self.serial);
        self.tokens.insert(
            token.clone(),
            UserToken {
                appid: appid.to_owned(),
                openid: openid.to_owned(),
                scope: scope.to_owned(),
                expires: Instant::now() + USER_TOKEN_TTL,
            },
        );
        (token, USER_TOKEN_TTL.as_secs())
    }
}

/// The unionid the sim gives `openid` of `appid` (as if bound to an open-platform account).
pub fn unionid(appid: &str, openid: &str) -> String {
    format!("u-{appid}-{openid}")
}

/// The user token of `q`, checked against `q`'s openid.
fn user<T>(
    sim: &SimShared,
    api: &str,
    q: &HashMap<String, String>,
    then: impl FnOnce(&UserToken) -> Result<T, ApiError>,
) -> Result<T, ApiError> {
    let checked = {
        let users = sim.users.lock().expect("users");
        let token = q
            .get("access_token")
            .filter(|t| !t.is_empty())
            .ok_or(TOKEN_MISSING);
        token.and_then(|t| {
            let u = users.tokens.get(t).ok_or(INVALID_CREDENTIAL)?;
            if Instant::now() >= u.expires {
                return Err(TOKEN_EXPIRED);
            }
            if q.get("openid") != Some(&u.openid) {
                return Err(INVALID_OPENID);
            }
            then(u)
        })
    };
    let mut st = sim.state.lock().expect("sim state");
    *st.stats.calls.entry(api.to_owned()).or_default() += 1;
    if let Err(e) = &checked {
        st.count_error(api, e);
    }
    checked
}

/// `GET sns/userinfo?access_token=USER_TOKEN&openid&lang`: the profile (no errcode on success).
async fn userinfo(State(sim): State<Arc<SimShared>>, q: Q) -> Json<Value> {
    answer(user(&sim, "sns_userinfo", &q, |u| {
        if u.scope != "snsapi_userinfo" {
            return Err(SCOPE_UNAUTHORIZED);
        }
        Ok(json!({
            "openid": u.openid, "nickname": "微信用户", "sex": 0, "province": "", "city": "",
            "country": "", "headimgurl": "", "privilege": [],
            "unionid": unionid(&u.appid, &u.openid),
        }))
    }))
}

/// `GET sns/auth?access_token=USER_TOKEN&openid`: whether the user's token is valid.
async fn auth(State(sim): State<Arc<SimShared>>, q: Q) -> Json<Value> {
    answer(user(&sim, "sns_auth", &q, |_| {
        Ok(json!({ "errcode": 0, "errmsg": "ok" }))
    }))
}
