//! The texts the people outside the platform read — the authorization pages today, the
//! operator console tomorrow — in Simplified Chinese (the default: the administrators are
//! owners of Chinese accounts) and English, in one catalogue. Wording follows WeChat's own
//! console: 公众号, 小程序, 授权, 扫码.

/// A language of the pages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lang {
    Zh,
    En,
}

impl Lang {
    /// The `lang` attribute and the `?lang=` value.
    pub fn code(self) -> &'static str {
        match self {
            Lang::Zh => "zh-CN",
            Lang::En => "en",
        }
    }

    /// The other language (for the switch).
    pub fn other(self) -> Lang {
        match self {
            Lang::Zh => Lang::En,
            Lang::En => Lang::Zh,
        }
    }

    /// `?lang=` wins; otherwise the first of `Accept-Language` (by quality) that we speak;
    /// otherwise Chinese.
    pub fn choose(query: Option<&str>, accept_language: Option<&str>) -> Lang {
        if let Some(l) = query.and_then(Self::parse) {
            return l;
        }
        let mut ranked: Vec<(f32, Lang)> = accept_language
            .unwrap_or_default()
            .split(',')
            .filter_map(|part| {
                let mut it = part.trim().split(';');
                let lang = Self::parse(it.next()?)?;
                let q = it
                    .find_map(|p| p.trim().strip_prefix("q="))
                    .and_then(|q| q.parse::<f32>().ok())
                    .unwrap_or(1.0);
                Some((q, lang))
            })
            .collect();
        ranked.sort_by(|a, b| b.0.total_cmp(&a.0));
        ranked.first().map(|(_, l)| *l).unwrap_or(Lang::Zh)
    }

    fn parse(tag: &str) -> Option<Lang> {
        let tag = tag.trim().to_ascii_lowercase();
        if tag.starts_with("zh") {
            Some(Lang::Zh)
        } else if tag.starts_with("en") {
            Some(Lang::En)
        } else {
            None
        }
    }
}

/// Every text, by what it is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Text {
    AuthTitle,
    AuthIntro,
    OnPhone,
    OnComputer,
    OfficialAccount,
    MiniProgram,
    Both,
    SpecificAccount,
    AppIdLabel,
    AuthorizeButton,
    SwitchTo,
    Back,
    ErrorTitle,
    ReceivedTitle,
    Waiting,
    AuthorizedTitle,
    /// `{name}` and `{appid}` are replaced (escaped).
    Thanks,
    /// `{appid}` is replaced (escaped).
    FetchingProfile,
    TooManyStarts,
    CannotStart,
    CannotRecord,
    BadLink,
    CodeMissing,
    AuthCodeMalformed,
    AuthTypeWithBiz,
    BadAuthType,
    BadBizAppid,
    TryAgainLater,
    LoginTitle,
    LoginErrorTitle,
    LoginBadLink,
    LoginBadReturn,
    LoginBadScope,
    LoginUnknownAccount,
    LoginFailed,
    LoginContinue,
}

