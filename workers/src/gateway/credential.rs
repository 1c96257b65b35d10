//! Which token a call to WeChat carries, and under which name: a rule per API path
//! (`../shared/protocol.md` §8 and §9, checked against WeChat's own pages).
//!
//! | path (after `/v1/wechat/{appid\|component}/`) | token | name | also |
//! |---|---|---|---|
//! | an account's APIs (`cgi-bin/*`, `wxa/*`, …) | the account's | `access_token` | |
//! | `sns/userinfo`, `sns/auth` | **the caller's** (a WeChat user's, from web login) | `access_token`, as sent | none of ours, ever |
//! | component: `wxa/gettemplatedraftlist`, `wxa/gettemplatelist`, `wxa/addtotemplate`, `wxa/deletetemplate` (the template library) | the component's | `access_token` | |
//! | component: `sns/component/*`, `sns/oauth2/component/*` | the component's | `component_access_token` | `component_appid` in the query |
//! | component: everything else (`cgi-bin/component/*`, …) | the component's | `component_access_token` | (`component_appid` in a JSON body on `cgi-bin/component/*`) |

/// The template library: the component token under the name `access_token` (protocol.md §8;
/// WxJava sends it so; a few of them also take `component_access_token`, not all).
const TEMPLATE_LIBRARY: [&str; 4] = [
    "wxa/gettemplatedraftlist",
    "wxa/gettemplatelist",
    "wxa/addtotemplate",
    "wxa/deletetemplate",
];

/// APIs that take a WeChat user's own token (protocol.md §9): `sns/userinfo` (48001 for a
/// `snsapi_base` token) and `sns/auth` (is this user token still valid).
const USER_TOKEN: [&str; 2] = ["sns/userinfo", "sns/auth"];

/// What a call carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Credential {
    /// One of ours (the account's or the component's token) under `name`, with
    /// `component_appid` added to the query when `component_appid` is set. A token the caller
    /// sent is dropped.
    Ours {
        name: &'static str,
        component_appid: bool,
    },
    /// The caller's own `access_token` (a WeChat user's), passed through unchanged; none of
    /// ours is attached, and a refusal of it is the caller's answer (never a refresh of ours).
    Callers,
}

impl Credential {
    /// The rule for `path` (as checked by [`super::path`]) called for the component
    /// (`component`) or for an account.
    pub fn for_call(component: bool, path: &str) -> Self {
        if component {
            if TEMPLATE_LIBRARY.contains(&path) {
                return Credential::Ours {
                    name: "access_token",
                    component_appid: false,
                };
            }
            let sns =
                path.starts_with("sns/component/") || path.starts_with("sns/oauth2/component/");
            return Credential::Ours {
                name: "component_access_token",
                component_appid: sns,
            };
        }
        if USER_TOKEN.contains(&path) {
            return Credential::Callers;
        }
        Credential::Ours {
            name: "access_token",
            component_appid: false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Credential::{self, Callers, Ours};

    const ACCESS_TOKEN: Credential = Ours {
        name: "access_token",
        component_appid: false,
    };

    #[test]
    fn each_path_gets_the_token_its_api_documents() {
        let component_sns = Ours {
            name: "component_access_token",
            component_appid: true,
        };
        let component = Ours {
            name: "component_access_token",
            component_appid: false,
        };
        for (is_component, path, want) in [
            (false, "cgi-bin/message/custom/send", ACCESS_TOKEN),
            (false, "wxa/commit", ACCESS_TOKEN),
            (false, "wxa/gettemplatelist", ACCESS_TOKEN),
            (false, "sns/userinfo", Callers),
            (false, "sns/auth", Callers),
            (false, "sns/userinfo/x", ACCESS_TOKEN),
            (false, "sns/oauth2/component/access_token", ACCESS_TOKEN),
            (true, "wxa/gettemplatedraftlist", ACCESS_TOKEN),
            (true, "wxa/gettemplatelist", ACCESS_TOKEN),
            (true, "wxa/addtotemplate", ACCESS_TOKEN),
            (true, "wxa/deletetemplate", ACCESS_TOKEN),
            (true, "wxa/gettemplatelist/x", component),
            (true, "wxa/commit", component),
            (true, "sns/component/jscode2session", component_sns),
            (true, "sns/oauth2/component/access_token", component_sns),
            (true, "sns/oauth2/component/refresh_token", component_sns),
            (true, "sns/userinfo", component),
            (
                true,
                "cgi-bin/component/api_get_authorizer_option",
                component,
            ),
        ] {
            assert_eq!(
                Credential::for_call(is_component, path),
                want,
                "{path} (component: {is_component})"
            );
        }
    }
}
