//! The one path a call is checked against and sent to: the request's path is decoded once,
//! accepted only as `/`-separated segments of `[A-Za-z0-9._~-]` (no empty, `.` or `..`
//! segment), pushed segment by segment onto the API base (never `Url::join`, which would
//! re-parse it: `%2e%2e`, tabs, `\` and `http:` all mean something to a URL parser), and the
//! result is checked to be the API base's origin with the API base's path in front. The scope
//! is then matched against the path **of that URL**, so what is checked is what is sent.

use percent_encoding::percent_decode_str;
use url::Url;

/// Longest API path accepted, in bytes (WeChat's longest are under 60).
pub const MAX_LEN: usize = 256;
/// Most segments accepted (WeChat's deepest have 5).
pub const MAX_SEGMENTS: usize = 12;
/// Where the gateway's WeChat routes start.
pub const PREFIX: &str = "/v1/wechat/";

/// Why a request's path is not an API path the gateway sends.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("not a gateway path: it must be {PREFIX}{{appid}}/{{api path}}")]
    NotGateway,
    #[error("no API path after the appid")]
    Empty,
    #[error("the API path is longer than {MAX_LEN} bytes")]
    TooLong,
    #[error("the API path has more than {MAX_SEGMENTS} segments")]
    TooManySegments,
    #[error("the API path has an empty segment (a doubled, leading or trailing '/')")]
    EmptySegment,
    #[error("the API path has a '.' or '..' segment")]
    DotSegment,
    #[error("the path holds a percent-escape that is not UTF-8")]
    BadEscape,
    #[error(
        "the API path holds {0:?}: only [A-Za-z0-9._~-] and single '/' between segments are allowed"
    )]
    Char(char),
    #[error("the API path does not stay under the API base")]
    Escaped,
}

/// A call's destination: the URL (no query yet) and its path below the API base, which is
/// what scopes are matched against.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Destination {
    pub url: Url,
    pub path: String,
}

/// Splits a request's raw path (`uri.path()`, still percent-encoded) into the appid segment
/// (decoded once) and the destination below `base`.
pub fn from_request(base: &Url, raw: &str) -> Result<(String, Destination), PathError> {
    let rest = raw.strip_prefix(PREFIX).ok_or(PathError::NotGateway)?;
    let (appid, api) = rest.split_once('/').ok_or(PathError::Empty)?;
    let appid = decode(appid)?;
    Ok((appid, destination(base, &decode(api)?)?))
}

fn decode(raw: &str) -> Result<String, PathError> {
    percent_decode_str(raw)
        .decode_utf8()
        .map(|s| s.into_owned())
        .map_err(|_| PathError::BadEscape)
}

fn allowed(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '~' | '-')
}

