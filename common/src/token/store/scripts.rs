//! The Lua scripts of the token store: each check-and-write is one script, so it is atomic
//! (and a fenced write cannot interleave with a lock's expiry).

/// Writes `ARGV[2]` to `KEYS[2]` expiring at `ARGV[3]` (unix ms), if `KEYS[1]` holds `ARGV[1]`.
pub(super) const SET_IF_HELD: &str = r"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[2], ARGV[2], 'PXAT', ARGV[3])
return 1
";

/// Deletes `KEYS[1]` if its JSON's `access_token` is still `ARGV[1]` (compare-and-invalidate).
pub(super) const DEL_IF_TOKEN: &str = r"
local v = redis.call('GET', KEYS[1])
if not v then return 0 end
local ok, t = pcall(cjson.decode, v)
if ok and t['access_token'] == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
";

/// Records a failure of the component token: `KEYS[1]` = failures hash; `ARGV` = now (ms),
/// base delay (ms), cap (ms), the error (one line, no secret). Returns the next attempt time.
pub(super) const RECORD_COMPONENT_FAILURE: &str = r"
local n = redis.call('HINCRBY', KEYS[1], 'failures', 1)
local delay = math.min(tonumber(ARGV[2]) * 2 ^ math.min(n - 1, 30), tonumber(ARGV[3]))
local next_at = tonumber(ARGV[1]) + math.floor(delay)
redis.call('HSET', KEYS[1], 'next_at_ms', next_at, 'last_error', ARGV[4], 'last_at_ms', ARGV[1])
return next_at
";

/// Restores an account learnt from the list: `KEYS` = record, known set, due set; `ARGV` =
/// appid, refresh token, due (ms). A revoked account is left alone. The refresh token is
/// stored unless the account has one (`HSETNX`: a working one is never replaced) or it is the
/// one WeChat refused (61023); a restored account that was `refresh_failing` is active again.
/// The account is scheduled at the given due time when its refresh token was just restored,
/// or — if it is not scheduled at all — when it has no access token. Deciding on the token in
/// the same script as the scheduling matters: read first and scheduled after, a refresh that
/// landed in between had its due time pulled back to now, and the token was refreshed twice
/// in one window (the Redis Cluster test caught it). Returns 1 when it restored the refresh
/// token, else 0.
pub(super) const RESTORE_ACCOUNT: &str = r"
if redis.call('HGET', KEYS[1], 'status') == 'revoked' then return 0 end
redis.call('HSETNX', KEYS[1], 'appid', ARGV[1])
redis.call('SADD', KEYS[2], ARGV[1])
local restored = 0
if redis.call('HGET', KEYS[1], 'refused_refresh_token') ~= ARGV[2]
  and redis.call('HSETNX', KEYS[1], 'refresh_token', ARGV[2]) == 1 then
  restored = 1
  if redis.call('HGET', KEYS[1], 'status') == 'refresh_failing' then
    redis.call('HSET', KEYS[1], 'status', 'active')
  end
  redis.call('HDEL', KEYS[1], 'refused_refresh_token')
end
if restored == 1 then
  redis.call('ZADD', KEYS[3], tonumber(ARGV[3]), ARGV[1])
else
  local token = redis.call('HGET', KEYS[1], 'access_token')
  if not token or token == '' then
    redis.call('ZADD', KEYS[3], 'NX', tonumber(ARGV[3]), ARGV[1])
  end
end
return restored
";

/// Takes the due accounts: every appid of `KEYS[1]` (due set) due at `ARGV[1]` (now, ms), at
/// most `ARGV[2]`, is rescheduled *before* it is refreshed, at now + `ARGV[3]` · 2^(attempts−1)
/// capped at `ARGV[4]` (ms), counting attempts in `KEYS[2]`. Whatever the refresh then does —
/// succeed (its fenced write sets the real due time and clears the attempts), fail, or never
/// finish — the account has left the head of the set: a failing account cannot hold back the
/// others, and each is taken by one replica per backoff window.
pub(super) const TAKE_DUE: &str = r"
local ids = redis.call('ZRANGE', KEYS[1], '-inf', ARGV[1], 'BYSCORE', 'LIMIT', 0, ARGV[2])
for _, id in ipairs(ids) do
  local n = redis.call('HINCRBY', KEYS[2], id, 1)
  local delay = math.min(tonumber(ARGV[3]) * 2 ^ math.min(n - 1, 30), tonumber(ARGV[4]))
  redis.call('ZADD', KEYS[1], tonumber(ARGV[1]) + math.floor(delay), id)
end
return ids
";

