//! How the authorization pages look and speak: Simplified Chinese by default, English when the
//! browser prefers it (`Accept-Language`) or the visitor switches (`?lang=`), the texts from
//! [`common::i18n`]; the platform's name and a note on what it does with the account
//! (`WXPIPE_PLATFORM_NAME`, `WXPIPE_AUTH_PAGE_NOTE`), HTML-escaped; a layout that works on a
//! phone inside WeChat's browser and on a computer, with large tap targets and nothing loaded
//! from elsewhere (no font, script or stylesheet: the pages render with no internet).

use crate::state::SharedState;
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};
use common::i18n::{Lang, Text, text};
use quick_xml::escape::escape;

/// What a page needs to know about its visitor.
#[derive(Debug, Clone)]
pub struct Ui {
    pub lang: Lang,
    /// The visitor is in WeChat's browser (`MicroMessenger` in its user agent).
    pub in_wechat: bool,
    /// The page's path and query without `lang`, for the language switch.
    here: String,
    platform_name: String,
    note: String,
}

impl axum::extract::FromRequestParts<SharedState> for Ui {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &SharedState,
    ) -> Result<Self, Self::Rejection> {
        let header = |name: &str| parts.headers.get(name).and_then(|v| v.to_str().ok());
        let pairs: Vec<(String, String)> =
            url::form_urlencoded::parse(parts.uri.query().unwrap_or_default().as_bytes())
                .into_owned()
                .collect();
        let asked = pairs
            .iter()
            .find(|(k, _)| k == "lang")
            .map(|(_, v)| v.as_str());
        let lang = Lang::choose(asked, header("accept-language"));
        let rest: Vec<&(String, String)> = pairs.iter().filter(|(k, _)| k != "lang").collect();
        let mut query = url::form_urlencoded::Serializer::new(String::new());
        for (k, v) in rest {
            query.append_pair(k, v);
        }
        let query = query.finish();
        let here = if query.is_empty() {
            parts.uri.path().to_owned()
        } else {
            format!("{}?{query}", parts.uri.path())
        };
        Ok(Ui {
            lang,
            in_wechat: header("user-agent").is_some_and(|ua| ua.contains("MicroMessenger")),
            here,
            platform_name: state.auth_texts.platform_name.clone(),
            note: state.auth_texts.note.clone(),
        })
    }
}

/// The configurable texts of the pages.
#[derive(Debug, Clone, Default)]
pub struct AuthTexts {
    /// `WXPIPE_PLATFORM_NAME`.
    pub platform_name: String,
    /// `WXPIPE_AUTH_PAGE_NOTE`.
    pub note: String,
}

const STYLE: &str = "*{box-sizing:border-box}\
body{font-family:-apple-system,BlinkMacSystemFont,\"PingFang SC\",\"Hiragino Sans GB\",\"Microsoft YaHei\",\"Noto Sans CJK SC\",system-ui,sans-serif;max-width:40rem;margin:0 auto;padding:1rem;line-height:1.6;color:#1f2329;background:#f7f8fa}\
header{display:flex;justify-content:space-between;align-items:center;gap:1rem;margin-bottom:1rem}\
header strong{font-size:1.05rem}\
a.lang{color:#576b95;text-decoration:none;padding:.5rem;min-height:44px;display:inline-flex;align-items:center}\
main{background:#fff;border-radius:.6rem;padding:1.2rem}\
h1{font-size:1.4rem;margin:.2rem 0 .6rem}h2{font-size:1.05rem;margin:1.4rem 0 .4rem;color:#646a73}\
p.note{background:#f0f9f4;border-left:3px solid #07c160;padding:.6rem .8rem}\
a.button,button{display:block;width:100%;margin:.5rem 0;padding:.9rem 1rem;min-height:48px;border:0;border-radius:.5rem;background:#07c160;color:#fff;font-size:1.05rem;text-align:center;text-decoration:none}\
a.button.secondary{background:#576b95}\
input{width:100%;padding:.8rem;min-height:48px;font-size:1rem;border:1px solid #d0d3d6;border-radius:.5rem}\
@media (min-width:42rem){body{padding:2rem}a.button{display:inline-block;width:auto;margin-right:.5rem}}";

impl Ui {
    pub fn t(&self, key: Text) -> &'static str {
        text(self.lang, key)
    }

    /// `?lang=` for links and redirects that must keep the visitor's language.
    pub fn lang_param(&self) -> &'static str {
        self.lang.code()
    }

    /// A whole page: the header (platform name, language switch), the note, `body`.
    pub fn page(&self, title: Text, body: &str, refresh: Option<u32>) -> String {
        let meta = refresh
            .map(|s| format!("<meta http-equiv=\"refresh\" content=\"{s}\">"))
            .unwrap_or_default();
        let other = self.lang.other();
        let sep = if self.here.contains('?') { '&' } else { '?' };
        let switch = format!(
            "<a class=\"lang\" id=\"lang-switch\" lang=\"{}\" href=\"{}{sep}lang={}\">{}</a>",
            other.code(),
            escape(self.here.as_str()),
            other.code(),
            self.t(Text::SwitchTo)
        );
        let note = if self.note.trim().is_empty() {
            String::new()
        } else {
            format!(
                "<p class=\"note\" id=\"note\">{}</p>",
                escape(self.note.as_str())
            )
        };
        format!(
            "<!doctype html><html lang=\"{lang}\"><head><meta charset=\"utf-8\">\
<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">{meta}\
<title>{title} · {name}</title><style>{STYLE}</style></head><body>\
<header><strong id=\"platform\">{name}</strong>{switch}</header><main>{note}{body}</main></body></html>",
            lang = self.lang.code(),
            title = escape(self.t(title)),
            name = escape(self.platform_name.as_str()),
        )
    }

    /// An error page with `status`, counted.
    pub fn problem(&self, status: StatusCode, what: Text) -> Response {
        metrics::counter!("wxpipe_auth_pages_total", "outcome" => "error").increment(1);
        let body = format!(
            "<h1>{}</h1><p id=\"error\">{}</p><p><a class=\"button\" href=\"/auth?lang={}\">{}</a></p>",
            self.t(Text::ErrorTitle),
            self.t(what),
            self.lang.code(),
            self.t(Text::Back)
        );
        (status, Html(self.page(Text::ErrorTitle, &body, None))).into_response()
    }

    /// `key` with `{name}`-style placeholders replaced by escaped values.
    pub fn fill(&self, key: Text, values: &[(&str, &str)]) -> String {
        let mut out = escape(self.t(key)).into_owned();
        for (k, v) in values {
            out = out.replace(&format!("{{{k}}}"), &escape(*v));
        }
        out
    }
}
