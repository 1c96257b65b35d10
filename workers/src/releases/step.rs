//! One step of one account of a release job: read its record, make the one WeChat call its
//! state calls for, write what came of it.
//!
//! # Each WeChat call once, across replicas
//!
//! An account is taken by one replica at a time (its running slot, with a lease of
//! [`Settings::lease`], longer than a WeChat call's 10 s timeout; writing an intent renews it,
//! so the one call after an intent always ends within its holder's lease). Before a call that
//! changes something (`commit`, `submit_audit`, `release`, `undocodeaudit`) the step writes the
//! *intent* to make it, compare-and-set on the record's version; the outcome is written the same
//! way. A replica that finds an intent was left behind (its holder died, or the call timed out
//! with no answer) does not call again: it asks WeChat what happened (`getversioninfo`,
//! `get_latest_auditstatus`) and goes on from there. An answer with an errcode means the call
//! was not made, so the intent is dropped and the step may be made again.

use super::Ctx;
use common::ids::AppId;
use common::redis::claim::{Claim, Taken};
use common::releases::spec::version_cmp;
use common::releases::{AccountRecord, AccountState, Call, Intent, Job, ReleaseMode, Reserved};
use common::secret::Token;
use common::token::TokenError;
use common::wechat::code::{AuditStatus, audit_status, errcode};
use common::wechat::{WechatClient, WechatError};
use std::time::Duration;

/// Why a step could not finish (it is tried again after the retry interval).
#[derive(Debug, thiserror::Error)]
pub enum StepError {
    #[error(transparent)]
    Redis(#[from] common::redis::RedisError),
}

/// What came of a WeChat call.
enum Answer<T> {
    Ok(T),
    /// WeChat answered this errcode: the call was not made.
    Refused(i64, String),
    /// Worth trying again later (busy, the token or Redis unavailable); not made.
    Later(String),
    /// The call may or may not have been made (no answer).
    Unknown(String),
    /// The account is gone (revoked, unknown).
    Gone(String),
}

fn answer<T>(api: &str, r: Result<T, TokenError>) -> Answer<T> {
    match r {
        Ok(v) => Answer::Ok(v),
        Err(TokenError::Wechat(e)) if e.api() == api => match &e {
            WechatError::Api {
                code: -1 | 45011, ..
            } => Answer::Later(e.to_string()),
            WechatError::Api { code, .. } => Answer::Refused(*code, e.to_string()),
            _ => Answer::Unknown(e.to_string()),
        },
        Err(e @ (TokenError::Revoked(_) | TokenError::Unknown(_))) => Answer::Gone(e.to_string()),
        Err(e) => Answer::Later(e.to_string()),
    }
}

/// An account being stepped: its record and version as read, and what it can do.
struct At<'a> {
    ctx: &'a Ctx,
    job: &'a Job,
    appid: AppId,
    rec: AccountRecord,
    seq: u64,
}

fn now() -> i64 {
    common::unix_now_ms()
}

