//! The time plugins see: the `clock` capability (`now`, `monotonic-now`) and the expiry
//! of kv entries, from one source.
//!
//! It is the system's time, plus an offset that is always zero unless the config sets
//! `chain.adjustable_clock` (tests do): then `mailgate clock advance SECS` moves it
//! forward, so a test can see a greylisting delay or a rate-limit window pass without
//! sleeping through it. It never goes backwards. `mailgate plugin test --time` stands
//! the wall clock still at a given time instead ([`PluginClock::fixed_at`]); monotonic
//! time (deadlines, kv expiry) runs on as usual.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

/// Why the clock cannot be moved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ClockError {
    /// `chain.adjustable_clock` is off.
    #[error("the plugin clock is not adjustable (chain.adjustable_clock is off)")]
    NotAdjustable,
}

/// The plugins' clock.
#[derive(Debug)]
pub struct PluginClock {
    offset_ms: AtomicU64,
    adjustable: bool,
    started: Instant,
    /// The wall-clock time it stands at, when fixed.
    fixed: Option<SystemTime>,
}

impl Default for PluginClock {
    fn default() -> Self {
        PluginClock::new(false)
    }
}

impl PluginClock {
    /// The system's time; movable with [`PluginClock::advance`] if `adjustable`.
    pub fn new(adjustable: bool) -> PluginClock {
        PluginClock {
            offset_ms: AtomicU64::new(0),
            adjustable,
            started: Instant::now(),
            fixed: None,
        }
    }

    /// A wall clock standing still at `at` (not adjustable); monotonic time runs.
    pub fn fixed_at(at: SystemTime) -> PluginClock {
        PluginClock {
            fixed: Some(at),
            ..PluginClock::new(false)
        }
    }

    fn offset(&self) -> Duration {
        Duration::from_millis(self.offset_ms.load(Ordering::Relaxed))
    }

    /// Wall-clock time, milliseconds since the Unix epoch.
    pub fn now_ms(&self) -> u64 {
        let now = self
            .fixed
            .unwrap_or_else(SystemTime::now)
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            + self.offset();
        now.as_millis() as u64
    }

    /// Monotonic time for expiry.
    pub fn instant(&self) -> Instant {
        Instant::now() + self.offset()
    }

    /// Nanoseconds since the clock was made (never going backwards).
    pub fn monotonic_ns(&self) -> u64 {
        (self.started.elapsed() + self.offset()).as_nanos() as u64
    }

    /// Moves the clock `secs` forward; the total offset, seconds.
    pub fn advance(&self, secs: u64) -> Result<u64, ClockError> {
        if !self.adjustable {
            return Err(ClockError::NotAdjustable);
        }
        let ms = secs.saturating_mul(1000);
        let total = self.offset_ms.fetch_add(ms, Ordering::Relaxed) + ms;
        Ok(total / 1000)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_an_adjustable_clock_moves_and_everything_moves_with_it() {
        let fixed = PluginClock::new(false);
        assert_eq!(fixed.advance(10), Err(ClockError::NotAdjustable));
        let clock = PluginClock::new(true);
        let (wall, mono, at) = (clock.now_ms(), clock.monotonic_ns(), clock.instant());
        assert_eq!(clock.advance(300), Ok(300));
        assert_eq!(clock.advance(1), Ok(301));
        assert!(clock.now_ms() >= wall + 301_000);
        assert!(clock.monotonic_ns() >= mono + 301_000_000_000);
        assert!(clock.instant() >= at + Duration::from_secs(301));
    }

    #[test]
    fn a_fixed_clock_stands_still_and_cannot_be_moved() {
        let at = SystemTime::UNIX_EPOCH + Duration::from_secs(1_767_225_600);
        let clock = PluginClock::fixed_at(at);
        assert_eq!(clock.now_ms(), 1_767_225_600_000);
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(
            clock.now_ms(),
            1_767_225_600_000,
            "the wall clock does not run"
        );
        assert_eq!(clock.advance(1), Err(ClockError::NotAdjustable));
        let mono = clock.monotonic_ns();
        std::thread::sleep(Duration::from_millis(5));
        assert!(clock.monotonic_ns() > mono, "monotonic time runs");
    }
}
