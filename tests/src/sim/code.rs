//! The mini programs' code, audits and releases (protocol.md §8), as WeChat keeps them for a
//! platform that develops mini programs: `wxa/commit` of a library template with the account's
//! `ext_json` (it becomes the experience version), `wxa/submit_audit` against the platform's
//! **monthly** audit quota (`wxa/queryquota`), a review that ends after a configurable time
//! with a configurable share of failures and delays — its result **pushed** to the ingress
//! encrypted like every message (`weapp_audit_success` / `_fail` / `_delay`; a push can be
//! told to get lost) and readable with `get_auditstatus` / `get_latest_auditstatus` —,
//! `release`, `grayrelease`, `revertcoderelease`, `undocodeaudit` with its daily and monthly
//! limits, and `getversioninfo`. Every call is counted per API and account, so tests can check
//! that each step was made exactly once.
//!
//! Accounts without permission set 18 answer 61007 to every call here.

use super::SimShared;
use super::api::{answer, parse_body};
use super::state::{ApiError, BUSY, INVALID_ARGS, TokenKind};
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::response::Json;
use axum::routing::{get, post};
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

const fn e(errcode: i64, errmsg: &'static str) -> ApiError {
    ApiError { errcode, errmsg }
}

const NO_PERMISSION: ApiError = e(61007, "api is unauthorized to component");
const INVALID_EXT_JSON_TYPE: ApiError = e(47001, "data format error");
const INVALID_EXT_JSON: ApiError = e(85013, "invalid ext_json");
const UNKNOWN_TEMPLATE: ApiError = e(85014, "template not exist");
const PRIVACY_CHECKING: ApiError = e(61039, "code privacy check is not finished, retry later");
const AUDIT_PENDING: ApiError = e(85009, "already has an audit in progress");
const NO_COMMIT: ApiError = e(85086, "must commit before submit audit");
const QUOTA_USED_UP: ApiError = e(85085, "audit quota is used up");
const NO_AUDIT: ApiError = e(85058, "no audit record");
const NOTHING_TO_RELEASE: ApiError = e(85019, "no approved version to release");
const ALREADY_RELEASED: ApiError = e(85052, "this version has been released");
const NOTHING_IN_REVIEW: ApiError = e(87012, "no audit in review");
const UNDO_LIMIT: ApiError = e(87013, "undo audit limit reached");
const NO_REVERT: ApiError = e(
    87012,
    "cannot revert: no previous version, or reverted already",
);
const REVERT_IN_GRAY: ApiError = e(87011, "cannot revert during a gray release");
const GRAY_FIRST_RELEASE: ApiError = e(85079, "gray release needs a version online");
const GRAY_NOT_GROWING: ApiError = e(85082, "gray percentage must grow");

/// How reviews go; tests change it with `POST /sim/code/config`.
#[derive(Debug, Clone)]
pub struct CodeConfig {
    /// How long a review takes (a delayed one takes twice this).
    pub review: Duration,
    /// Share of reviews that fail.
    pub fail_rate: f64,
    /// Share of reviews that are delayed first (`weapp_audit_delay`, then a final result).
    pub delay_rate: f64,
    /// Accounts whose reviews always fail, whatever the rate.
    pub fail_appids: HashSet<String>,
    /// How long after a commit `submit_audit` answers 61039 (the privacy check).
    pub privacy_check: Duration,
    /// The next this many audit-result pushes are lost (never sent).
    pub lose_pushes: u32,
    /// How long `commit`, `submit_audit` and `release` wait to answer *after* they took
    /// effect (a caller that dies meanwhile never learns they did).
    pub answer_delay: Duration,
}

impl Default for CodeConfig {
    fn default() -> Self {
        Self {
            review: Duration::from_millis(500),
            fail_rate: 0.0,
            delay_rate: 0.0,
            fail_appids: HashSet::new(),
            privacy_check: Duration::ZERO,
            lose_pushes: 0,
            answer_delay: Duration::ZERO,
        }
    }
}

/// One version of an account's code.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Version {
    pub template_id: u64,
    pub user_version: String,
    pub user_desc: String,
    pub ext_json: String,
    pub time: i64,
}

/// One audit.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Audit {
    pub auditid: i64,
    pub user_version: String,
    pub user_desc: String,
    pub submit_audit_time: i64,
    /// 0 passed, 1 failed, 2 in review, 3 withdrawn, 4 delayed.
    pub status: i64,
    pub reason: String,
    pub screenshot: String,
    /// Whether its version was released.
    pub released: bool,
}