impl At<'_> {
    fn id(&self) -> &str {
        &self.job.id
    }

    /// Calls WeChat's `api` with the account's token (a refused token is renewed and the call
    /// made once more), as an [`Answer`].
    async fn call<T, F, Fut>(&self, api: &'static str, f: F) -> Answer<T>
    where
        F: Fn(WechatClient, Token) -> Fut,
        Fut: std::future::Future<Output = Result<T, WechatError>>,
    {
        let tokens = &self.ctx.tokens;
        let r = tokens
            .with_authorizer_token(&self.appid, |t| f(tokens.client.clone(), t))
            .await;
        answer(api, r)
    }

    /// The answers every step treats alike: no permission set 18 and a gone account skip it,
    /// 45009 waits for Beijing midnight, −1 and friends retry later, no answer is read back;
    /// any other errcode ends the account in `refused` with WeChat's words.
    async fn otherwise<T>(
        &mut self,
        a: Answer<T>,
        refused: AccountState,
        what: &str,
    ) -> Result<(), StepError> {
        match a {
            Answer::Ok(_) => Ok(()),
            Answer::Refused(errcode::NO_PERMISSION, why) => {
                self.go(
                    AccountState::Skipped,
                    Some(format!(
                        "permission set 18 (code management) not granted: {why}"
                    )),
                )
                .await
            }
            Answer::Refused(45009, why) => self.daily_limit(why).await,
            Answer::Refused(_, why) => self.refused(refused, what, why).await,
            Answer::Gone(why) => self.go(AccountState::Skipped, Some(why)).await,
            Answer::Later(why) => self.later(why).await,
            Answer::Unknown(why) => self.unknown(why).await,
        }
    }

    /// Moves to `next`, scheduled at `due` (`None`: off the schedule), the running slot freed.
    async fn to(&mut self, next: AccountRecord, due: Option<i64>) -> Result<(), StepError> {
        let from = self.rec.state;
        let event =
            (next.state != from).then(|| super::events::event(self.job, from, &next, self.seq));
        let written = self
            .ctx
            .store
            .transition(
                self.id(),
                self.seq,
                from,
                &next,
                due,
                true,
                event.as_deref(),
            )
            .await?;
        if written {
            if next.state != from {
                metrics::counter!("wxpipe_release_transitions_total", "state" => next.state.as_str())
                    .increment(1);
                tracing::info!(job = %self.job.id, appid = %self.appid, from = %from, to = %next.state, reason = next.reason.as_deref().unwrap_or(""), "release step");
            }
            if next.state.in_review() {
                self.ctx
                    .store
                    .watch_audit(self.appid.as_str(), Some(self.id()))
                    .await?;
            } else if from.in_review() {
                self.ctx
                    .store
                    .watch_audit(self.appid.as_str(), None)
                    .await?;
            }
            self.seq += 1;
            self.rec = next;
        } else {
            tracing::debug!(job = %self.job.id, appid = %self.appid, "the account moved on meanwhile");
        }
        Ok(())
    }

    /// Moves to `state` for `reason`, due now (`Some(0)` → now) or off the schedule when final.
    async fn go(&mut self, state: AccountState, reason: Option<String>) -> Result<(), StepError> {
        let next = self.rec.moved(state, reason);
        let due = self.due_for(state);
        self.to(next, due).await
    }

    fn due_for(&self, state: AccountState) -> Option<i64> {
        match state {
            s if s.is_final() => None,
            AccountState::AuditPassed if self.job.spec.release == ReleaseMode::Manual => None,
            AccountState::GrayReleased => Some(now() + self.job.spec.gray_step_secs as i64 * 1000),
            AccountState::AuditSubmitted | AccountState::AuditDelayed => {
                Some(now() + self.ctx.settings.audit_poll.as_millis() as i64)
            }
            AccountState::WaitingQuota => {
                Some(now() + self.ctx.settings.quota_recheck.as_millis() as i64)
            }
            _ => Some(now()),
        }
    }

    /// Writes the intent to make `call`; `false` when someone else moved the account.
    async fn intend(&mut self, call: Call) -> Result<bool, StepError> {
        let mut next = self.rec.clone();
        next.intent = Some(Intent { call, at_ms: now() });
        let lease_end = now() + self.ctx.settings.lease.as_millis() as i64;
        let written = self
            .ctx
            .store
            .transition(
                self.id(),
                self.seq,
                self.rec.state,
                &next,
                Some(lease_end),
                false,
                None,
            )
            .await?;
        if written {
            self.seq += 1;
            self.rec = next;
        }
        Ok(written)
    }

    /// Stays in this state, the intent (if any) dropped, tried again after a backoff.
    async fn later(&mut self, why: String) -> Result<(), StepError> {
        let mut next = self.rec.clone();
        next.intent = None;
        next.attempts += 1;
        next.reason = Some(why);
        next.updated_ms = now();
        let base = self.ctx.settings.retry_base.as_millis() as i64;
        let wait = (base << next.attempts.min(10).saturating_sub(1)).min(1_800_000);
        self.to(next, Some(now() + wait)).await
    }

    /// The outcome is unknown: the intent stays, and the next look asks WeChat what happened.
    async fn unknown(&mut self, why: String) -> Result<(), StepError> {
        tracing::warn!(job = %self.job.id, appid = %self.appid, error = %why, "no answer to a release call: its outcome will be read back");
        metrics::counter!("wxpipe_release_calls_unanswered_total").increment(1);
        let due = now() + self.ctx.settings.retry_base.as_millis() as i64;
        self.ctx
            .store
            .reschedule(self.id(), self.appid.as_str(), due)
            .await?;
        Ok(())
    }

    /// An errcode no rule names: the account ends in `state` with WeChat's words.
    async fn refused(
        &mut self,
        state: AccountState,
        what: &str,
        detail: String,
    ) -> Result<(), StepError> {
        self.go(state, Some(format!("{what}: {detail}"))).await
    }

    /// 45009 on `api`: nothing more of it today (Beijing time).
    async fn daily_limit(&mut self, detail: String) -> Result<(), StepError> {
        let mut next = self.rec.clone();
        next.intent = None;
        next.reason = Some(format!(
            "daily limit reached, waiting for Beijing midnight: {detail}"
        ));
        next.updated_ms = now();
        self.to(next, Some(common::token::service::next_quota_day_ms(now())))
            .await
    }
}

