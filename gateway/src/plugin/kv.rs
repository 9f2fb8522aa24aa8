//! The in-memory key/value store behind the `kv` capability (a shared backend such as
//! Redis comes later behind the same operations). Keys are namespaced per plugin, values
//! expire by TTL, counters are decimal integers.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Longest key (octets).
pub const MAX_KEY: usize = 256;
/// Largest value (octets).
pub const MAX_VALUE: usize = 64 * 1024;

/// Why an operation failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KvFault {
    /// Empty, too long, or with control characters.
    InvalidKey,
    /// Over [`MAX_VALUE`].
    ValueTooLarge,
    /// The store is full.
    QuotaExceeded,
    /// `increment` on a value that is not a decimal integer.
    NotACounter,
}

#[derive(Debug)]
struct Entry {
    value: Vec<u8>,
    expires: Option<Instant>,
}

/// A process-wide store.
#[derive(Debug)]
pub struct Kv {
    map: Mutex<HashMap<String, Entry>>,
    max_entries: usize,
}

impl Default for Kv {
    fn default() -> Self {
        Kv::new(100_000)
    }
}

fn key_of(ns: &str, key: &str) -> Result<String, KvFault> {
    if key.is_empty() || key.len() > MAX_KEY || key.chars().any(char::is_control) {
        return Err(KvFault::InvalidKey);
    }
    Ok(format!("{ns}\u{0}{key}"))
}

impl Kv {
    /// A store holding at most `max_entries` live keys.
    pub fn new(max_entries: usize) -> Kv {
        Kv {
            map: Mutex::new(HashMap::new()),
            max_entries,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn live(e: &Entry, now: Instant) -> bool {
        e.expires.is_none_or(|t| t > now)
    }

    fn room(&self, map: &mut HashMap<String, Entry>, now: Instant) -> Result<(), KvFault> {
        if map.len() >= self.max_entries {
            map.retain(|_, e| Self::live(e, now));
            if map.len() >= self.max_entries {
                return Err(KvFault::QuotaExceeded);
            }
        }
        Ok(())
    }

    /// The value of `key`, if set and not expired.
    pub fn get(&self, ns: &str, key: &str) -> Result<Option<Vec<u8>>, KvFault> {
        let k = key_of(ns, key)?;
        let now = Instant::now();
        Ok(self
            .lock()
            .get(&k)
            .filter(|e| Self::live(e, now))
            .map(|e| e.value.clone()))
    }

    /// Sets `key`, with an optional TTL.
    pub fn set(
        &self,
        ns: &str,
        key: &str,
        value: Vec<u8>,
        ttl: Option<u32>,
    ) -> Result<(), KvFault> {
        self.put(ns, key, value, ttl, false).map(|_| ())
    }

    /// Sets `key` only if it is absent (or expired); `true` if it was set.
    pub fn set_if_absent(
        &self,
        ns: &str,
        key: &str,
        value: Vec<u8>,
        ttl: Option<u32>,
    ) -> Result<bool, KvFault> {
        self.put(ns, key, value, ttl, true)
    }

    fn put(
        &self,
        ns: &str,
        key: &str,
        value: Vec<u8>,
        ttl: Option<u32>,
        only_new: bool,
    ) -> Result<bool, KvFault> {
        let k = key_of(ns, key)?;
        if value.len() > MAX_VALUE {
            return Err(KvFault::ValueTooLarge);
        }
        let now = Instant::now();
        let mut map = self.lock();
        let exists = map.get(&k).is_some_and(|e| Self::live(e, now));
        if only_new && exists {
            return Ok(false);
        }
        if !exists {
            self.room(&mut map, now)?;
        }
        let expires = ttl.map(|s| now + Duration::from_secs(u64::from(s)));
        map.insert(k, Entry { value, expires });
        Ok(true)
    }

    /// Removes `key`; `true` if it was there.
    pub fn delete(&self, ns: &str, key: &str) -> Result<bool, KvFault> {
        let k = key_of(ns, key)?;
        let now = Instant::now();
        Ok(self.lock().remove(&k).is_some_and(|e| Self::live(&e, now)))
    }

    /// Adds `delta` to the counter at `key` (absent counts as 0) atomically; the TTL is
    /// set when the key is created.
    pub fn increment(
        &self,
        ns: &str,
        key: &str,
        delta: i64,
        ttl: Option<u32>,
    ) -> Result<i64, KvFault> {
        let k = key_of(ns, key)?;
        let now = Instant::now();
        let mut map = self.lock();
        let current = match map.get(&k).filter(|e| Self::live(e, now)) {
            Some(e) => Some((
                std::str::from_utf8(&e.value)
                    .ok()
                    .and_then(|s| s.parse::<i64>().ok())
                    .ok_or(KvFault::NotACounter)?,
                e.expires,
            )),
            None => None,
        };
        let (value, expires) = match current {
            Some((v, exp)) => (v.saturating_add(delta), exp),
            None => {
                self.room(&mut map, now)?;
                (delta, ttl.map(|s| now + Duration::from_secs(u64::from(s))))
            }
        };
        map.insert(
            k,
            Entry {
                value: value.to_string().into_bytes(),
                expires,
            },
        );
        Ok(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespaces_ttl_counters_and_quota() {
        let kv = Kv::new(3);
        kv.set("a", "k", b"1".to_vec(), None).unwrap();
        assert_eq!(kv.get("b", "k").unwrap(), None, "namespaced per plugin");
        assert_eq!(kv.get("a", "k").unwrap(), Some(b"1".to_vec()));
        assert_eq!(kv.increment("a", "k", 5, None).unwrap(), 6);
        assert_eq!(kv.increment("a", "n", -2, Some(60)).unwrap(), -2);
        assert!(!kv.set_if_absent("a", "k", b"x".to_vec(), None).unwrap());
        kv.set("a", "s", b"text".to_vec(), None).unwrap();
        assert_eq!(kv.increment("a", "s", 1, None), Err(KvFault::NotACounter));
        assert_eq!(
            kv.set("a", "full", vec![], None),
            Err(KvFault::QuotaExceeded)
        );
        assert!(kv.delete("a", "s").unwrap());
        kv.set("a", "gone", vec![], Some(0)).unwrap();
        assert_eq!(kv.get("a", "gone").unwrap(), None, "ttl 0 expires at once");
        assert_eq!(kv.get("a", ""), Err(KvFault::InvalidKey));
        assert_eq!(
            kv.set("a", "big", vec![0; MAX_VALUE + 1], None),
            Err(KvFault::ValueTooLarge)
        );
    }
}
