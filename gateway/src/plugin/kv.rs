//! The key/value store behind the `kv` capability, in one of two backends chosen by
//! `[kv] backend` (docs/kv.md):
//!
//! - `memory` (the default, [`Memory`]): in this process, gone on restart.
//! - `redis` ([`super::kv_redis`]): in a Redis server, shared by every gateway that uses
//!   the same server and `key_prefix`, so greylisting and rate limits hold across several
//!   gateways behind one MX.
//!
//! Both keep the same rules. Each plugin has a namespace of its own (by plugin name) with
//! its own quota in entries and octets (`limits.kv_entries`, `limits.kv_mb`), so one
//! plugin filling its quota never makes another's writes fail. Values expire by TTL.
//! Counters are decimal integers; `increment` (which gives a counter it creates its TTL)
//! and `set-if-absent` are atomic, also with several gateways writing at once. In memory,
//! expiry follows the plugins' clock ([`super::clock::PluginClock`], which
//! `mailgate clock advance` moves in tests); in Redis it is Redis's own, real time.
//!
//! In memory each namespace has its own lock, so one busy plugin does not wait on
//! another, and expired entries are found through a heap ordered by expiry (no scan of
//! the namespace under its lock).
//!
//! Only Redis can be unavailable ([`KvFault::Unavailable`]): each call is bounded by
//! `[kv] timeout_ms` and ends before the calling hook's deadline; `[kv] on_unavailable`
//! says whether the plugin is told (`kv-error::unavailable`) or its hook fails (its
//! `on_error` policy applies). [`Kv::stats`] counts the failures for `mailgate status`.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde::Serialize;

use super::clock::PluginClock;
use super::kv_redis::{RedisKv, RedisSettings};

/// Longest key (octets).
pub const MAX_KEY: usize = 256;
/// Largest value (octets).
pub const MAX_VALUE: usize = 64 * 1024;
/// Octets an entry costs beyond its key and value (bookkeeping), for the byte quota.
pub(super) const ENTRY_OVERHEAD: usize = 64;

/// Why an operation failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum KvFault {
    /// Empty, too long, or with control characters.
    #[error("invalid key")]
    InvalidKey,
    /// Over [`MAX_VALUE`].
    #[error("value too large")]
    ValueTooLarge,
    /// The plugin's namespace is full (entries or octets).
    #[error("quota exceeded")]
    QuotaExceeded,
    /// `increment` on a value that is not a decimal integer.
    #[error("not a counter")]
    NotACounter,
    /// The backend (Redis) could not be reached, failed, or did not answer in time: why.
    /// A write that timed out may still have been applied.
    #[error("kv backend unavailable: {0}")]
    Unavailable(String),
}

/// What one plugin's namespace may hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Quota {
    /// Live entries.
    pub entries: usize,
    /// Octets of keys, values and bookkeeping.
    pub bytes: usize,
}

impl Default for Quota {
    fn default() -> Self {
        Quota {
            entries: 100_000,
            bytes: 32 << 20,
        }
    }
}

/// Who is calling: the plugin (its namespace and quota) and when its hook call must end.
#[derive(Clone, Copy, Debug)]
pub struct Caller<'a> {
    /// The plugin's name: its namespace.
    pub plugin: &'a str,
    /// What its namespace may hold.
    pub quota: Quota,
    /// The end of the hook call in progress: a Redis call ends before it.
    pub deadline: Instant,
}

/// What a plugin gets when the backend is unavailable (`[kv] on_unavailable`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OnUnavailable {
    /// The call answers `kv-error::unavailable(why)` and the plugin decides (the shipped
    /// greylist and rate-limit plugins let mail through).
    #[default]
    Plugin,
    /// The hook call fails: the plugin's `on_error` policy applies (`tempfail`: 451 4.7.0,
    /// `continue`: as if the plugin were not there, `reject`: 550 5.7.0).
    OnError,
}

/// The validated `[kv]` section: which backend holds the entries.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub enum Settings {
    /// In this process (the default).
    #[default]
    Memory,
    /// In a Redis server, shared by every gateway using it.
    Redis(RedisSettings),
}

/// Why the kv store could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum KvSetupError {
    /// The Redis client refused its settings (the URL is checked when the config loads,
    /// so this is rare); nothing is connected at setup.
    #[error("kv: Redis: {0}")]
    Redis(String),
}

