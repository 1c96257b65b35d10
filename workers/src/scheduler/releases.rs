//! The release jobs on the admin API (docs/releases.md): `POST /v1/releases` checks and
//! stores a job (the `releases` role runs it), `GET /v1/releases`, `GET /v1/releases/{id}`
//! (counts per state, rate, ETA, the audit quota), `GET /v1/releases/{id}/accounts?state=
//! &cursor=&limit=`, and the controls `POST /v1/releases/{id}/pause|resume|cancel|retry|
//! release|rollback`.

use super::admin::{Admin, BadRequest, error};
use axum::Router;
use axum::extract::{Path, Query, State, rejection::JsonRejection};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Json, Response};
use axum::routing::{get, post};
use common::ids::AppId;
use common::releases::spec::TargetFilter;
use common::releases::store::{is_job_id, new_job_id};
use common::releases::{
    AccountRecord, AccountState, Job, JobStatus, ReleaseSpec, ReleaseStore, Targets,
};
use common::token::AuthorizerRecord;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::sync::Arc;

/// The permission set of code management (protocol.md §8).
pub const CODE_MANAGEMENT: i64 = 18;

pub fn routes() -> Router<Arc<Admin>> {
    Router::new()
        .route("/v1/releases", post(create).get(list))
        .route("/v1/releases/templates", get(templates))
        .route("/v1/releases/{id}", get(one))
        .route("/v1/releases/{id}/accounts", get(accounts))
        .route("/v1/releases/{id}/pause", post(pause))
        .route("/v1/releases/{id}/resume", post(resume))
        .route("/v1/releases/{id}/cancel", post(cancel))
        .route("/v1/releases/{id}/retry", post(retry))
        .route("/v1/releases/{id}/release", post(release_now))
        .route("/v1/releases/{id}/rollback", post(rollback))
}

fn store(admin: &Admin) -> ReleaseStore {
    ReleaseStore::new(admin.tokens.store.pool().clone(), &admin.tokens.store.keys)
}

/// Whether `r` passes `GET /v1/authorizers`'s filters (status, type, permission).
pub fn matches(
    r: &AuthorizerRecord,
    status: Option<&str>,
    kind: Option<&str>,
    permission: Option<i64>,
) -> bool {
    status.is_none_or(|s| r.status.as_str() == s)
        && kind.is_none_or(|t| r.account_type() == t)
        && permission.is_none_or(|p| {
            r.profile_summary()
                .is_some_and(|s| s.permissions.contains(&p))
        })
}

/// Why `r` cannot take part in a release, if it cannot.
fn ineligible(r: &AuthorizerRecord) -> Option<String> {
    if r.status.as_str() != "active" {
        return Some(format!("the account is {}", r.status.as_str()));
    }
    // An account restored without a profile is tried: WeChat answers 61007 if it lacks set 18.
    let p = r.profile_summary()?;
    if !p.mini_program {
        return Some("not a mini program".into());
    }
    (!p.permissions.contains(&CODE_MANAGEMENT))
        .then(|| "permission set 18 (code management) not granted".into())
}

/// The job's accounts: eligible ones pending, the others skipped with their reason.
async fn resolve(admin: &Admin, targets: &Targets) -> Result<Vec<AccountRecord>, Response> {
    let store = &admin.tokens.store;
    let mut out = Vec::new();
    match targets {
        Targets::Appids(list) => {
            let mut seen = std::collections::BTreeSet::new();
            let appids: Vec<AppId> = list
                .iter()
                .filter(|a| seen.insert(a.as_str()))
                .filter_map(|a| a.parse().ok())
                .collect();
            let known: BTreeMap<String, AuthorizerRecord> = store
                .authorizers(&appids)
                .await
                .map_err(|e| error(e.into()))?
                .into_iter()
                .map(|r| (r.appid.to_string(), r))
                .collect();
            for appid in &appids {
                let record = match known.get(appid.as_str()) {
                    None => AccountRecord::new(
                        appid.as_str(),
                        AccountState::Skipped,
                        Some("not an account of this platform".into()),
                    ),
                    Some(r) => match ineligible(r) {
                        Some(why) => {
                            AccountRecord::new(appid.as_str(), AccountState::Skipped, Some(why))
                        }
                        None => AccountRecord::new(appid.as_str(), AccountState::Pending, None),
                    },
                };
                out.push(record);
            }
        }
        Targets::Filter(TargetFilter {
            account_type,
            status,
            permission,
        }) => {
            let appids = store
                .authorizer_appids()
                .await
                .map_err(|e| error(e.into()))?;
            for batch in appids.chunks(500) {
                let records = store
                    .authorizers(batch)
                    .await
                    .map_err(|e| error(e.into()))?;
                for r in records {
                    if !matches(&r, status.as_deref(), account_type.as_deref(), *permission) {
                        continue;
                    }
                    out.push(match ineligible(&r) {
                        Some(why) => {
                            AccountRecord::new(r.appid.as_str(), AccountState::Skipped, Some(why))
                        }
                        None => AccountRecord::new(r.appid.as_str(), AccountState::Pending, None),
                    });
                }
            }
        }
    }
    Ok(out)
}

