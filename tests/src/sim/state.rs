//! What the simulated WeChat remembers, and the rules of protocol.md §2 applied to it: tickets
//! it pushed, tokens that really expire and are superseded, single-use codes, authorizers,
//! options, daily quotas, and everything that crossed the wire (for `/sim/stats`).
//!
//! Every rule is a method returning `Result<_, ApiError>` so that the HTTP layer only encodes.

use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

/// A WeChat error answer: `{"errcode": N, "errmsg": "..."}` with HTTP 200.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub errcode: i64,
    pub errmsg: &'static str,
}

pub const BUSY: ApiError = ApiError {
    errcode: -1,
    errmsg: "system error",
};
pub const INVALID_CREDENTIAL: ApiError = ApiError {
    errcode: 40001,
    errmsg: "invalid credential, access_token is invalid or not latest",
};
pub const INVALID_APPID: ApiError = ApiError {
    errcode: 40013,
    errmsg: "invalid appid",
};
pub const INVALID_ARGS: ApiError = ApiError {
    errcode: 40097,
    errmsg: "invalid args",
};
pub const INVALID_SECRET: ApiError = ApiError {
    errcode: 40125,
    errmsg: "invalid appsecret",
};
pub const TOKEN_MISSING: ApiError = ApiError {
    errcode: 41001,
    errmsg: "access_token missing",
};
pub const TOKEN_EXPIRED: ApiError = ApiError {
    errcode: 42001,
    errmsg: "access_token expired",
};
pub const QUOTA_REACHED: ApiError = ApiError {
    errcode: 45009,
    errmsg: "reach max api daily quota limit",
};
pub const NOT_AUTHORIZED: ApiError = ApiError {
    errcode: 61003,
    errmsg: "component is not authorized by this account",
};
pub const TICKET_EXPIRED: ApiError = ApiError {
    errcode: 61005,
    errmsg: "component ticket is expired",
};
pub const TICKET_INVALID: ApiError = ApiError {
    errcode: 61006,
    errmsg: "component ticket is invalid",
};
pub const CODE_INVALID: ApiError = ApiError {
    errcode: 61009,
    errmsg: "code is invalid",
};
pub const CODE_USED: ApiError = ApiError {
    errcode: 61010,
    errmsg: "code is expired or used",
};
pub const REFRESH_TOKEN_INVALID: ApiError = ApiError {
    errcode: 61023,
    errmsg: "refresh_token is invalid",
};
pub const WRONG_TOKEN_TYPE: ApiError = ApiError {
    errcode: 61024,
    errmsg: "must use component_access_token",
};

/// Lifetimes and limits; tests shorten them to seconds.
#[derive(Debug, Clone)]
pub struct Rules {
    pub ticket_ttl: Duration,
    pub component_token_ttl: Duration,
    pub authorizer_token_ttl: Duration,
    pub pre_auth_code_ttl: Duration,
    pub auth_code_ttl: Duration,
    /// How long a superseded token keeps working after a new one is issued.
    pub supersede_grace: Duration,
    /// Calls per API per day before 45009.
    pub daily_quota: u64,
    /// How long a JS-SDK ticket lives (`getticket`, protocol.md §9).
    pub js_ticket_ttl: Duration,
    /// `getticket` calls per account per day before 45009.
    pub getticket_daily_quota: u64,
}

impl Default for Rules {
    fn default() -> Self {
        Self {
            ticket_ttl: Duration::from_secs(12 * 3600),
            component_token_ttl: Duration::from_secs(7200),
            authorizer_token_ttl: Duration::from_secs(7200),
            pre_auth_code_ttl: Duration::from_secs(1800),
            auth_code_ttl: Duration::from_secs(600),
            supersede_grace: Duration::from_secs(300),
            daily_quota: 10_000,
            js_ticket_ttl: Duration::from_secs(7200),
            getticket_daily_quota: 10_000,
        }
    }
}

/// One issued token.
#[derive(Debug, Clone)]
struct Token {
    /// The component token, or the authorizer's appid.
    owner: Option<String>,
    expires: Instant,
    superseded: Option<Instant>,
}

