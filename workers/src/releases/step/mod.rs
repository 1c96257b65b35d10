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

mod audit;
mod commit;
mod release;

use audit::{check_audit, submit, undo};
use commit::commit;
use release::{gray, release, revert};

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
    async fn to(&mut self, mut next: AccountRecord, due: Option<i64>) -> Result<(), StepError> {
        // A full release ends any gray release.
        if next.state == AccountState::Released {
            next.gray_percentage = None;
        }
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

/// Why an account of a cancelled job whose audit was undone is `cancelled`.
const CANCEL_UNDONE: &str =
    "the job was cancelled: its audit was undone (the audit quota it used is not returned)";

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
        AccountState::UndoingAudit => undo(&mut at, true).await,
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
        // A gray step, or a gray release withdrawn: made again (WeChat refuses a step that
        // does not grow, 85082, which `gray` takes as made; withdrawing twice is refused and
        // ends in `rollback_failed` with WeChat's words).
        Call::Gray => again(at).await,
        Call::Revert if at.rec.gray_percentage.is_some() => again(at).await,
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
                again(at).await
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
                    // Undone for a cancelled job, or to submit anew (85009, `undo`).
                    let (to, why) = if at.rec.state == AccountState::UndoingAudit {
                        (AccountState::Cancelled, CANCEL_UNDONE)
                    } else {
                        (AccountState::Committed, "the pending audit was undone")
                    };
                    at.go(to, Some(why.into())).await
                }
                _ => again(at).await,
            }
        }
    }
}

/// The intent dropped: the step is made again.
async fn again(at: &mut At<'_>) -> Result<(), StepError> {
    let mut next = at.rec.clone();
    next.intent = None;
    at.to(next, Some(now())).await
}

async fn latest_audit(at: &At<'_>) -> Answer<Option<AuditStatus>> {
    at.call("wxa_get_latest_auditstatus", |c, t| async move {
        c.latest_audit(t.expose()).await
    })
    .await
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