/// The platform's template library (`wxa/gettemplatelist`), for the console's form.
async fn templates(State(admin): State<Arc<Admin>>) -> Response {
    let token = match admin.tokens.current_component_token().await {
        Ok(t) => t,
        Err(e) => return error(e),
    };
    match admin
        .tokens
        .client
        .template_list(token.access_token.expose())
        .await
    {
        Ok(list) => Json(json!({ "templates": list })).into_response(),
        Err(e) => error(e.into()),
    }
}

/// Checks that the template is in the library.
async fn check_template(admin: &Admin, template_id: u64) -> Result<(), Response> {
    let token = admin
        .tokens
        .current_component_token()
        .await
        .map_err(error)?;
    let templates = admin
        .tokens
        .client
        .template_list(token.access_token.expose())
        .await
        .map_err(|e| error(e.into()))?;
    if templates.iter().any(|t| t.template_id == template_id) {
        return Ok(());
    }
    let known: Vec<String> = templates
        .iter()
        .map(|t| format!("{} ({})", t.template_id, t.user_version))
        .collect();
    Err(BadRequest(format!(
        "template {template_id} is not in the platform's template library (wxa/gettemplatelist lists: {})",
        if known.is_empty() { "none".into() } else { known.join(", ") }
    ))
    .into_response())
}

async fn create(
    State(admin): State<Arc<Admin>>,
    body: Result<Json<ReleaseSpec>, JsonRejection>,
) -> Response {
    let spec = match body {
        Ok(Json(s)) => s,
        Err(e) => {
            return BadRequest(format!("not a release job: {}", e.body_text())).into_response();
        }
    };
    if let Err(e) = spec.check() {
        return BadRequest(e.0).into_response();
    }
    if let Err(r) = check_template(&admin, spec.template_id).await {
        return r;
    }
    let accounts = match resolve(&admin, &spec.targets).await {
        Ok(a) => a,
        Err(r) => return r,
    };
    if accounts.len() > common::releases::spec::MAX_TARGETS {
        return BadRequest(format!(
            "the targets match {} accounts; one job takes at most {}",
            accounts.len(),
            common::releases::spec::MAX_TARGETS
        ))
        .into_response();
    }
    let mut skipped: BTreeMap<String, u64> = BTreeMap::new();
    for a in accounts.iter().filter(|a| a.state == AccountState::Skipped) {
        *skipped
            .entry(a.reason.clone().unwrap_or_default())
            .or_default() += 1;
    }
    let pending = accounts
        .iter()
        .filter(|a| a.state == AccountState::Pending)
        .count();
    if pending == 0 {
        return BadRequest(format!(
            "no eligible account among the {} targeted (mini programs of this platform that granted permission set 18): {}",
            accounts.len(),
            json!(skipped)
        ))
        .into_response();
    }
    let id = new_job_id();
    if let Err(e) = store(&admin).create(&id, &spec, &accounts).await {
        return error(e.into());
    }
    metrics::counter!("wxpipe_release_jobs_total", "outcome" => "created").increment(1);
    tracing::info!(job = %id, pending, skipped = accounts.len() - pending, template = spec.template_id, version = %spec.user_version, "release job created");
    (
        StatusCode::CREATED,
        [(header::LOCATION, format!("/v1/releases/{id}"))],
        Json(json!({
            "id": id,
            "total": accounts.len(),
            "pending": pending,
            "skipped": accounts.len() - pending,
            "skipped_reasons": skipped,
        })),
    )
        .into_response()
}