/// A simulated authorized account.
#[derive(Debug, Clone)]
pub struct Authorizer {
    pub appid: String,
    /// The account's original id, `gh_…`.
    pub user_name: String,
    pub nick_name: String,
    pub mini_program: bool,
    pub refresh_token: String,
    pub auth_time: i64,
    pub revoked: bool,
    /// Whether `api_query_auth` was ever called (the list shows refresh tokens only after).
    pub queried: bool,
    /// Whether it granted permission set 8 (cards: it may have a `wx_card` ticket).
    pub card: bool,
    /// Whether it granted permission set 18 (mini-program code management, protocol.md §8):
    /// mini programs do unless told otherwise.
    pub code: bool,
    current_token: Option<String>,
}

#[derive(Debug, Clone)]
struct Code {
    authorizer_appid: String,
    expires: Instant,
    used: bool,
}

/// Counters of what crossed the wire.
#[derive(Debug, Default, Clone)]
pub struct Stats {
    pub calls: BTreeMap<String, u64>,
    pub errors: BTreeMap<String, u64>,
    pub component_tokens_issued: u64,
    pub authorizer_tokens_issued: BTreeMap<String, u64>,
    /// When each authorizer token was issued (ms since the epoch), per account.
    pub authorizer_token_times: BTreeMap<String, Vec<i64>>,
    /// Token-bearing calls refused because their token was expired (42001) or invalid (40001).
    pub rejected_token_calls: u64,
    pub custom_messages: Vec<Value>,
    pub pushes: BTreeMap<String, BTreeMap<String, u64>>,
    /// Calls of APIs the simulator answers generically, by path: who called (the appid the
    /// token belongs to, or `component`).
    pub generic_calls: BTreeMap<String, Vec<String>>,
    /// Every API request as it arrived (the first [`MAX_RECORDED`]), whatever route answered it.
    pub requests: Vec<ApiRequest>,
    /// How many API requests arrived in all.
    pub requests_total: u64,
}

/// How many API requests the simulator keeps for inspection.
pub const MAX_RECORDED: usize = 50_000;

/// One request to the simulated API, as it arrived on the wire.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ApiRequest {
    pub method: String,
    /// The request target's path, still percent-encoded.
    pub path: String,
    /// The raw query, if any.
    pub query: Option<String>,
    /// Its `User-Agent` header, if any.
    pub user_agent: Option<String>,
    /// Every value of every `access_token` and `component_access_token` pair, in the query
    /// and in a form body, in the order they came.
    pub tokens: Vec<String>,
}

/// The simulated WeChat's memory.
pub struct State {
    pub rules: Rules,
    pub component_appid: String,
    component_secret: String,
    tickets: HashMap<String, Instant>,
    tokens: HashMap<String, Token>,
    current_component_token: Option<String>,
    pre_auth_codes: HashMap<String, (Instant, bool)>,
    auth_codes: HashMap<String, Code>,
    pub authorizers: BTreeMap<String, Authorizer>,
    options: HashMap<(String, String), String>,
    quota: HashMap<String, u64>,
    quota_day: i64,
    pub stats: Stats,
    /// Answer this many more API calls with -1 (system busy), then normally.
    pub busy_next: u32,
    /// Uploaded media by media_id: (content type, bytes).
    pub media: HashMap<String, (String, Vec<u8>)>,
    serial: u64,
}

/// Which token a call must carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenKind {
    Component,
    Authorizer,
}

impl State {
    pub fn new(component_appid: &str, component_secret: &str, rules: Rules) -> Self {
        Self {
            rules,
            component_appid: component_appid.to_owned(),
            component_secret: component_secret.to_owned(),
            tickets: HashMap::new(),
            tokens: HashMap::new(),
            current_component_token: None,
            pre_auth_codes: HashMap::new(),
            auth_codes: HashMap::new(),
            authorizers: BTreeMap::new(),
            options: HashMap::new(),
            quota: HashMap::new(),
            quota_day: common::unix_now() / 86_400,
            stats: Stats::default(),
            busy_next: 0,
            media: HashMap::new(),
            serial: 0,
        }
    }

