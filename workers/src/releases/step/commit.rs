//! `pending`: the version check, then `wxa/commit`.

use super::*;

/// `pending`: the version check (once), then `wxa/commit`.
pub(super) async fn commit(at: &mut At<'_>) -> Result<(), StepError> {
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
