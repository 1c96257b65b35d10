//! WeChat's error codes and what to do about them (protocol.md §6).

/// A failed WeChat call. Never contains a token or a secret.
#[derive(Debug, Clone, thiserror::Error)]
pub enum WechatError {
    #[error("WeChat {api} answered errcode {code}: {msg}")]
    Api {
        api: &'static str,
        code: i64,
        msg: String,
    },
    #[error("calling WeChat {api}: {detail}")]
    Transport { api: &'static str, detail: String },
    #[error("WeChat {api} answered something unexpected: {detail}")]
    Protocol { api: &'static str, detail: String },
}

/// How to react to an error (protocol.md §6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// 40001 / 40014 / 42001: invalidate the token if it is still the one used, refresh once,
    /// retry once.
    InvalidToken,
    /// −1: system busy; back off with jitter and retry.
    Busy,
    /// 45011: too frequent; back off.
    TooFrequent,
    /// 45009: the daily quota is used up; never retry (clear_quota/v2, alert).
    QuotaReached,
    /// 61023: the refresh token is dead; never retry (restore from the list or re-authorize).
    RefreshTokenInvalid,
    /// 61003: the account removed the platform; mark it revoked.
    NotAuthorized,
    /// 61005 / 61006: ticket expired or invalid; wait for the next push or start the push.
    TicketInvalid,
    /// 61009 / 61010: authorization code invalid or used.
    CodeInvalid,
    /// 40013 / 40125 / 41004 / 61011 / 61004 / 40164: configuration (appid, secret, IP whitelist).
    Config,
    /// No answer, a timeout, a 5xx: retry with backoff.
    Unreachable,
    /// Anything else.
    Other,
}

impl WechatError {
    /// The WeChat errcode, when WeChat answered one.
    pub fn code(&self) -> Option<i64> {
        match self {
            WechatError::Api { code, .. } => Some(*code),
            _ => None,
        }
    }

    pub fn class(&self) -> ErrorClass {
        match self {
            WechatError::Transport { .. } => ErrorClass::Unreachable,
            WechatError::Protocol { .. } => ErrorClass::Other,
            WechatError::Api { code, .. } => match code {
                40001 | 40014 | 42001 => ErrorClass::InvalidToken,
                -1 => ErrorClass::Busy,
                45011 => ErrorClass::TooFrequent,
                45009 => ErrorClass::QuotaReached,
                61023 => ErrorClass::RefreshTokenInvalid,
                61003 => ErrorClass::NotAuthorized,
                61005 | 61006 => ErrorClass::TicketInvalid,
                61009 | 61010 => ErrorClass::CodeInvalid,
                40013 | 40125 | 41004 | 61011 | 61004 | 40164 => ErrorClass::Config,
                _ => ErrorClass::Other,
            },
        }
    }

    /// Worth retrying after a pause (busy, too frequent, unreachable).
    pub fn is_transient(&self) -> bool {
        matches!(
            self.class(),
            ErrorClass::Busy | ErrorClass::TooFrequent | ErrorClass::Unreachable
        )
    }

    /// The API whose call failed.
    pub fn api(&self) -> &'static str {
        match self {
            WechatError::Api { api, .. }
            | WechatError::Transport { api, .. }
            | WechatError::Protocol { api, .. } => api,
        }
    }

    /// A short label for metrics: the errcode, or `transport` / `protocol`.
    pub fn label(&self) -> String {
        match self {
            WechatError::Api { code, .. } => code.to_string(),
            WechatError::Transport { .. } => "transport".into(),
            WechatError::Protocol { .. } => "protocol".into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api(code: i64) -> WechatError {
        WechatError::Api {
            api: "x",
            code,
            msg: String::new(),
        }
    }

    #[test]
    fn classes_follow_protocol_section_6() {
        for c in [40001, 40014, 42001] {
            assert_eq!(api(c).class(), ErrorClass::InvalidToken);
        }
        assert_eq!(api(-1).class(), ErrorClass::Busy);
        assert!(api(-1).is_transient() && api(45011).is_transient());
        for (c, class) in [
            (45009, ErrorClass::QuotaReached),
            (61023, ErrorClass::RefreshTokenInvalid),
            (61003, ErrorClass::NotAuthorized),
        ] {
            assert_eq!(api(c).class(), class);
            assert!(!api(c).is_transient(), "{c} is never retried");
        }
        assert_eq!(api(61006).class(), ErrorClass::TicketInvalid);
        assert_eq!(api(61010).class(), ErrorClass::CodeInvalid);
        assert_eq!(api(40125).class(), ErrorClass::Config);
        assert!(
            WechatError::Transport {
                api: "x",
                detail: String::new()
            }
            .is_transient()
        );
    }
}
