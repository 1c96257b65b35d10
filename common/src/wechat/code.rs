//! Mini-program code management on behalf of authorizers (protocol.md §8): the calls a fleet
//! release makes, each with the mini program's authorizer token (`access_token=`), and the
//! template library's list with the component token under the name `access_token`.
//!
//! Field names are WeChat's: `getversioninfo` answers `exp_info {exp_time, exp_version,
//! exp_desc}` and `release_info {release_time, release_version, release_desc}`;
//! `get_latest_auditstatus` answers `auditid, status, reason, ScreenShot, user_version,
//! user_desc, submit_audit_time` (docs/releases.md lists the sources).

use super::{WechatClient, WechatError};
use serde::Deserialize;
use serde_json::{Value, json};

/// Audit statuses of `get_auditstatus` / `get_latest_auditstatus`.
pub mod audit_status {
    pub const PASSED: i64 = 0;
    pub const FAILED: i64 = 1;
    pub const IN_REVIEW: i64 = 2;
    pub const WITHDRAWN: i64 = 3;
    pub const DELAYED: i64 = 4;
}

/// Errcodes of §8 that a release reacts to.
pub mod errcode {
    /// An audit is already pending.
    pub const AUDIT_PENDING: i64 = 85009;
    /// The platform's monthly audit quota is used up.
    pub const AUDIT_QUOTA: i64 = 85085;
    /// No commit to submit.
    pub const NO_COMMIT: i64 = 85086;
    /// The code privacy check still runs right after a commit: retry later.
    pub const PRIVACY_CHECKING: i64 = 61039;
    /// The account did not grant permission set 18.
    pub const NO_PERMISSION: i64 = 61007;
    /// Unknown template.
    pub const UNKNOWN_TEMPLATE: i64 = 85014;
    /// ext_json invalid / sent as an object.
    pub const INVALID_EXT_JSON: i64 = 85013;
    pub const DATA_FORMAT: i64 = 47001;
    /// Already released.
    pub const ALREADY_RELEASED: i64 = 85052;
    /// Nothing to release.
    pub const NOTHING_TO_RELEASE: [i64; 2] = [85019, 85020];
    /// No audit record (`get_latest_auditstatus`).
    pub const NO_AUDIT: i64 = 85058;
    /// Gray release: no version online yet / the percentage does not grow.
    pub const GRAY_FIRST_RELEASE: i64 = 85079;
    pub const GRAY_NOT_GROWING: i64 = 85082;
    /// `revertcoderelease` during a gray release.
    pub const REVERT_IN_GRAY: i64 = 87011;
    /// `undocodeaudit`: nothing in review / beyond 5 a day or 10 a month; `revertcoderelease`:
    /// nothing to revert to (a first release, or reverted already).
    pub const NOTHING_IN_REVIEW: i64 = 87012;
    pub const UNDO_LIMIT: i64 = 87013;
}

/// What `getversioninfo` says is online and in experience.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VersionInfo {
    pub exp_version: Option<String>,
    pub release_version: Option<String>,
}

/// One audit as `get_auditstatus` or `get_latest_auditstatus` describe it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct AuditStatus {
    #[serde(default)]
    pub auditid: Option<i64>,
    pub status: i64,
    #[serde(default)]
    pub reason: Option<String>,
    /// `screenshot` in `get_auditstatus`, `ScreenShot` in `get_latest_auditstatus`.
    #[serde(default, alias = "ScreenShot")]
    pub screenshot: Option<String>,
    #[serde(default)]
    pub user_version: Option<String>,
    #[serde(default)]
    pub submit_audit_time: Option<i64>,
}

/// `wxa/queryquota`: the platform's monthly audit quota.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
pub struct AuditQuota {
    pub rest: i64,
    pub limit: i64,
    #[serde(default)]
    pub speedup_rest: i64,
    #[serde(default)]
    pub speedup_limit: i64,
}

/// A template of the library (`wxa/gettemplatelist`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, serde::Serialize)]
pub struct Template {
    pub template_id: u64,
    #[serde(default)]
    pub user_version: String,
    #[serde(default)]
    pub user_desc: String,
}

fn token(t: &str) -> Option<(&str, &str)> {
    Some(("access_token", t))
}

impl WechatClient {
    /// `GET wxa/gettemplatelist` with the component token (as `access_token`).
    pub async fn template_list(&self, component_token: &str) -> Result<Vec<Template>, WechatError> {
        const API: &str = "wxa_gettemplatelist";
        let v = self
            .get(
                API,
                "/wxa/gettemplatelist",
                &[("access_token", component_token)],
            )
            .await?;
        Self::field(API, v.get("template_list").cloned().unwrap_or(json!([])))
    }

    /// `POST wxa/commit`: `ext_json` is sent as a JSON *string*.
    pub async fn code_commit(
        &self,
        authorizer_token: &str,
        template_id: u64,
        ext_json: &str,
        user_version: &str,
        user_desc: &str,
    ) -> Result<(), WechatError> {
        self.post(
            "wxa_commit",
            "/wxa/commit",
            token(authorizer_token),
            json!({ "template_id": template_id, "ext_json": ext_json,
                    "user_version": user_version, "user_desc": user_desc }),
        )
        .await
        .map(|_| ())
    }