/// One step of `appid` in `job`; errors are logged and the account tried again later.
pub async fn run(ctx: &Ctx, job: &Job, appid: &str) {
    if let Err(e) = step(ctx, job, appid).await {
        metrics::counter!("wxpipe_release_step_errors_total").increment(1);
        tracing::warn!(job = %job.id, %appid, error = %e, "a release step failed; tried again later");
        let due = now() + ctx.settings.retry_base.as_millis() as i64;
        let _ = ctx.store.reschedule(&job.id, appid, due).await;
    }
}

async fn step(ctx: &Ctx, job: &Job, appid: &str) -> Result<(), StepError> {
    let Some((rec, seq)) = ctx.store.account(&job.id, appid).await? else {
        return Ok(());
    };
    let Ok(parsed) = appid.parse::<AppId>() else {
        return Ok(());
    };
    let mut at = At {
        ctx,
        job,
        appid: parsed,
        rec,
        seq,
    };
    if let Some(intent) = at.rec.intent.clone() {
        return reconcile(&mut at, intent).await;
    }
    match at.rec.state {
        AccountState::Pending => commit(&mut at).await,
        AccountState::Committed | AccountState::WaitingQuota => submit(&mut at).await,
        AccountState::AuditSubmitted | AccountState::AuditDelayed => check_audit(&mut at).await,
        AccountState::AuditPassed | AccountState::GrayReleased
            if job.spec.release != ReleaseMode::Manual =>
        {
            // Gray steps only over a version online (WeChat's rule); then the full release.
            let next = job.spec.release.next_gray(at.rec.gray_percentage);
            match next {
                Some(p) if at.rec.online_before.is_some() => gray(&mut at, p).await,
                _ => release(&mut at).await,
            }
        }
        AccountState::RollingBack => revert(&mut at).await,
        // Final, or waiting for an operator: off the schedule.
        _ => {
            let next = at.rec.clone();
            at.to(next, None).await
        }
    }
}

