//! Forwarding one call: who is calling and may they (key, scope, rate), which token, the call
//! to WeChat, and what to do with WeChat's answer (refused token → invalidate, refresh once,
//! retry once; -1 → retry with a backoff; anything else → returned as WeChat sent it).

use super::GatewayConfig;
use super::credential::Credential;
use super::keys::{KeyStore, Scope};
use super::path::{self, Destination};
use axum::body::Bytes;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Json, Response};
use common::ids::AppId;
use common::token::{StoredToken, TokenError, TokenService};
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The gateway could not be built.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error("invalid WXPIPE_WECHAT_API_BASE: {0}")]
    ApiBase(String),
    #[error("cannot build the HTTP client: {0}")]
    Client(String),
}

/// The `User-Agent` of the gateway's calls to WeChat (tells them apart from the scheduler's in
/// a capture, and in the simulator's record).
pub const USER_AGENT: &str = concat!("wxpipe-gateway/", env!("CARGO_PKG_VERSION"));

/// Errcodes that mean "this token is no longer valid" (protocol.md §6).
const REFUSED_TOKEN: [i64; 3] = [40001, 40014, 42001];
/// -1 (system busy) is retried this many times, waiting 200 ms, then 400 ms.
const BUSY_RETRIES: u32 = 2;

/// What the handlers share.
pub struct Gateway {
    pub(super) tokens: Arc<TokenService>,
    keys: KeyStore,
    /// The platform's 公众号开发域名 (JS-SDK pages must be on them).
    pub(super) web_domains: common::jssdk::WebDomains,
    /// Web logins' result codes.
    pub(super) logins: common::web_login::WebLogins,
    http: reqwest::Client,
    api_base: url::Url,
    component_appid: String,
    admin_token: Option<String>,
    max_body_bytes: usize,
}

impl Gateway {
    pub fn new(config: GatewayConfig) -> Result<Self, GatewayError> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::Client::builder()
            .user_agent(USER_AGENT)
            .timeout(config.timeout)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| GatewayError::Client(e.to_string()))?;
        let mut api_base =
            url::Url::parse(&config.api_base).map_err(|e| GatewayError::ApiBase(e.to_string()))?;
        if !api_base.path().ends_with('/') {
            let path = format!("{}/", api_base.path());
            api_base.set_path(&path);
        }
        let store = &config.tokens.store;
        Ok(Self {
            keys: KeyStore::new(store.pool().clone(), store.keys.clone()),
            logins: common::web_login::WebLogins::new(store.pool().clone(), store.keys.clone()),
            web_domains: config.web_domains,
            tokens: config.tokens,
            http,
            api_base,
            component_appid: config.component_appid,
            admin_token: config.admin_token,
            max_body_bytes: config.max_body_bytes,
        })
    }
}

/// Who is calling.
pub(super) struct Caller {
    pub(super) team: String,
    pub(super) id: String,
    /// `None`: the admin token, every scope.
    pub(super) scope: Option<Scope>,
}

/// The `path` label of the admin token's calls (a key's calls carry the pattern that allowed
/// them: never a caller-chosen path, so the number of series stays bounded).
pub const ADMIN_LABEL: &str = "(admin)";

impl Caller {
    /// The label of what allowed this call (the key's matching path pattern), or `None` when
    /// the key may not make it.
    pub(super) fn allows(&self, appid: &str, path: &str) -> Option<String> {
        match &self.scope {
            None => Some(ADMIN_LABEL.to_owned()),
            Some(s) => s.matching(appid, path).map(str::to_owned),
        }
    }
}

/// An answer of the gateway itself (not WeChat's): JSON with `error`, counted.
pub(super) fn refuse(
    status: StatusCode,
    team: &str,
    outcome: &'static str,
    error: String,
) -> Response {
    metrics::counter!("wxpipe_gateway_calls_total", "team" => team.to_owned(), "path" => "-", "outcome" => outcome)
        .increment(1);
    (status, Json(json!({ "error": error }))).into_response()
}

