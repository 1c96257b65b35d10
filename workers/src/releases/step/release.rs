//! `audit_passed` → `wxa/release` (or gray steps first), and an operator's rollback.

use super::*;

/// `audit_passed` in an automatic job: `wxa/release`.
pub(super) async fn release(at: &mut At<'_>) -> Result<(), StepError> {
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
pub(super) async fn gray(at: &mut At<'_>, percentage: u8) -> Result<(), StepError> {
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
pub(super) async fn revert(at: &mut At<'_>) -> Result<(), StepError> {
    if !at.intend(Call::Revert).await? {
        return Ok(());
    }
    if let Some(pct) = at.rec.gray_percentage {
        return revert_gray(at, pct).await;
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

/// A gray release in progress withdrawn (`wxa/revertgrayrelease`): the version online before
/// stays online for everyone.
async fn revert_gray(at: &mut At<'_>, pct: u8) -> Result<(), StepError> {
    let r = at
        .call("wxa_revertgrayrelease", |c, t| async move {
            c.revert_gray_release(t.expose()).await
        })
        .await;
    match r {
        Answer::Ok(()) => {
            let back_to = at.rec.online_before.clone().unwrap_or_else(|| "?".into());
            let mut next = at.rec.moved(
                AccountState::RolledBack,
                Some(format!(
                    "gray release at {pct}% withdrawn; {back_to} stays online"
                )),
            );
            next.gray_percentage = None;
            at.to(next, None).await
        }
        other => {
            at.otherwise(
                other,
                AccountState::RollbackFailed,
                "revertgrayrelease refused",
            )
            .await
        }
    }
}