/// A call whose holder left no outcome: read back what WeChat has, then go on.
async fn reconcile(at: &mut At<'_>, intent: Intent) -> Result<(), StepError> {
    metrics::counter!("wxpipe_release_reconciled_total").increment(1);
    let user_version = at.job.spec.user_version.clone();
    match intent.call {
        Call::Gray => {
            // Made again: WeChat refuses a step that does not grow (85082), which `gray`
            // takes as made.
            let mut next = at.rec.clone();
            next.intent = None;
            at.to(next, Some(now())).await
        }
        Call::Commit | Call::Release | Call::Revert => {
            let r = at
                .call("wxa_getversioninfo", |c, t| async move {
                    c.version_info(t.expose()).await
                })
                .await;
            let info = match r {
                Answer::Ok(i) => i,
                Answer::Gone(why) => return at.go(AccountState::Skipped, Some(why)).await,
                Answer::Refused(_, why) | Answer::Later(why) | Answer::Unknown(why) => {
                    return at.unknown(why).await;
                }
            };
            let (done, next_state) = match intent.call {
                Call::Commit => (
                    info.exp_version.as_deref() == Some(&*user_version),
                    AccountState::Committed,
                ),
                Call::Revert => (
                    info.release_version.as_deref() != Some(&*user_version),
                    AccountState::RolledBack,
                ),
                _ => (
                    info.release_version.as_deref() == Some(&*user_version),
                    AccountState::Released,
                ),
            };
            if done {
                let reason = Some(
                    "made by a replica that stopped before writing it down (read back from WeChat)"
                        .to_owned(),
                );
                at.go(next_state, reason).await
            } else {
                // Not made: drop the intent; the step is made again.
                let mut next = at.rec.clone();
                next.intent = None;
                at.to(next, Some(now())).await
            }
        }
        Call::SubmitAudit | Call::UndoAudit => {
            let latest = latest_audit(at).await;
            let latest = match latest {
                Answer::Ok(l) => l,
                Answer::Gone(why) => return at.go(AccountState::Skipped, Some(why)).await,
                Answer::Refused(_, why) | Answer::Later(why) | Answer::Unknown(why) => {
                    return at.unknown(why).await;
                }
            };
            let ours = latest.as_ref().filter(|a| {
                a.user_version.as_deref() == Some(&*user_version)
                    && a.submit_audit_time.unwrap_or(0) * 1000 >= intent.at_ms - 5_000
            });
            match (intent.call, ours) {
                (Call::SubmitAudit, Some(a)) if a.status != audit_status::WITHDRAWN => {
                    let mut next = at.rec.moved(AccountState::AuditSubmitted, Some("submitted by a replica that stopped before writing it down (read back from WeChat)".into()));
                    next.auditid = a.auditid;
                    next.submitted_ms = Some(intent.at_ms);
                    let due = Some(now());
                    at.to(next, due).await
                }
                (Call::UndoAudit, _)
                    if latest
                        .as_ref()
                        .is_none_or(|a| a.status == audit_status::WITHDRAWN) =>
                {
                    at.go(
                        AccountState::Committed,
                        Some("the pending audit was undone".into()),
                    )
                    .await
                }
                _ => {
                    let mut next = at.rec.clone();
                    next.intent = None;
                    at.to(next, Some(now())).await
                }
            }
        }
    }
}

async fn latest_audit(at: &At<'_>) -> Answer<Option<AuditStatus>> {
    at.call("wxa_get_latest_auditstatus", |c, t| async move {
        c.latest_audit(t.expose()).await
    })
    .await
}