pub(super) async fn caller(gw: &Gateway, headers: &HeaderMap) -> Result<Caller, Response> {
    let given = crate::serve::bearer(headers).trim();
    if let Some(admin) = &gw.admin_token
        && crate::serve::is_admin_token(given, admin)
    {
        return Ok(Caller {
            team: "admin".into(),
            id: "admin".into(),
            scope: None,
        });
    }

    match gw.keys.find(given).await {
        Ok(Some(k)) => Ok(Caller {
            team: k.scope.team.clone(),
            id: k.id,
            scope: Some(k.scope),
        }),
        Ok(None) => Err(refuse(
            StatusCode::UNAUTHORIZED,
            "-",
            "unauthorized",
            "missing or unknown API key (Authorization: Bearer wxpk_…)".into(),
        )),
        Err(e) => Err(refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            "-",
            "redis_unavailable",
            e.to_string(),
        )),
    }
}

/// The key's request rate, across replicas (the admin token is not limited).
pub(super) async fn within_rate(gw: &Gateway, caller: &Caller) -> Result<(), Response> {
    let Some(scope) = &caller.scope else {
        return Ok(());
    };
    match gw
        .tokens
        .store
        .within_limit(
            &format!("gateway:{}", caller.id),
            u64::from(scope.rate_per_sec),
            1,
        )
        .await
    {
        Ok(true) => Ok(()),
        Ok(false) => {
            let mut r = refuse(
                StatusCode::TOO_MANY_REQUESTS,
                &caller.team,
                "rate_limited",
                format!("over this key's {} requests per second", scope.rate_per_sec),
            );
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            Err(r)
        }
        Err(e) => Err(refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            &caller.team,
            "redis_unavailable",
            e.to_string(),
        )),
    }
}

/// May `caller` read raw secrets (`what`: tokens, tickets) of `appid` — a key with
/// `raw_tokens` whose appids match it, or the admin token — within its rate?
pub(super) async fn raw_access(
    gw: &Gateway,
    caller: &Caller,
    appid: &AppId,
    what: &str,
) -> Result<(), Response> {
    let allowed = caller
        .scope
        .as_ref()
        .is_none_or(|s| s.raw_tokens && s.appids.iter().any(|p| super::keys::glob(p, appid)));
    if !allowed {
        return Err(refuse(
            StatusCode::FORBIDDEN,
            &caller.team,
            "forbidden",
            format!("this key may not read raw {what} of this account"),
        ));
    }
    within_rate(gw, caller).await
}

/// Whose token a call carries.
enum Target {
    Component,
    Authorizer(AppId),
}

impl Target {
    fn label(&self) -> &str {
        match self {
            Target::Component => "component",
            Target::Authorizer(a) => a.as_str(),
        }
    }
}

pub(super) fn token_error(team: &str, e: TokenError) -> Response {
    let (status, outcome) = match &e {
        TokenError::Unknown(_) | TokenError::Revoked(_) => {
            (StatusCode::NOT_FOUND, "unknown_account")
        }
        TokenError::NoTicketNeeded(..) => (StatusCode::CONFLICT, "no_ticket"),
        TokenError::Wechat(_) => (StatusCode::BAD_GATEWAY, "token_unavailable"),
        _ => (StatusCode::SERVICE_UNAVAILABLE, "token_unavailable"),
    };
    refuse(status, team, outcome, e.to_string())
}

impl Gateway {
    async fn token(&self, target: &Target) -> Result<StoredToken, TokenError> {
        match target {
            Target::Component => self.tokens.current_component_token().await,
            Target::Authorizer(a) => self.tokens.authorizer_token(a).await,
        }
    }

    /// Compare-and-invalidate `refused`; the token to retry with (one refresh, however many
    /// callers report the same token).
    async fn replace(
        &self,
        target: &Target,
        refused: &StoredToken,
    ) -> Result<StoredToken, TokenError> {
        let failed = refused.access_token.expose();
        let (_, fresh) = match target {
            Target::Component => self.tokens.invalidate_component_token(failed).await?,
            Target::Authorizer(a) => self.tokens.invalidate_authorizer_token(a, failed).await?,
        };
        Ok(fresh)
    }

    /// The URL of one call: the destination and the caller's query, with the token the path's
    /// rule says ([`Credential`]): ours under its name (any token of the caller's own dropped,
    /// `component_appid` added where the rule wants it), or the caller's user token as sent.
    fn url(
        &self,
        credential: Credential,
        dest: &Destination,
        query: Option<&str>,
        token: Option<&StoredToken>,
    ) -> url::Url {
        match (credential, token) {
            (
                Credential::Ours {
                    name,
                    component_appid,
                },
                Some(token),
            ) => with_query(
                &dest.url,
                query,
                (name, token.access_token.expose()),
                component_appid.then_some(("component_appid", self.component_appid.as_str())),
            ),
            _ => with_callers_token(&dest.url, query),
        }
    }

