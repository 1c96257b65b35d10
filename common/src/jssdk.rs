//! JS-SDK signatures (protocol.md §9): `wx.config` on a page needs the account's `jsapi_ticket`
//! signed with the page's URL — SHA-1 of `jsapi_ticket=…&noncestr=…&timestamp=…&url=…`, the URL
//! without its `#fragment`, exactly as the page's `location.href.split('#')[0]`. On behalf of an
//! account, WeChat accepts pages only on the platform's 公众号开发域名 (its Official Account
//! development domains, set in the open platform): a URL elsewhere is refused here before
//! anything is signed (`WXPIPE_WEB_DOMAINS`).

use sha1::{Digest, Sha1};

/// Why a page URL is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PageUrlError {
    #[error("url is required (the page's location.href.split('#')[0])")]
    Missing,
    #[error("url: at most 2048 characters, no spaces or control characters")]
    Malformed,
    #[error("url is not an absolute http(s) URL with a host")]
    NotHttp,
    #[error("url must not carry user info")]
    UserInfo,
    #[error("no web domain is configured (WXPIPE_WEB_DOMAINS: the platform's 公众号开发域名)")]
    NoDomains,
    #[error("url's host {0:?} is not under the platform's web domains (WXPIPE_WEB_DOMAINS)")]
    ForeignHost(String),
}

/// The platform's 公众号开发域名: pages (and the web-login callback) must be on one of them or
/// under it (a subdomain).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WebDomains(Vec<String>);

impl WebDomains {
    /// Comma-separated host names (no scheme, port or path), lowercased.
    pub fn parse(list: &str) -> Result<Self, String> {
        let mut out = Vec::new();
        for d in list.split(',').map(str::trim).filter(|d| !d.is_empty()) {
            let d = d.to_ascii_lowercase();
            let ok = d.len() <= 253
                && !d.starts_with('.')
                && !d.ends_with('.')
                && !d.contains("..")
                && d.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.');
            if !ok {
                return Err(format!(
                    "{d:?} is not a host name (write h5.example.com: no scheme, port or path)"
                ));
            }
            out.push(d);
        }
        Ok(Self(out))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// `host` is one of the domains or a subdomain of one.
    pub fn covers(&self, host: &str) -> bool {
        let host = host.to_ascii_lowercase();
        self.0.iter().any(|d| {
            host == *d
                || host
                    .strip_suffix(d.as_str())
                    .is_some_and(|r| r.ends_with('.'))
        })
    }

    /// The part of `url` that is signed (before any `#`), once the URL it names — parsed as a
    /// browser parses it — is an http(s) URL on one of the domains.
    pub fn page<'a>(&self, url: &'a str) -> Result<&'a str, PageUrlError> {
        let signed = url.split('#').next().unwrap_or_default();
        if signed.is_empty() {
            return Err(PageUrlError::Missing);
        }
        if url.len() > 2048 || url.chars().any(|c| c.is_control() || c == ' ') {
            return Err(PageUrlError::Malformed);
        }
        let parsed = url::Url::parse(signed).map_err(|_| PageUrlError::NotHttp)?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(PageUrlError::NotHttp);
        }
        if !parsed.username().is_empty() || parsed.password().is_some() {
            return Err(PageUrlError::UserInfo);
        }
        let host = match parsed.host() {
            Some(url::Host::Domain(d)) => d.to_owned(),
            Some(other) => return Err(PageUrlError::ForeignHost(other.to_string())),
            None => return Err(PageUrlError::NotHttp),
        };
        if self.is_empty() {
            return Err(PageUrlError::NoDomains);
        }
        if !self.covers(&host) {
            return Err(PageUrlError::ForeignHost(host));
        }
        Ok(signed)
    }
}

/// The signature of `wx.config` for `url` (its fragment, if any, dropped).
pub fn signature(ticket: &str, nonce: &str, timestamp: i64, url: &str) -> String {
    let url = url.split('#').next().unwrap_or_default();
    let plain = format!("jsapi_ticket={ticket}&noncestr={nonce}&timestamp={timestamp}&url={url}");
    hex::encode(Sha1::digest(plain.as_bytes()))
}

/// A nonce for `wx.config`: 16 random letters and digits.
pub fn nonce() -> String {
    use rand::Rng;
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::rng();
    (0..16)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wechats_own_example_signs_to_its_value() {
        // JS-SDK appendix 1's example.
        assert_eq!(
            signature(
                "sM4AOVdWfPE4DxkXGEs8VMCPGGVi4C3VM0P37wVUCFvkVAy_90u5h9nbSlYy3-Sl-HhTdfl2fzFy1AOcHKP7qg",
                "Wm3WZYTPz0wzccnW",
                1414587457,
                "http://mp.weixin.qq.com?params=value",
            ),
            "0f9de62fce790f9a083d5c99e95740ceb90c27ed"
        );
    }

    #[test]
    fn hostile_page_urls_are_refused() {
        let d = WebDomains::parse("h5.example.com, Pages.Example.org").unwrap();
        let ok = [
            (
                "https://h5.example.com/a?b=1#frag",
                "https://h5.example.com/a?b=1",
            ),
            (
                "https://shop.h5.example.com/",
                "https://shop.h5.example.com/",
            ),
            (
                "http://pages.example.org:8443/x",
                "http://pages.example.org:8443/x",
            ),
            ("https://H5.EXAMPLE.COM/", "https://H5.EXAMPLE.COM/"),
        ];
        for (url, signed) in ok {
            assert_eq!(d.page(url), Ok(signed), "{url}");
        }
        let bad: [(&str, PageUrlError); 14] = [
            ("", PageUrlError::Missing),
            ("#https://h5.example.com/", PageUrlError::Missing),
            (
                "https://evil.com/#h5.example.com",
                PageUrlError::ForeignHost("evil.com".into()),
            ),
            (
                "https://h5.example.com.evil.com/",
                PageUrlError::ForeignHost("h5.example.com.evil.com".into()),
            ),
            (
                "https://evilh5.example.com/",
                PageUrlError::ForeignHost("evilh5.example.com".into()),
            ),
            ("https://h5.example.com@evil.com/", PageUrlError::UserInfo),
            (
                "https://evil.com\\@h5.example.com/",
                PageUrlError::ForeignHost("evil.com".into()),
            ),
            ("javascript:alert(1)//h5.example.com", PageUrlError::NotHttp),
            ("//h5.example.com/", PageUrlError::NotHttp),
            (
                "https://127.0.0.1/",
                PageUrlError::ForeignHost("127.0.0.1".into()),
            ),
            (
                "https://h5.example.com/\nSet-Cookie:x",
                PageUrlError::Malformed,
            ),
            ("https://h5.example.com/ a", PageUrlError::Malformed),
            ("ftp://h5.example.com/", PageUrlError::NotHttp),
            (
                "https://example.com/",
                PageUrlError::ForeignHost("example.com".into()),
            ),
        ];
        for (url, e) in bad {
            assert_eq!(d.page(url), Err(e), "{url}");
        }
        assert_eq!(
            WebDomains::default().page("https://h5.example.com/"),
            Err(PageUrlError::NoDomains)
        );
        assert!(
            d.page(&format!("https://h5.example.com/{}", "a".repeat(2048)))
                .is_err()
        );
    }

    #[test]
    fn domains_are_host_names() {
        for bad in [
            "https://h5.example.com",
            "h5.example.com/path",
            ".example.com",
            "a..b",
            "h5.example.com:8080",
        ] {
            assert!(WebDomains::parse(bad).is_err(), "{bad}");
        }
        assert!(WebDomains::parse("").unwrap().is_empty());
    }
}