/// How the store has been doing since the gateway started (`mailgate status`, and the
/// figures a metrics exporter reads).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct KvStats {
    /// `memory` or `redis`.
    pub backend: &'static str,
    /// Calls plugins made (granted, with a valid key), all outcomes.
    pub calls: u64,
    /// Calls that failed because the backend was unavailable (timeouts included).
    pub unavailable: u64,
    /// Of those, calls that got no answer in time.
    pub timeouts: u64,
    /// `unavailable` by plugin.
    pub unavailable_by_plugin: BTreeMap<String, u64>,
    /// Whether the backend is failing now (its last call failed).
    pub failing: bool,
    /// The last failure, if any.
    pub last_error: Option<String>,
}

#[derive(Debug)]
enum Backend {
    Memory(Memory),
    Redis(RedisKv),
}

/// The process-wide store of per-plugin namespaces, in memory or in Redis.
#[derive(Debug)]
pub struct Kv {
    backend: Backend,
    calls: AtomicU64,
}

impl Default for Kv {
    fn default() -> Self {
        Kv::new()
    }
}

impl Kv {
    /// An empty in-memory store.
    pub fn new() -> Kv {
        Kv::with_clock(Arc::default())
    }

    /// An empty in-memory store whose entries expire by `clock`.
    pub fn with_clock(clock: Arc<PluginClock>) -> Kv {
        Kv {
            backend: Backend::Memory(Memory::with_clock(clock)),
            calls: AtomicU64::new(0),
        }
    }

    /// The store `settings` describe; in-memory entries expire by `clock`. Redis is not
    /// contacted here (the first call connects, and a Redis that is down at start only
    /// makes calls fail until it is up). Must run inside a tokio runtime.
    pub fn from_settings(settings: &Settings, clock: Arc<PluginClock>) -> Result<Kv, KvSetupError> {
        let backend = match settings {
            Settings::Memory => Backend::Memory(Memory::with_clock(clock)),
            Settings::Redis(r) => {
                Backend::Redis(RedisKv::new(r).map_err(|e| KvSetupError::Redis(e.to_string()))?)
            }
        };
        Ok(Kv {
            backend,
            calls: AtomicU64::new(0),
        })
    }