/// One mini program's code.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Account {
    /// The experience version (the last commit).
    pub exp: Option<Version>,
    #[serde(skip)]
    committed_at: Option<Instant>,
    pub audits: Vec<Audit>,
    /// The version online.
    pub release: Option<Version>,
    /// Versions that were online before, oldest first.
    pub history: Vec<Version>,
    /// Whether the last step was a revert (no two in a row).
    pub reverted_last: bool,
    /// A gray release in progress: its percentage.
    pub gray: Option<u8>,
    /// `undocodeaudit` calls today and this month: (day or month number, count).
    undo_day: (i64, u32),
    undo_month: (i64, u32),
}

/// The platform's audit quota (`wxa/queryquota`).
#[derive(Debug, Clone, serde::Serialize)]
pub struct Quota {
    pub rest: i64,
    pub limit: i64,
    pub speedup_rest: i64,
    pub speedup_limit: i64,
}

/// Everything of the code world.
pub struct CodeWorld {
    pub config: CodeConfig,
    pub accounts: BTreeMap<String, Account>,
    pub quota: Quota,
    next_auditid: i64,
    /// Calls per API, per account (every call that passed the token check).
    pub calls: BTreeMap<String, BTreeMap<String, u64>>,
    /// Audit-result pushes: (sent, lost).
    pub pushes: (u64, u64),
}

impl Default for CodeWorld {
    fn default() -> Self {
        Self {
            config: CodeConfig::default(),
            accounts: BTreeMap::new(),
            quota: Quota {
                rest: 20,
                limit: 20,
                speedup_rest: 5,
                speedup_limit: 5,
            },
            next_auditid: 412_000_000,
            calls: BTreeMap::new(),
            pushes: (0, 0),
        }
    }
}

impl CodeWorld {
    /// How many times `api` was called for `appid`.
    pub fn calls(&self, api: &str, appid: &str) -> u64 {
        self.calls
            .get(api)
            .and_then(|m| m.get(appid))
            .copied()
            .unwrap_or(0)
    }

    fn latest(&self, appid: &str) -> Option<&Audit> {
        self.accounts.get(appid)?.audits.last()
    }
}

pub fn routes() -> Router<Arc<SimShared>> {
    Router::new()
        .route("/wxa/commit", post(commit))
        .route("/wxa/get_page", get(get_page))
        .route("/wxa/submit_audit", post(submit_audit))
        .route("/wxa/get_auditstatus", post(get_auditstatus))
        .route("/wxa/get_latest_auditstatus", get(get_latest_auditstatus))
        .route("/wxa/undocodeaudit", get(undocodeaudit))
        .route("/wxa/release", post(release))
        .route("/wxa/revertcoderelease", get(revertcoderelease))
        .route("/wxa/grayrelease", post(grayrelease))
        .route("/wxa/revertgrayrelease", get(revertgrayrelease))
        .route("/wxa/getversioninfo", post(getversioninfo))
        .route("/wxa/queryquota", get(queryquota))
}

/// `POST /sim/code/config` and `GET /sim/code/stats`.
pub fn control_routes() -> Router<Arc<SimShared>> {
    Router::new()
        .route("/sim/code/config", post(configure))
        .route("/sim/code/stats", get(stats))
}

type Q = Query<HashMap<String, String>>;

/// The calling mini program: the authorizer token checked, set 18 required; the call counted.
fn account(sim: &SimShared, api: &str, q: &HashMap<String, String>) -> Result<String, ApiError> {
    let mut st = sim.state.lock().expect("sim state");
    let checked = (|| {
        st.count_call(api)?;
        if sim.faults.busy() || st.take_busy() {
            return Err(BUSY);
        }
        let owner = st
            .check_token(
                q.get("access_token").map(String::as_str),
                TokenKind::Authorizer,
            )?
            .ok_or(INVALID_ARGS)?;
        let a = st.authorizers.get(&owner).ok_or(INVALID_ARGS)?;
        if !(a.mini_program && a.code) {
            return Err(NO_PERMISSION);
        }
        Ok(owner)
    })();
    if let Err(e) = &checked {
        st.count_error(api, e);
    }
    drop(st);
    if let Ok(appid) = &checked {
        let mut code = sim.code.lock().expect("code world");
        *code
            .calls
            .entry(api.to_owned())
            .or_default()
            .entry(appid.clone())
            .or_default() += 1;
    }
    checked
}

