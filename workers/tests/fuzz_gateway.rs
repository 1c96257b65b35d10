//! The gateway's path, query and scope handling against arbitrary input (issue 32): whatever a
//! caller sends, the URL built stays under the API base at exactly the path the scope is
//! matched against, carries exactly one token (ours), and the team-key glob never panics. The
//! test command runs `WXPIPE_FUZZ_CASES` cases per target (default 256); `scripts/fuzz` runs
//! many more. The same properties against the running gateway and `wechat-sim` are in
//! `tests/tests/gateway_hostile.rs`.

use axum::body::Bytes;
use proptest::prelude::*;
use url::Url;
use workers::gateway::keys::glob;
use workers::gateway::path::{self, PREFIX};
use workers::gateway::proxy::{with_query, without_tokens_in_form};

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: std::env::var("WXPIPE_FUZZ_CASES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(256),
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// Pieces hostile paths are made of, mixed with arbitrary characters below.
const PIECES: &[&str] = &[
    "wxa",
    "cgi-bin",
    "component",
    ".",
    "..",
    "%2e",
    "%2E",
    "%252e",
    "/",
    "%2f",
    "%5c",
    "\\",
    "%09",
    "%0a",
    "%0d",
    "\t",
    "%3f",
    "?",
    "%23",
    "#",
    ":",
    "http:",
    "https:",
    "//",
    "@",
    "%40",
    ";",
    "%00",
    "%",
    "%c0%ae",
    "%e0%80%ae",
    "%ff",
    "~",
    "-",
    "_",
    "%u002e",
    " ",
    "+",
];

fn raw_path() -> impl Strategy<Value = String> {
    proptest::collection::vec(
        prop_oneof![
            3 => proptest::sample::select(PIECES).prop_map(str::to_owned),
            1 => "\\PC{0,3}",
            1 => any::<char>().prop_map(String::from),
        ],
        0..16,
    )
    .prop_map(|p| p.concat())
}

fn bases() -> Vec<Url> {
    [
        "https://api.weixin.qq.com/",
        "http://127.0.0.1:9000/",
        "http://127.0.0.1:9000/prefix/api/",
    ]
    .iter()
    .map(|b| Url::parse(b).unwrap())
    .collect()
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn a_path_is_sent_where_it_is_checked(appid in "(component|wx[0-9a-f]{16}|%63omponent|\\PC{0,4})", tail in raw_path()) {
        for base in bases() {
            let raw = format!("{PREFIX}{appid}/{tail}");
            let Ok((_, dest)) = path::from_request(&base, &raw) else { continue };
            prop_assert_eq!(dest.url.origin(), base.origin());
            prop_assert_eq!(dest.url.path(), format!("{}{}", base.path(), dest.path));
            prop_assert!(dest.url.query().is_none() && dest.url.fragment().is_none());
            for s in dest.path.split('/') {
                prop_assert!(!s.is_empty() && !s.chars().all(|c| c == '.'), "{}", dest.path);
                prop_assert!(s.chars().all(|c| c.is_ascii_alphanumeric() || "._~-".contains(c)));
            }
            // Parsing the URL again (as the HTTP client does) changes nothing.
            let again = Url::parse(dest.url.as_str()).unwrap();
            prop_assert_eq!(again.path(), dest.url.path());
        }
    }

    #[test]
    fn exactly_one_token_ours(query in "\\PC{0,200}", extra in proptest::option::of("[a-z_]{1,12}")) {
        let base = Url::parse("https://api.weixin.qq.com/cgi-bin/user/info").unwrap();
        let query = format!("{query}&access_token=forged&component_access_token=forged");
        let extra = extra.as_deref().map(|k| (k, "v"));
        for name in ["access_token", "component_access_token"] {
            let url = with_query(&base, Some(&query), (name, "OURS"), extra);
            prop_assert_eq!(url.path(), base.path());
            let tokens: Vec<(String, String)> = url
                .query_pairs()
                .filter(|(k, _)| k == "access_token" || k == "component_access_token")
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect();
            prop_assert_eq!(tokens, vec![(name.to_owned(), "OURS".to_owned())]);
        }
    }

    #[test]
    fn form_bodies_lose_the_callers_tokens(body in proptest::collection::vec(any::<u8>(), 0..200)) {
        let mut b = body.clone();
        b.extend_from_slice(b"&access_token=forged&component%5Faccess_token=forged");
        let out = without_tokens_in_form(&Bytes::from(b));
        prop_assert!(url::form_urlencoded::parse(&out)
            .all(|(k, _)| k != "access_token" && k != "component_access_token"));
    }

    #[test]
    fn globs_never_panic_and_agree_with_themselves(pattern in "[a-z*/.]{0,12}", text in "[a-z/.]{0,16}") {
        let m = glob(&pattern, &text);
        if !pattern.contains('*') {
            prop_assert_eq!(m, pattern == text);
        }
        prop_assert!(glob("*", &text));
        prop_assert_eq!(glob(&format!("{pattern}*"), &text), m || (0..=text.len()).any(|i| text.is_char_boundary(i) && glob(&pattern, &text[..i])));
    }
}
