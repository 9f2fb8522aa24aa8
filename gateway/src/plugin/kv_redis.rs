//! The Redis backend of the `kv` capability (`[kv] backend = "redis"`, docs/kv.md): every
//! gateway that uses the same Redis server, database and `key_prefix` shares each
//! plugin's namespace, so a triplet greylisted by one gateway passes on another and a
//! rate limit counts the mail of all of them.
//!
//! Layout, for plugin `NS` and prefix `P` (`mailgate:` by default; the braces are a
//! Redis hash tag, so one namespace stays in one slot):
//!
//! - `P{NS}:v:KEY`: the value of `KEY`, with Redis's own expiry for its TTL;
//! - `P{NS}:idx`: a sorted set of the namespace's keys scored by expiry (Unix
//!   milliseconds on Redis's clock, `+inf` without a TTL);
//! - `P{NS}:cost`: a hash of each key's cost in octets (key, value and the same
//!   bookkeeping allowance as in memory), and `P{NS}:bytes` their sum.
//!
//! Every write is one Lua script (atomic in Redis, so concurrent sessions on any number
//! of gateways stay exact): it drops index entries whose time has passed, checks the
//! plugin's quota against the shared figures, writes the value and its accounting, and
//! answers the namespace's entries and octets (kept for `mailgate status`). `increment`
//! is `INCRBY` inside the script, with the TTL set in the same script when it creates
//! the counter; `set-if-absent` checks and sets in one script. `get` is a plain `GET`.
//!
//! Redis's time is not the plugins' clock: `mailgate clock advance` (tests) does not
//! move it, so entries expire in real time.
//!
//! Unavailability: each call is bounded by `timeout_ms` and ends before the hook's
//! deadline (a tenth of what is left, at most 100 ms, is left to the plugin). A failed
//! call answers [`KvFault::Unavailable`], is counted (in total, per plugin, timeouts
//! apart), and makes the calls of the next second fail at once without waiting on Redis,
//! so a Redis that is down or black-holed costs a session one timeout, not one per call.
//! The connection is re-established in the background (redis-rs's `ConnectionManager`).
//! One warning is logged per 10 seconds of failures (with the number of failed calls),
//! and one line when Redis answers again.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Client, RedisResult, Script};
use serde::{Serialize, Serializer};
use sha2::{Digest, Sha256};

use super::kv::{Caller, ENTRY_OVERHEAD, KvFault, KvStats, OnUnavailable};

/// After a failed call, calls fail at once for this long before Redis is tried again.
const PAUSE: Duration = Duration::from_secs(1);
/// At most one warning about an unavailable Redis in this long.
const LOG_EVERY: Duration = Duration::from_secs(10);
/// Time a call leaves its hook before the deadline (a tenth of what is left, at most
/// this), so the plugin can still answer.
const SPARE: Duration = Duration::from_millis(100);
/// `mailgate status` figures of a namespace older than this start a refresh.
const USAGE_FRESH: Duration = Duration::from_secs(1);

/// The validated Redis settings of `[kv]`.
#[derive(Clone, PartialEq, Eq)]
pub struct RedisSettings {
    /// `redis://[user:password@]host[:port][/db]` or `unix:///path/to/redis.sock`.
    pub url: String,
    /// Prefix of every key the gateway writes.
    pub key_prefix: String,
    /// Longest wait for one call (less when the hook's deadline is nearer).
    pub timeout: Duration,
    /// Longest wait for a connection.
    pub connect_timeout: Duration,
    /// What a plugin gets when Redis is unavailable.
    pub on_unavailable: OnUnavailable,
}

impl std::fmt::Debug for RedisSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisSettings")
            .field("url", &redacted(&self.url))
            .field("key_prefix", &self.key_prefix)
            .field("timeout", &self.timeout)
            .field("connect_timeout", &self.connect_timeout)
            .field("on_unavailable", &self.on_unavailable)
            .finish()
    }
}

