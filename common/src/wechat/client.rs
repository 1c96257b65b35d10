//! The HTTP client of the component API.

use super::WechatError;
use crate::secret::Token;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde_json::{Value, json};
use std::time::Duration;

/// A token and its lifetime in seconds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenGrant {
    pub token: Token,
    pub expires_in: i64,
}

/// What `api_query_auth` returns (`authorization_info`).
#[derive(Debug, Clone, Deserialize)]
pub struct AuthorizationInfo {
    pub authorizer_appid: String,
    /// Present only if the account granted API rights.
    pub authorizer_access_token: Option<Token>,
    #[serde(default)]
    pub expires_in: i64,
    pub authorizer_refresh_token: Option<Token>,
    #[serde(default)]
    pub func_info: Value,
}

/// What `api_authorizer_token` returns.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct AuthorizerGrant {
    pub authorizer_access_token: Token,
    pub expires_in: i64,
    pub authorizer_refresh_token: Token,
}

/// What `getticket` returns.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct TicketGrant {
    pub ticket: Token,
    pub expires_in: i64,
}

/// What `sns/oauth2/component/access_token` returns: a user's token and who the user is.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct OauthGrant {
    pub access_token: Token,
    #[serde(default)]
    pub expires_in: i64,
    #[serde(default)]
    pub refresh_token: Option<Token>,
    pub openid: String,
    #[serde(default)]
    pub scope: String,
    #[serde(default)]
    pub unionid: Option<String>,
    #[serde(default)]
    pub is_snapshotuser: Option<i64>,
}

/// One entry of `api_get_authorizer_list`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ListedAuthorizer {
    pub authorizer_appid: String,
    /// Present only after one `api_query_auth`.
    pub refresh_token: Option<Token>,
    #[serde(default)]
    pub auth_time: i64,
}

/// The component API of one platform.
#[derive(Clone)]
pub struct WechatClient {
    http: reqwest::Client,
    base: String,
    component_appid: String,
    component_secret: Option<SecretString>,
}

impl std::fmt::Debug for WechatClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WechatClient")
            .field("base", &self.base)
            .field("component_appid", &self.component_appid)
            .finish_non_exhaustive()
    }
}

impl WechatClient {
    /// `base` is `WXPIPE_WECHAT_API_BASE` (`https://api.weixin.qq.com`, or `wechat-sim`).
    pub fn new(
        base: &str,
        component_appid: &str,
        component_secret: Option<SecretString>,
    ) -> Result<Self, WechatError> {
        // reqwest is built without a default TLS provider: use ring, like the AMQP client.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .connect_timeout(Duration::from_secs(5))
            .build()
            .map_err(|e| WechatError::Transport {
                api: "client",
                detail: e.without_url().to_string(),
            })?;
        Ok(Self {
            http,
            base: base.trim_end_matches('/').to_owned(),
            component_appid: component_appid.to_owned(),
            component_secret,
        })
    }

    pub fn component_appid(&self) -> &str {
        &self.component_appid
    }

    fn secret(&self, api: &'static str) -> Result<&str, WechatError> {
        self.component_secret
            .as_ref()
            .map(|s| s.expose_secret())
            .ok_or(WechatError::Protocol {
                api,
                detail: "WXPIPE_COMPONENT_SECRET is not configured".into(),
            })
    }

    /// POSTs `body` to `path?{token_param}={token}` and returns the JSON answer, or the errcode.
    pub(super) async fn post(
        &self,
        api: &'static str,
        path: &str,
        token: Option<(&str, &str)>,
        body: Value,
    ) -> Result<Value, WechatError> {
        self.call(api, path, token.as_slice(), Some(body)).await
    }

    /// GETs `path?{query}` and returns the JSON answer, or the errcode.
    pub(super) async fn get(
        &self,
        api: &'static str,
        path: &str,
        query: &[(&str, &str)],
    ) -> Result<Value, WechatError> {
        self.call(api, path, query, None).await
    }

