//! Web login on behalf of Official Accounts (代公众号发起网页授权, protocol.md §9), hosted by
//! the platform: the ingress's `/oauth/{appid}/start` records a single-use **state** (which
//! account, which team, where to send the user back, which scope) and sends the user to WeChat;
//! `/oauth/callback` takes the state, exchanges WeChat's code with the component token and
//! records who logged in under a single-use **result code**, the only thing the user's browser
//! carries back to the team's page; the team's server redeems it through the gateway
//! (`POST /v1/oauth/result`). No token and no openid ever travels in a URL, and nothing here
//! keeps a user's token: `sns/userinfo` is read once at the callback.

use crate::redis::{Keys, Pool, RedisError, conn, failed};
use deadpool_redis::redis::AsyncCommands;
use serde::{Deserialize, Serialize};

/// How long a started login may take to come back from WeChat.
pub const STATE_TTL_SECS: u64 = 600;
/// How long a result code waits for the team's server.
pub const RESULT_TTL_SECS: u64 = 300;

/// `snsapi_base` (silent: the openid only) or `snsapi_userinfo` (the user confirms; the
/// profile too).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum LoginScope {
    #[serde(rename = "snsapi_base")]
    Base,
    #[serde(rename = "snsapi_userinfo")]
    UserInfo,
}

impl LoginScope {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "snsapi_base" => Some(Self::Base),
            "snsapi_userinfo" => Some(Self::UserInfo),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Base => "snsapi_base",
            Self::UserInfo => "snsapi_userinfo",
        }
    }
}

/// A login started on the ingress.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoginState {
    pub appid: String,
    /// The team whose `return_to` prefix allowed it: only that team may redeem the result.
    pub team: String,
    /// The id of the key whose prefix matched (for the logs).
    pub key_id: String,
    /// Where the user goes back, as checked (re-serialised).
    pub return_to: String,
    pub scope: LoginScope,
    pub created_at: i64,
}

/// Who logged in, as the team redeems it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoginResult {
    pub appid: String,
    pub team: String,
    pub openid: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unionid: Option<String>,
    pub scope: LoginScope,
    /// `sns/userinfo`'s answer, for `snsapi_userinfo`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user_info: Option<serde_json::Value>,
    /// 1 for a user on a snapshot page (朋友圈快照页), who has not really logged in.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub is_snapshotuser: Option<i64>,
    pub logged_in_at: i64,
}

/// What redeeming a result code found.
#[derive(Debug, Clone, PartialEq)]
pub enum Redeemed {
    Result(Box<LoginResult>),
    /// Unknown, expired or already redeemed.
    Gone,
    /// Another team's code: left for its owner.
    OtherTeam,
}

/// A fresh single-use value: 128 random bits, hex.
fn fresh() -> String {
    hex::encode(rand::random::<[u8; 16]>())
}

/// A state or result code as we issue them (32 hex digits): anything else is not looked up.
pub fn well_formed(value: &str) -> bool {
    value.len() == 32 && value.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Takes `KEYS[1]` if its JSON's `team` is `ARGV[1]` (any team when empty): {1, value}, {2, ''}
/// for another team's, {0, ''} for none.
const REDEEM: &str = r"
local v = redis.call('GET', KEYS[1])
if not v then return {0, ''} end
local ok, t = pcall(cjson.decode, v)
if ok and ARGV[1] ~= '' and t['team'] ~= ARGV[1] then return {2, ''} end
redis.call('DEL', KEYS[1])
return {1, v}
";

/// The web logins of one platform in Redis.
#[derive(Clone)]
pub struct WebLogins {
    pool: Pool,
    keys: Keys,
}

impl WebLogins {
    pub fn new(pool: Pool, keys: Keys) -> Self {
        Self { pool, keys }
    }

    /// Records a started login; returns its state.
    pub async fn begin(&self, login: &LoginState) -> Result<String, RedisError> {
        let state = fresh();
        let mut c = conn(&self.pool, "starting a web login").await?;
        let _: () = c
            .set_ex(
                self.keys.oauth_state(&state),
                serde_json::to_string(login).unwrap_or_default(),
                STATE_TTL_SECS,
            )
            .await
            .map_err(failed("starting a web login"))?;
        Ok(state)
    }

    /// Takes a state (once: a replay finds nothing).
    pub async fn take_state(&self, state: &str) -> Result<Option<LoginState>, RedisError> {
        if !well_formed(state) {
            return Ok(None);
        }
        let mut c = conn(&self.pool, "taking a web login state").await?;
        let v: Option<String> = deadpool_redis::redis::cmd("GETDEL")
            .arg(self.keys.oauth_state(state))
            .query_async(&mut c)
            .await
            .map_err(failed("taking a web login state"))?;
        Ok(v.and_then(|v| serde_json::from_str(&v).ok()))
    }

    /// Records who logged in; returns the one-time result code.
    pub async fn put_result(&self, result: &LoginResult) -> Result<String, RedisError> {
        let code = fresh();
        let mut c = conn(&self.pool, "recording a web login").await?;
        let _: () = c
            .set_ex(
                self.keys.oauth_result(&code),
                serde_json::to_string(result).unwrap_or_default(),
                RESULT_TTL_SECS,
            )
            .await
            .map_err(failed("recording a web login"))?;
        Ok(code)
    }

    /// Redeems a result code for `team` (`None`: the admin token, any team's), once.
    pub async fn redeem(&self, code: &str, team: Option<&str>) -> Result<Redeemed, RedisError> {
        if !well_formed(code) {
            return Ok(Redeemed::Gone);
        }
        let mut c = conn(&self.pool, "redeeming a web login").await?;
        let (n, value): (i64, String) = deadpool_redis::redis::Script::new(REDEEM)
            .key(self.keys.oauth_result(code))
            .arg(team.unwrap_or(""))
            .invoke_async(&mut c)
            .await
            .map_err(failed("redeeming a web login"))?;
        Ok(match n {
            1 => serde_json::from_str(&value)
                .map(|r| Redeemed::Result(Box::new(r)))
                .unwrap_or(Redeemed::Gone),
            2 => Redeemed::OtherTeam,
            _ => Redeemed::Gone,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_our_own_values_are_looked_up() {
        assert!(well_formed(&fresh()));
        for bad in [
            "",
            "x",
            "../../etc",
            &"a".repeat(33),
            "0123456789abcdef0123456789abcdeg",
            "*",
        ] {
            assert!(!well_formed(bad), "{bad}");
        }
    }

    #[test]
    fn scopes_are_wechats_names() {
        for s in ["snsapi_base", "snsapi_userinfo"] {
            assert_eq!(LoginScope::parse(s).map(LoginScope::as_str), Some(s));
        }
        assert_eq!(LoginScope::parse("snsapi_login"), None);
        assert_eq!(
            serde_json::to_string(&LoginScope::UserInfo).unwrap(),
            "\"snsapi_userinfo\""
        );
    }
}