/// A job's summary: the spec, counts per state, progress, rate and ETA.
pub async fn summary(store: &ReleaseStore, job: &Job) -> Result<Value, common::redis::RedisError> {
    let counts = store.counts(&job.id).await?;
    let (due, running) = store.scheduled(&job.id).await?;
    let n = |s: AccountState| counts.get(&s).copied().unwrap_or(0);
    let finished: u64 = AccountState::ALL
        .into_iter()
        .filter(|s| s.is_final())
        .map(n)
        .sum();
    let end = job.finished_ms.unwrap_or_else(common::unix_now_ms);
    let minutes = ((end - job.created_ms).max(1) as f64) / 60_000.0;
    let rate = finished as f64 / minutes;
    let remaining = job.total.saturating_sub(finished);
    let eta_secs = (job.status == JobStatus::Running && rate > 0.0 && remaining > 0)
        .then(|| (remaining as f64 / rate * 60.0).round() as u64);
    let counts: BTreeMap<&str, u64> = counts.iter().map(|(s, n)| (s.as_str(), *n)).collect();
    Ok(json!({
        "id": job.id,
        "status": job.status,
        "status_reason": job.status_reason,
        "template_id": job.spec.template_id,
        "user_version": job.spec.user_version,
        "user_desc": job.spec.user_desc,
        "release": job.spec.release,
        "concurrency": job.spec.concurrency,
        "created_ms": job.created_ms,
        "finished_ms": job.finished_ms,
        "total": job.total,
        "finished": finished,
        "counts": counts,
        "scheduled": due,
        "working": running,
        "rate_per_min": (rate * 100.0).round() / 100.0,
        "eta_secs": eta_secs,
    }))
}

/// `GET /v1/releases?cursor=&limit=`: jobs newest first, `limit` of them (default 50, at most
/// 200) after the job `cursor` (the last id of the previous page); `next_cursor` continues.
#[derive(serde::Deserialize)]
struct ListQuery {
    cursor: Option<String>,
    limit: Option<usize>,
}

async fn list(State(admin): State<Arc<Admin>>, Query(q): Query<ListQuery>) -> Response {
    let store = store(&admin);
    let ids = match store.job_ids().await {
        Ok(i) => i,
        Err(e) => return error(e.into()),
    };
    let start = match q.cursor.as_deref() {
        None | Some("") => 0,
        Some(c) if is_job_id(c) => match ids.iter().position(|id| id == c) {
            Some(i) => i + 1,
            None => {
                return BadRequest(format!("cursor {c} is not a release job")).into_response();
            }
        },
        Some(_) => {
            return BadRequest("cursor must be the last job id of the previous page".into())
                .into_response();
        }
    };
    let limit = q.limit.unwrap_or(50).clamp(1, 200);
    let page: Vec<&String> = ids.iter().skip(start).take(limit).collect();
    let mut jobs = Vec::new();
    for id in &page {
        match store.job(id).await {
            Ok(Some(job)) => match summary(&store, &job).await {
                Ok(s) => jobs.push(s),
                Err(e) => return error(e.into()),
            },
            Ok(None) => {}
            Err(e) => return error(e.into()),
        }
    }
    let next = (start + page.len() < ids.len())
        .then(|| page.last().map(|id| (*id).clone()))
        .flatten();
    Json(json!({ "count": jobs.len(), "total": ids.len(), "releases": jobs, "next_cursor": next }))
        .into_response()
}

/// The job of the path, or the answer to give (400 malformed id, 404 unknown).
async fn job_of(admin: &Admin, id: &str) -> Result<(ReleaseStore, Job), Response> {
    if !is_job_id(id) {
        return Err(BadRequest(format!(
            "{id:?} is not a release job id (r + 12 hex digits)"
        ))
        .into_response());
    }
    let store = store(admin);
    match store.job(id).await {
        Ok(Some(job)) => Ok((store, job)),
        Ok(None) => Err((
            StatusCode::NOT_FOUND,
            Json(json!({ "error": format!("no release job {id}") })),
        )
            .into_response()),
        Err(e) => Err(error(e.into())),
    }
}

async fn one(State(admin): State<Arc<Admin>>, Path(id): Path<String>) -> Response {
    let (store, job) = match job_of(&admin, &id).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let mut s = match summary(&store, &job).await {
        Ok(s) => s,
        Err(e) => return error(e.into()),
    };
    s["spec"] = json!(job.spec);
    s["audit_quota"] = match store.quota().await {
        Ok(q) if !q.is_empty() => json!(q),
        Ok(_) => Value::Null,
        Err(e) => return error(e.into()),
    };
    Json(s).into_response()
}