impl Serialize for RedisSettings {
    /// As for change detection (`Fixed::changed`): the password is replaced by a digest
    /// of it, so a new password still counts as a change.
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut st = s.serialize_struct("RedisSettings", 5)?;
        st.serialize_field("url", &redacted(&self.url))?;
        st.serialize_field("key_prefix", &self.key_prefix)?;
        st.serialize_field("timeout_ms", &(self.timeout.as_millis() as u64))?;
        st.serialize_field(
            "connect_timeout_ms",
            &(self.connect_timeout.as_millis() as u64),
        )?;
        st.serialize_field("on_unavailable", &self.on_unavailable)?;
        st.end()
    }
}

/// `url` with the password replaced by `sha256:` and 8 hex digits of its digest.
pub fn redacted(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let Some(at) = rest[..authority_end].rfind('@') else {
        return url.to_string();
    };
    let (userinfo, host) = (&rest[..at], &rest[at..]);
    let Some((user, password)) = userinfo.split_once(':') else {
        return url.to_string();
    };
    let digest = hex::encode(&Sha256::digest(password.as_bytes())[..4]);
    format!("{scheme}://{user}:sha256:{digest}{host}")
}

/// Checks a `[kv] redis_url` without connecting: `None` if the client takes it.
pub fn check_url(url: &str) -> Option<String> {
    if url.starts_with("rediss://") || url.starts_with("valkeys://") {
        return Some(
            "TLS (rediss://) is not built in: reach Redis over loopback, a private network, \
             a Unix socket or a TLS tunnel"
                .into(),
        );
    }
    Client::open(url).err().map(|e| e.to_string())
}

// ------------------------------------------------------------------ the scripts

/// What every script starts with. KEYS: the namespace's index, cost hash and byte
/// counter. ARGV: the value-key prefix, the key, the per-entry allowance, the quota
/// (entries, octets), then each script's own.
///
/// In Redis's Lua a missing value is `false`; numbers are doubles, so values and counters
/// stay strings and `INCRBY` does the integer arithmetic.
const LIB: &str = r#"
local IDX, COST, BYTES = KEYS[1], KEYS[2], KEYS[3]
local VPREFIX, MEMBER = ARGV[1], ARGV[2]
local OVERHEAD, QE, QB = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local VKEY = VPREFIX .. MEMBER
local STEP = 64

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- Forgets an entry: its value and its accounting.
local function drop(m)
  local c = redis.call('HGET', COST, m)
  if c then
    redis.call('DECRBY', BYTES, c)
    redis.call('HDEL', COST, m)
  end
  redis.call('ZREM', IDX, m)
  redis.call('DEL', VPREFIX .. m)
end

-- Drops up to n entries whose expiry has passed; how many it dropped.
local function purge(now, n)
  local gone = redis.call('ZRANGEBYSCORE', IDX, '-inf', now, 'LIMIT', 0, n)
  for _, m in ipairs(gone) do
    drop(m)
  end
  return #gone
end

-- Whether MEMBER is live (as in memory: its expiry is later than now). Accounting left
-- by an entry that is gone (expired, evicted) is dropped.
local function settle(now)
  local live = redis.call('EXISTS', VKEY) == 1
  local score = redis.call('ZSCORE', IDX, MEMBER)
  if live and score and score ~= 'inf' and tonumber(score) <= now then
    drop(MEMBER)
    live = false
  elseif not live and (score or redis.call('HEXISTS', COST, MEMBER) == 1) then
    drop(MEMBER)
  end
  return live
end

local function figures()
  return redis.call('ZCARD', IDX), tonumber(redis.call('GET', BYTES) or '0')
end

-- {status (0 done, 1 quota exceeded, 2 not a counter), answer, entries, octets}
local function reply(status, answer)
  local n, b = figures()
  return {status, answer, n, b}
end

local function accounted()
  return tonumber(redis.call('HGET', COST, MEMBER) or '0')
end

local function fits(old, new)
  local n, b = figures()
  if old == 0 then
    n = n + 1
  end
  return n <= QE and b - old + new <= QB
end