/// `pending`: the version check (once), then `wxa/commit`.
async fn commit(at: &mut At<'_>) -> Result<(), StepError> {
    let spec = &at.job.spec;
    if spec.check_version && !at.rec.version_checked {
        let r = at
            .call("wxa_getversioninfo", |c, t| async move {
                c.version_info(t.expose()).await
            })
            .await;
        match r {
            Answer::Ok(info) => {
                if let Some(online) = &info.release_version
                    && version_cmp(&spec.user_version, online) != Some(std::cmp::Ordering::Greater)
                {
                    let why = format!(
                        "version {} is not greater than {online}, online now",
                        spec.user_version
                    );
                    let mut next = at.rec.moved(AccountState::Skipped, Some(why));
                    next.online_before = Some(online.clone());
                    next.version_checked = true;
                    return at.to(next, None).await;
                }
                let mut next = at.rec.clone();
                next.online_before = info.release_version;
                next.version_checked = true;
                // Written with the intent below (one write).
                at.rec = next;
            }
            Answer::Refused(errcode::NO_PERMISSION, why) => {
                return at
                    .go(
                        AccountState::Skipped,
                        Some(format!(
                            "permission set 18 (code management) not granted: {why}"
                        )),
                    )
                    .await;
            }
            Answer::Refused(45009, why) => return at.daily_limit(why).await,
            Answer::Refused(_, why) => {
                return at
                    .refused(AccountState::Skipped, "getversioninfo refused", why)
                    .await;
            }
            Answer::Gone(why) => return at.go(AccountState::Skipped, Some(why)).await,
            Answer::Later(why) | Answer::Unknown(why) => return at.later(why).await,
        }
    }
    let ext_json = match spec.ext_json_for(at.appid.as_str()) {
        Ok(e) => e,
        Err(e) => return at.go(AccountState::Skipped, Some(e.0)).await,
    };
    if !at.intend(Call::Commit).await? {
        return Ok(());
    }
    let (template_id, v, desc) = (
        spec.template_id,
        spec.user_version.clone(),
        spec.user_desc.clone(),
    );
    let r = at
        .call("wxa_commit", |c, t| {
            let (ext, v, desc) = (ext_json.clone(), v.clone(), desc.clone());
            async move {
                c.code_commit(t.expose(), template_id, &ext, &v, &desc)
                    .await
            }
        })
        .await;
    match r {
        Answer::Ok(()) => at.go(AccountState::Committed, None).await,
        other => {
            at.otherwise(other, AccountState::Skipped, "commit refused")
                .await
        }
    }
}

/// `committed` / `waiting_quota`: an audit from the quota, then `wxa/submit_audit`.
async fn submit(at: &mut At<'_>) -> Result<(), StepError> {
    let ctx = at.ctx;
    let max_age = ctx.settings.quota_recheck.as_millis() as i64;
    let mut reserved = ctx.store.reserve_audit(max_age).await?;
    if reserved == Reserved::Stale {
        // One reader at a time: a reading saved over another's would forget the audits taken
        // since that one.
        let lock = Claim::take(
            ctx.tokens.store.pool(),
            &ctx.store.quota_lock_key(),
            Duration::from_secs(15),
        )
        .await?;
        let Taken::Won(lock) = lock else {
            // Another replica or task reads it now: its reading is saved within a call.
            for _ in 0..20 {
                tokio::time::sleep(Duration::from_millis(100)).await;
                reserved = ctx.store.reserve_audit(max_age).await?;
                if reserved != Reserved::Stale {
                    break;
                }
            }
            if reserved == Reserved::Stale {
                let due = now() + 1_000;
                return Ok(ctx
                    .store
                    .reschedule(at.id(), at.appid.as_str(), due)
                    .await?);
            }
            return submit_reserved(at, reserved).await;
        };
        let r = at
            .call("wxa_queryquota", |c, t| async move {
                c.audit_quota(t.expose()).await
            })
            .await;
        let read = r;
        if let Answer::Ok(q) = &read {
            tracing::info!(rest = q.rest, limit = q.limit, "audit quota read");
            ctx.store.save_quota(q).await?;
        }
        let _ = lock.release().await;
        match read {
            Answer::Ok(_) => reserved = ctx.store.reserve_audit(max_age).await?,
            Answer::Refused(45009, why) => return at.daily_limit(why).await,
            Answer::Gone(why) => return at.go(AccountState::Skipped, Some(why)).await,
            Answer::Refused(_, why) | Answer::Later(why) | Answer::Unknown(why) => {
                return at.later(why).await;
            }
        }
    }
    submit_reserved(at, reserved).await
}