#[derive(serde::Deserialize)]
struct AccountsQuery {
    state: Option<String>,
    cursor: Option<String>,
    limit: Option<usize>,
}

async fn accounts(
    State(admin): State<Arc<Admin>>,
    Path(id): Path<String>,
    Query(q): Query<AccountsQuery>,
) -> Response {
    let (store, job) = match job_of(&admin, &id).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let state = match q.state.as_deref().filter(|s| !s.is_empty()) {
        None => None,
        Some(s) => match AccountState::parse(s) {
            Some(s) => Some(s),
            None => {
                let known: Vec<&str> = AccountState::ALL.iter().map(|s| s.as_str()).collect();
                return BadRequest(format!("state {s:?} is not one of {}", known.join(", ")))
                    .into_response();
            }
        },
    };
    if let Some(c) = &q.cursor
        && c.parse::<AppId>().is_err()
    {
        return BadRequest(
            "cursor must be the appid of the last account of the previous page".into(),
        )
        .into_response();
    }
    let limit = q.limit.unwrap_or(100).clamp(1, 1000);
    match store
        .accounts(&job.id, state, q.cursor.as_deref(), limit)
        .await
    {
        Ok((accounts, next)) => {
            Json(json!({ "count": accounts.len(), "accounts": accounts, "next_cursor": next }))
                .into_response()
        }
        Err(e) => error(e.into()),
    }
}

async fn set_status(
    admin: &Admin,
    id: &str,
    allowed: &[JobStatus],
    to: JobStatus,
    reason: Option<&str>,
) -> Response {
    let (store, job) = match job_of(admin, id).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    if !allowed.contains(&job.status) {
        return (
            StatusCode::CONFLICT,
            Json(json!({ "error": format!("the job is {}", job.status.as_str()) })),
        )
            .into_response();
    }
    if let Err(e) = store.set_status(id, to, reason).await {
        return error(e.into());
    }
    tracing::info!(job = %id, from = job.status.as_str(), to = to.as_str(), "release job steered by an operator");
    match store.job(id).await {
        Ok(Some(job)) => match summary(&store, &job).await {
            Ok(s) => Json(s).into_response(),
            Err(e) => error(e.into()),
        },
        Ok(None) => StatusCode::NOT_FOUND.into_response(),
        Err(e) => error(e.into()),
    }
}

async fn pause(State(admin): State<Arc<Admin>>, Path(id): Path<String>) -> Response {
    set_status(
        &admin,
        &id,
        &[JobStatus::Running],
        JobStatus::Paused,
        Some("paused by an operator"),
    )
    .await
}

async fn resume(State(admin): State<Arc<Admin>>, Path(id): Path<String>) -> Response {
    set_status(&admin, &id, &[JobStatus::Paused], JobStatus::Running, None).await
}

/// Moves every account of `job` in one of `from` with `next(record)`; returns how many moved
/// and how many had moved on meanwhile.
async fn move_all(
    store: &ReleaseStore,
    job: &Job,
    from: &[AccountState],
    next: impl Fn(&AccountRecord) -> Option<(AccountRecord, Option<i64>)>,
) -> Result<(u64, u64), common::redis::RedisError> {
    let (mut moved, mut raced) = (0, 0);
    for state in from {
        let mut cursor: Option<String> = None;
        loop {
            let (page, more) = store
                .accounts(&job.id, Some(*state), cursor.as_deref(), 500)
                .await?;
            for r in &page {
                let Some((current, seq)) = store.account(&job.id, &r.appid).await? else {
                    continue;
                };
                if current.state != *state || current.intent.is_some() {
                    raced += 1;
                    continue;
                }
                let Some((to, due)) = next(&current) else {
                    continue;
                };
                let event = crate::releases::events::event(job, current.state, &to, seq);
                if store
                    .transition(&job.id, seq, current.state, &to, due, true, Some(&event))
                    .await?
                {
                    moved += 1;
                } else {
                    raced += 1;
                }
            }
            if more.is_none() {
                break;
            }
            cursor = more;
        }
    }
    Ok((moved, raced))
}

/// `{"undo_audits": bool}` (optional) of a cancel.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct CancelBody {
    #[serde(default = "yes")]
    undo_audits: bool,
}