-- Whether MEMBER, costing `new` instead of `old`, fits the quota; when it does not, the
-- expired entries still indexed are all dropped and it is asked again.
local function room(now, old, new)
  if fits(old, new) then
    return true
  end
  while purge(now, 1000) == 1000 do
  end
  return fits(old, new)
end
"#;

/// `set` and `set-if-absent`. ARGV[6]: the value, ARGV[7]: TTL in ms (-1: none),
/// ARGV[8]: `1` to set only if absent. Answers `1` if it set the key.
const PUT: &str = r#"
local value, ttl, only_new = ARGV[6], tonumber(ARGV[7]), ARGV[8] == '1'
local now = now_ms()
local live = settle(now)
purge(now, STEP)
if only_new and live then
  return reply(0, '0')
end
local old = accounted()
local new = #MEMBER + #value + OVERHEAD
if not room(now, old, new) then
  return reply(1, '')
end
if ttl == 0 then
  drop(MEMBER)
  return reply(0, '1')
end
if ttl > 0 then
  redis.call('SET', VKEY, value, 'PXAT', now + ttl)
  redis.call('ZADD', IDX, now + ttl, MEMBER)
else
  redis.call('SET', VKEY, value)
  redis.call('ZADD', IDX, '+inf', MEMBER)
end
redis.call('HSET', COST, MEMBER, new)
redis.call('INCRBY', BYTES, new - old)
return reply(0, '1')
"#;

/// `delete`. Answers `1` if the key was there.
const DELETE: &str = r#"
local now = now_ms()
local live = settle(now)
if live then
  drop(MEMBER)
end
purge(now, STEP)
return reply(0, live and '1' or '0')
"#;

/// `increment`. ARGV[6]: the delta, ARGV[7]: TTL in ms (-1: none) for a counter this
/// call creates. Saturates at the 64-bit bounds, as in memory; a value written as the
/// host reads integers but not as Redis does (`+5`, `007`) is a counter too. Answers the
/// new value.
const INCREMENT: &str = r#"
local delta, ttl = ARGV[6], tonumber(ARGV[7])
local now = now_ms()
local live = settle(now)
purge(now, STEP)
local before = false
if live then
  before = redis.call('GET', VKEY)
end
-- true, 'overflow', or false (not an integer)
local function add()
  local r = redis.pcall('INCRBY', VKEY, delta)
  if type(r) == 'table' and r.err then
    if string.find(r.err, 'overflow') then
      return 'overflow'
    end
    return false
  end
  return true
end
local done = add()
if done == false then
  local sign, digits = string.match(before, '^([+-]?)(%d+)$')
  if not digits then
    return reply(2, '')
  end
  digits = (string.gsub(digits, '^0+', ''))
  if digits == '' then
    digits = '0'
  end
  if #digits > 19 then
    return reply(2, '')
  end
  if sign == '-' and digits ~= '0' then
    digits = '-' .. digits
  end
  redis.call('SET', VKEY, digits, 'KEEPTTL')
  done = add()
  if done == false then
    redis.call('SET', VKEY, before, 'KEEPTTL')
    return reply(2, '')
  end
end
if done == 'overflow' then
  if string.sub(delta, 1, 1) == '-' then
    redis.call('SET', VKEY, '-9223372036854775808', 'KEEPTTL')
  else
    redis.call('SET', VKEY, '9223372036854775807', 'KEEPTTL')
  end
end
local nv = redis.call('GET', VKEY)
local old = accounted()
local new = #MEMBER + #nv + OVERHEAD
if not room(now, old, new) then
  if live then
    redis.call('SET', VKEY, before, 'KEEPTTL')
  else
    redis.call('DEL', VKEY)
  end
  return reply(1, '')
end
if not live then
  if ttl == 0 then
    redis.call('DEL', VKEY)
    return reply(0, nv)
  end
  if ttl > 0 then
    redis.call('PEXPIREAT', VKEY, now + ttl)
    redis.call('ZADD', IDX, now + ttl, MEMBER)
  else
    redis.call('ZADD', IDX, '+inf', MEMBER)
  end