    /// Forgets everything but the configuration.
    pub fn reset(&mut self) {
        *self = Self::new(
            &self.component_appid.clone(),
            &self.component_secret.clone(),
            self.rules.clone(),
        );
    }

    /// A fresh random-looking value with a readable prefix.
    pub fn fresh(&mut self, prefix: &str) -> String {
        self.serial += 1;
        let random = uuid::Uuid::new_v4().simple().to_string();
        format!("{prefix}{}{}", self.serial, &random[..20])
    }

    /// Counts a call; refuses it with 45009 when the API's daily quota is used up.
    pub fn count_call(&mut self, api: &str) -> Result<(), ApiError> {
        *self.stats.calls.entry(api.to_owned()).or_default() += 1;
        let today = common::unix_now() / 86_400;
        if today != self.quota_day {
            self.quota.clear();
            self.quota_day = today;
        }
        let used = self.quota.entry(api.to_owned()).or_default();
        if *used >= self.rules.daily_quota {
            return Err(QUOTA_REACHED);
        }
        *used += 1;
        Ok(())
    }

    pub fn count_error(&mut self, api: &str, e: &ApiError) {
        *self
            .stats
            .errors
            .entry(format!("{api}:{}", e.errcode))
            .or_default() += 1;
    }

    /// Resets the daily quotas (`clear_quota`).
    pub fn clear_quota(&mut self) {
        self.quota.clear();
    }

    fn check_component(&self, appid: &str) -> Result<(), ApiError> {
        if appid == self.component_appid {
            Ok(())
        } else {
            Err(INVALID_APPID)
        }
    }

    /// Records a ticket this server pushed.
    pub fn issue_ticket(&mut self) -> String {
        let ticket = format!("ticket@@@{}", self.fresh("t"));
        self.tickets
            .insert(ticket.clone(), Instant::now() + self.rules.ticket_ttl);
        ticket
    }

    /// Checks a token of `kind` (40001 unknown or superseded past its grace, 42001 expired);
    /// returns the authorizer appid for authorizer tokens.
    pub fn check_token(
        &mut self,
        token: Option<&str>,
        kind: TokenKind,
    ) -> Result<Option<String>, ApiError> {
        let token = token.filter(|t| !t.is_empty()).ok_or(TOKEN_MISSING)?;
        let now = Instant::now();
        let verdict = match self.tokens.get(token) {
            None => Err(INVALID_CREDENTIAL),
            Some(t) if t.owner.is_some() != (kind == TokenKind::Authorizer) => Err(match kind {
                TokenKind::Component => WRONG_TOKEN_TYPE,
                TokenKind::Authorizer => INVALID_CREDENTIAL,
            }),
            Some(t) if now >= t.expires => Err(TOKEN_EXPIRED),
            Some(t)
                if t.superseded
                    .is_some_and(|s| now >= s + self.rules.supersede_grace) =>
            {
                Err(INVALID_CREDENTIAL)
            }
            Some(t) => Ok(t.owner.clone()),
        };
        if verdict.is_err() {
            self.stats.rejected_token_calls += 1;
        }
        verdict
    }

    /// `api_component_token`.
    pub fn component_token(
        &mut self,
        appid: &str,
        secret: &str,
        ticket: &str,
    ) -> Result<Value, ApiError> {
        self.check_component(appid)?;
        if secret != self.component_secret {
            return Err(INVALID_SECRET);
        }
        match self.tickets.get(ticket) {
            None => return Err(TICKET_INVALID),
            Some(expires) if Instant::now() >= *expires => return Err(TICKET_EXPIRED),
            Some(_) => {}
        }
        let token = self.fresh("ct");
        let now = Instant::now();
        if let Some(old) = self.current_component_token.replace(token.clone())
            && let Some(t) = self.tokens.get_mut(&old)
        {
            t.superseded = Some(now);
        }
        self.tokens.insert(
            token.clone(),
            Token {
                owner: None,
                expires: now + self.rules.component_token_ttl,
                superseded: None,
            },
        );
        self.stats.component_tokens_issued += 1;
        Ok(
            json!({ "component_access_token": token, "expires_in": self.rules.component_token_ttl.as_secs() }),
        )
    }