    /// The component APIs under `cgi-bin/component/` want `component_appid` in their JSON body;
    /// a form body loses any token of the caller's own.
    fn body(&self, target: &Target, path: &str, headers: &HeaderMap, body: &Bytes) -> Bytes {
        if is_form(headers.get(header::CONTENT_TYPE)) {
            return without_tokens_in_form(body);
        }
        let json = may_be_json(headers.get(header::CONTENT_TYPE));
        if matches!(target, Target::Component) && path.starts_with("cgi-bin/component/") && json {
            if let Ok(Value::Object(mut o)) = serde_json::from_slice::<Value>(body) {
                if !o.contains_key("component_appid") {
                    o.insert("component_appid".into(), json!(self.component_appid));
                    return Bytes::from(serde_json::to_vec(&o).unwrap_or_default());
                }
            } else if body.is_empty() {
                return Bytes::from(json!({ "component_appid": self.component_appid }).to_string());
            }
        }
        body.clone()
    }
}

/// The names under which a caller could slip a token of its own past ours.
const TOKEN_NAMES: [&str; 2] = ["access_token", "component_access_token"];

/// `base` with the caller's `query` re-encoded, its `access_token` (a WeChat user's) kept and
/// any `component_access_token` dropped: a user-token API never receives the component's.
pub fn with_callers_token(base: &url::Url, query: Option<&str>) -> url::Url {
    let mut url = base.clone();
    let pairs = query_pairs(query, &["component_access_token"]);
    url.query_pairs_mut().clear().extend_pairs(&pairs);
    if pairs.is_empty() {
        url.set_query(None);
    }
    url
}