elseif not redis.call('ZSCORE', IDX, MEMBER) then
  local left = redis.call('PTTL', VKEY)
  if left >= 0 then
    redis.call('ZADD', IDX, now + left, MEMBER)
  else
    redis.call('ZADD', IDX, '+inf', MEMBER)
  end
end
redis.call('HSET', COST, MEMBER, new)
redis.call('INCRBY', BYTES, new - old)
return reply(0, nv)
"#;

/// The namespace's figures after dropping every expired entry.
const USAGE: &str = r#"
local now = now_ms()
while purge(now, 1000) == 1000 do
end
return reply(0, '')
"#;

/// A script's answer: status, answer, entries, octets.
type Reply = (i64, String, i64, i64);

#[derive(Debug)]
struct Scripts {
    put: Script,
    delete: Script,
    increment: Script,
    usage: Script,
}

impl Scripts {
    fn new() -> Scripts {
        let with_lib = |body: &str| Script::new(&format!("{LIB}{body}"));
        Scripts {
            put: with_lib(PUT),
            delete: with_lib(DELETE),
            increment: with_lib(INCREMENT),
            usage: with_lib(USAGE),
        }
    }
}

// ------------------------------------------------------------------ health

/// How calls have been failing; the mutex is taken only while Redis fails.
#[derive(Debug, Default)]
struct Health {
    unavailable: AtomicU64,
    timeouts: AtomicU64,
    failing: AtomicBool,
    trouble: Mutex<Trouble>,
}

#[derive(Debug, Default)]
struct Trouble {
    /// Calls fail at once until then.
    paused_until: Option<Instant>,
    /// The last warning.
    logged: Option<Instant>,
    /// Failed calls since the last warning.
    since_log: u64,
    /// Failed calls in this outage, and when it began.
    outage: (u64, Option<Instant>),
    last_error: Option<String>,
    by_plugin: BTreeMap<String, u64>,
}

/// How a call failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Failure {
    /// Redis answered an error, or the connection failed.
    Error,
    /// No answer in time.
    Timeout,
    /// Not sent: Redis failed a moment ago.
    Paused,
    /// Not sent: no time was left before the hook's deadline.
    NoTime,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Health {
    /// How long calls still fail at once, if they do.
    fn paused(&self) -> Option<Duration> {
        if !self.failing.load(Ordering::Relaxed) {
            return None;
        }
        let until = lock(&self.trouble).paused_until?;
        let left = until.saturating_duration_since(Instant::now());
        (!left.is_zero()).then_some(left)
    }

    fn failed(&self, plugin: &str, why: &str, how: Failure) {
        self.unavailable.fetch_add(1, Ordering::Relaxed);
        if how == Failure::Timeout {
            self.timeouts.fetch_add(1, Ordering::Relaxed);
        }
        let now = Instant::now();
        let mut t = lock(&self.trouble);
        *t.by_plugin.entry(plugin.to_string()).or_default() += 1;
        if how == Failure::NoTime {
            // The hook's own deadline, not Redis: counted, not an outage.
            return;
        }
        if matches!(how, Failure::Error | Failure::Timeout) {
            t.paused_until = Some(now + PAUSE);
            t.last_error = Some(why.to_string());
            self.failing.store(true, Ordering::Relaxed);
        }
        t.since_log += 1;
        t.outage.0 += 1;
        t.outage.1.get_or_insert(now);
        if t.logged
            .is_none_or(|at| now.duration_since(at) >= LOG_EVERY)
        {
            tracing::warn!(
                plugin,
                error = t.last_error.as_deref().unwrap_or(why),
                failed_calls = t.since_log,
                "kv: Redis is unavailable; kv calls fail (their plugins' failure handling applies)"
            );
            t.logged = Some(now);
            t.since_log = 0;
        }
    }

    fn succeeded(&self) {
        if !self.failing.swap(false, Ordering::Relaxed) {
            return;
        }
        let mut t = lock(&self.trouble);
        t.paused_until = None;
        let (failed, since) = std::mem::take(&mut t.outage);
        t.since_log = 0;
        t.logged = None;
        tracing::info!(
            failed_calls = failed,
            outage_ms = since.map_or(0, |s| s.elapsed().as_millis() as u64),
            "kv: Redis answers again"
        );
    }
}