    /// `api_start_push_ticket`.
    pub fn start_push_ticket(&mut self, appid: &str, secret: &str) -> Result<Value, ApiError> {
        self.check_component(appid)?;
        if secret != self.component_secret {
            return Err(INVALID_SECRET);
        }
        Ok(json!({ "errcode": 0, "errmsg": "ok" }))
    }

    /// `api_create_preauthcode`.
    pub fn create_pre_auth_code(&mut self, appid: &str) -> Result<Value, ApiError> {
        self.check_component(appid)?;
        let code = format!("preauthcode@@@{}", self.fresh("p"));
        self.pre_auth_codes.insert(
            code.clone(),
            (Instant::now() + self.rules.pre_auth_code_ttl, false),
        );
        Ok(json!({ "pre_auth_code": code, "expires_in": self.rules.pre_auth_code_ttl.as_secs() }))
    }

    /// Uses a pre-auth code on the authorization page (single use).
    pub fn use_pre_auth_code(&mut self, appid: &str, code: &str) -> Result<(), ApiError> {
        self.check_component(appid)?;
        match self.pre_auth_codes.get_mut(code) {
            Some((expires, used)) if !*used && Instant::now() < *expires => {
                *used = true;
                Ok(())
            }
            Some(_) => Err(CODE_USED),
            None => Err(CODE_INVALID),
        }
    }

    /// The administrator of `appid` (a new simulated account when `None`) authorizes the
    /// platform: returns the account, the auth code, and whether it was already authorized.
    pub fn authorize(
        &mut self,
        appid: Option<&str>,
        mini_program: bool,
    ) -> (Authorizer, String, bool) {
        let appid = match appid {
            Some(a) => a.to_owned(),
            None => {
                self.serial += 1;
                format!("wx{:016x}", 0x5e00_0000_0000_0000u64 + self.serial)
            }
        };
        let existed = self.authorizers.get(&appid).is_some_and(|a| !a.revoked);
        let refresh = format!("refreshtoken@@@{}", self.fresh("r"));
        let n = self.authorizers.len();
        let a = self
            .authorizers
            .entry(appid.clone())
            .or_insert_with(|| Authorizer {
                appid: appid.clone(),
                user_name: format!("gh_{}", &appid[appid.len() - 12..]),
                nick_name: format!("Simulated account {}", n + 1),
                mini_program,
                refresh_token: String::new(),
                auth_time: 0,
                revoked: false,
                queried: false,
                card: false,
                code: mini_program,
                current_token: None,
            });
        a.revoked = false;
        a.refresh_token = refresh;
        a.auth_time = common::unix_now();
        let a = a.clone();
        let code = format!("queryauthcode@@@{}", self.fresh("q"));
        self.auth_codes.insert(
            code.clone(),
            Code {
                authorizer_appid: appid,
                expires: Instant::now() + self.rules.auth_code_ttl,
                used: false,
            },
        );
        (a, code, existed)
    }

    /// Gives an account its known original id (the full-network test accounts have fixed ones).
    pub fn set_user_name(&mut self, appid: &str, user_name: &str) {
        if let Some(a) = self.authorizers.get_mut(appid) {
            a.user_name = user_name.to_owned();
        }
    }

    /// A fresh auth code for an authorized account (the full-network test's `QUERY_AUTH_CODE`).
    pub fn auth_code_for(&mut self, appid: &str) -> String {
        let code = format!("queryauthcode@@@{}", self.fresh("q"));
        self.auth_codes.insert(
            code.clone(),
            Code {
                authorizer_appid: appid.to_owned(),
                expires: Instant::now() + self.rules.auth_code_ttl,
                used: false,
            },
        );
        code
    }

