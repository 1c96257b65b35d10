//! Release jobs in Redis. A job's keys share one hash tag (`{r:<id>}`), so every change of an
//! account is one script, atomic on a cluster too:
//!
//! | key | what |
//! |---|---|
//! | `…:{p}:releases` | zset: job ids by creation time (ms) |
//! | `…:{p}:releases_open` | set: jobs not finished, and cancelled ones until their last events are published (the releases role works on these) |
//! | `…:{r:<id>}:job` | hash: `spec` (JSON), `status`, `status_reason`, `created_ms`, `finished_ms`, `total` |
//! | `…:{r:<id>}:acct` | hash: appid → [`AccountRecord`] (JSON) |
//! | `…:{r:<id>}:seq` | hash: appid → the record's version (every write is compare-and-set on it) |
//! | `…:{r:<id>}:in:<state>` | zset (lexical): the accounts in each state (counts are `ZCARD`s) |
//! | `…:{r:<id>}:all` | zset (lexical): every account of the job (the listing's cursor) |
//! | `…:{r:<id>}:due` | zset: appid → when its next step is due (ms); final accounts leave it |
//! | `…:{r:<id>}:running` | zset: appid → its holder's lease end (ms): the job's concurrency |
//! | `…:{r:<id>}:outbox` | list: `release.*` events waiting to be published |
//! | `…:{p}:release_audits` | hash: appid → the job whose audit WeChat reviews |
//! | `…:{p}:audit_result:<appid>` | the last audit result pushed for the account (30 days) |
//! | `…:{p}:release_quota` | hash: the platform's audit quota as last read, minus what was used since |

use super::account::{AccountRecord, AccountState};
use super::spec::ReleaseSpec;
use crate::redis::{Pool, RedisError, conn, failed};
use deadpool_redis::redis::{Script, cmd, pipe};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Moves one account (compare-and-set on its version). `KEYS`: acct, seq, due, running,
/// outbox, in:<from>, in:<to>. `ARGV`: appid, expected version, record JSON, from, to, due ms
/// ('' = leave the schedule), release the running slot ('1'; '0' keeps it, held until the due
/// time: an intent renews its holder's lease), event JSON ('' = none).
/// Returns 1 when written, 0 when the version moved on (someone else wrote it).
const TRANSITION: &str = r"
local seq = redis.call('HGET', KEYS[2], ARGV[1]) or '0'
if seq ~= ARGV[2] then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
redis.call('HINCRBY', KEYS[2], ARGV[1], 1)
if ARGV[4] ~= ARGV[5] then
  redis.call('ZREM', KEYS[6], ARGV[1])
  redis.call('ZADD', KEYS[7], 0, ARGV[1])
end
if ARGV[6] == '' then redis.call('ZREM', KEYS[3], ARGV[1]) else redis.call('ZADD', KEYS[3], ARGV[6], ARGV[1]) end
if ARGV[7] == '1' then
  redis.call('ZREM', KEYS[4], ARGV[1])
elseif ARGV[6] ~= '' then
  redis.call('ZADD', KEYS[4], 'XX', ARGV[6], ARGV[1])
end
if ARGV[8] ~= '' then redis.call('RPUSH', KEYS[5], ARGV[8]) end
return 1
";

/// Takes due accounts within the job's concurrency. `KEYS`: due, running. `ARGV`: now (ms),
/// lease (ms), concurrency, most to take. Expired holders free their slots; each account
/// taken holds a slot and is not due again before its lease ends.
const TAKE: &str = r"
local now = tonumber(ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
local free = tonumber(ARGV[3]) - redis.call('ZCARD', KEYS[2])
local n = math.min(free, tonumber(ARGV[4]))
if n <= 0 then return {} end
local items = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, n)
local until_ms = now + tonumber(ARGV[2])
for _, a in ipairs(items) do
  redis.call('ZADD', KEYS[2], until_ms, a)
  redis.call('ZADD', KEYS[1], until_ms, a)
end
return items
";

/// Takes one audit from the platform's quota. `KEYS`: quota hash. `ARGV`: now (ms), how old
/// the last reading may be (ms). Returns 1 taken, 0 none left, -1 the reading is too old (read
/// `queryquota` again first).
const RESERVE_QUOTA: &str = r"
local checked = tonumber(redis.call('HGET', KEYS[1], 'checked_ms') or '0')
local rest = tonumber(redis.call('HGET', KEYS[1], 'rest') or '0')
if rest > 0 then
  redis.call('HINCRBY', KEYS[1], 'rest', -1)
  return 1
