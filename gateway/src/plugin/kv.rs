//! The in-memory key/value store behind the `kv` capability (a shared backend such as
//! Redis comes later behind the same operations). Each plugin has a namespace of its own
//! with its own quota in entries and octets (`limits.kv_entries`, `limits.kv_mb`), so one
//! plugin filling its quota never makes another's writes fail, and its own lock, so one
//! busy plugin does not wait on another. Values expire by TTL; expired entries are found
//! through a heap ordered by expiry (no scan of the namespace under its lock). Counters
//! are decimal integers.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Longest key (octets).
pub const MAX_KEY: usize = 256;
/// Largest value (octets).
pub const MAX_VALUE: usize = 64 * 1024;
/// Octets an entry costs beyond its key and value (bookkeeping), for the byte quota.
const ENTRY_OVERHEAD: usize = 64;

/// Why an operation failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KvFault {
    /// Empty, too long, or with control characters.
    InvalidKey,
    /// Over [`MAX_VALUE`].
    ValueTooLarge,
    /// The plugin's namespace is full (entries or octets).
    QuotaExceeded,
    /// `increment` on a value that is not a decimal integer.
    NotACounter,
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

/// A process-wide store of per-plugin namespaces.
#[derive(Debug, Default)]
pub struct Kv {
    namespaces: Mutex<HashMap<String, Arc<Mutex<Namespace>>>>,
    /// Expiry follows the plugins' clock (movable in tests).
    clock: Arc<super::clock::PluginClock>,
}

fn check_key(key: &str) -> Result<(), KvFault> {
    if key.is_empty() || key.len() > MAX_KEY || key.chars().any(char::is_control) {
        return Err(KvFault::InvalidKey);
    }
    Ok(())
}

impl Kv {
    /// An empty store.
    pub fn new() -> Kv {
        Kv::default()
    }

    /// An empty store whose entries expire by `clock`.
    pub fn with_clock(clock: Arc<super::clock::PluginClock>) -> Kv {
        Kv {
            clock,
            ..Kv::default()
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

    fn put(
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
        let kv = Kv::new();
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
        let kv = Kv::new();
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
