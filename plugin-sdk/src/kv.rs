//! A key-value store for state that outlives a session (capability `kv`): greylisting
//! triplets, rate-limit counters, caches.
//!
//! Keys are namespaced per plugin by the host. Keys are 1..=256 octets without control
//! characters; values at most 64 KiB by default. `ttl_secs: None` keeps a value until it
//! is deleted or evicted. Without the grant every call answers [`KvError::Denied`];
//! [`KvError::Unavailable`] is temporary (answer tempfail or continue, your choice).
//!
//! ```no_run
//! use mailgate_plugin_sdk::kv;
//! # fn f() -> Result<(), kv::KvError> {
//! let first = kv::set_if_absent("grey:1.2.3.4:a@x:b@y", b"1", Some(3600))?;
//! let per_minute = kv::increment("rcpt:1.2.3.4", 1, Some(60))?;
//! # let _ = (first, per_minute); Ok(()) }
//! ```

use crate::bindings::mailgate::plugin::kv as raw;

pub use raw::KvError;

/// The value of `key`, `None` if absent or expired.
pub fn get(key: &str) -> Result<Option<Vec<u8>>, KvError> {
    raw::get(key)
}

/// The value of `key` as text (invalid UTF-8 replaced by U+FFFD), `None` if absent.
pub fn get_string(key: &str) -> Result<Option<String>, KvError> {
    Ok(raw::get(key)?.map(|v| String::from_utf8_lossy(&v).into_owned()))
}

/// Sets `key`, expiring after `ttl_secs` seconds if given.
pub fn set(key: &str, value: impl AsRef<[u8]>, ttl_secs: Option<u32>) -> Result<(), KvError> {
    raw::set(key, value.as_ref(), ttl_secs)
}

/// Sets `key` only if it is absent (or expired); `true` if this call set it. Atomic: the
/// "first seen" step of greylisting, or a lock.
pub fn set_if_absent(
    key: &str,
    value: impl AsRef<[u8]>,
    ttl_secs: Option<u32>,
) -> Result<bool, KvError> {
    raw::set_if_absent(key, value.as_ref(), ttl_secs)
}

/// Removes `key`; `true` if it was present.
pub fn delete(key: &str) -> Result<bool, KvError> {
    raw::delete(key)
}

/// Atomically adds `delta` to the counter at `key` (created at 0) and returns the new
/// value. `ttl_secs` applies only when this call creates the counter (a fixed window).
pub fn increment(key: &str, delta: i64, ttl_secs: Option<u32>) -> Result<i64, KvError> {
    raw::increment(key, delta, ttl_secs)
}