/// Fenced write of an authorizer's tokens: `KEYS` = lock, record, due set, known set, attempts,
/// ticket due set;
/// `ARGV` = lock value, appid, access token, expires_at, refresh token ('' keeps the old one),
/// now, due (ms), the refresh token the grant was obtained with ('' for a fresh authorization).
/// Returns 0 when the lock is no longer ours, -1 when the account changed under the call —
/// revoked (its refresh token deleted), re-authorized (a new refresh token) or its token
/// refused — so a refresh in flight can never bring a revoked account back or overwrite a
/// newer refresh token; 1 when written, or when this very token is stored already (a write
/// repeated after a lost answer counts once). A written account is put on the ticket schedule
/// if it is not there (the ticket step decides whether it needs JS-SDK tickets): so tickets
/// come back with the tokens after Redis lost them.
pub(super) const WRITE_AUTHORIZER_IF_HELD: &str = r"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
if redis.call('HGET', KEYS[2], 'access_token') == ARGV[3] then return 1 end
if ARGV[8] ~= '' and redis.call('HGET', KEYS[2], 'refresh_token') ~= ARGV[8] then return -1 end
if redis.call('HGET', KEYS[2], 'status') == 'revoked' then return -1 end
redis.call('HSET', KEYS[2], 'appid', ARGV[2], 'status', 'active', 'access_token', ARGV[3],
  'expires_at', ARGV[4], 'last_refresh', ARGV[6])
redis.call('HDEL', KEYS[2], 'last_error')
if ARGV[5] ~= '' then redis.call('HSET', KEYS[2], 'refresh_token', ARGV[5]) end
redis.call('HINCRBY', KEYS[2], 'refreshes', 1)
redis.call('ZADD', KEYS[3], ARGV[7], ARGV[2])
redis.call('SADD', KEYS[4], ARGV[2])
redis.call('HDEL', KEYS[5], ARGV[2])
redis.call('ZADD', KEYS[6], 'NX', tonumber(ARGV[6]) * 1000, ARGV[2])
return 1
";

/// Sets an account's status and last error (`KEYS[1]` = record; `ARGV` = appid, status,
/// error), unless it is revoked: only an authorization brings a revoked account back.
pub(super) const MARK_UNLESS_REVOKED: &str = r"
if redis.call('HGET', KEYS[1], 'status') == 'revoked' then return 0 end
redis.call('HSET', KEYS[1], 'appid', ARGV[1], 'status', ARGV[2], 'last_error', ARGV[3])
return 1
";

/// 61023 for the refresh token `ARGV[1]`: set it aside, unless the account has another one by
/// now (`KEYS` = record, due set, attempts; `ARGV` = refused token, appid, error).
pub(super) const REFUSE_REFRESH_TOKEN: &str = r"
if redis.call('HGET', KEYS[1], 'refresh_token') ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'status', 'refresh_failing', 'last_error', ARGV[3],
  'refused_refresh_token', ARGV[1])
redis.call('HDEL', KEYS[1], 'refresh_token')
redis.call('ZREM', KEYS[2], ARGV[2])
redis.call('HDEL', KEYS[3], ARGV[2])
return 1
";

/// Deletes the access token if it is still `ARGV[1]` (`KEYS[1]` = record).
pub(super) const INVALIDATE_AUTHORIZER_TOKEN: &str = r"
if redis.call('HGET', KEYS[1], 'access_token') == ARGV[1] then
  redis.call('HDEL', KEYS[1], 'access_token', 'expires_at')
  return 1
end
return 0
";

/// Fenced write of an account's JS-SDK tickets: `KEYS` = lock, tickets hash, ticket due set,
/// ticket attempts, the account's record; `ARGV` = lock value, appid, now (s), margin (ms),
/// jitter (ms), soonest (ms), the next due time (ms) of the kinds not fetched now (0: none), n,
/// probe (ms), then n triples (kind, ticket, expires_in).
///
/// WeChat hands the same ticket back with a fresh-looking `expires_in` while it is valid, and a
/// new one only once it died; anyone calling `getticket` for the account (its own server, an
/// earlier platform) may have started it. So each stored ticket carries a lower bound of its
/// real expiry (`{kind}_expires_at`) and whether we saw it born (`{kind}_certain`):
/// * the same ticket again: its expiry is kept (never later than the answer allows); it is
///   asked for next a margin before that expiry, or — inside the margin — a second after it;
///   one that outlived its expiry (born later than we could tell) again after as long again as
///   it has outlived it (1, 2, 4, … s after), so the rotation is seen within half the error and
///   the next birth is placed closer;
/// * a different ticket (a rotation): it was born after the previous one died — after that
///   one's expiry if that was certain, and anyway after its last fetch — so its expiry is that
///   birth + its lifetime, and it is certain; next asked for a margin (and a jitter) before;
/// * a first ticket (none stored: a new account, or Redis lost it): its age is unknown; it is
///   served until now + its lifetime and scheduled like a new one, and while pages use it the
///   serving side pulls its next fetch to a `probe` after the last one
///   ([`PULL_TICKET_PROBE`]), until WeChat rotates it.
///
/// Never sooner than `soonest` from now. Returns {0} when the lock is no longer ours, {-1} when
/// the account was revoked meanwhile (its tickets dropped), else {1, expiries…}.
pub(super) const WRITE_TICKETS_IF_HELD: &str = r"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return {0} end
if redis.call('HGET', KEYS[5], 'status') == 'revoked' then
  redis.call('DEL', KEYS[2])
  redis.call('ZREM', KEYS[3], ARGV[2])
  redis.call('HDEL', KEYS[4], ARGV[2])
  return {-1}