fn yes() -> bool {
    true
}

/// Cancels the job: accounts not yet in review are cancelled at once; audits in review are
/// undone by the releases role (`wxa/undocodeaudit`, 5 a day and 10 a month per account; the
/// audit quota they used is not returned) unless `{"undo_audits": false}` leaves them with
/// WeChat. The job is `cancelling` until they are, then `cancelled`.
async fn cancel(
    State(admin): State<Arc<Admin>>,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> Response {
    let (store, job) = match job_of(&admin, &id).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let undo = if body.iter().all(u8::is_ascii_whitespace) {
        true
    } else {
        match serde_json::from_slice::<CancelBody>(&body) {
            Ok(b) => b.undo_audits,
            Err(e) => {
                return BadRequest(format!(
                    "send {{\"undo_audits\": true|false}} or nothing: {e}"
                ))
                .into_response();
            }
        }
    };
    if matches!(
        job.status,
        JobStatus::Cancelled | JobStatus::Cancelling | JobStatus::Finished
    ) {
        return (
            StatusCode::CONFLICT,
            Json(json!({ "error": format!("the job is {}", job.status.as_str()) })),
        )
            .into_response();
    }
    // Nothing new starts while the accounts are moved.
    if let Err(e) = store
        .set_status(&id, JobStatus::Paused, Some("cancelling"))
        .await
    {
        return error(e.into());
    }
    let from = [
        AccountState::Pending,
        AccountState::Committed,
        AccountState::WaitingQuota,
        AccountState::AuditPassed,
        // A gray release stops growing where it is.
        AccountState::GrayReleased,
    ];
    let moved = move_all(&store, &job, &from, |r| {
        Some((
            r.moved(
                AccountState::Cancelled,
                Some("the job was cancelled".into()),
            ),
            None,
        ))
    })
    .await;
    let (cancelled, mut raced) = match moved {
        Ok(x) => x,
        Err(e) => return error(e.into()),
    };
    let in_review = [AccountState::AuditSubmitted, AccountState::AuditDelayed];
    let (undoing, left_in_review) = if undo {
        let now = common::unix_now_ms();
        match move_all(&store, &job, &in_review, |r| {
            Some((
                r.moved(
                    AccountState::UndoingAudit,
                    Some("the job was cancelled: undoing its audit".into()),
                ),
                Some(now),
            ))
        })
        .await
        {
            Ok((n, busy)) => {
                raced += busy;
                (n, 0)
            }
            Err(e) => return error(e.into()),
        }
    } else {
        match store.counts(&id).await {
            Ok(c) => (
                0,
                in_review
                    .iter()
                    .map(|s| c.get(s).copied().unwrap_or(0))
                    .sum(),
            ),
            Err(e) => return error(e.into()),
        }
    };
    let status = if undoing > 0 {
        JobStatus::Cancelling
    } else {
        JobStatus::Cancelled
    };
    if let Err(e) = store
        .set_status(&id, status, Some("cancelled by an operator"))
        .await
    {
        return error(e.into());
    }
    tracing::info!(job = %id, cancelled, undoing, left_in_review, raced, "release job cancelled");
    Json(json!({
        "id": id,
        "status": status,
        "cancelled": cancelled,
        "undoing_audits": undoing,
        "left_in_review": left_in_review,
        "busy": raced,
        "note": "an audit undone (wxa/undocodeaudit: 5 a day, 10 a month per account) does not return the audit quota it used",
    }))
    .into_response()
}

/// Retries the failed accounts: `audit_failed` ones from a new commit, `release_failed` ones
/// from the release; the job runs again.
async fn retry(State(admin): State<Arc<Admin>>, Path(id): Path<String>) -> Response {
    let (store, job) = match job_of(&admin, &id).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    if matches!(job.status, JobStatus::Cancelled | JobStatus::Cancelling) {
        return (
            StatusCode::CONFLICT,
            Json(json!({ "error": "the job is cancelled" })),
        )
            .into_response();
    }
    let now = common::unix_now_ms();
    let moved = move_all(
        &store,
        &job,
        &[AccountState::AuditFailed, AccountState::ReleaseFailed],
        |r| {
            let to = match r.state {
                AccountState::ReleaseFailed => AccountState::AuditPassed,
                _ => AccountState::Pending,
            };
            let mut next = r.moved(to, Some("retried by an operator".into()));
            next.screenshots.clear();
            Some((next, Some(now)))
        },
    )
    .await;
    let (retried, raced) = match moved {
        Ok(x) => x,
        Err(e) => return error(e.into()),
    };
    if let Err(e) = store.set_status(&id, JobStatus::Running, None).await {
        return error(e.into());
    }
    Json(json!({ "id": id, "status": "running", "retried": retried, "busy": raced }))
        .into_response()
}

/// `{"appids": [...]}` (optional): the accounts an operator's action is for (default: all).
#[derive(serde::Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Chosen {
    #[serde(default)]
    appids: Option<Vec<String>>,
}