fn ok(mut v: Value) -> Value {
    v["errcode"] = json!(0);
    v["errmsg"] = json!("ok");
    v
}

/// `{template_id, ext_json (a JSON string), user_version, user_desc}`.
async fn commit(State(sim): State<Arc<SimShared>>, q: Q, body: Bytes) -> Json<Value> {
    let result = account(&sim, "wxa_commit", &q).and_then(|appid| {
        let b = parse_body(&body)?;
        let template_id = b["template_id"]
            .as_u64()
            .or_else(|| b["template_id"].as_str().and_then(|s| s.parse().ok()))
            .ok_or(INVALID_ARGS)?;
        if sim
            .library
            .lock()
            .expect("library")
            .template(template_id)
            .is_none()
        {
            return Err(UNKNOWN_TEMPLATE);
        }
        let ext_json = match &b["ext_json"] {
            Value::Null => String::new(),
            Value::String(s) => s.clone(),
            _ => return Err(INVALID_EXT_JSON_TYPE),
        };
        if !ext_json.is_empty() && serde_json::from_str::<Value>(&ext_json).is_err() {
            return Err(INVALID_EXT_JSON);
        }
        let user_version = b["user_version"].as_str().ok_or(INVALID_ARGS)?.to_owned();
        let user_desc = b["user_desc"].as_str().unwrap_or_default().to_owned();
        let mut code = sim.code.lock().expect("code world");
        let a = code.accounts.entry(appid).or_default();
        a.exp = Some(Version {
            template_id,
            user_version,
            user_desc,
            ext_json,
            time: common::unix_now(),
        });
        a.committed_at = Some(Instant::now());
        Ok(ok(json!({})))
    });
    answer_late(&sim, result).await
}

/// The answer of a call that changed something, after the configured delay when it did.
async fn answer_late(sim: &SimShared, result: Result<Value, ApiError>) -> Json<Value> {
    if result.is_ok() {
        let delay = sim.code.lock().expect("code world").config.answer_delay;
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
    }
    answer(result)
}

async fn get_page(State(sim): State<Arc<SimShared>>, q: Q) -> Json<Value> {
    answer(account(&sim, "wxa_get_page", &q).and_then(|appid| {
        let code = sim.code.lock().expect("code world");
        code.accounts
            .get(&appid)
            .and_then(|a| a.exp.as_ref())
            .ok_or(NO_COMMIT)?;
        Ok(ok(
            json!({ "page_list": ["pages/index/index", "pages/detail/detail"] }),
        ))
    }))
}

/// `{item_list?, feedback_info?, privacy_api_not_use?, …}` → `auditid`.
async fn submit_audit(State(sim): State<Arc<SimShared>>, q: Q, body: Bytes) -> Json<Value> {
    let result = account(&sim, "wxa_submit_audit", &q).and_then(|appid| {
        let _ = parse_body(&body)?;
        let mut code = sim.code.lock().expect("code world");
        let privacy = code.config.privacy_check;
        let a = code.accounts.entry(appid.clone()).or_default();
        let exp = a.exp.clone().ok_or(NO_COMMIT)?;
        if a.committed_at.is_some_and(|t| t.elapsed() < privacy) {
            return Err(PRIVACY_CHECKING);
        }
        if a.audits.iter().any(|x| x.status == 2 || x.status == 4) {
            return Err(AUDIT_PENDING);
        }
        if code.quota.rest <= 0 {
            return Err(QUOTA_USED_UP);
        }
        code.quota.rest -= 1;
        code.next_auditid += 1;
        let auditid = code.next_auditid;
        code.accounts
            .entry(appid.clone())
            .or_default()
            .audits
            .push(Audit {
                auditid,
                user_version: exp.user_version,
                user_desc: exp.user_desc,
                submit_audit_time: common::unix_now(),
                status: 2,
                reason: String::new(),
                screenshot: String::new(),
                released: false,
            });
        Ok((appid, auditid))
    });
    match result {
        Ok((appid, auditid)) => {
            tokio::spawn(review(sim.clone(), appid, auditid));
            answer_late(&sim, Ok(ok(json!({ "auditid": auditid })))).await
        }
        Err(e) => answer(Err(e)),
    }
}