/// The submit step once the quota answered `reserved` (not stale).
async fn submit_reserved(at: &mut At<'_>, reserved: Reserved) -> Result<(), StepError> {
    let ctx = at.ctx;
    if reserved != Reserved::Yes {
        let why =
            "the platform's monthly audit quota is used up; waiting for it to grow".to_owned();
        if at.rec.state == AccountState::WaitingQuota {
            let due = now() + ctx.settings.quota_recheck.as_millis() as i64;
            return Ok(ctx
                .store
                .reschedule(at.id(), at.appid.as_str(), due)
                .await?);
        }
        return at.go(AccountState::WaitingQuota, Some(why)).await;
    }
    if !at.intend(Call::SubmitAudit).await? {
        return Ok(());
    }
    // A result stored from now on is this audit's (an earlier audit's, from an earlier job,
    // could otherwise be taken for it).
    ctx.store.forget_audit_result(at.appid.as_str()).await?;
    let body = serde_json::Value::Object(at.job.spec.audit.clone());
    let r = at
        .call("wxa_submit_audit", |c, t| {
            let body = body.clone();
            async move { c.submit_audit(t.expose(), body).await }
        })
        .await;
    match r {
        Answer::Ok(auditid) => {
            let mut next = at.rec.moved(AccountState::AuditSubmitted, None);
            next.auditid = Some(auditid);
            next.submitted_ms = at.rec.intent.as_ref().map(|i| i.at_ms);
            next.screenshots.clear();
            let due = at.due_for(AccountState::AuditSubmitted);
            at.to(next, due).await?;
            // A result pushed before the audit was written down found no job to wake: look now.
            // (The audits consumer stores the result, then reads the index; this wrote the index
            // above and reads the result now: one of the two sees the other.)
            if let Some(r) = ctx.store.audit_result(at.appid.as_str()).await?
                && r.at * 1000 >= at.rec.submitted_ms.unwrap_or(0) - 2_000
            {
                ctx.store.poke(at.id(), at.appid.as_str()).await?;
            }
            Ok(())
        }
        Answer::Refused(errcode::AUDIT_QUOTA, _) => {
            ctx.store.quota_used_up().await?;
            at.go(
                AccountState::WaitingQuota,
                Some(
                    "the platform's monthly audit quota is used up (85085); waiting for it to grow"
                        .into(),
                ),
            )
            .await
        }
        Answer::Refused(errcode::PRIVACY_CHECKING, why) => {
            let mut next = at.rec.moved(
                AccountState::Committed,
                Some(format!("WeChat's code privacy check still runs: {why}")),
            );
            next.attempts = at.rec.attempts + 1;
            let due = now() + ctx.settings.privacy_retry.as_millis() as i64;
            at.to(next, Some(due)).await
        }
        Answer::Refused(errcode::AUDIT_PENDING, _) => pending_audit(at).await,
        Answer::Refused(errcode::NO_COMMIT, _) => {
            at.go(
                AccountState::Pending,
                Some("WeChat has no commit to submit (85086): committing again".into()),
            )
            .await
        }
        other => {
            at.otherwise(other, AccountState::AuditFailed, "submit_audit refused")
                .await
        }
    }
}

