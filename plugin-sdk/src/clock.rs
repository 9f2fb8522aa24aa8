//! Time (capability `clock`).
//!
//! Without the grant these answer [`ClockError::Denied`], and `std::time` is frozen at
//! the start of the session, so a plugin cannot measure time by other means.

use std::time::{Duration, SystemTime};

use crate::bindings::mailgate::plugin::clock as raw;

pub use raw::ClockError;

/// Wall-clock time in milliseconds since the Unix epoch.
pub fn now_ms() -> Result<u64, ClockError> {
    raw::now()
}

/// Wall-clock time.
pub fn now() -> Result<SystemTime, ClockError> {
    Ok(SystemTime::UNIX_EPOCH + Duration::from_millis(raw::now()?))
}

/// Nanoseconds from an arbitrary point, never going backwards: for durations.
pub fn monotonic_ns() -> Result<u64, ClockError> {
    raw::monotonic_now()
}