end
if tonumber(ARGV[1]) - checked > tonumber(ARGV[2]) then return -1 end
return 0
";

/// How a job stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobStatus {
    Running,
    Paused,
    /// Cancelled by an operator: the releases role undoes the audits in review, then the job
    /// is `cancelled`.
    Cancelling,
    Cancelled,
    Finished,
}

impl JobStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Running => "running",
            Self::Paused => "paused",
            Self::Cancelling => "cancelling",
            Self::Cancelled => "cancelled",
            Self::Finished => "finished",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        [
            Self::Running,
            Self::Paused,
            Self::Cancelling,
            Self::Cancelled,
            Self::Finished,
        ]
        .into_iter()
        .find(|x| x.as_str() == s)
    }
}

/// A job as stored.
#[derive(Debug, Clone, Serialize)]
pub struct Job {
    pub id: String,
    pub spec: ReleaseSpec,
    pub status: JobStatus,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status_reason: Option<String>,
    pub created_ms: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub finished_ms: Option<i64>,
    pub total: u64,
}

/// An audit result as pushed by WeChat (`weapp_audit_*`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditResult {
    /// 0 passed, 1 failed, 4 delayed (`audit_status`).
    pub status: i64,
    #[serde(default)]
    pub reason: Option<String>,
    #[serde(default)]
    pub screenshots: Vec<String>,
    /// `SuccTime` / `FailTime` / `DelayTime` (unix seconds).
    pub at: i64,
}

/// What taking an audit from the quota gave.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reserved {
    Yes,
    /// None left as last read.
    NoneLeft,
    /// The reading is too old: read `queryquota` first.
    Stale,
}