/// 85009, an audit already pending: adopt it or undo it, as the job says.
async fn pending_audit(at: &mut At<'_>) -> Result<(), StepError> {
    use common::releases::spec::PendingAudit;
    if at.job.spec.on_pending_audit == PendingAudit::Adopt {
        return match latest_audit(at).await {
            Answer::Ok(Some(a))
                if matches!(a.status, audit_status::IN_REVIEW | audit_status::DELAYED) =>
            {
                let mut next = at.rec.moved(
                    AccountState::AuditSubmitted,
                    Some(format!(
                        "adopted the audit already pending (version {})",
                        a.user_version.as_deref().unwrap_or("?")
                    )),
                );
                next.auditid = a.auditid;
                next.submitted_ms = Some(a.submit_audit_time.unwrap_or(0) * 1000);
                let due = at.due_for(AccountState::AuditSubmitted);
                at.to(next, due).await
            }
            Answer::Gone(why) => at.go(AccountState::Skipped, Some(why)).await,
            Answer::Ok(_) => {
                at.later("85009 but no audit in review: trying again".into())
                    .await
            }
            Answer::Refused(_, why) | Answer::Later(why) | Answer::Unknown(why) => {
                at.later(why).await
            }
        };
    }
    // Undo it (the audit quota it spent is not returned), then submit anew.
    let mut next = at.rec.clone();
    next.intent = None;
    at.rec = next;
    if !at.intend(Call::UndoAudit).await? {
        return Ok(());
    }
    let r = at
        .call("wxa_undocodeaudit", |c, t| async move {
            c.undo_audit(t.expose()).await
        })
        .await;
    match r {
        Answer::Ok(()) | Answer::Refused(errcode::NOTHING_IN_REVIEW, _) => {
            let why = "undid the audit already pending (its quota is not returned)";
            at.go(AccountState::Committed, Some(why.into())).await
        }
        Answer::Refused(errcode::UNDO_LIMIT, why) => {
            let why = format!(
                "an audit is pending and undocodeaudit's limit (5 a day, 10 a month) is reached: {why}"
            );
            at.go(AccountState::Skipped, Some(why)).await
        }
        other => {
            at.otherwise(other, AccountState::Skipped, "undocodeaudit refused")
                .await
        }
    }
}

/// `audit_submitted` / `audit_delayed`: the pushed result if it came, else a poll.
async fn check_audit(at: &mut At<'_>) -> Result<(), StepError> {
    let ctx = at.ctx;
    let since = at.rec.submitted_ms.unwrap_or(0);
    if let Some(r) = ctx.store.audit_result(at.appid.as_str()).await?
        && r.at * 1000 >= since - 2_000
    {
        let status = AuditStatus {
            auditid: at.rec.auditid,
            status: r.status,
            reason: r.reason,
            screenshot: Some(r.screenshots.join("|")),
            user_version: None,
            submit_audit_time: None,
        };
        if !(r.status == audit_status::DELAYED && at.rec.state == AccountState::AuditDelayed) {
            return audit_outcome(at, status, "pushed").await;
        }
    }
    let Some(auditid) = at.rec.auditid else {
        return at
            .go(
                AccountState::Committed,
                Some("no auditid was recorded: submitting again".into()),
            )
            .await;
    };
    let r = at
        .call("wxa_get_auditstatus", |c, t| async move {
            c.audit_status(t.expose(), auditid).await
        })
        .await;
    match r {
        Answer::Ok(s) => {
            metrics::counter!("wxpipe_release_audit_polls_total").increment(1);
            audit_outcome(at, s, "polled").await
        }
        Answer::Gone(why) => at.go(AccountState::Skipped, Some(why)).await,
        Answer::Refused(45009, why) => at.daily_limit(why).await,
        Answer::Refused(_, why) | Answer::Later(why) | Answer::Unknown(why) => {
            let due = now() + ctx.settings.retry_base.as_millis() as i64;
            tracing::warn!(job = %at.job.id, appid = %at.appid, error = %why, "cannot read an audit's status");
            Ok(ctx
                .store
                .reschedule(at.id(), at.appid.as_str(), due)
                .await?)
        }
    }
}

async fn audit_outcome(
    at: &mut At<'_>,
    s: AuditStatus,
    how: &'static str,
) -> Result<(), StepError> {
    metrics::counter!("wxpipe_release_audit_results_total", "source" => how).increment(1);
    match s.status {
        audit_status::PASSED => at.go(AccountState::AuditPassed, None).await,
        audit_status::FAILED => {
            let mut next = at.rec.moved(
                AccountState::AuditFailed,
                Some(s.reason.unwrap_or_else(|| "WeChat gave no reason".into())),
            );
            next.screenshots = s
                .screenshot
                .unwrap_or_default()
                .split('|')
                .filter(|x| !x.is_empty())
                .map(str::to_owned)
                .collect();
            at.to(next, None).await
        }
        audit_status::DELAYED if at.rec.state == AccountState::AuditSubmitted => {
            at.go(AccountState::AuditDelayed, s.reason).await
        }
        audit_status::WITHDRAWN => {
            at.go(
                AccountState::Cancelled,
                Some("the audit was withdrawn outside this job".into()),
            )
            .await
        }
        _ => {
            let due = now() + at.ctx.settings.audit_poll.as_millis() as i64;
            Ok(at
                .ctx
                .store
                .reschedule(at.id(), at.appid.as_str(), due)
                .await?)
        }
    }
}