    /// `POST wxa/submit_audit` with `body` (`item_list`, `privacy_api_not_use`,
    /// `feedback_info`, … as the job gave them): the `auditid`.
    pub async fn submit_audit(
        &self,
        authorizer_token: &str,
        body: Value,
    ) -> Result<i64, WechatError> {
        const API: &str = "wxa_submit_audit";
        let v = self
            .post(API, "/wxa/submit_audit", token(authorizer_token), body)
            .await?;
        v.get("auditid")
            .and_then(|a| a.as_i64().or_else(|| a.as_str()?.parse().ok()))
            .ok_or(WechatError::Protocol {
                api: API,
                detail: "no auditid in the answer".into(),
            })
    }

    /// `POST wxa/get_auditstatus {auditid}`.
    pub async fn audit_status(
        &self,
        authorizer_token: &str,
        auditid: i64,
    ) -> Result<AuditStatus, WechatError> {
        const API: &str = "wxa_get_auditstatus";
        let v = self
            .post(
                API,
                "/wxa/get_auditstatus",
                token(authorizer_token),
                json!({ "auditid": auditid }),
            )
            .await?;
        Self::field(API, v)
    }

    /// `GET wxa/get_latest_auditstatus`; `None` when there is no audit (85058).
    pub async fn latest_audit(
        &self,
        authorizer_token: &str,
    ) -> Result<Option<AuditStatus>, WechatError> {
        const API: &str = "wxa_get_latest_auditstatus";
        match self
            .get(
                API,
                "/wxa/get_latest_auditstatus",
                &[("access_token", authorizer_token)],
            )
            .await
        {
            Ok(v) => Self::field(API, v).map(Some),
            Err(e) if e.code() == Some(errcode::NO_AUDIT) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// `GET wxa/undocodeaudit`.
    pub async fn undo_audit(&self, authorizer_token: &str) -> Result<(), WechatError> {
        self.get(
            "wxa_undocodeaudit",
            "/wxa/undocodeaudit",
            &[("access_token", authorizer_token)],
        )
        .await
        .map(|_| ())
    }

    /// `POST wxa/release {}`.
    pub async fn code_release(&self, authorizer_token: &str) -> Result<(), WechatError> {
        self.post(
            "wxa_release",
            "/wxa/release",
            token(authorizer_token),
            json!({}),
        )
        .await
        .map(|_| ())
    }

    /// `GET wxa/revertcoderelease`.
    pub async fn revert_release(&self, authorizer_token: &str) -> Result<(), WechatError> {
        self.get(
            "wxa_revertcoderelease",
            "/wxa/revertcoderelease",
            &[("access_token", authorizer_token)],
        )
        .await
        .map(|_| ())
    }

    /// `GET wxa/revertgrayrelease`: withdraws a gray release in progress.
    pub async fn revert_gray_release(&self, authorizer_token: &str) -> Result<(), WechatError> {
        self.get(
            "wxa_revertgrayrelease",
            "/wxa/revertgrayrelease",
            &[("access_token", authorizer_token)],
        )
        .await
        .map(|_| ())
    }

    /// `POST wxa/grayrelease {gray_percentage}`.
    pub async fn gray_release(
        &self,
        authorizer_token: &str,
        percentage: u8,
    ) -> Result<(), WechatError> {
        self.post(
            "wxa_grayrelease",
            "/wxa/grayrelease",
            token(authorizer_token),
            json!({ "gray_percentage": percentage }),
        )
        .await
        .map(|_| ())
    }

    /// `POST wxa/getversioninfo {}`.
    pub async fn version_info(&self, authorizer_token: &str) -> Result<VersionInfo, WechatError> {
        let v = self
            .post(
                "wxa_getversioninfo",
                "/wxa/getversioninfo",
                token(authorizer_token),
                json!({}),
            )
            .await?;
        let text = |outer: &str, inner: &str| {
            v.get(outer)
                .and_then(|o| o.get(inner))
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
        };
        Ok(VersionInfo {
            exp_version: text("exp_info", "exp_version"),
            release_version: text("release_info", "release_version"),
        })
    }

    /// `GET wxa/queryquota` (any mini program's token: the quota is the platform's).
    pub async fn audit_quota(&self, authorizer_token: &str) -> Result<AuditQuota, WechatError> {
        const API: &str = "wxa_queryquota";
        let v = self
            .get(
                API,
                "/wxa/queryquota",
                &[("access_token", authorizer_token)],
            )
            .await?;
        Self::field(API, v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_spellings_of_the_screenshot_are_read() {
        let a: AuditStatus =
            serde_json::from_value(json!({"status": 1, "reason": "r", "screenshot": "a|b"}))
                .unwrap();
        assert_eq!(a.screenshot.as_deref(), Some("a|b"));
        let b: AuditStatus = serde_json::from_value(json!({"auditid": 7, "status": 1,
            "ScreenShot": "c", "user_version": "1.2.0", "submit_audit_time": 1700000000}))
        .unwrap();
        assert_eq!(b.screenshot.as_deref(), Some("c"));
        assert_eq!(b.user_version.as_deref(), Some("1.2.0"));
    }
}