/// The caller's `query`, decoded, without any pair named in `drop` (decoded names: `%61ccess_token`
/// is `access_token`).
fn query_pairs(query: Option<&str>, drop: &[&str]) -> Vec<(String, String)> {
    url::form_urlencoded::parse(query.unwrap_or("").as_bytes())
        .filter(|(k, _)| !drop.contains(&k.as_ref()))
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

/// The caller's own non-empty `access_token` in `query`, if it sent exactly one.
fn callers_token(query: Option<&str>) -> Option<String> {
    let mut given = url::form_urlencoded::parse(query.unwrap_or("").as_bytes())
        .filter(|(k, _)| k == "access_token")
        .map(|(_, v)| v.into_owned());
    match (given.next(), given.next()) {
        (Some(t), None) if !t.is_empty() => Some(t),
        _ => None,
    }
}

/// `base` with the caller's `query` (every pair but a token of its own, re-encoded), our token
/// pair, and `extra` unless the caller named it.
pub fn with_query(
    base: &url::Url,
    query: Option<&str>,
    token: (&str, &str),
    extra: Option<(&str, &str)>,
) -> url::Url {
    let mut url = base.clone();
    let theirs = query_pairs(query, &TOKEN_NAMES);
    {
        let mut q = url.query_pairs_mut();
        q.clear();
        for (k, v) in &theirs {
            q.append_pair(k, v);
        }
        q.append_pair(token.0, token.1);
        if let Some((k, v)) = extra
            && !theirs.iter().any(|(t, _)| t == k)
        {
            q.append_pair(k, v);
        }
    }
    url
}

fn is_form(content_type: Option<&HeaderValue>) -> bool {
    content_type.and_then(|v| v.to_str().ok()).is_some_and(|c| {
        c.trim_start()
            .to_ascii_lowercase()
            .starts_with("application/x-www-form-urlencoded")
    })
}

/// A form body without any `access_token`/`component_access_token` pair (re-encoded only when
/// it held one).
pub fn without_tokens_in_form(body: &Bytes) -> Bytes {
    let pairs: Vec<(String, String)> = url::form_urlencoded::parse(body)
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    if !pairs.iter().any(|(k, _)| TOKEN_NAMES.contains(&k.as_str())) {
        return body.clone();
    }
    let mut out = url::form_urlencoded::Serializer::new(String::new());
    for (k, v) in pairs
        .iter()
        .filter(|(k, _)| !TOKEN_NAMES.contains(&k.as_str()))
    {
        out.append_pair(k, v);
    }
    Bytes::from(out.finish())
}

/// A body with this content type may be JSON: none, `…json…`, or `text/…` (WeChat answers JSON
/// as `text/plain` too).
fn may_be_json(content_type: Option<&HeaderValue>) -> bool {
    content_type
        .and_then(|v| v.to_str().ok())
        .is_none_or(|c| c.contains("json") || c.starts_with("text/"))
}

/// WeChat's answer.
struct Answer {
    status: StatusCode,
    content_type: Option<HeaderValue>,
    disposition: Option<HeaderValue>,
    body: Bytes,
}

impl Answer {
    /// The `errcode` of a JSON answer (media downloads are not JSON).
    fn errcode(&self) -> Option<i64> {
        if self.body.len() > 64 * 1024 {
            return None;
        }
        if !may_be_json(self.content_type.as_ref())
            || self.body.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{')
        {
            return None;
        }
        serde_json::from_slice::<Value>(&self.body)
            .ok()?
            .get("errcode")?
            .as_i64()
    }

    fn into_response(self, retries: u32) -> Response {
        let mut r = (self.status, self.body).into_response();
        let h = r.headers_mut();
        if let Some(v) = self.content_type {
            h.insert(header::CONTENT_TYPE, v);
        }
        if let Some(v) = self.disposition {
            h.insert(header::CONTENT_DISPOSITION, v);
        }
        h.insert("x-wxpipe-retries", HeaderValue::from(retries));
        r
    }
}

/// One call to WeChat.
async fn send(
    gw: &Gateway,
    method: &Method,
    url: url::Url,
    content_type: Option<&HeaderValue>,
    body: Bytes,
) -> Result<Answer, reqwest::Error> {
    let mut req = gw.http.request(method.clone(), url);
    if let Some(ct) = content_type {
        req = req.header(header::CONTENT_TYPE, ct.clone());
    }
    if !body.is_empty() || *method == Method::POST {
        req = req.body(body);
    }
    let resp = req.send().await?;
    let status = resp.status();
    let content_type = resp.headers().get(header::CONTENT_TYPE).cloned();
    let disposition = resp.headers().get(header::CONTENT_DISPOSITION).cloned();
    let body = resp.bytes().await?;
    Ok(Answer {
        status,
        content_type,
        disposition,
        body,
    })
}

/// `ANY /v1/wechat/{appid}/{path…}`. The key is checked before the body is read (an unknown
/// caller's body is never read); the path is checked as it will be sent ([`super::path`]).
pub async fn forward(State(gw): State<Arc<Gateway>>, req: Request) -> Response {
    let started = Instant::now();
    let (parts, body) = req.into_parts();
    let (method, uri, headers) = (parts.method, parts.uri, parts.headers);
    let caller = match caller(&gw, &headers).await {
        Ok(c) => c,
        Err(r) => return r,
    };
    let (appid, dest) = match path::from_request(&gw.api_base, uri.path()) {
        Ok(d) => d,
        Err(e) => {
            return refuse(
                StatusCode::BAD_REQUEST,
                &caller.team,
                "bad_path",
                e.to_string(),
            );
        }
    };
    let target = if appid == "component" {
        Target::Component
    } else {
        match appid.parse::<AppId>() {
            Ok(a) => Target::Authorizer(a),
            Err(e) => {
                return refuse(
                    StatusCode::BAD_REQUEST,
                    &caller.team,
                    "bad_request",
                    e.to_string(),
                );
            }
        }
    };
    let Some(pattern) = caller.allows(target.label(), &dest.path) else {
        return refuse(
            StatusCode::FORBIDDEN,
            &caller.team,
            "forbidden",
            format!("this key may not call {} for {}", dest.path, target.label()),
        );
    };
    if let Err(r) = within_rate(&gw, &caller).await {
        return r;
    }
    let body = match axum::body::to_bytes(body, gw.max_body_bytes).await {
        Ok(b) => b,
        Err(_) => {
            return refuse(
                StatusCode::PAYLOAD_TOO_LARGE,
                &caller.team,
                "too_large",
                format!(
                    "the body is over {} bytes or was not received whole",
                    gw.max_body_bytes
                ),
            );
        }
    };
    let path = dest.path.as_str();
    let credential = Credential::for_call(matches!(target, Target::Component), path);
    let mut token = match credential {
        Credential::Ours { .. } => match gw.token(&target).await {
            Ok(t) => Some(t),
            Err(e) => return token_error(&caller.team, e),
        },
        Credential::Callers => {
            if callers_token(uri.query()).is_none() {
                return refuse(
                    StatusCode::BAD_REQUEST,
                    &caller.team,
                    "bad_request",
                    format!(
                        "{path} takes a WeChat user's access_token (from web login) in the query, exactly one; the gateway never attaches an account's token to it"
                    ),
                );
            }
            None
        }
    };
    let body = gw.body(&target, path, &headers, &body);
    let content_type = headers.get(header::CONTENT_TYPE);
    let (mut retries, mut replaced, mut busy) = (0u32, false, 0u32);
    let (answer, errcode) = loop {
        let url = gw.url(credential, &dest, uri.query(), token.as_ref());
        let answer = match send(&gw, &method, url, content_type, body.clone()).await {
            Ok(a) => a,
            Err(e) => {
                // reqwest's error text can hold the URL, which holds the token: never shown.
                let what = if e.is_timeout() {
                    "timed out"
                } else {
                    "unreachable"
                };
                tracing::warn!(team = %caller.team, appid = target.label(), path = %path, "WeChat's API {what}");
                return refuse(
                    StatusCode::BAD_GATEWAY,
                    &caller.team,
                    "upstream_unreachable",
                    format!("WeChat's API {what}"),
                );
            }
        };
        let errcode = answer.errcode();
        match errcode {
            // Ours was refused: replaced once. (A user's token refused is the caller's answer.)
            Some(code) if REFUSED_TOKEN.contains(&code) && !replaced => {
                let Some(refused) = token.as_ref() else {
                    break (answer, errcode);
                };
                replaced = true;
                retries += 1;
                metrics::counter!("wxpipe_gateway_retries_total", "team" => caller.team.clone(), "reason" => "refused_token").increment(1);
                token = match gw.replace(&target, refused).await {
                    Ok(t) => Some(t),
                    Err(e) => return token_error(&caller.team, e),
                };
            }
            Some(-1) if busy < BUSY_RETRIES => {
                busy += 1;
                retries += 1;
                metrics::counter!("wxpipe_gateway_retries_total", "team" => caller.team.clone(), "reason" => "busy").increment(1);
                tokio::time::sleep(Duration::from_millis(200 << (busy - 1))).await;
            }
            _ => break (answer, errcode),
        }
    };
    let outcome = match errcode {
        None | Some(0) => "ok".to_owned(),
        Some(c) => c.to_string(),
    };
    let elapsed = started.elapsed();
    metrics::counter!("wxpipe_gateway_calls_total", "team" => caller.team.clone(), "path" => pattern.clone(), "outcome" => outcome.clone())
        .increment(1);
    metrics::histogram!("wxpipe_gateway_call_seconds", "team" => caller.team.clone())
        .record(elapsed.as_secs_f64());
    tracing::info!(
        target: "wxpipe_gateway_access",
        team = %caller.team,
        key = %caller.id,
        appid = target.label(),
        method = %method,
        path = %path,
        status = answer.status.as_u16(),
        outcome = %outcome,
        retries,
        ms = elapsed.as_millis() as u64,
        "call"
    );
    answer.into_response(retries)
}

/// `GET /v1/tokens/{appid}`: an account's raw token, for keys whose scope says `raw_tokens`
/// (the component token: the admin API only).
pub async fn raw_token(
    State(gw): State<Arc<Gateway>>,
    Path(appid): Path<String>,
    headers: HeaderMap,
) -> Response {
    let caller = match caller(&gw, &headers).await {
        Ok(c) => c,
        Err(r) => return r,
    };
    let appid: AppId = match appid.parse() {
        Ok(a) => a,
        Err(e) => {
            return refuse(
                StatusCode::BAD_REQUEST,
                &caller.team,
                "bad_request",
                format!("{e} (the component token is served by the admin API only)"),
            );
        }
    };
    if let Err(r) = raw_access(&gw, &caller, &appid, "tokens").await {
        return r;
    }
    match gw.tokens.authorizer_token(&appid).await {
        Ok(t) => {
            tracing::info!(target: "wxpipe_gateway_access", team = %caller.team, key = %caller.id, appid = %appid, "raw token served");
            Json(json!({ "access_token": t.access_token.expose(), "expires_at": t.expires_at }))
                .into_response()
        }
        Err(e) => token_error(&caller.team, e),
    }
}