/// The destination of a decoded API path (`cgi-bin/message/custom/send`) below `base` (an
/// absolute URL whose path ends with `/`).
pub fn destination(base: &Url, path: &str) -> Result<Destination, PathError> {
    if path.is_empty() {
        return Err(PathError::Empty);
    }
    if path.len() > MAX_LEN {
        return Err(PathError::TooLong);
    }
    let segments: Vec<&str> = path.split('/').collect();
    if segments.len() > MAX_SEGMENTS {
        return Err(PathError::TooManySegments);
    }
    for s in &segments {
        if s.is_empty() {
            return Err(PathError::EmptySegment);
        }
        if let Some(c) = s.chars().find(|c| !allowed(*c)) {
            return Err(PathError::Char(c));
        }
        if s.chars().all(|c| c == '.') {
            return Err(PathError::DotSegment);
        }
    }
    let mut url = base.clone();
    url.set_query(None);
    url.set_fragment(None);
    url.path_segments_mut()
        .map_err(|_| PathError::Escaped)?
        .pop_if_empty()
        .extend(&segments);
    let sent = url
        .path()
        .strip_prefix(base.path())
        .ok_or(PathError::Escaped)?;
    if url.origin() != base.origin() || sent != path {
        return Err(PathError::Escaped);
    }
    let path = sent.to_owned();
    Ok(Destination { url, path })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> Url {
        Url::parse("https://api.weixin.qq.com/").unwrap()
    }

    #[test]
    fn api_paths_are_sent_as_checked() {
        for (raw, appid, path) in [
            (
                "/v1/wechat/wx1111222233334444/cgi-bin/message/custom/send",
                "wx1111222233334444",
                "cgi-bin/message/custom/send",
            ),
            ("/v1/wechat/component/wxa/commit", "component", "wxa/commit"),
            // One decoding, as the router's: what it decodes to is what is sent and checked.
            (
                "/v1/wechat/%63omponent/wxa%2Fcommit",
                "component",
                "wxa/commit",
            ),
            (
                "/v1/wechat/component/cgi-bin/component/clear_quota/v2",
                "component",
                "cgi-bin/component/clear_quota/v2",
            ),
        ] {
            let (a, d) = from_request(&base(), raw).unwrap();
            assert_eq!((a.as_str(), d.path.as_str()), (appid, path), "{raw}");
            assert_eq!(
                d.url.as_str(),
                format!("https://api.weixin.qq.com/{path}"),
                "{raw}"
            );
        }
        let prefixed = Url::parse("http://127.0.0.1:9/wechat/api/").unwrap();
        let d = destination(&prefixed, "wxa/commit").unwrap();
        assert_eq!(d.url.as_str(), "http://127.0.0.1:9/wechat/api/wxa/commit");
        assert_eq!(d.path, "wxa/commit");
    }

    #[test]
    fn hostile_paths_are_refused_with_their_reason() {
        use PathError::*;
        for (raw, why) in [
            ("/v1/wechat/component/wxa/../cgi-bin/x", DotSegment),
            ("/v1/wechat/component/wxa/%2e%2e/cgi-bin/x", DotSegment),
            ("/v1/wechat/component/wxa/.%2e/cgi-bin/x", DotSegment),
            ("/v1/wechat/component/wxa/%2E./cgi-bin/x", DotSegment),
            ("/v1/wechat/component/wxa/./x", DotSegment),
            ("/v1/wechat/component/wxa/.../x", DotSegment),
            ("/v1/wechat/component/wxa/.%09./cgi-bin/x", Char('\t')),
            ("/v1/wechat/component/wxa/.%0a./x", Char('\n')),
            ("/v1/wechat/component/wxa/.%0d./x", Char('\r')),
            ("/v1/wechat/component/wxa/%252e%252e/x", Char('%')),
            ("/v1/wechat/component/wxa//x", EmptySegment),
            ("/v1/wechat/component//wxa/x", EmptySegment),
            ("/v1/wechat/component/wxa/x/", EmptySegment),
            ("/v1/wechat/component/http:evil.example/x", Char(':')),
            ("/v1/wechat/component/%5C%5Cevil.example/x", Char('\\')),
            ("/v1/wechat/component/wxa%5C..%5Cx", Char('\\')),
            ("/v1/wechat/component/cgi-bin/a%3Fb/get", Char('?')),
            ("/v1/wechat/component/cgi-bin/a%23b", Char('#')),
            ("/v1/wechat/component/wxa/%C0%AE%C0%AE/x", BadEscape),
            ("/v1/wechat/component/wxa/%ff", BadEscape),
            ("/v1/wechat/component/wxa/caf%C3%A9", Char('é')),
            ("/v1/wechat/component/wxa/a%00b", Char('\0')),
            ("/v1/wechat/component/wxa/a%20b", Char(' ')),
            ("/v1/wechat/component", Empty),
            ("/v1/wechat/component/", Empty),
            ("/v1/tokens/x", NotGateway),
        ] {
            assert_eq!(from_request(&base(), raw), Err(why.clone()), "{raw}");
            assert!(!why.to_string().is_empty());
        }
        let long = format!("/v1/wechat/component/{}", "a".repeat(MAX_LEN + 1));
        assert_eq!(from_request(&base(), &long), Err(TooLong));
        let deep = format!("/v1/wechat/component/{}", ["a"; MAX_SEGMENTS + 1].join("/"));
        assert_eq!(from_request(&base(), &deep), Err(TooManySegments));
    }
}