    /// `memory` or `redis`.
    pub fn backend(&self) -> &'static str {
        match self.backend {
            Backend::Memory(_) => "memory",
            Backend::Redis(_) => "redis",
        }
    }

    /// What a plugin gets when the backend is unavailable.
    pub fn on_unavailable(&self) -> OnUnavailable {
        match &self.backend {
            Backend::Memory(_) => OnUnavailable::default(),
            Backend::Redis(r) => r.on_unavailable(),
        }
    }

    fn count(&self) {
        self.calls.fetch_add(1, Ordering::Relaxed);
    }

    /// The value of `key`, if set and not expired.
    pub async fn get(&self, c: &Caller<'_>, key: &str) -> Result<Option<Vec<u8>>, KvFault> {
        check_key(key)?;
        self.count();
        match &self.backend {
            Backend::Memory(m) => m.get(c.plugin, key),
            Backend::Redis(r) => r.get(c, key).await,
        }
    }

    /// Sets `key`, with an optional TTL (seconds), within the caller's quota.
    pub async fn set(
        &self,
        c: &Caller<'_>,
        key: &str,
        value: Vec<u8>,
        ttl: Option<u32>,
    ) -> Result<(), KvFault> {
        self.put(c, key, value, ttl, false).await.map(|_| ())
    }

    /// Sets `key` only if it is absent (or expired); `true` if this call set it.
    pub async fn set_if_absent(
        &self,
        c: &Caller<'_>,
        key: &str,
        value: Vec<u8>,
        ttl: Option<u32>,
    ) -> Result<bool, KvFault> {
        self.put(c, key, value, ttl, true).await
    }

    async fn put(
        &self,
        c: &Caller<'_>,
        key: &str,
        value: Vec<u8>,
        ttl: Option<u32>,
        only_new: bool,
    ) -> Result<bool, KvFault> {
        check_key(key)?;
        if value.len() > MAX_VALUE {
            return Err(KvFault::ValueTooLarge);
        }
        self.count();
        match &self.backend {
            Backend::Memory(m) => m.put(c.plugin, c.quota, key, value, ttl, only_new),
            Backend::Redis(r) => r.put(c, key, &value, ttl, only_new).await,
        }
    }

    /// Removes `key`; `true` if it was there.
    pub async fn delete(&self, c: &Caller<'_>, key: &str) -> Result<bool, KvFault> {
        check_key(key)?;
        self.count();
        match &self.backend {
            Backend::Memory(m) => m.delete(c.plugin, key),
            Backend::Redis(r) => r.delete(c, key).await,
        }
    }

    /// Adds `delta` to the counter at `key` (absent counts as 0) atomically, saturating;
    /// the TTL is set when the key is created.
    pub async fn increment(
        &self,
        c: &Caller<'_>,
        key: &str,
        delta: i64,
        ttl: Option<u32>,
    ) -> Result<i64, KvFault> {
        check_key(key)?;
        self.count();
        match &self.backend {
            Backend::Memory(m) => m.increment(c.plugin, c.quota, key, delta, ttl),
            Backend::Redis(r) => r.increment(c, key, delta, ttl).await,
        }
    }

    /// Entries and octets plugin `ns` holds. In memory: now (expired ones dropped
    /// first). In Redis: the shared namespace as this gateway last saw it (after its last
    /// write there, or a refresh this call starts when that is over a second old).
    pub fn usage(&self, ns: &str) -> (usize, usize) {
        match &self.backend {
            Backend::Memory(m) => m.usage(ns),
            Backend::Redis(r) => r.usage(ns),
        }
    }

    /// Calls and failures so far.
    pub fn stats(&self) -> KvStats {
        let mut s = match &self.backend {
            Backend::Memory(_) => KvStats {
                backend: "memory",
                ..KvStats::default()
            },
            Backend::Redis(r) => r.stats(),
        };
        s.calls = self.calls.load(Ordering::Relaxed);
        s
    }
}

#[derive(Debug)]
struct Entry {
    value: Vec<u8>,
    expires: Option<Instant>,
}

fn cost(key: &str, value: &[u8]) -> usize {
    key.len() + value.len() + ENTRY_OVERHEAD
}

/// One plugin's entries.
#[derive(Debug, Default)]
struct Namespace {
    map: HashMap<String, Entry>,
    /// Octets held (see [`cost`]).
    bytes: usize,
    /// Expiry times of entries with a TTL, soonest first; an item whose entry was
    /// removed or given another expiry since is stale and skipped.
    expiry: BinaryHeap<Reverse<(Instant, String)>>,
}

impl Namespace {
    fn live(e: &Entry, now: Instant) -> bool {
        e.expires.is_none_or(|t| t > now)
    }

    fn get(&self, key: &str, now: Instant) -> Option<&Entry> {
        self.map.get(key).filter(|e| Self::live(e, now))
    }

    fn remove(&mut self, key: &str) -> Option<Entry> {
        let e = self.map.remove(key)?;
        self.bytes = self.bytes.saturating_sub(cost(key, &e.value));
        Some(e)
    }

    /// Drops the entries expired by `now`: each heap item is looked at once.
    fn expire(&mut self, now: Instant) {
        // Bounded by the heap's length: every pass pops one item.
        while let Some(Reverse((at, _))) = self.expiry.peek() {
            if *at > now {
                break;
            }
            let Some(Reverse((at, key))) = self.expiry.pop() else {
                break;
            };
            if self.map.get(&key).is_some_and(|e| e.expires == Some(at)) {
                self.remove(&key);
            }
        }
    }

    /// Stores `key`, replacing what it held, within `quota`.
    fn insert(
        &mut self,
        key: String,
        value: Vec<u8>,
        expires: Option<Instant>,
        quota: Quota,
        now: Instant,
    ) -> Result<(), KvFault> {
        self.expire(now);
        let old = self.map.get(&key).map_or(0, |e| cost(&key, &e.value));
        let new = cost(&key, &value);
        let entries = self.map.len() + usize::from(old == 0);
        if entries > quota.entries || self.bytes - old + new > quota.bytes {
            return Err(KvFault::QuotaExceeded);
        }
        self.bytes = self.bytes - old + new;
        if let Some(at) = expires {
            self.expiry.push(Reverse((at, key.clone())));
        }
        self.map.insert(key, Entry { value, expires });
        Ok(())
    }
}