    /// One call: a POST of `body` when there is one, else a GET; `query` form-encoded.
    async fn call(
        &self,
        api: &'static str,
        path: &str,
        query: &[(&str, &str)],
        body: Option<Value>,
    ) -> Result<Value, WechatError> {
        let mut url = format!("{}{path}", self.base);
        if !query.is_empty() {
            url.push('?');
            url.push_str(
                &url::form_urlencoded::Serializer::new(String::new())
                    .extend_pairs(query)
                    .finish(),
            );
        }
        let req = match body {
            Some(body) => self.http.post(url).json(&body),
            None => self.http.get(url),
        };
        let started = std::time::Instant::now();
        let result = async {
            let resp = req.send().await.map_err(|e| WechatError::Transport {
                api,
                detail: e.without_url().to_string(),
            })?;
            let status = resp.status();
            if status.is_server_error() {
                return Err(WechatError::Transport {
                    api,
                    detail: format!("HTTP {status}"),
                });
            }
            let v: Value = resp.json().await.map_err(|e| WechatError::Protocol {
                api,
                detail: format!("HTTP {status}, not JSON: {}", e.without_url()),
            })?;
            match v.get("errcode").and_then(Value::as_i64) {
                Some(code) if code != 0 => Err(WechatError::Api {
                    api,
                    code,
                    msg: v
                        .get("errmsg")
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                        .chars()
                        .take(200)
                        .collect(),
                }),
                _ => Ok(v),
            }
        }
        .await;
        let outcome = match &result {
            Ok(_) => "ok".to_owned(),
            Err(e) => e.label(),
        };
        metrics::counter!("wxpipe_wechat_calls_total", "api" => api, "outcome" => outcome)
            .increment(1);
        metrics::histogram!("wxpipe_wechat_call_seconds", "api" => api)
            .record(started.elapsed().as_secs_f64());
        result
    }

    pub(super) fn field<T: serde::de::DeserializeOwned>(
        api: &'static str,
        v: Value,
    ) -> Result<T, WechatError> {
        serde_json::from_value(v).map_err(|e| WechatError::Protocol {
            api,
            detail: e.to_string(),
        })
    }

    /// `api_component_token`.
    pub async fn component_token(&self, ticket: &str) -> Result<TokenGrant, WechatError> {
        const API: &str = "api_component_token";
        let v = self
            .post(
                API,
                "/cgi-bin/component/api_component_token",
                None,
                json!({
                    "component_appid": self.component_appid,
                    "component_appsecret": self.secret(API)?,
                    "component_verify_ticket": ticket,
                }),
            )
            .await?;
        #[derive(Deserialize)]
        struct R {
            component_access_token: String,
            expires_in: i64,
        }
        let r: R = Self::field(API, v)?;
        Ok(TokenGrant {
            token: r.component_access_token.into(),
            expires_in: r.expires_in,
        })
    }

    /// `api_start_push_ticket`.
    pub async fn start_push_ticket(&self) -> Result<(), WechatError> {
        const API: &str = "api_start_push_ticket";
        self.post(
            API,
            "/cgi-bin/component/api_start_push_ticket",
            None,
            json!({
                "component_appid": self.component_appid,
                "component_secret": self.secret(API)?,
            }),
        )
        .await
        .map(|_| ())
    }

    /// `api_create_preauthcode`: a fresh, single-use pre-auth code and its lifetime.
    pub async fn create_preauthcode(
        &self,
        component_token: &str,
    ) -> Result<(String, i64), WechatError> {
        const API: &str = "api_create_preauthcode";
        let v = self
            .post(
                API,
                "/cgi-bin/component/api_create_preauthcode",
                Some(("component_access_token", component_token)),
                json!({
                    "component_appid": self.component_appid,
                }),
            )
            .await?;
        #[derive(Deserialize)]
        struct R {
            pre_auth_code: String,
            #[serde(default)]
            expires_in: i64,
        }
        let r: R = Self::field(API, v)?;
        Ok((r.pre_auth_code, r.expires_in))
    }

    /// `api_query_auth`: exchanges an authorization code.
    pub async fn query_auth(
        &self,
        component_token: &str,
        code: &str,
    ) -> Result<AuthorizationInfo, WechatError> {
        const API: &str = "api_query_auth";
        let mut v = self
            .post(
                API,
                "/cgi-bin/component/api_query_auth",
                Some(("component_access_token", component_token)),
                json!({
                    "component_appid": self.component_appid,
                    "authorization_code": code,
                }),
            )
            .await?;
        Self::field(API, v["authorization_info"].take())
    }