/// A review: ends after the configured time, maybe delayed first; the result is pushed.
async fn review(sim: Arc<SimShared>, appid: String, auditid: i64) {
    let (wait, delayed) = {
        let code = sim.code.lock().expect("code world");
        let delayed =
            code.config.delay_rate > 0.0 && rand::random::<f64>() < code.config.delay_rate;
        (code.config.review, delayed)
    };
    tokio::time::sleep(wait).await;
    if delayed {
        if !set_status(&sim, &appid, auditid, 4, "审核需要更多时间（模拟）", "") {
            return;
        }
        let xml = format!(
            "<Event><![CDATA[weapp_audit_delay]]></Event><Reason><![CDATA[审核需要更多时间（模拟）]]></Reason><DelayTime>{}</DelayTime>",
            common::unix_now()
        );
        push(&sim, &appid, "weapp_audit_delay", &xml).await;
        tokio::time::sleep(wait).await;
    }
    let fails = {
        let code = sim.code.lock().expect("code world");
        code.config.fail_appids.contains(&appid)
            || (code.config.fail_rate > 0.0 && rand::random::<f64>() < code.config.fail_rate)
    };
    let now = common::unix_now();
    if fails {
        let reason = "1:小程序内容不符合规范：页面存在未完成的功能（模拟）";
        let shots = format!("sim-shot-{auditid}-1|sim-shot-{auditid}-2");
        if set_status(&sim, &appid, auditid, 1, reason, &shots) {
            let xml = format!(
                "<Event><![CDATA[weapp_audit_fail]]></Event><Reason><![CDATA[{reason}]]></Reason><FailTime>{now}</FailTime><ScreenShot><![CDATA[{shots}]]></ScreenShot>"
            );
            push(&sim, &appid, "weapp_audit_fail", &xml).await;
        }
    } else if set_status(&sim, &appid, auditid, 0, "", "") {
        let xml =
            format!("<Event><![CDATA[weapp_audit_success]]></Event><SuccTime>{now}</SuccTime>");
        push(&sim, &appid, "weapp_audit_success", &xml).await;
    }
}

/// Sets an audit's status unless it was withdrawn meanwhile; whether it did.
fn set_status(
    sim: &SimShared,
    appid: &str,
    auditid: i64,
    status: i64,
    reason: &str,
    shots: &str,
) -> bool {
    let mut code = sim.code.lock().expect("code world");
    let Some(a) = code
        .accounts
        .get_mut(appid)
        .and_then(|a| a.audits.iter_mut().find(|x| x.auditid == auditid))
    else {
        return false;
    };
    if a.status == 3 {
        return false;
    }
    a.status = status;
    a.reason = reason.to_owned();
    a.screenshot = shots.to_owned();
    true
}

/// Pushes an audit event to the account's message URL (unless told to lose it).
async fn push(sim: &SimShared, appid: &str, kind: &str, event_fields: &str) {
    {
        let mut code = sim.code.lock().expect("code world");
        if code.config.lose_pushes > 0 {
            code.config.lose_pushes -= 1;
            code.pushes.1 += 1;
            return;
        }
        code.pushes.0 += 1;
    }
    let gh = {
        let st = sim.state.lock().expect("sim state");
        match st.authorizers.get(appid) {
            Some(a) => a.user_name.clone(),
            None => return,
        }
    };
    let plain = format!(
        "<xml><ToUserName><![CDATA[{gh}]]></ToUserName><FromUserName><![CDATA[o-sim-wxa-audit]]></FromUserName><CreateTime>{}</CreateTime><MsgType><![CDATA[event]]></MsgType>{event_fields}</xml>",
        common::unix_now()
    );
    let outcome = sim
        .pusher
        .message(
            kind,
            appid,
            &gh,
            "o-sim-wxa-audit",
            &plain,
            super::pusher::TRIES,
        )
        .await;
    if !outcome.acknowledged() {
        tracing::warn!(%appid, kind, ?outcome.status, "an audit push was not acknowledged");
    }
}

/// `{auditid}` → `status, reason, screenshot` (lowercase here).
async fn get_auditstatus(State(sim): State<Arc<SimShared>>, q: Q, body: Bytes) -> Json<Value> {
    answer(account(&sim, "wxa_get_auditstatus", &q).and_then(|appid| {
        let b = parse_body(&body)?;
        let id = b["auditid"].as_i64().ok_or(INVALID_ARGS)?;
        let code = sim.code.lock().expect("code world");
        let a = code
            .accounts
            .get(&appid)
            .and_then(|a| a.audits.iter().find(|x| x.auditid == id))
            .ok_or(INVALID_ARGS)?;
        Ok(ok(
            json!({ "status": a.status, "reason": a.reason, "screenshot": a.screenshot }),
        ))
    }))
}