/// `audit_passed` in an automatic job: `wxa/release`.
async fn release(at: &mut At<'_>) -> Result<(), StepError> {
    if !at.intend(Call::Release).await? {
        return Ok(());
    }
    let r = at
        .call("wxa_release", |c, t| async move {
            c.code_release(t.expose()).await
        })
        .await;
    match r {
        Answer::Ok(()) => at.go(AccountState::Released, None).await,
        Answer::Refused(errcode::ALREADY_RELEASED, _) => {
            at.go(
                AccountState::Released,
                Some("WeChat says it was released already (85052)".into()),
            )
            .await
        }
        other => {
            at.otherwise(other, AccountState::ReleaseFailed, "release refused")
                .await
        }
    }
}

/// A gray step: `wxa/grayrelease` to `percentage`.
async fn gray(at: &mut At<'_>, percentage: u8) -> Result<(), StepError> {
    if !at.intend(Call::Gray).await? {
        return Ok(());
    }
    let r = at
        .call("wxa_grayrelease", |c, t| async move {
            c.gray_release(t.expose(), percentage).await
        })
        .await;
    let stepped = |at: &At<'_>| {
        let mut next = at.rec.moved(
            AccountState::GrayReleased,
            Some(format!("released to {percentage}% of users")),
        );
        next.gray_percentage = Some(percentage);
        next
    };
    match r {
        Answer::Ok(()) | Answer::Refused(errcode::GRAY_NOT_GROWING, _) => {
            let next = stepped(at);
            let due = at.due_for(AccountState::GrayReleased);
            at.to(next, due).await
        }
        // No version online after all: the full release.
        Answer::Refused(errcode::GRAY_FIRST_RELEASE, _) => {
            let mut next = at.rec.clone();
            next.intent = None;
            next.online_before = None;
            at.to(next, Some(now())).await
        }
        other => {
            at.otherwise(other, AccountState::ReleaseFailed, "grayrelease refused")
                .await
        }
    }
}

/// `rolling_back`: `wxa/revertcoderelease` (one step back).
async fn revert(at: &mut At<'_>) -> Result<(), StepError> {
    if !at.intend(Call::Revert).await? {
        return Ok(());
    }
    let r = at
        .call("wxa_revertcoderelease", |c, t| async move {
            c.revert_release(t.expose()).await
        })
        .await;
    match r {
        Answer::Ok(()) => {
            let back_to = at.rec.online_before.clone().unwrap_or_else(|| "?".into());
            at.go(
                AccountState::RolledBack,
                Some(format!("rolled back to {back_to}")),
            )
            .await
        }
        other => {
            at.otherwise(
                other,
                AccountState::RollbackFailed,
                "revertcoderelease refused",
            )
            .await
        }
    }
}

/// The settings of the releases role.
#[derive(Debug, Clone)]
pub struct Settings {
    /// How long a replica holds an account it works on.
    pub lease: Duration,
    /// How long after a submit (and between polls) an audit's status is read, if no push came.
    pub audit_poll: Duration,
    /// How often an exhausted audit quota is read again.
    pub quota_recheck: Duration,
    /// The first wait after a transient failure (doubling, at most 30 min).
    pub retry_base: Duration,
    /// The wait after 61039 (the privacy check still runs after a commit).
    pub privacy_retry: Duration,
    /// How often the role looks for due accounts.
    pub tick: Duration,
}