    fn issue_authorizer_token(&mut self, appid: &str) -> (String, String) {
        let token = self.fresh("at");
        let now = Instant::now();
        let a = self
            .authorizers
            .get_mut(appid)
            .expect("caller checked the authorizer");
        if let Some(old) = a.current_token.replace(token.clone())
            && let Some(t) = self.tokens.get_mut(&old)
        {
            t.superseded = Some(now);
        }
        let refresh = a.refresh_token.clone();
        self.tokens.insert(
            token.clone(),
            Token {
                owner: Some(appid.to_owned()),
                expires: now + self.rules.authorizer_token_ttl,
                superseded: None,
            },
        );
        *self
            .stats
            .authorizer_tokens_issued
            .entry(appid.to_owned())
            .or_default() += 1;
        self.stats
            .authorizer_token_times
            .entry(appid.to_owned())
            .or_default()
            .push(common::unix_now_ms());
        (token, refresh)
    }

    /// The permission sets `appid` granted: 1, 15 and 7, 8 (cards) for an account given it
    /// ([`Authorizer::card`]) and 18 (code management) for one with [`Authorizer::code`].
    fn func_info(&self, appid: &str) -> Value {
        let mut sets = vec![1, 15, 7];
        if self.authorizers.get(appid).is_some_and(|a| a.card) {
            sets.push(8);
        }
        if self.authorizers.get(appid).is_some_and(|a| a.code) {
            sets.push(18);
        }
        Value::Array(
            sets.into_iter()
                .map(|id| json!({ "funcscope_category": { "id": id } }))
                .collect(),
        )
    }

    /// `api_query_auth`: codes are single use (61010 on reuse, 61009 unknown).
    pub fn query_auth(&mut self, appid: &str, code: &str) -> Result<Value, ApiError> {
        self.check_component(appid)?;
        let authorizer = match self.auth_codes.get_mut(code) {
            None => return Err(CODE_INVALID),
            Some(c) if c.used || Instant::now() >= c.expires => return Err(CODE_USED),
            Some(c) => {
                c.used = true;
                c.authorizer_appid.clone()
            }
        };
        if self.authorizers.get(&authorizer).is_none_or(|a| a.revoked) {
            return Err(NOT_AUTHORIZED);
        }
        if let Some(a) = self.authorizers.get_mut(&authorizer) {
            a.queried = true;
        }
        let (token, refresh) = self.issue_authorizer_token(&authorizer);
        Ok(json!({ "authorization_info": {
            "authorizer_appid": authorizer,
            "authorizer_access_token": token,
            "expires_in": self.rules.authorizer_token_ttl.as_secs(),
            "authorizer_refresh_token": refresh,
            "func_info": self.func_info(&authorizer),
        }}))
    }

    /// `api_authorizer_token`.
    pub fn authorizer_token(
        &mut self,
        appid: &str,
        authorizer: &str,
        refresh: &str,
    ) -> Result<Value, ApiError> {
        self.check_component(appid)?;
        match self.authorizers.get(authorizer) {
            None => return Err(NOT_AUTHORIZED),
            Some(a) if a.revoked => return Err(NOT_AUTHORIZED),
            Some(a) if a.refresh_token != refresh => return Err(REFRESH_TOKEN_INVALID),
            Some(_) => {}
        }
        let (token, refresh) = self.issue_authorizer_token(authorizer);
        Ok(json!({
            "authorizer_access_token": token,
            "expires_in": self.rules.authorizer_token_ttl.as_secs(),
            "authorizer_refresh_token": refresh,
        }))
    }

    /// `api_get_authorizer_info`.
    pub fn authorizer_info(&mut self, appid: &str, authorizer: &str) -> Result<Value, ApiError> {
        self.check_component(appid)?;
        let a = self
            .authorizers
            .get(authorizer)
            .filter(|a| !a.revoked)
            .ok_or(NOT_AUTHORIZED)?;
        let mut info = json!({
            "nick_name": a.nick_name,
            "head_img": format!("http://wx.qlogo.cn/mmopen/{}/0", a.appid),
            "service_type_info": { "id": if a.mini_program { 0 } else { 2 } },
            "verify_type_info": { "id": 0 },
            "user_name": a.user_name,
            "alias": "",
            "principal_name": "Simulated Ltd.",
            "qrcode_url": format!("http://mmbiz.qpic.cn/{}", a.appid),
            "business_info": { "open_pay": 0, "open_shake": 0, "open_scan": 0, "open_card": 0, "open_store": 0 },
            "account_status": 1,
        });
        if a.mini_program {
            info["MiniProgramInfo"] =
                json!({ "network": { "RequestDomain": [] }, "categories": [] });
        }
        Ok(json!({
            "authorizer_info": info,
            "authorization_info": {
                "authorizer_appid": a.appid,
                "authorizer_refresh_token": a.refresh_token,
                "func_info": self.func_info(authorizer),
            }
        }))
    }