/// → `auditid, status, reason, ScreenShot` (capitalised), `user_version, user_desc,
/// submit_audit_time`; 85058 when there is none.
async fn get_latest_auditstatus(State(sim): State<Arc<SimShared>>, q: Q) -> Json<Value> {
    answer(
        account(&sim, "wxa_get_latest_auditstatus", &q).and_then(|appid| {
            let code = sim.code.lock().expect("code world");
            let a = code.latest(&appid).ok_or(NO_AUDIT)?;
            Ok(ok(json!({
                "auditid": a.auditid, "status": a.status, "reason": a.reason,
                "ScreenShot": a.screenshot, "user_version": a.user_version,
                "user_desc": a.user_desc, "submit_audit_time": a.submit_audit_time,
            })))
        }),
    )
}

/// Withdraws the audit in review: 5 a day, 10 a month; the spent quota is not returned.
async fn undocodeaudit(State(sim): State<Arc<SimShared>>, q: Q) -> Json<Value> {
    answer(account(&sim, "wxa_undocodeaudit", &q).and_then(|appid| {
        let mut code = sim.code.lock().expect("code world");
        let a = code.accounts.entry(appid).or_default();
        let day = common::unix_now() / 86_400;
        let month = day / 30;
        if a.undo_day.0 != day {
            a.undo_day = (day, 0);
        }
        if a.undo_month.0 != month {
            a.undo_month = (month, 0);
        }
        let Some(audit) = a.audits.iter_mut().find(|x| x.status == 2 || x.status == 4) else {
            return Err(NOTHING_IN_REVIEW);
        };
        if a.undo_day.1 >= 5 || a.undo_month.1 >= 10 {
            return Err(UNDO_LIMIT);
        }
        audit.status = 3;
        a.undo_day.1 += 1;
        a.undo_month.1 += 1;
        Ok(ok(json!({})))
    }))
}

/// Releases the passed audit's version.
async fn release(State(sim): State<Arc<SimShared>>, q: Q, body: Bytes) -> Json<Value> {
    let result = account(&sim, "wxa_release", &q).and_then(|appid| {
        let _ = parse_body(&body)?;
        let mut code = sim.code.lock().expect("code world");
        let a = code.accounts.entry(appid).or_default();
        let passed = a
            .audits
            .iter()
            .rposition(|x| x.status == 0)
            .ok_or(NOTHING_TO_RELEASE)?;
        if a.audits[passed].released {
            return Err(ALREADY_RELEASED);
        }
        a.audits[passed].released = true;
        let exp = a.exp.clone().ok_or(NOTHING_TO_RELEASE)?;
        if let Some(previous) = a.release.take() {
            a.history.push(previous);
        }
        a.release = Some(Version {
            time: common::unix_now(),
            ..exp
        });
        a.reverted_last = false;
        a.gray = None;
        Ok(ok(json!({})))
    });
    answer_late(&sim, result).await
}

/// One step back; not during a gray release, not for a first release, not twice in a row.
async fn revertcoderelease(State(sim): State<Arc<SimShared>>, q: Q) -> Json<Value> {
    answer(
        account(&sim, "wxa_revertcoderelease", &q).and_then(|appid| {
            let mut code = sim.code.lock().expect("code world");
            let a = code.accounts.entry(appid).or_default();
            if a.gray.is_some() {
                return Err(REVERT_IN_GRAY);
            }
            if a.reverted_last {
                return Err(NO_REVERT);
            }
            let previous = a.history.pop().ok_or(NO_REVERT)?;
            a.release = Some(previous);
            a.reverted_last = true;
            Ok(ok(json!({})))
        }),
    )
}