end
local now = tonumber(ARGV[3])
local probe = tonumber(ARGV[9])
local out = {1}
local due = nil
if tonumber(ARGV[7]) > 0 then due = tonumber(ARGV[7]) end
for i = 0, tonumber(ARGV[8]) - 1 do
  local kind, ticket, life = ARGV[10 + i * 3], ARGV[11 + i * 3], tonumber(ARGV[12 + i * 3])
  local stored = redis.call('HGET', KEYS[2], kind)
  local certain = redis.call('HGET', KEYS[2], kind .. '_certain') == '1'
  local exp, next_ms
  if stored == ticket then
    exp = now + life
    local kept = tonumber(redis.call('HGET', KEYS[2], kind .. '_expires_at'))
    if kept and kept < exp then exp = kept end
    if exp < now then
      next_ms = (now + math.max(1, now - exp)) * 1000
    elseif (exp - now) * 1000 > tonumber(ARGV[4]) then
      next_ms = exp * 1000 - tonumber(ARGV[4]) - tonumber(ARGV[5])
    else
      next_ms = (exp + 1) * 1000
    end
  elseif stored then
    local birth = tonumber(redis.call('HGET', KEYS[2], kind .. '_fetched_at')) or now
    local died = tonumber(redis.call('HGET', KEYS[2], kind .. '_expires_at')) or 0
    if certain and died > birth then birth = died end
    if birth > now then birth = now end
    exp = birth + life
    redis.call('HSET', KEYS[2], kind, ticket, kind .. '_first_seen', birth, kind .. '_certain', 1)
    next_ms = exp * 1000 - tonumber(ARGV[4]) - tonumber(ARGV[5])
  else
    exp = now + life
    redis.call('HSET', KEYS[2], kind, ticket, kind .. '_first_seen', now, kind .. '_certain', 0)
    next_ms = exp * 1000 - tonumber(ARGV[4]) - tonumber(ARGV[5])
  end
  redis.call('HSET', KEYS[2], kind .. '_expires_at', exp, kind .. '_fetched_at', now)
  redis.call('HINCRBY', KEYS[2], kind .. '_fetches', 1)
  if not due or next_ms < due then due = next_ms end
  table.insert(out, exp)
end
if due then
  local soonest = now * 1000 + tonumber(ARGV[6])
  if due < soonest then due = soonest end
  redis.call('ZADD', KEYS[3], due, ARGV[2])
  redis.call('HDEL', KEYS[4], ARGV[2])
end
return out
";

/// A page was signed with a ticket of unknown age: `KEYS` = tickets hash, ticket due set;
/// `ARGV` = kind, appid, now (s), probe (ms). Unless it was marked since its last fetch, marks
/// it served and pulls the account's next fetch to its last fetch + `probe` (`ZADD LT`: never
/// later than it was). Returns 1 when it pulled.
pub(super) const PULL_TICKET_PROBE: &str = r"
local fetched = tonumber(redis.call('HGET', KEYS[1], ARGV[1] .. '_fetched_at'))
if not fetched or redis.call('HGET', KEYS[1], ARGV[1] .. '_certain') ~= '0' then return 0 end
local served = tonumber(redis.call('HGET', KEYS[1], ARGV[1] .. '_served_at'))
if served and served >= fetched then return 0 end
redis.call('HSET', KEYS[1], ARGV[1] .. '_served_at', ARGV[3])
redis.call('ZADD', KEYS[2], 'LT', fetched * 1000 + tonumber(ARGV[4]), ARGV[2])
return 1
";