// ------------------------------------------------------------------ the backend

/// One namespace's figures as last seen.
#[derive(Debug, Default)]
struct Usage {
    entries: usize,
    bytes: usize,
    at: Option<Instant>,
    refreshing: bool,
}

struct Inner {
    conn: ConnectionManager,
    prefix: String,
    timeout: Duration,
    on_unavailable: OnUnavailable,
    scripts: Scripts,
    health: Health,
    usage: Mutex<HashMap<String, Usage>>,
}

/// The Redis backend.
#[derive(Clone)]
pub struct RedisKv {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for RedisKv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisKv")
            .field("prefix", &self.inner.prefix)
            .field("timeout", &self.inner.timeout)
            .field("on_unavailable", &self.inner.on_unavailable)
            .finish()
    }
}

/// A namespace's Redis keys.
struct Keys {
    idx: String,
    cost: String,
    bytes: String,
    values: String,
}

impl RedisKv {
    /// A backend for `s`; nothing is connected until the first call. Must run inside a
    /// tokio runtime.
    pub fn new(s: &RedisSettings) -> RedisResult<RedisKv> {
        let client = Client::open(s.url.as_str())?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(s.connect_timeout))
            // A backstop: each call's own timeout (at most `timeout`) ends it first.
            .set_response_timeout(Some(s.timeout + Duration::from_secs(1)))
            // One attempt per reconnection: calls are paced by the pause after a failure.
            .set_number_of_retries(0);
        let conn = ConnectionManager::new_lazy_with_config(client, config)?;
        Ok(RedisKv {
            inner: Arc::new(Inner {
                conn,
                prefix: s.key_prefix.clone(),
                timeout: s.timeout,
                on_unavailable: s.on_unavailable,
                scripts: Scripts::new(),
                health: Health::default(),
                usage: Mutex::default(),
            }),
        })
    }

    /// What a plugin gets when Redis is unavailable.
    pub fn on_unavailable(&self) -> OnUnavailable {
        self.inner.on_unavailable
    }

    /// The value of `key`.
    pub async fn get(&self, c: &Caller<'_>, key: &str) -> Result<Option<Vec<u8>>, KvFault> {
        let vkey = format!("{}{key}", self.inner.keys(c.plugin).values);
        let get = redis::cmd("GET").arg(vkey).clone();
        self.call(c, || {
            let (get, mut conn) = (&get, self.inner.conn.clone());
            async move { get.query_async::<Option<Vec<u8>>>(&mut conn).await }
        })
        .await
    }

    /// `set` or `set-if-absent`; `true` if it set the key.
    pub async fn put(
        &self,
        c: &Caller<'_>,
        key: &str,
        value: &[u8],
        ttl: Option<u32>,
        only_new: bool,
    ) -> Result<bool, KvFault> {
        let mut inv = self.inner.invocation(&self.inner.scripts.put, c, key);
        inv.arg(value).arg(ttl_ms(ttl)).arg(u8::from(only_new));
        let r = self.script(c, inv).await?;
        Ok(r == "1")
    }

    /// `delete`; `true` if the key was there.
    pub async fn delete(&self, c: &Caller<'_>, key: &str) -> Result<bool, KvFault> {
        let inv = self.inner.invocation(&self.inner.scripts.delete, c, key);
        let r = self.script(c, inv).await?;
        Ok(r == "1")
    }

    /// `increment`: the new value.
    pub async fn increment(
        &self,
        c: &Caller<'_>,
        key: &str,
        delta: i64,
        ttl: Option<u32>,
    ) -> Result<i64, KvFault> {
        let mut inv = self.inner.invocation(&self.inner.scripts.increment, c, key);
        inv.arg(delta).arg(ttl_ms(ttl));
        let r = self.script(c, inv).await?;
        r.parse()
            .map_err(|_| KvFault::Unavailable(format!("Redis answered {r:?} for a counter")))
    }

    /// Runs a write script; its answer, with the namespace's figures noted.
    async fn script(
        &self,
        c: &Caller<'_>,
        inv: redis::ScriptInvocation<'_>,
    ) -> Result<String, KvFault> {
        let (status, answer, entries, bytes) = self
            .call(c, || {
                let (inv, mut conn) = (&inv, self.inner.conn.clone());
                async move { inv.invoke_async::<Reply>(&mut conn).await }
            })
            .await?;
        self.inner.noted(c.plugin, entries, bytes);
        match status {
            0 => Ok(answer),
            1 => Err(KvFault::QuotaExceeded),
            2 => Err(KvFault::NotACounter),
            other => Err(KvFault::Unavailable(format!(
                "Redis script answered status {other}"
            ))),
        }
    }

    /// Runs one Redis call within the caller's time, counting and logging a failure. A
    /// call refused a connection (so never sent) is made once more at once: the refusal
    /// may be the last attempt's, and the connection manager has just started a new one,
    /// which finds Redis if it is back.
    async fn call<T, F: Future<Output = RedisResult<T>>>(
        &self,
        c: &Caller<'_>,
        op: impl Fn() -> F,
    ) -> Result<T, KvFault> {
        let health = &self.inner.health;
        if let Some(left) = health.paused() {
            let why = format!(
                "Redis failed a moment ago; it is tried again in {} ms",
                left.as_millis().max(1)
            );
            health.failed(c.plugin, &why, Failure::Paused);
            return Err(KvFault::Unavailable(why));
        }
        let left = c.deadline.saturating_duration_since(Instant::now());
        let limit = self
            .inner
            .timeout
            .min(left.saturating_sub((left / 10).min(SPARE)));
        if limit.is_zero() {
            let why = "no time left before the hook's deadline".to_string();
            health.failed(c.plugin, &why, Failure::NoTime);
            return Err(KvFault::Unavailable(why));
        }
        let once_more = async {
            match op().await {
                Err(e) if e.is_connection_refusal() => op().await,
                r => r,
            }
        };
        match tokio::time::timeout(limit, once_more).await {
            Ok(Ok(v)) => {
                health.succeeded();
                Ok(v)
            }
            Ok(Err(e)) => {
                let why = format!("Redis: {e}");
                health.failed(c.plugin, &why, Failure::Error);
                Err(KvFault::Unavailable(why))
            }
            Err(_) => {
                let why = format!("Redis did not answer within {} ms", limit.as_millis());
                health.failed(c.plugin, &why, Failure::Timeout);
                Err(KvFault::Unavailable(why))
            }
        }
    }

    /// Entries and octets of namespace `ns` as last seen; starts a refresh (in the
    /// background, one at a time) when that is older than a second.
    pub fn usage(&self, ns: &str) -> (usize, usize) {
        let mut all = lock(&self.inner.usage);
        let u = all.entry(ns.to_string()).or_default();
        let figures = (u.entries, u.bytes);
        let stale = u.at.is_none_or(|at| at.elapsed() >= USAGE_FRESH);
        if stale
            && !u.refreshing
            && self.inner.health.paused().is_none()
            && let Ok(rt) = tokio::runtime::Handle::try_current()
        {
            u.refreshing = true;
            let inner = Arc::clone(&self.inner);
            let ns = ns.to_string();
            rt.spawn(async move { inner.refresh(&ns).await });
        }
        figures
    }

    /// Calls failed so far (without `calls`, which the front counts).
    pub fn stats(&self) -> KvStats {
        let h = &self.inner.health;
        let t = lock(&h.trouble);
        KvStats {
            backend: "redis",
            calls: 0,
            unavailable: h.unavailable.load(Ordering::Relaxed),
            timeouts: h.timeouts.load(Ordering::Relaxed),
            unavailable_by_plugin: t.by_plugin.clone(),
            failing: h.failing.load(Ordering::Relaxed),
            last_error: t.last_error.clone(),
        }
    }
}