/// `{gray_percentage 1..100}`: needs a version online; steps must grow.
async fn grayrelease(State(sim): State<Arc<SimShared>>, q: Q, body: Bytes) -> Json<Value> {
    answer(account(&sim, "wxa_grayrelease", &q).and_then(|appid| {
        let b = parse_body(&body)?;
        let pct = b["gray_percentage"]
            .as_u64()
            .filter(|p| (1..=100).contains(p))
            .ok_or(INVALID_ARGS)? as u8;
        let mut code = sim.code.lock().expect("code world");
        let a = code.accounts.entry(appid).or_default();
        if a.release.is_none() {
            return Err(GRAY_FIRST_RELEASE);
        }
        if a.gray.is_some_and(|g| pct <= g) {
            return Err(GRAY_NOT_GROWING);
        }
        a.audits
            .iter()
            .rposition(|x| x.status == 0 && !x.released)
            .ok_or(NOTHING_TO_RELEASE)?;
        a.gray = Some(pct);
        Ok(ok(json!({})))
    }))
}

/// Withdraws a gray release in progress (the version online before stays online).
async fn revertgrayrelease(State(sim): State<Arc<SimShared>>, q: Q) -> Json<Value> {
    answer(
        account(&sim, "wxa_revertgrayrelease", &q).and_then(|appid| {
            let mut code = sim.code.lock().expect("code world");
            let a = code.accounts.entry(appid).or_default();
            a.gray.take().ok_or(INVALID_ARGS)?;
            Ok(ok(json!({})))
        }),
    )
}

/// → `exp_info {exp_time, exp_version, exp_desc}`, `release_info {release_time,
/// release_version, release_desc}` (each only when there is one).
async fn getversioninfo(State(sim): State<Arc<SimShared>>, q: Q) -> Json<Value> {
    answer(account(&sim, "wxa_getversioninfo", &q).map(|appid| {
        let code = sim.code.lock().expect("code world");
        let mut v = ok(json!({}));
        if let Some(a) = code.accounts.get(&appid) {
            if let Some(x) = &a.exp {
                v["exp_info"] = json!({ "exp_time": x.time, "exp_version": x.user_version, "exp_desc": x.user_desc });
            }
            if let Some(x) = &a.release {
                v["release_info"] = json!({ "release_time": x.time, "release_version": x.user_version, "release_desc": x.user_desc });
            }
        }
        v
    }))
}

/// The platform's monthly audit quota.
async fn queryquota(State(sim): State<Arc<SimShared>>, q: Q) -> Json<Value> {
    answer(account(&sim, "wxa_queryquota", &q).map(|_| {
        let code = sim.code.lock().expect("code world");
        ok(json!(code.quota))
    }))
}

/// Body (every field optional): `{review_ms, fail_rate, delay_rate, fail_appids: [..],
/// privacy_check_ms, answer_delay_ms, lose_pushes, quota_rest, quota_limit}`. Answers the configuration.
async fn configure(State(sim): State<Arc<SimShared>>, Json(b): Json<Value>) -> Json<Value> {
    let mut code = sim.code.lock().expect("code world");
    if let Some(ms) = b["review_ms"].as_u64() {
        code.config.review = Duration::from_millis(ms);
    }
    if let Some(r) = b["fail_rate"].as_f64() {
        code.config.fail_rate = r;
    }
    if let Some(r) = b["delay_rate"].as_f64() {
        code.config.delay_rate = r;
    }
    if let Some(list) = b["fail_appids"].as_array() {
        code.config.fail_appids = list
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_owned)
            .collect();
    }
    if let Some(ms) = b["privacy_check_ms"].as_u64() {
        code.config.privacy_check = Duration::from_millis(ms);
    }
    if let Some(ms) = b["answer_delay_ms"].as_u64() {
        code.config.answer_delay = Duration::from_millis(ms);
    }
    if let Some(n) = b["lose_pushes"].as_u64() {
        code.config.lose_pushes = n as u32;
    }
    if let Some(n) = b["quota_rest"].as_i64() {
        code.quota.rest = n;
    }
    if let Some(n) = b["quota_limit"].as_i64() {
        code.quota.limit = n;
    }
    Json(json!({
        "review_ms": code.config.review.as_millis() as u64,
        "fail_rate": code.config.fail_rate,
        "delay_rate": code.config.delay_rate,
        "lose_pushes": code.config.lose_pushes,
        "quota": code.quota,
    }))
}

/// Calls per API and account, every account's code, the quota and the pushes.
async fn stats(State(sim): State<Arc<SimShared>>) -> Json<Value> {
    let code = sim.code.lock().expect("code world");
    Json(json!({
        "calls": code.calls,
        "accounts": code.accounts,
        "quota": code.quota,
        "pushes": { "sent": code.pushes.0, "lost": code.pushes.1 },
    }))
}