    /// `api_authorizer_token`.
    pub async fn authorizer_token(
        &self,
        component_token: &str,
        authorizer_appid: &str,
        refresh_token: &str,
    ) -> Result<AuthorizerGrant, WechatError> {
        const API: &str = "api_authorizer_token";
        let v = self
            .post(
                API,
                "/cgi-bin/component/api_authorizer_token",
                Some(("component_access_token", component_token)),
                json!({
                    "component_appid": self.component_appid,
                    "authorizer_appid": authorizer_appid,
                    "authorizer_refresh_token": refresh_token,
                }),
            )
            .await?;
        Self::field(API, v)
    }

    /// `api_get_authorizer_info`: the whole answer (`authorizer_info`, `authorization_info`).
    pub async fn authorizer_info(
        &self,
        component_token: &str,
        authorizer_appid: &str,
    ) -> Result<Value, WechatError> {
        self.post(
            "api_get_authorizer_info",
            "/cgi-bin/component/api_get_authorizer_info",
            Some(("component_access_token", component_token)),
            json!({
                "component_appid": self.component_appid,
                "authorizer_appid": authorizer_appid,
            }),
        )
        .await
    }

    /// `api_get_authorizer_list`: one page (`count` ≤ 500) and the total.
    pub async fn authorizer_list(
        &self,
        component_token: &str,
        offset: u64,
        count: u64,
    ) -> Result<(u64, Vec<ListedAuthorizer>), WechatError> {
        const API: &str = "api_get_authorizer_list";
        let mut v = self
            .post(
                API,
                "/cgi-bin/component/api_get_authorizer_list",
                Some(("component_access_token", component_token)),
                json!({
                    "component_appid": self.component_appid,
                    "offset": offset,
                    "count": count.min(500),
                }),
            )
            .await?;
        let total = v["total_count"].as_u64().unwrap_or(0);
        let list: Vec<ListedAuthorizer> = Self::field(API, v["list"].take())?;
        Ok((total, list))
    }

    /// `cgi-bin/ticket/getticket` (protocol.md §9): an account's `jsapi` or `wx_card` ticket,
    /// with its authorizer token.
    pub async fn getticket(
        &self,
        authorizer_token: &str,
        kind: &str,
    ) -> Result<TicketGrant, WechatError> {
        const API: &str = "getticket";
        let v = self
            .get(
                API,
                "/cgi-bin/ticket/getticket",
                &[("access_token", authorizer_token), ("type", kind)],
            )
            .await?;
        Self::field(API, v)
    }

    /// `sns/oauth2/component/access_token` (protocol.md §9): a web-login `code` of `appid`'s
    /// user exchanged with the component token.
    pub async fn oauth_access_token(
        &self,
        component_token: &str,
        appid: &str,
        code: &str,
    ) -> Result<OauthGrant, WechatError> {
        const API: &str = "sns_oauth2_component_access_token";
        let v = self
            .get(
                API,
                "/sns/oauth2/component/access_token",
                &[
                    ("appid", appid),
                    ("code", code),
                    ("grant_type", "authorization_code"),
                    ("component_appid", &self.component_appid),
                    ("component_access_token", component_token),
                ],
            )
            .await?;
        Self::field(API, v)
    }

    /// `sns/userinfo` with a user's own token (protocol.md §9): the profile as WeChat sent it.
    pub async fn sns_userinfo(&self, user_token: &str, openid: &str) -> Result<Value, WechatError> {
        self.get(
            "sns_userinfo",
            "/sns/userinfo",
            &[
                ("access_token", user_token),
                ("openid", openid),
                ("lang", "zh_CN"),
            ],
        )
        .await
    }

    /// `/cgi-bin/message/custom/send`: a customer-service text, with the authorizer's token.
    pub async fn send_custom_text(
        &self,
        authorizer_token: &str,
        touser: &str,
        content: &str,
    ) -> Result<(), WechatError> {
        self.post(
            "message_custom_send",
            "/cgi-bin/message/custom/send",
            Some(("access_token", authorizer_token)),
            json!({
                "touser": touser,
                "msgtype": "text",
                "text": { "content": content },
            }),
        )
        .await
        .map(|_| ())
    }
}