fn ttl_ms(ttl: Option<u32>) -> i64 {
    ttl.map_or(-1, |s| i64::from(s) * 1000)
}

impl Inner {
    fn keys(&self, ns: &str) -> Keys {
        let base = format!("{}{{{ns}}}:", self.prefix);
        Keys {
            idx: format!("{base}idx"),
            cost: format!("{base}cost"),
            bytes: format!("{base}bytes"),
            values: format!("{base}v:"),
        }
    }

    /// `script` with the keys and arguments every script takes.
    fn invocation<'a>(
        &self,
        script: &'a Script,
        c: &Caller<'_>,
        key: &str,
    ) -> redis::ScriptInvocation<'a> {
        let k = self.keys(c.plugin);
        let mut inv = script.prepare_invoke();
        inv.key(k.idx)
            .key(k.cost)
            .key(k.bytes)
            .arg(k.values)
            .arg(key)
            .arg(ENTRY_OVERHEAD)
            .arg(c.quota.entries)
            .arg(c.quota.bytes);
        inv
    }

    fn noted(&self, ns: &str, entries: i64, bytes: i64) {
        let mut all = lock(&self.usage);
        let u = all.entry(ns.to_string()).or_default();
        u.entries = usize::try_from(entries).unwrap_or(0);
        u.bytes = usize::try_from(bytes).unwrap_or(0);
        u.at = Some(Instant::now());
    }

    /// Reads namespace `ns`'s figures (expired entries dropped first); a failure is only
    /// logged at debug level (it is not a plugin's call).
    async fn refresh(&self, ns: &str) {
        let mut inv = self.scripts.usage.prepare_invoke();
        let k = self.keys(ns);
        inv.key(k.idx)
            .key(k.cost)
            .key(k.bytes)
            .arg(k.values)
            .arg("")
            .arg(ENTRY_OVERHEAD)
            .arg(0)
            .arg(0);
        let mut conn = self.conn.clone();
        let answer = tokio::time::timeout(self.timeout, inv.invoke_async::<Reply>(&mut conn)).await;
        match answer {
            Ok(Ok((_, _, entries, bytes))) => self.noted(ns, entries, bytes),
            Ok(Err(e)) => tracing::debug!(namespace = ns, error = %e, "kv: usage refresh failed"),
            Err(_) => tracing::debug!(namespace = ns, "kv: usage refresh timed out"),
        }
        if let Some(u) = lock(&self.usage).get_mut(ns) {
            u.refreshing = false;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_redacted_but_still_tell_one_from_another() {
        assert_eq!(
            redacted("redis://127.0.0.1:6379/0"),
            "redis://127.0.0.1:6379/0"
        );
        assert_eq!(redacted("redis://user@host/1"), "redis://user@host/1");
        let a = redacted("redis://mailgate:s3cret@host:6379/2");
        assert!(a.starts_with("redis://mailgate:sha256:"), "{a}");
        assert!(a.ends_with("@host:6379/2"), "{a}");
        assert!(!a.contains("s3cret"), "{a}");
        assert_ne!(a, redacted("redis://mailgate:other@host:6379/2"));
        let b = redacted("redis://:pw@host");
        assert!(!b.contains("pw@") && b.ends_with("@host"), "{b}");
        let debug = format!(
            "{:?}",
            RedisSettings {
                url: "redis://u:hunter2@h".into(),
                key_prefix: "mailgate:".into(),
                timeout: Duration::from_millis(200),
                connect_timeout: Duration::from_secs(1),
                on_unavailable: OnUnavailable::Plugin,
            }
        );
        assert!(!debug.contains("hunter2"), "{debug}");
    }

    #[test]
    fn urls_are_checked_without_connecting() {
        assert_eq!(check_url("redis://127.0.0.1:6379/0"), None);
        assert_eq!(check_url("unix:///run/redis/redis.sock"), None);
        assert!(check_url("rediss://host").unwrap().contains("TLS"));
        assert!(check_url("http://host").is_some());
        assert!(check_url("not a url").is_some());
    }

    #[test]
    fn a_failure_pauses_calls_and_a_success_ends_the_pause() {
        let h = Health::default();
        assert_eq!(h.paused(), None);
        h.failed("greylist", "Redis: connection refused", Failure::Error);
        assert!(h.paused().is_some_and(|d| d <= PAUSE));
        h.failed("greylist", "paused", Failure::Paused);
        h.failed("rate-limit", "Redis did not answer", Failure::Timeout);
        assert_eq!(h.unavailable.load(Ordering::Relaxed), 3);
        assert_eq!(h.timeouts.load(Ordering::Relaxed), 1);
        {
            let t = lock(&h.trouble);
            assert_eq!(t.by_plugin.get("greylist"), Some(&2));
            assert_eq!(t.by_plugin.get("rate-limit"), Some(&1));
            assert_eq!(t.last_error.as_deref(), Some("Redis did not answer"));
        }
        h.succeeded();
        assert_eq!(h.paused(), None);
        assert!(!h.failing.load(Ordering::Relaxed));
        // No time before the deadline is counted but does not pause anyone else.
        h.failed("greylist", "no time", Failure::NoTime);
        assert_eq!(h.paused(), None);
        assert!(!h.failing.load(Ordering::Relaxed));
        assert_eq!(h.unavailable.load(Ordering::Relaxed), 4);
        assert_eq!(lock(&h.trouble).outage, (0, None), "not an outage");
    }

    #[test]
    fn each_script_is_the_library_and_its_own_body() {
        // Redis runs them in tests/tests/kv_redis.rs; here: distinct SHA-1s (EVALSHA
        // names), each answering through `reply`.
        let s = Scripts::new();
        let hashes = [&s.put, &s.delete, &s.increment, &s.usage].map(|x| x.get_hash().to_string());
        for (i, a) in hashes.iter().enumerate() {
            assert_eq!(a.len(), 40);
            assert!(!hashes[i + 1..].contains(a));
        }
        for body in [PUT, DELETE, INCREMENT, USAGE] {
            assert!(body.contains("return reply("), "{body}");
        }
    }

    #[tokio::test]
    async fn keys_of_one_namespace_share_a_hash_tag_and_calls_to_no_server_fail_fast() {
        let kv = RedisKv::new(&RedisSettings {
            // A port nothing listens on: connections are refused.
            url: "redis://127.0.0.1:9/0".into(),
            key_prefix: "mg:".into(),
            timeout: Duration::from_millis(500),
            connect_timeout: Duration::from_millis(500),
            on_unavailable: OnUnavailable::Plugin,
        })
        .unwrap();
        let k = kv.inner.keys("greylist");
        assert_eq!(k.idx, "mg:{greylist}:idx");
        assert_eq!(k.values, "mg:{greylist}:v:");
        let c = Caller {
            plugin: "greylist",
            quota: Default::default(),
            deadline: Instant::now() + Duration::from_secs(5),
        };
        let t = Instant::now();
        let first = kv.get(&c, "k").await;
        assert!(matches!(first, Err(KvFault::Unavailable(_))), "{first:?}");
        // The next calls within the pause do not wait on Redis.
        let second = kv.increment(&c, "n", 1, Some(60)).await;
        match second {
            Err(KvFault::Unavailable(why)) => assert!(why.contains("tried again"), "{why}"),
            other => panic!("{other:?}"),
        }
        assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
        let s = kv.stats();
        assert_eq!((s.unavailable, s.failing), (2, true));
        assert_eq!(s.unavailable_by_plugin.get("greylist"), Some(&2));
        // A deadline already passed: not sent at all.
        let late = Caller {
            deadline: Instant::now(),
            ..c
        };
        kv.inner.health.succeeded();
        match kv.get(&late, "k").await {
            Err(KvFault::Unavailable(why)) => assert!(why.contains("deadline"), "{why}"),
            other => panic!("{other:?}"),
        }
    }
}