/// The in-memory backend: a process-wide map of per-plugin namespaces.
#[derive(Debug, Default)]
pub struct Memory {
    namespaces: Mutex<HashMap<String, Arc<Mutex<Namespace>>>>,
    /// Expiry follows the plugins' clock (movable in tests).
    clock: Arc<PluginClock>,
}

fn check_key(key: &str) -> Result<(), KvFault> {
    if key.is_empty() || key.len() > MAX_KEY || key.chars().any(char::is_control) {
        return Err(KvFault::InvalidKey);
    }
    Ok(())
}

impl Memory {
    /// An empty store.
    pub fn new() -> Memory {
        Memory::default()
    }

    /// An empty store whose entries expire by `clock`.
    pub fn with_clock(clock: Arc<PluginClock>) -> Memory {
        Memory {
            clock,
            ..Memory::default()
        }
    }

    /// The namespace of plugin `ns`, locked.
    fn space(&self, ns: &str) -> Arc<Mutex<Namespace>> {
        let mut all = self.namespaces.lock().unwrap_or_else(|e| e.into_inner());
        Arc::clone(all.entry(ns.to_string()).or_default())
    }

    fn lock(space: &Mutex<Namespace>) -> MutexGuard<'_, Namespace> {
        space.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The value of `key`, if set and not expired.
    pub fn get(&self, ns: &str, key: &str) -> Result<Option<Vec<u8>>, KvFault> {
        check_key(key)?;
        let space = self.space(ns);
        let now = self.clock.instant();
        Ok(Self::lock(&space).get(key, now).map(|e| e.value.clone()))
    }

    /// Sets `key`, with an optional TTL, within `quota`.
    pub fn set(
        &self,
        ns: &str,
        quota: Quota,
        key: &str,
        value: Vec<u8>,
        ttl: Option<u32>,
    ) -> Result<(), KvFault> {
        self.put(ns, quota, key, value, ttl, false).map(|_| ())
    }

    /// Sets `key` only if it is absent (or expired); `true` if it was set.
    pub fn set_if_absent(
        &self,
        ns: &str,
        quota: Quota,
        key: &str,
        value: Vec<u8>,
        ttl: Option<u32>,
    ) -> Result<bool, KvFault> {
        self.put(ns, quota, key, value, ttl, true)
    }

    /// Sets `key` (only if absent when `only_new`); `true` if it was set.
    pub fn put(
        &self,
        ns: &str,
        quota: Quota,
        key: &str,
        value: Vec<u8>,
        ttl: Option<u32>,
        only_new: bool,
    ) -> Result<bool, KvFault> {
        check_key(key)?;
        if value.len() > MAX_VALUE {
            return Err(KvFault::ValueTooLarge);
        }
        let space = self.space(ns);
        let now = self.clock.instant();
        let mut space = Self::lock(&space);
        if only_new && space.get(key, now).is_some() {
            return Ok(false);
        }
        let expires = ttl.map(|s| now + Duration::from_secs(u64::from(s)));
        space.insert(key.to_string(), value, expires, quota, now)?;
        Ok(true)
    }

    /// Removes `key`; `true` if it was there.
    pub fn delete(&self, ns: &str, key: &str) -> Result<bool, KvFault> {
        check_key(key)?;
        let space = self.space(ns);
        let now = self.clock.instant();
        let mut space = Self::lock(&space);
        Ok(space.remove(key).is_some_and(|e| Namespace::live(&e, now)))
    }

    /// Adds `delta` to the counter at `key` (absent counts as 0) atomically; the TTL is
    /// set when the key is created.
    pub fn increment(
        &self,
        ns: &str,
        quota: Quota,
        key: &str,
        delta: i64,
        ttl: Option<u32>,
    ) -> Result<i64, KvFault> {
        check_key(key)?;
        let space = self.space(ns);
        let now = self.clock.instant();
        let mut space = Self::lock(&space);
        let (value, expires) = match space.get(key, now) {
            Some(e) => (
                std::str::from_utf8(&e.value)
                    .ok()
                    .and_then(|s| s.parse::<i64>().ok())
                    .ok_or(KvFault::NotACounter)?
                    .saturating_add(delta),
                e.expires,
            ),
            None => (delta, ttl.map(|s| now + Duration::from_secs(u64::from(s)))),
        };
        space.insert(
            key.to_string(),
            value.to_string().into_bytes(),
            expires,
            quota,
            now,
        )?;
        Ok(value)
    }