/// Job ids: `r` and 12 hex digits.
pub fn is_job_id(s: &str) -> bool {
    s.len() == 13
        && s.starts_with('r')
        && s[1..]
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

pub fn new_job_id() -> String {
    format!("r{}", &uuid::Uuid::new_v4().simple().to_string()[..12])
}

/// Release jobs of one platform.
#[derive(Clone)]
pub struct ReleaseStore {
    pool: Pool,
    prefix: String,
}

impl ReleaseStore {
    pub fn new(pool: Pool, keys: &crate::redis::Keys) -> Self {
        Self {
            pool,
            prefix: keys.prefix().to_owned(),
        }
    }

    fn k(&self, id: &str, part: &str) -> String {
        format!("{}{{r:{id}}}:{part}", self.prefix)
    }

    fn p(&self, part: &str) -> String {
        format!("{}{{p}}:{part}", self.prefix)
    }

    /// Stores a new job and its accounts (running), then lists it.
    pub async fn create(
        &self,
        id: &str,
        spec: &ReleaseSpec,
        accounts: &[AccountRecord],
    ) -> Result<(), RedisError> {
        const WHAT: &str = "creating a release job";
        let mut c = conn(&self.pool, WHAT).await?;
        let now = crate::unix_now_ms();
        let spec_json = serde_json::to_string(spec).unwrap_or_default();
        for chunk in accounts.chunks(500) {
            let mut p = pipe();
            for a in chunk {
                let json = serde_json::to_string(a).unwrap_or_default();
                p.hset(self.k(id, "acct"), &a.appid, json).ignore();
                p.hset(self.k(id, "seq"), &a.appid, 0).ignore();
                p.zadd(self.k(id, &format!("in:{}", a.state)), &a.appid, 0)
                    .ignore();
                p.zadd(self.k(id, "all"), &a.appid, 0).ignore();
                if !a.state.is_final() {
                    p.zadd(self.k(id, "due"), &a.appid, now).ignore();
                }
            }
            p.query_async::<()>(&mut c).await.map_err(failed(WHAT))?;
        }
        cmd("HSET")
            .arg(self.k(id, "job"))
            .arg(&[
                ("spec", spec_json),
                ("status", JobStatus::Running.as_str().to_owned()),
                ("created_ms", now.to_string()),
                ("total", accounts.len().to_string()),
            ])
            .query_async::<()>(&mut c)
            .await
            .map_err(failed(WHAT))?;
        let mut p = pipe();
        p.zadd(self.p("releases"), id, now).ignore();
        p.sadd(self.p("releases_open"), id).ignore();
        p.query_async::<()>(&mut c).await.map_err(failed(WHAT))
    }

    /// Every job id, newest first.
    pub async fn job_ids(&self) -> Result<Vec<String>, RedisError> {
        let mut c = conn(&self.pool, "listing release jobs").await?;
        cmd("ZRANGE")
            .arg(self.p("releases"))
            .arg(0)
            .arg(-1)
            .arg("REV")
            .query_async(&mut c)
            .await
            .map_err(failed("listing release jobs"))
    }

    /// The jobs not finished yet.
    pub async fn open_jobs(&self) -> Result<Vec<String>, RedisError> {
        let mut c = conn(&self.pool, "listing open release jobs").await?;
        cmd("SMEMBERS")
            .arg(self.p("releases_open"))
            .query_async(&mut c)
            .await
            .map_err(failed("listing open release jobs"))
    }

    pub async fn job(&self, id: &str) -> Result<Option<Job>, RedisError> {
        let mut c = conn(&self.pool, "reading a release job").await?;
        let h: BTreeMap<String, String> = cmd("HGETALL")
            .arg(self.k(id, "job"))
            .query_async(&mut c)
            .await
            .map_err(failed("reading a release job"))?;
        let spec = h.get("spec").and_then(|s| serde_json::from_str(s).ok());
        let status = h.get("status").and_then(|s| JobStatus::parse(s));
        let (Some(spec), Some(status)) = (spec, status) else {
            return Ok(None);
        };
        let int = |k: &str| h.get(k).and_then(|v| v.parse::<i64>().ok());
        Ok(Some(Job {
            id: id.to_owned(),
            spec,
            status,
            status_reason: h.get("status_reason").cloned(),
            created_ms: int("created_ms").unwrap_or(0),
            finished_ms: int("finished_ms"),
            total: int("total").unwrap_or(0) as u64,
        }))
    }

    /// Replaces a job's spec (an operator released a manual job).
    pub async fn update_spec(&self, id: &str, spec: &ReleaseSpec) -> Result<(), RedisError> {
        let mut c = conn(&self.pool, "updating a release job").await?;
        cmd("HSET")
            .arg(self.k(id, "job"))
            .arg("spec")
            .arg(serde_json::to_string(spec).unwrap_or_default())
            .query_async::<()>(&mut c)
            .await
            .map_err(failed("updating a release job"))
    }

    /// Sets a job's status (and why); a finished job leaves the open set.
    pub async fn set_status(
        &self,
        id: &str,
        status: JobStatus,
        reason: Option<&str>,
    ) -> Result<(), RedisError> {
        const WHAT: &str = "setting a release job's status";
        let mut c = conn(&self.pool, WHAT).await?;
        let mut p = pipe();
        p.hset(self.k(id, "job"), "status", status.as_str())
            .ignore();
        match reason {
            Some(r) => p.hset(self.k(id, "job"), "status_reason", r).ignore(),
            None => p.hdel(self.k(id, "job"), "status_reason").ignore(),
        };
        if matches!(status, JobStatus::Finished | JobStatus::Cancelled) {
            p.hset(self.k(id, "job"), "finished_ms", crate::unix_now_ms())
                .ignore();
        } else {
            p.hdel(self.k(id, "job"), "finished_ms").ignore();
        }
        p.query_async::<()>(&mut c).await.map_err(failed(WHAT))?;
        // A finished job has no event left to publish (the role finishes a job only then); a
        // cancelled one stays open until the role has published its last events ([`close`]).
        let mut p = pipe();
        if status == JobStatus::Finished {
            p.srem(self.p("releases_open"), id).ignore();
        } else {
            p.sadd(self.p("releases_open"), id).ignore();
        }
        p.query_async::<()>(&mut c).await.map_err(failed(WHAT))
    }

    /// Takes a cancelled job whose events are all published off the open set.
    pub async fn close(&self, id: &str) -> Result<(), RedisError> {
        let mut c = conn(&self.pool, "closing a release job").await?;
        cmd("SREM")
            .arg(self.p("releases_open"))
            .arg(id)
            .query_async::<()>(&mut c)
            .await
            .map_err(failed("closing a release job"))
    }

    /// Accounts due now, within the job's `concurrency` (across replicas); each is held for
    /// `lease_ms`.
    pub async fn take_due(
        &self,
        id: &str,
        lease_ms: i64,
        concurrency: u32,
        most: usize,
    ) -> Result<Vec<String>, RedisError> {
        let mut c = conn(&self.pool, "taking due release steps").await?;
        Script::new(TAKE)
            .key(self.k(id, "due"))
            .key(self.k(id, "running"))
            .arg(crate::unix_now_ms())
            .arg(lease_ms)
            .arg(concurrency)
            .arg(most)
            .invoke_async(&mut c)
            .await
            .map_err(failed("taking due release steps"))
    }

    /// One account's record and its version.
    pub async fn account(
        &self,
        id: &str,
        appid: &str,
    ) -> Result<Option<(AccountRecord, u64)>, RedisError> {
        let mut c = conn(&self.pool, "reading a release account").await?;
        let (json, seq): (Option<String>, Option<u64>) = pipe()
            .hget(self.k(id, "acct"), appid)
            .hget(self.k(id, "seq"), appid)
            .query_async(&mut c)
            .await
            .map_err(failed("reading a release account"))?;
        Ok(json
            .and_then(|j| serde_json::from_str(&j).ok())
            .map(|r| (r, seq.unwrap_or(0))))
    }

    /// Writes `to` over the record at version `seq` (from state `from`): scheduled at `due_ms`
    /// (`None`: off the schedule), the running slot freed when `done`, `event` queued for
    /// publishing. `false`: the version moved on, nothing written.
    #[allow(clippy::too_many_arguments)]
    pub async fn transition(
        &self,
        id: &str,
        seq: u64,
        from: AccountState,
        to: &AccountRecord,
        due_ms: Option<i64>,
        done: bool,
        event: Option<&str>,
    ) -> Result<bool, RedisError> {
        const WHAT: &str = "writing a release account";
        let mut c = conn(&self.pool, WHAT).await?;
        let n: i64 = Script::new(TRANSITION)
            .key(self.k(id, "acct"))
            .key(self.k(id, "seq"))
            .key(self.k(id, "due"))
            .key(self.k(id, "running"))
            .key(self.k(id, "outbox"))
            .key(self.k(id, &format!("in:{from}")))
            .key(self.k(id, &format!("in:{}", to.state)))
            .arg(&to.appid)
            .arg(seq.to_string())
            .arg(serde_json::to_string(to).unwrap_or_default())
            .arg(from.as_str())
            .arg(to.state.as_str())
            .arg(due_ms.map(|d| d.to_string()).unwrap_or_default())
            .arg(if done { "1" } else { "0" })
            .arg(event.unwrap_or(""))
            .invoke_async(&mut c)
            .await
            .map_err(failed(WHAT))?;
        Ok(n == 1)
    }

    /// Frees an account's running slot and schedules its next look at `due_ms`.
    pub async fn reschedule(&self, id: &str, appid: &str, due_ms: i64) -> Result<(), RedisError> {
        const WHAT: &str = "rescheduling a release account";
        let mut c = conn(&self.pool, WHAT).await?;
        let mut p = pipe();
        p.atomic()
            .zadd(self.k(id, "due"), appid, due_ms)
            .ignore()
            .zrem(self.k(id, "running"), appid)
            .ignore();
        p.query_async::<()>(&mut c).await.map_err(failed(WHAT))
    }

    /// Makes a scheduled account due now (an audit result arrived).
    pub async fn poke(&self, id: &str, appid: &str) -> Result<(), RedisError> {
        let mut c = conn(&self.pool, "poking a release account").await?;
        cmd("ZADD")
            .arg(self.k(id, "due"))
            .arg("XX")
            .arg(crate::unix_now_ms())
            .arg(appid)
            .query_async::<()>(&mut c)
            .await
            .map_err(failed("poking a release account"))
    }

    /// Accounts per state.
    pub async fn counts(&self, id: &str) -> Result<BTreeMap<AccountState, u64>, RedisError> {
        let mut c = conn(&self.pool, "counting release accounts").await?;
        let mut p = pipe();
        for s in AccountState::ALL {
            p.zcard(self.k(id, &format!("in:{s}")));
        }
        let n: Vec<u64> = p
            .query_async(&mut c)
            .await
            .map_err(failed("counting release accounts"))?;
        Ok(AccountState::ALL.into_iter().zip(n).collect())
    }

    /// How many accounts are due now or later, and how many hold a running slot.
    pub async fn scheduled(&self, id: &str) -> Result<(u64, u64), RedisError> {
        let mut c = conn(&self.pool, "counting scheduled release accounts").await?;
        pipe()
            .zcard(self.k(id, "due"))
            .zcard(self.k(id, "running"))
            .query_async(&mut c)
            .await
            .map_err(failed("counting scheduled release accounts"))
    }

    /// How many accounts were due before `before_ms` and are still waiting (none works on them).
    pub async fn overdue(&self, id: &str, before_ms: i64) -> Result<u64, RedisError> {
        let mut c = conn(&self.pool, "counting overdue release accounts").await?;
        cmd("ZCOUNT")
            .arg(self.k(id, "due"))
            .arg("-inf")
            .arg(before_ms)
            .query_async(&mut c)
            .await
            .map_err(failed("counting overdue release accounts"))
    }

    /// Up to `limit` accounts after `cursor` (an appid), in `state` or in any; the next cursor.
    pub async fn accounts(
        &self,
        id: &str,
        state: Option<AccountState>,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<(Vec<AccountRecord>, Option<String>), RedisError> {
        const WHAT: &str = "listing release accounts";
        let mut c = conn(&self.pool, WHAT).await?;
        let set = match state {
            Some(s) => self.k(id, &format!("in:{s}")),
            None => self.k(id, "all"),
        };
        let start = match cursor {
            Some(a) => format!("({a}"),
            None => "-".to_owned(),
        };
        let appids: Vec<String> = cmd("ZRANGEBYLEX")
            .arg(&set)
            .arg(start)
            .arg("+")
            .arg("LIMIT")
            .arg(0)
            .arg(limit + 1)
            .query_async(&mut c)
            .await
            .map_err(failed(WHAT))?;
        let more = appids.len() > limit;
        let page = &appids[..appids.len().min(limit)];
        if page.is_empty() {
            return Ok((Vec::new(), None));
        }
        let json: Vec<Option<String>> = cmd("HMGET")
            .arg(self.k(id, "acct"))
            .arg(page)
            .query_async(&mut c)
            .await
            .map_err(failed(WHAT))?;
        let records = json
            .into_iter()
            .flatten()
            .filter_map(|j| serde_json::from_str(&j).ok())
            .collect();
        Ok((records, more.then(|| page[page.len() - 1].clone())))
    }

    /// Up to `limit` queued events (oldest first).
    pub async fn outbox(&self, id: &str, limit: usize) -> Result<Vec<String>, RedisError> {
        let mut c = conn(&self.pool, "reading release events").await?;
        cmd("LRANGE")
            .arg(self.k(id, "outbox"))
            .arg(0)
            .arg(limit as i64 - 1)
            .query_async(&mut c)
            .await
            .map_err(failed("reading release events"))
    }

    /// Drops the `n` oldest queued events (published).
    pub async fn outbox_done(&self, id: &str, n: usize) -> Result<(), RedisError> {
        let mut c = conn(&self.pool, "trimming release events").await?;
        cmd("LTRIM")
            .arg(self.k(id, "outbox"))
            .arg(n)
            .arg(-1)
            .query_async::<()>(&mut c)
            .await
            .map_err(failed("trimming release events"))
    }

    /// The key of a job's lock `name` (the outbox's publisher), for [`crate::redis::lock`].
    pub fn lock_key(&self, id: &str, name: &str) -> String {
        self.k(id, &format!("lock:{name}"))
    }

    /// Records that `appid`'s audit is reviewed for job `id` (or forgets it).
    pub async fn watch_audit(&self, appid: &str, id: Option<&str>) -> Result<(), RedisError> {
        let mut c = conn(&self.pool, "indexing an audit").await?;
        let mut k = cmd(if id.is_some() { "HSET" } else { "HDEL" });
        k.arg(self.p("release_audits")).arg(appid);
        if let Some(id) = id {
            k.arg(id);
        }
        k.query_async::<()>(&mut c)
            .await
            .map_err(failed("indexing an audit"))
    }

    /// The job reviewing `appid`'s audit.
    pub async fn audit_job(&self, appid: &str) -> Result<Option<String>, RedisError> {
        let mut c = conn(&self.pool, "reading the audit index").await?;
        cmd("HGET")
            .arg(self.p("release_audits"))
            .arg(appid)
            .query_async(&mut c)
            .await
            .map_err(failed("reading the audit index"))
    }

    /// Forgets `appid`'s last audit result (a new audit is about to be submitted: a result
    /// stored from now on is this one's).
    pub async fn forget_audit_result(&self, appid: &str) -> Result<(), RedisError> {
        let mut c = conn(&self.pool, "forgetting an audit result").await?;
        cmd("DEL")
            .arg(self.p(&format!("audit_result:{appid}")))
            .query_async::<()>(&mut c)
            .await
            .map_err(failed("forgetting an audit result"))
    }

    /// Stores the latest audit result pushed for `appid` (kept 30 days).
    pub async fn save_audit_result(&self, appid: &str, r: &AuditResult) -> Result<(), RedisError> {
        let mut c = conn(&self.pool, "storing an audit result").await?;
        cmd("SET")
            .arg(self.p(&format!("audit_result:{appid}")))
            .arg(serde_json::to_string(r).unwrap_or_default())
            .arg("EX")
            .arg(30 * 86_400)
            .query_async::<()>(&mut c)
            .await
            .map_err(failed("storing an audit result"))
    }

    pub async fn audit_result(&self, appid: &str) -> Result<Option<AuditResult>, RedisError> {
        let mut c = conn(&self.pool, "reading an audit result").await?;
        let v: Option<String> = cmd("GET")
            .arg(self.p(&format!("audit_result:{appid}")))
            .query_async(&mut c)
            .await
            .map_err(failed("reading an audit result"))?;
        Ok(v.and_then(|j| serde_json::from_str(&j).ok()))
    }

    /// Takes one audit from the platform's quota as last read (see [`Reserved`]); a reading
    /// older than `max_age_ms` with none left asks for a new one.
    pub async fn reserve_audit(&self, max_age_ms: i64) -> Result<Reserved, RedisError> {
        let mut c = conn(&self.pool, "reserving an audit").await?;
        let n: i64 = Script::new(RESERVE_QUOTA)
            .key(self.p("release_quota"))
            .arg(crate::unix_now_ms())
            .arg(max_age_ms)
            .invoke_async(&mut c)
            .await
            .map_err(failed("reserving an audit"))?;
        Ok(match n {
            1 => Reserved::Yes,
            0 => Reserved::NoneLeft,
            _ => Reserved::Stale,
        })
    }

    /// The key of the lock of `queryquota` readings (one replica reads at a time, so that no
    /// reading overwrites audits taken since another).
    pub fn quota_lock_key(&self) -> String {
        self.p("lock:release_quota")
    }

    /// Stores a `queryquota` reading.
    pub async fn save_quota(&self, q: &crate::wechat::code::AuditQuota) -> Result<(), RedisError> {
        let mut c = conn(&self.pool, "storing the audit quota").await?;
        cmd("HSET")
            .arg(self.p("release_quota"))
            .arg(&[
                ("rest", q.rest.to_string()),
                ("limit", q.limit.to_string()),
                ("speedup_rest", q.speedup_rest.to_string()),
                ("speedup_limit", q.speedup_limit.to_string()),
                ("checked_ms", crate::unix_now_ms().to_string()),
            ])
            .query_async::<()>(&mut c)
            .await
            .map_err(failed("storing the audit quota"))
    }

    /// The quota as last read, minus what was used since: `{rest, limit, …, checked_ms}`.
    pub async fn quota(&self) -> Result<BTreeMap<String, i64>, RedisError> {
        let mut c = conn(&self.pool, "reading the audit quota").await?;
        let h: BTreeMap<String, String> = cmd("HGETALL")
            .arg(self.p("release_quota"))
            .query_async(&mut c)
            .await
            .map_err(failed("reading the audit quota"))?;
        Ok(h.into_iter()
            .filter_map(|(k, v)| v.parse().ok().map(|v| (k, v)))
            .collect())
    }

    /// Records that WeChat answered 85085: none left, whatever the last reading said.
    pub async fn quota_used_up(&self) -> Result<(), RedisError> {
        let mut c = conn(&self.pool, "storing the audit quota").await?;
        cmd("HSET")
            .arg(self.p("release_quota"))
            .arg("rest")
            .arg(0)
            .arg("checked_ms")
            .arg(crate::unix_now_ms())
            .query_async::<()>(&mut c)
            .await
            .map_err(failed("storing the audit quota"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_ids_are_checked() {
        let id = new_job_id();
        assert!(is_job_id(&id), "{id}");
        for bad in [
            "",
            "r",
            "r0123456789ab}",
            "r0123456789aB",
            "x0123456789ab",
            "r0123456789abc",
            "r01234567{89a",
        ] {
            assert!(!is_job_id(bad), "{bad}");
        }
    }
}
