//! One account's progress through a release job: its state, why it is there, and the WeChat
//! call it is about to make (the *intent*), which is what makes every call happen once.

use serde::{Deserialize, Serialize};

/// Where an account is in a job.
///
/// ```text
/// pending → committed → audit_submitted (→ audit_delayed) → audit_passed (→ gray_released…) → released
///              ↑  ↓ 85085             ↓                   ↘ audit_failed                    ↘ release_failed
///           waiting_quota                                   (reason, screenshots)
/// released → rolling_back → rolled_back | rollback_failed      (an operator's rollback)
/// any non-final state → skipped(reason) | cancelled
/// audit_submitted | audit_delayed → undoing_audit → cancelled   (a job cancelled, audits undone)
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
pub enum AccountState {
    Pending,
    Committed,
    WaitingQuota,
    AuditSubmitted,
    AuditDelayed,
    AuditPassed,
    AuditFailed,
    /// Released to a share of users (`gray_percentage`); the next step or the full release
    /// follows.
    GrayReleased,
    Released,
    ReleaseFailed,
    /// An operator asked to roll the release back (`wxa/revertcoderelease`).
    RollingBack,
    RolledBack,
    RollbackFailed,
    /// The job was cancelled while the account's audit was in review: it is undone
    /// (`wxa/undocodeaudit`), then the account is `cancelled`.
    UndoingAudit,
    Skipped,
    Cancelled,
}

impl AccountState {
    pub const ALL: [AccountState; 16] = [
        Self::Pending,
        Self::Committed,
        Self::WaitingQuota,
        Self::AuditSubmitted,
        Self::AuditDelayed,
        Self::AuditPassed,
        Self::AuditFailed,
        Self::GrayReleased,
        Self::Released,
        Self::ReleaseFailed,
        Self::RollingBack,
        Self::RolledBack,
        Self::RollbackFailed,
        Self::UndoingAudit,
        Self::Skipped,
        Self::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Committed => "committed",
            Self::WaitingQuota => "waiting_quota",
            Self::AuditSubmitted => "audit_submitted",
            Self::AuditDelayed => "audit_delayed",
            Self::AuditPassed => "audit_passed",
            Self::AuditFailed => "audit_failed",
            Self::GrayReleased => "gray_released",
            Self::Released => "released",
            Self::ReleaseFailed => "release_failed",
            Self::RollingBack => "rolling_back",
            Self::RolledBack => "rolled_back",
            Self::RollbackFailed => "rollback_failed",
            Self::UndoingAudit => "undoing_audit",
            Self::Skipped => "skipped",
            Self::Cancelled => "cancelled",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|x| x.as_str() == s)
    }

    /// Nothing more happens to the account unless an operator acts (retry, release).
    /// `audit_passed` is final only for jobs released by hand.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            Self::AuditFailed
                | Self::Released
                | Self::ReleaseFailed
                | Self::RolledBack
                | Self::RollbackFailed
                | Self::Skipped
                | Self::Cancelled
        )
    }

    /// Counts as a failure for `stop_when_failed_over`.
    pub fn is_failure(self) -> bool {
        matches!(self, Self::AuditFailed | Self::ReleaseFailed)
    }

    /// An audit is in WeChat's hands.
    pub fn in_review(self) -> bool {
        matches!(self, Self::AuditSubmitted | Self::AuditDelayed)
    }
}

impl std::fmt::Display for AccountState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The WeChat call an account is about to make. Written (fenced) before the call; a replica
/// that finds one left by a holder that died asks WeChat what happened instead of calling
/// again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Call {
    Commit,
    SubmitAudit,
    Release,
    UndoAudit,
    Gray,
    Revert,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Intent {
    pub call: Call,
    /// When it was written (ms).
    pub at_ms: i64,
}

/// An account's record in a job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccountRecord {
    pub appid: String,
    pub state: AccountState,
    /// Why it is in this state (WeChat's reason for a failed audit, the errcode of a refusal,
    /// why it was skipped, what it waits for).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The failed audit's screenshots (media ids).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub screenshots: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auditid: Option<i64>,
    /// When the audit was submitted (ms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub submitted_ms: Option<i64>,
    /// The version online before this job (from `getversioninfo`), once read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub online_before: Option<String>,
    /// The share of users of a gray release in progress.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gray_percentage: Option<u8>,
    /// Whether the version check was done.
    #[serde(default)]
    pub version_checked: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub intent: Option<Intent>,
    /// Failed attempts at the current step (transient errors), for the backoff.
    #[serde(default)]
    pub attempts: u32,
    pub updated_ms: i64,
}

impl AccountRecord {
    pub fn new(appid: &str, state: AccountState, reason: Option<String>) -> Self {
        Self {
            appid: appid.to_owned(),
            state,
            reason,
            screenshots: Vec::new(),
            auditid: None,
            submitted_ms: None,
            online_before: None,
            gray_percentage: None,
            version_checked: false,
            intent: None,
            attempts: 0,
            updated_ms: crate::unix_now_ms(),
        }
    }

    /// This record moved to `state` for `reason`, its intent and attempts cleared.
    pub fn moved(&self, state: AccountState, reason: Option<String>) -> Self {
        Self {
            state,
            reason,
            intent: None,
            attempts: 0,
            updated_ms: crate::unix_now_ms(),
            ..self.clone()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_round_trip_by_name() {
        for s in AccountState::ALL {
            assert_eq!(AccountState::parse(s.as_str()), Some(s));
            assert_eq!(serde_json::to_value(s).unwrap(), s.as_str());
        }
        assert_eq!(AccountState::parse("Released"), None);
    }

    #[test]
    fn finality() {
        use AccountState::*;
        let final_ = [
            AuditFailed,
            Released,
            ReleaseFailed,
            RolledBack,
            RollbackFailed,
            Skipped,
            Cancelled,
        ];
        for s in AccountState::ALL {
            assert_eq!(s.is_final(), final_.contains(&s), "{s}");
        }
    }

    #[test]
    fn delay_is_not_final() {
        assert!(!AccountState::AuditDelayed.is_final());
        assert!(AccountState::AuditDelayed.in_review());
        assert!(AccountState::AuditFailed.is_final() && AccountState::AuditFailed.is_failure());
    }
}