    /// Entries and octets plugin `ns` holds now (expired ones dropped first).
    pub fn usage(&self, ns: &str) -> (usize, usize) {
        let space = self.space(ns);
        let mut space = Self::lock(&space);
        space.expire(self.clock.instant());
        (space.map.len(), space.bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const Q3: Quota = Quota {
        entries: 3,
        bytes: 1 << 20,
    };

    #[test]
    fn namespaces_ttl_counters_and_quota() {
        let kv = Memory::new();
        kv.set("a", Q3, "k", b"1".to_vec(), None).unwrap();
        assert_eq!(kv.get("b", "k").unwrap(), None, "namespaced per plugin");
        assert_eq!(kv.get("a", "k").unwrap(), Some(b"1".to_vec()));
        assert_eq!(kv.increment("a", Q3, "k", 5, None).unwrap(), 6);
        assert_eq!(kv.increment("a", Q3, "n", -2, Some(60)).unwrap(), -2);
        assert!(!kv.set_if_absent("a", Q3, "k", b"x".to_vec(), None).unwrap());
        kv.set("a", Q3, "s", b"text".to_vec(), None).unwrap();
        assert_eq!(
            kv.increment("a", Q3, "s", 1, None),
            Err(KvFault::NotACounter)
        );
        assert_eq!(
            kv.set("a", Q3, "full", vec![], None),
            Err(KvFault::QuotaExceeded)
        );
        // Another plugin's quota is its own.
        kv.set("b", Q3, "mine", vec![], None).unwrap();
        assert!(kv.delete("a", "s").unwrap());
        kv.set("a", Q3, "gone", vec![], Some(0)).unwrap();
        assert_eq!(kv.get("a", "gone").unwrap(), None, "ttl 0 expires at once");
        assert_eq!(kv.get("a", ""), Err(KvFault::InvalidKey));
        assert_eq!(
            kv.set("a", Q3, "big", vec![0; MAX_VALUE + 1], None),
            Err(KvFault::ValueTooLarge)
        );
    }

    #[test]
    fn the_byte_quota_counts_keys_and_values_and_expired_entries_make_room() {
        let q = Quota {
            entries: 1000,
            bytes: 3 * (1000 + ENTRY_OVERHEAD + 2),
        };
        let kv = Memory::new();
        for k in ["k1", "k2", "k3"] {
            kv.set("a", q, k, vec![0; 1000], Some(0)).unwrap();
        }
        // All three expired at once: the next write finds them through the heap.
        kv.set("a", q, "k4", vec![0; 1000], None).unwrap();
        assert_eq!(kv.usage("a"), (1, 1000 + ENTRY_OVERHEAD + 2));
        kv.set("a", q, "k5", vec![0; 1000], None).unwrap();
        kv.set("a", q, "k6", vec![0; 1000], None).unwrap();
        assert_eq!(
            kv.set("a", q, "k7", vec![0; 1000], None),
            Err(KvFault::QuotaExceeded)
        );
        // Replacing a value with a smaller one fits; the bytes follow.
        kv.set("a", q, "k6", vec![0; 10], None).unwrap();
        assert_eq!(
            kv.usage("a").1,
            2 * (1000 + ENTRY_OVERHEAD + 2) + 10 + ENTRY_OVERHEAD + 2
        );
        // A key given a new TTL is not dropped by its old heap item.
        kv.set("a", q, "t", vec![1], Some(0)).unwrap();
        kv.set("a", q, "t", vec![2], Some(3600)).unwrap();
        assert_eq!(kv.get("a", "t").unwrap(), Some(vec![2]));
        // Another write runs the expiry: the stale item for "t" must not remove it.
        kv.set("a", q, "k8", vec![], None).unwrap();
        assert_eq!(kv.get("a", "t").unwrap(), Some(vec![2]));
    }
}