fn chosen(body: &[u8]) -> Result<Option<std::collections::BTreeSet<String>>, BadRequest> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    match serde_json::from_slice::<Chosen>(body) {
        Ok(c) => {
            if let Some(list) = &c.appids
                && let Some(bad) = list.iter().find(|a| a.parse::<AppId>().is_err())
            {
                return Err(BadRequest(format!("{bad:?} is not an appid")));
            }
            Ok(c.appids.map(|l| l.into_iter().collect()))
        }
        Err(e) => Err(BadRequest(format!(
            "send {{\"appids\": [..]}} or nothing: {e}"
        ))),
    }
}

/// A manual job's passed audits released now (the job releases by itself from now on).
async fn release_now(State(admin): State<Arc<Admin>>, Path(id): Path<String>) -> Response {
    let (store, mut job) = match job_of(&admin, &id).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    if job.spec.release != common::releases::ReleaseMode::Manual {
        return (
            StatusCode::CONFLICT,
            Json(json!({ "error": "the job releases by itself (release is not manual)" })),
        )
            .into_response();
    }
    if matches!(job.status, JobStatus::Cancelled | JobStatus::Cancelling) {
        return (
            StatusCode::CONFLICT,
            Json(json!({ "error": "the job is cancelled" })),
        )
            .into_response();
    }
    job.spec.release = common::releases::ReleaseMode::Auto;
    if let Err(e) = store.update_spec(&id, &job.spec).await {
        return error(e.into());
    }
    let now = common::unix_now_ms();
    let moved = move_all(&store, &job, &[AccountState::AuditPassed], |r| {
        Some((
            r.moved(
                AccountState::AuditPassed,
                Some("released by an operator".into()),
            ),
            Some(now),
        ))
    })
    .await;
    let (released, raced) = match moved {
        Ok(x) => x,
        Err(e) => return error(e.into()),
    };
    if let Err(e) = store.set_status(&id, JobStatus::Running, None).await {
        return error(e.into());
    }
    Json(json!({ "id": id, "status": "running", "releasing": released, "busy": raced }))
        .into_response()
}

/// Rolls released accounts back one step (`wxa/revertcoderelease`); not those whose release
/// was their first (nothing to go back to).
async fn rollback(
    State(admin): State<Arc<Admin>>,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> Response {
    let (store, job) = match job_of(&admin, &id).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let only = match chosen(&body) {
        Ok(c) => c,
        Err(r) => return r.into_response(),
    };
    let now = common::unix_now_ms();
    let first_release = std::sync::atomic::AtomicU64::new(0);
    let moved = move_all(
        &store,
        &job,
        &[AccountState::Released, AccountState::GrayReleased],
        |r| {
            if only.as_ref().is_some_and(|o| !o.contains(&r.appid)) {
                return None;
            }
            // A gray release in progress is withdrawn (`revertgrayrelease`); a full one goes one
            // step back, which needs a version before it.
            if r.state == AccountState::Released && r.online_before.is_none() {
                first_release.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                return None;
            }
            Some((
                r.moved(
                    AccountState::RollingBack,
                    Some("rollback asked by an operator".into()),
                ),
                Some(now),
            ))
        },
    )
    .await;
    let (moved, raced) = match moved {
        Ok(x) => x,
        Err(e) => return error(e.into()),
    };
    let first = first_release.into_inner();
    if moved > 0
        && let Err(e) = store.set_status(&id, JobStatus::Running, None).await
    {
        return error(e.into());
    }
    Json(json!({
        "id": id,
        "rolling_back": moved,
        "not_rolled_back_first_release": first,
        "busy": raced,
        "note": "wxa/revertcoderelease goes one step back, to the version online before this job; not for a first release",
    }))
    .into_response()
}
