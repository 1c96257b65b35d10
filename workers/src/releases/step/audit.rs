//! `committed` / `waiting_quota` → `wxa/submit_audit` (within the audit quota), an audit
//! already pending, and the audit's result (pushed, or polled).

use super::*;

/// `committed` / `waiting_quota`: an audit from the quota, then `wxa/submit_audit`.
pub(super) async fn submit(at: &mut At<'_>) -> Result<(), StepError> {
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
pub(super) async fn submit_reserved(at: &mut At<'_>, reserved: Reserved) -> Result<(), StepError> {
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
pub(super) async fn pending_audit(at: &mut At<'_>) -> Result<(), StepError> {
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
    undo(at, false).await
}

/// `audit_submitted` / `audit_delayed`: the pushed result if it came, else a poll.
pub(super) async fn check_audit(at: &mut At<'_>) -> Result<(), StepError> {
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

pub(super) async fn audit_outcome(
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

/// `wxa/undocodeaudit` (5 a day and 10 a month per mini program; the audit quota is not
/// returned): for a cancelled job (`undoing_audit` → `cancelled` whatever WeChat says), or to
/// submit anew after 85009 (→ `committed`; `skipped` past the limit).
pub(super) async fn undo(at: &mut At<'_>, cancel: bool) -> Result<(), StepError> {
    if !at.intend(Call::UndoAudit).await? {
        return Ok(());
    }
    let r = at
        .call("wxa_undocodeaudit", |c, t| async move {
            c.undo_audit(t.expose()).await
        })
        .await;
    let (undone, past_limit, prefix) = if cancel {
        (
            AccountState::Cancelled,
            AccountState::Cancelled,
            "the job was cancelled; its audit stays in review",
        )
    } else {
        (
            AccountState::Committed,
            AccountState::Skipped,
            "an audit is pending",
        )
    };
    match r {
        Answer::Ok(()) if cancel => at.go(undone, Some(CANCEL_UNDONE.into())).await,
        Answer::Refused(errcode::NOTHING_IN_REVIEW, _) if cancel => {
            let why = "the job was cancelled; its audit had already ended";
            at.go(undone, Some(why.into())).await
        }
        Answer::Ok(()) | Answer::Refused(errcode::NOTHING_IN_REVIEW, _) => {
            let why = "undid the audit already pending (its quota is not returned)";
            at.go(undone, Some(why.into())).await
        }
        Answer::Refused(errcode::UNDO_LIMIT, why) => {
            let why =
                format!("{prefix}: undocodeaudit's limit (5 a day, 10 a month) is reached: {why}");
            at.go(past_limit, Some(why)).await
        }
        other => {
            at.otherwise(other, past_limit, "undocodeaudit refused")
                .await
        }
    }
}