/// The text `key` in `lang`.
pub fn text(lang: Lang, key: Text) -> &'static str {
    use Text::*;
    match (lang, key) {
        (Lang::Zh, AuthTitle) => "授权给第三方平台",
        (Lang::En, AuthTitle) => "Authorize the platform",
        (Lang::Zh, AuthIntro) => {
            "请选择要授权的帐号类型。您将进入微信的授权页面，由帐号管理员扫码确认授权。"
        }
        (Lang::En, AuthIntro) => {
            "Choose what to authorize. You will be taken to WeChat, where the account's administrator scans the code and confirms."
        }
        (Lang::Zh, OnPhone) => "在手机微信中授权",
        (Lang::En, OnPhone) => "On a phone, inside WeChat",
        (Lang::Zh, OnComputer) => "在电脑上扫码授权",
        (Lang::En, OnComputer) => "On a computer (scan with WeChat)",
        (Lang::Zh, OfficialAccount) => "授权公众号",
        (Lang::En, OfficialAccount) => "Authorize an Official Account",
        (Lang::Zh, MiniProgram) => "授权小程序",
        (Lang::En, MiniProgram) => "Authorize a Mini Program",
        (Lang::Zh, Both) => "授权公众号或小程序",
        (Lang::En, Both) => "Authorize either",
        (Lang::Zh, SpecificAccount) => "授权指定帐号",
        (Lang::En, SpecificAccount) => "A specific account",
        (Lang::Zh, AppIdLabel) => "AppID",
        (Lang::En, AppIdLabel) => "AppID",
        (Lang::Zh, AuthorizeButton) => "授权",
        (Lang::En, AuthorizeButton) => "Authorize",
        (Lang::Zh, SwitchTo) => "English",
        (Lang::En, SwitchTo) => "中文",
        (Lang::Zh, Back) => "返回授权页面",
        (Lang::En, Back) => "Back to the authorization page",
        (Lang::Zh, ErrorTitle) => "授权未完成",
        (Lang::En, ErrorTitle) => "Authorization not completed",
        (Lang::Zh, ReceivedTitle) => "已收到授权",
        (Lang::En, ReceivedTitle) => "Authorization received",
        (Lang::Zh, Waiting) => "正在等待微信确认帐号……",
        (Lang::En, Waiting) => "Waiting for WeChat to confirm the account…",
        (Lang::Zh, AuthorizedTitle) => "授权成功",
        (Lang::En, AuthorizedTitle) => "Authorized",
        (Lang::Zh, Thanks) => "感谢您：{name}（{appid}）已成功授权给本平台。",
        (Lang::En, Thanks) => "Thank you: {name} ({appid}) has authorized this platform.",
        (Lang::Zh, FetchingProfile) => "{appid} 已授权，正在获取帐号信息……",
        (Lang::En, FetchingProfile) => "{appid} is authorized; fetching its profile…",
        (Lang::Zh, TooManyStarts) => "刚才发起的授权过多，请一分钟后再试。",
        (Lang::En, TooManyStarts) => {
            "Too many authorizations were started just now. Please try again in a minute."
        }
        (Lang::Zh, CannotStart) => "平台暂时无法发起授权，请一分钟后再试。",
        (Lang::En, CannotStart) => {
            "The platform cannot start an authorization right now. Please try again in a minute."
        }
        (Lang::Zh, CannotRecord) => "暂时无法记录本次授权，请重新打开此链接。",
        (Lang::En, CannotRecord) => {
            "The authorization could not be recorded right now; please open this link again."
        }
        (Lang::Zh, BadLink) => "此授权链接不是从本平台发起、已过期或已使用。请从授权页面重新开始。",
        (Lang::En, BadLink) => {
            "This authorization link was not started here, has expired or was already used. Please start again from the authorization page."
        }
        (Lang::Zh, CodeMissing) => "缺少授权码。",
        (Lang::En, CodeMissing) => "code is missing.",
        (Lang::Zh, AuthCodeMalformed) => "授权码缺失或格式不正确。",
        (Lang::En, AuthCodeMalformed) => "auth_code is missing or malformed.",
        (Lang::Zh, AuthTypeWithBiz) => "auth_type 与 biz_appid 不能同时使用。",
        (Lang::En, AuthTypeWithBiz) => "auth_type and biz_appid cannot be combined.",
        (Lang::Zh, BadAuthType) => "auth_type 只能是 1（公众号）、2（小程序）或 3（两者）。",
        (Lang::En, BadAuthType) => {
            "auth_type must be 1 (official accounts), 2 (mini programs) or 3 (both)."
        }
        (Lang::Zh, BadBizAppid) => "biz_appid 必须是 AppID（wx 加 16 位十六进制数字）。",
        (Lang::En, BadBizAppid) => "biz_appid must be an appid (wx + 16 hex digits).",
        (Lang::Zh, LoginTitle) => "微信登录",
        (Lang::En, LoginTitle) => "WeChat login",
        (Lang::Zh, LoginErrorTitle) => "登录未完成",
        (Lang::En, LoginErrorTitle) => "Login not completed",
        (Lang::Zh, LoginBadLink) => {
            "此登录链接不是从本平台发起、已过期或已使用。请返回原页面重新登录。"
        }
        (Lang::En, LoginBadLink) => {
            "This login link was not started here, has expired or was already used. Please go back to the page and log in again."
        }
        (Lang::Zh, LoginBadReturn) => "登录后要返回的地址未在本平台登记，已拒绝跳转。",
        (Lang::En, LoginBadReturn) => {
            "The address to return to after login is not registered with this platform; the login was refused."
        }
        (Lang::Zh, LoginBadScope) => "scope 只能是 snsapi_base 或 snsapi_userinfo。",
        (Lang::En, LoginBadScope) => "scope must be snsapi_base or snsapi_userinfo.",
        (Lang::Zh, LoginUnknownAccount) => "该公众号未授权给本平台，或不是公众号。",
        (Lang::En, LoginUnknownAccount) => {
            "This Official Account has not authorized this platform, or is not an Official Account."
        }
        (Lang::Zh, LoginFailed) => "微信未能完成登录，请返回原页面重试。",
        (Lang::En, LoginFailed) => {
            "WeChat could not complete the login. Please go back and try again."
        }
        (Lang::Zh, LoginContinue) => "正在返回……",
        (Lang::En, LoginContinue) => "Returning…",
        (Lang::Zh, TryAgainLater) => "服务暂时不可用，请稍后再试。",
        (Lang::En, TryAgainLater) => {
            "The service is unavailable right now; please try again shortly."
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chinese_first_english_when_preferred() {
        assert_eq!(Lang::choose(None, None), Lang::Zh);
        assert_eq!(Lang::choose(None, Some("fr-FR")), Lang::Zh);
        assert_eq!(
            Lang::choose(None, Some("zh-CN,zh;q=0.9,en;q=0.8")),
            Lang::Zh
        );
        assert_eq!(
            Lang::choose(None, Some("en-US,en;q=0.9,zh-CN;q=0.8")),
            Lang::En
        );
        assert_eq!(
            Lang::choose(None, Some("fr;q=1, zh-TW;q=0.3, en;q=0.5")),
            Lang::En
        );
        assert_eq!(Lang::choose(Some("zh-CN"), Some("en-US")), Lang::Zh);
        assert_eq!(Lang::choose(Some("en"), None), Lang::En);
        assert_eq!(Lang::choose(Some("klingon"), Some("en")), Lang::En);
    }

    #[test]
    fn every_text_exists_in_both_languages() {
        for lang in [Lang::Zh, Lang::En] {
            assert!(!text(lang, Text::AuthTitle).is_empty());
            assert!(text(lang, Text::Thanks).contains("{name}"));
            assert!(text(lang, Text::Thanks).contains("{appid}"));
        }
        assert!(text(Lang::Zh, Text::OfficialAccount).contains("公众号"));
        assert!(text(Lang::Zh, Text::MiniProgram).contains("小程序"));
        assert!(text(Lang::Zh, Text::AuthIntro).contains("扫码"));
    }
}