    /// `api_get_authorizer_list` (count ≤ 500).
    pub fn authorizer_list(
        &mut self,
        appid: &str,
        offset: u64,
        count: u64,
    ) -> Result<Value, ApiError> {
        self.check_component(appid)?;
        if count == 0 || count > 500 {
            return Err(INVALID_ARGS);
        }
        let active: Vec<&Authorizer> = self.authorizers.values().filter(|a| !a.revoked).collect();
        let list: Vec<Value> = active
            .iter()
            .skip(offset as usize)
            .take(count as usize)
            .map(|a| {
                let mut item = json!({ "authorizer_appid": a.appid, "auth_time": a.auth_time });
                if a.queried {
                    item["refresh_token"] = json!(a.refresh_token);
                }
                item
            })
            .collect();
        Ok(json!({ "total_count": active.len(), "list": list }))
    }

    /// Option get (either API flavour).
    pub fn get_option(&mut self, authorizer: &str, name: &str) -> Result<Value, ApiError> {
        if !["location_report", "voice_recognize", "customer_service"].contains(&name) {
            return Err(INVALID_ARGS);
        }
        let value = self
            .options
            .get(&(authorizer.to_owned(), name.to_owned()))
            .cloned()
            .unwrap_or_else(|| "0".into());
        Ok(json!({ "authorizer_appid": authorizer, "option_name": name, "option_value": value }))
    }

    /// Option set (either API flavour).
    pub fn set_option(
        &mut self,
        authorizer: &str,
        name: &str,
        value: &str,
    ) -> Result<Value, ApiError> {
        let allowed: &[&str] = match name {
            "location_report" => &["0", "1", "2"],
            "voice_recognize" | "customer_service" => &["0", "1"],
            _ => return Err(INVALID_ARGS),
        };
        if !allowed.contains(&value) {
            return Err(INVALID_ARGS);
        }
        self.options
            .insert((authorizer.to_owned(), name.to_owned()), value.to_owned());
        Ok(json!({ "errcode": 0, "errmsg": "ok" }))
    }

    /// WeChat stops accepting `appid`'s current token (40001) before it expires, as it does when
    /// the token was refreshed elsewhere. `false` if the account has none.
    pub fn invalidate_token(&mut self, appid: &str) -> bool {
        let Some(t) = self
            .authorizers
            .get_mut(appid)
            .and_then(|a| a.current_token.take())
        else {
            return false;
        };
        self.tokens.remove(&t).is_some()
    }

    /// Takes one of the calls to be answered -1, if any are left.
    pub fn take_busy(&mut self) -> bool {
        if self.busy_next > 0 {
            self.busy_next -= 1;
            true
        } else {
            false
        }
    }

    /// The administrator removed the platform from `appid`.
    pub fn revoke(&mut self, appid: &str) -> bool {
        let Some(a) = self.authorizers.get_mut(appid) else {
            return false;
        };
        a.revoked = true;
        if let Some(t) = a.current_token.take() {
            self.tokens.remove(&t);
        }
        true
    }

    pub fn checked_secret(&self, secret: &str) -> Result<(), ApiError> {
        if secret == self.component_secret {
            Ok(())
        } else {
            Err(INVALID_SECRET)
        }
    }

    pub fn check_component_appid(&self, appid: &str) -> Result<(), ApiError> {
        self.check_component(appid)
    }

    /// Records a push attempt's answer (`kind` e.g. `ticket`, `text`; `answer` e.g. `200`).
    pub fn record_push(&mut self, kind: &str, answer: &str) {
        *self
            .stats
            .pushes
            .entry(kind.to_owned())
            .or_default()
            .entry(answer.to_owned())
            .or_default() += 1;
    }

    /// `/sim/stats` as JSON.
    pub fn stats_json(&self) -> Value {
        json!({
            "calls": self.stats.calls,
            "errors": self.stats.errors,
            "component_tokens_issued": self.stats.component_tokens_issued,
            "authorizer_tokens_issued": self.stats.authorizer_tokens_issued,
            "rejected_token_calls": self.stats.rejected_token_calls,
            "custom_messages": self.stats.custom_messages,
            "generic_calls": self.stats.generic_calls,
            "api_requests": self.stats.requests_total,
            "pushes": self.stats.pushes,
            "authorizers": self.authorizers.values().map(|a| json!({
                "appid": a.appid, "user_name": a.user_name, "nick_name": a.nick_name, "revoked": a.revoked,
                "mini_program": a.mini_program,
            })).collect::<Vec<_>>(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(rules: Rules) -> State {
        State::new("wx134c8103faa5a59e", "secret", rules)
    }

    fn short() -> Rules {
        Rules {
            component_token_ttl: Duration::from_millis(800),
            authorizer_token_ttl: Duration::from_millis(800),
            supersede_grace: Duration::from_millis(100),
            auth_code_ttl: Duration::from_millis(300),
            ..Rules::default()
        }
    }

    #[test]
    fn component_token_needs_a_pushed_ticket_the_right_secret_and_appid() {
        let mut s = state(Rules::default());
        assert_eq!(
            s.component_token("wx134c8103faa5a59e", "secret", "made-up")
                .unwrap_err(),
            TICKET_INVALID
        );
        let t = s.issue_ticket();
        assert_eq!(
            s.component_token("wx134c8103faa5a59e", "wrong", &t)
                .unwrap_err(),
            INVALID_SECRET
        );
        assert_eq!(
            s.component_token("wx0000000000000000", "secret", &t)
                .unwrap_err(),
            INVALID_APPID
        );
        let ok = s
            .component_token("wx134c8103faa5a59e", "secret", &t)
            .unwrap();
        assert_eq!(ok["expires_in"], 7200);
        assert_eq!(s.stats.component_tokens_issued, 1);
    }

    #[test]
    fn tokens_expire_and_are_superseded_after_the_grace() {
        let mut s = state(short());
        let t = s.issue_ticket();
        let first = s
            .component_token("wx134c8103faa5a59e", "secret", &t)
            .unwrap()["component_access_token"]
            .as_str()
            .unwrap()
            .to_owned();
        assert!(s.check_token(Some(&first), TokenKind::Component).is_ok());
        let second = s
            .component_token("wx134c8103faa5a59e", "secret", &t)
            .unwrap()["component_access_token"]
            .as_str()
            .unwrap()
            .to_owned();
        // Within the grace both work; after it only the new one.
        assert!(s.check_token(Some(&first), TokenKind::Component).is_ok());
        std::thread::sleep(Duration::from_millis(150));
        assert_eq!(
            s.check_token(Some(&first), TokenKind::Component)
                .unwrap_err(),
            INVALID_CREDENTIAL
        );
        assert!(s.check_token(Some(&second), TokenKind::Component).is_ok());
        std::thread::sleep(Duration::from_millis(700));
        assert_eq!(
            s.check_token(Some(&second), TokenKind::Component)
                .unwrap_err(),
            TOKEN_EXPIRED
        );
        assert_eq!(
            s.check_token(None, TokenKind::Component).unwrap_err(),
            TOKEN_MISSING
        );
        assert_eq!(
            s.check_token(Some("nope"), TokenKind::Component)
                .unwrap_err(),
            INVALID_CREDENTIAL
        );
        // Superseded, expired and unknown tokens are counted; a missing one is not a token.
        assert_eq!(s.stats.rejected_token_calls, 3);
    }

    #[test]
    fn codes_are_single_use() {
        let mut s = state(Rules::default());
        let pre = s.create_pre_auth_code("wx134c8103faa5a59e").unwrap()["pre_auth_code"]
            .as_str()
            .unwrap()
            .to_owned();
        assert!(s.use_pre_auth_code("wx134c8103faa5a59e", &pre).is_ok());
        assert_eq!(
            s.use_pre_auth_code("wx134c8103faa5a59e", &pre).unwrap_err(),
            CODE_USED
        );
        let (a, code, existed) = s.authorize(None, false);
        assert!(!existed);
        let r = s.query_auth("wx134c8103faa5a59e", &code).unwrap();
        assert_eq!(
            r["authorization_info"]["authorizer_appid"],
            a.appid.as_str()
        );
        assert_eq!(
            s.query_auth("wx134c8103faa5a59e", &code).unwrap_err(),
            CODE_USED
        );
        assert_eq!(
            s.query_auth("wx134c8103faa5a59e", "unknown").unwrap_err(),
            CODE_INVALID
        );
    }

    #[test]
    fn authorizer_tokens_refresh_and_revocation() {
        let mut s = state(Rules::default());
        let (a, code, _) = s.authorize(None, false);
        let r = s.query_auth("wx134c8103faa5a59e", &code).unwrap();
        let refresh = r["authorization_info"]["authorizer_refresh_token"]
            .as_str()
            .unwrap()
            .to_owned();
        let token = r["authorization_info"]["authorizer_access_token"]
            .as_str()
            .unwrap()
            .to_owned();
        assert_eq!(
            s.check_token(Some(&token), TokenKind::Authorizer).unwrap(),
            Some(a.appid.clone())
        );
        // A component token cannot stand in for an authorizer token, nor the reverse.
        assert_eq!(
            s.check_token(Some(&token), TokenKind::Component)
                .unwrap_err(),
            WRONG_TOKEN_TYPE
        );
        assert_eq!(
            s.authorizer_token("wx134c8103faa5a59e", &a.appid, "wrong")
                .unwrap_err(),
            REFRESH_TOKEN_INVALID
        );
        assert!(
            s.authorizer_token("wx134c8103faa5a59e", &a.appid, &refresh)
                .is_ok()
        );
        assert_eq!(s.stats.authorizer_tokens_issued[&a.appid], 2);
        let list = s.authorizer_list("wx134c8103faa5a59e", 0, 500).unwrap();
        assert_eq!(list["list"][0]["refresh_token"], refresh.as_str());
        assert_eq!(
            s.authorizer_list("wx134c8103faa5a59e", 0, 501).unwrap_err(),
            INVALID_ARGS
        );
        assert!(s.revoke(&a.appid));
        assert_eq!(
            s.authorizer_token("wx134c8103faa5a59e", &a.appid, &refresh)
                .unwrap_err(),
            NOT_AUTHORIZED
        );
        assert_eq!(
            s.authorizer_info("wx134c8103faa5a59e", &a.appid)
                .unwrap_err(),
            NOT_AUTHORIZED
        );
        assert_eq!(
            s.authorizer_list("wx134c8103faa5a59e", 0, 10).unwrap()["total_count"],
            0
        );
    }

    #[test]
    fn daily_quota_gives_45009_until_cleared() {
        let mut s = state(Rules {
            daily_quota: 2,
            ..Rules::default()
        });
        assert!(s.count_call("api_x").is_ok());
        assert!(s.count_call("api_x").is_ok());
        assert_eq!(s.count_call("api_x").unwrap_err(), QUOTA_REACHED);
        assert!(s.count_call("api_y").is_ok());
        s.clear_quota();
        assert!(s.count_call("api_x").is_ok());
    }

    #[test]
    fn options_are_validated() {
        let mut s = state(Rules::default());
        assert_eq!(
            s.get_option("wxa", "voice_recognize").unwrap()["option_value"],
            "0"
        );
        assert!(s.set_option("wxa", "voice_recognize", "1").is_ok());
        assert_eq!(
            s.get_option("wxa", "voice_recognize").unwrap()["option_value"],
            "1"
        );
        assert_eq!(
            s.set_option("wxa", "voice_recognize", "2").unwrap_err(),
            INVALID_ARGS
        );
        assert_eq!(
            s.set_option("wxa", "nonsense", "1").unwrap_err(),
            INVALID_ARGS
        );
    }
}
