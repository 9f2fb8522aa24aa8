//! What a plugin may use beyond one call: per session (DNS lookups, log lines), kept by the
//! session's chain across the plugin's instances so a plugin that traps and is
//! instantiated afresh does not get a fresh budget; and per plugin over all sessions (log
//! lines and octets per second, a token bucket), with what was dropped counted and said
//! once in the log.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Instant;

/// Log lines one plugin may write in one session.
pub const MAX_LOG_LINES: u32 = 1000;

/// The budgets an instance draws on: its session's and its plugin's.
#[derive(Clone, Debug)]
pub struct Budgets {
    /// This plugin in this session (kept across its instances).
    pub session: std::sync::Arc<SessionBudget>,
    /// This plugin over all sessions.
    pub log_rate: std::sync::Arc<LogRate>,
    /// The session's authentication checks (none outside an SMTP session).
    pub auth: Option<std::sync::Arc<super::auth::SessionAuth>>,
}

impl Default for Budgets {
    /// A fresh session budget and a log rate of its own at the default limits.
    fn default() -> Self {
        Budgets {
            session: Default::default(),
            log_rate: std::sync::Arc::new(LogRate::new(100, 64 * 1024)),
            auth: None,
        }
    }
}

/// One plugin's budget in one session.
#[derive(Debug, Default)]
pub struct SessionBudget {
    /// DNS lookups admitted.
    pub dns_queries: AtomicU32,
    /// Log lines written.
    pub log_lines: AtomicU32,
}

impl SessionBudget {
    /// Takes one of `max`; `false` when none is left.
    fn take(counter: &AtomicU32, max: u32) -> bool {
        counter
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .is_ok()
    }

    /// Takes a DNS lookup out of `max` per session.
    pub fn take_dns(&self, max: u32) -> bool {
        Self::take(&self.dns_queries, max)
    }

    /// Takes a log line out of [`MAX_LOG_LINES`] per session.
    pub fn take_log_line(&self) -> bool {
        Self::take(&self.log_lines, MAX_LOG_LINES)
    }
}

/// Log lines and octets per second one plugin may write over all its sessions.
#[derive(Debug)]
pub struct LogRate {
    lines_per_sec: f64,
    bytes_per_sec: f64,
    bucket: Mutex<Bucket>,
    dropped: AtomicU64,
}

#[derive(Debug)]
struct Bucket {
    lines: f64,
    bytes: f64,
    at: Instant,
    /// Lines dropped since the last one written.
    dropping: u64,
}

/// What to do with one log line.
#[derive(Debug, PartialEq)]
pub enum LogAdmit {
    /// Write it; `dropped` lines were dropped since the last one written (say so).
    Write {
        /// Lines dropped just before this one.
        dropped: u64,
    },
    /// Drop it; `first` when it starts a run of dropped lines (say so, once).
    Drop {
        /// The first line dropped since the last one written.
        first: bool,
    },
}

impl LogRate {
    /// A bucket holding one second's worth of `lines` and `bytes`.
    pub fn new(lines: u32, bytes: u32) -> LogRate {
        LogRate {
            lines_per_sec: f64::from(lines),
            bytes_per_sec: f64::from(bytes),
            bucket: Mutex::new(Bucket {
                lines: f64::from(lines),
                bytes: f64::from(bytes),
                at: Instant::now(),
                dropping: 0,
            }),
            dropped: AtomicU64::new(0),
        }
    }

    /// Admits a line of `len` octets at `now`.
    pub fn admit(&self, len: usize, now: Instant) -> LogAdmit {
        let mut b = self.bucket.lock().unwrap_or_else(|e| e.into_inner());
        let secs = now.saturating_duration_since(b.at).as_secs_f64();
        b.at = now.max(b.at);
        b.lines = (b.lines + secs * self.lines_per_sec).min(self.lines_per_sec);
        b.bytes = (b.bytes + secs * self.bytes_per_sec).min(self.bytes_per_sec);
        let len = len as f64;
        if b.lines >= 1.0 && b.bytes >= len.min(self.bytes_per_sec) {
            b.lines -= 1.0;
            b.bytes -= len;
            LogAdmit::Write {
                dropped: std::mem::take(&mut b.dropping),
            }
        } else {
            b.dropping += 1;
            self.dropped.fetch_add(1, Ordering::Relaxed);
            LogAdmit::Drop {
                first: b.dropping == 1,
            }
        }
    }

    /// Lines dropped since the plugin was loaded.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn the_session_budget_stops_at_its_maximum() {
        let b = SessionBudget::default();
        assert!(b.take_dns(2) && b.take_dns(2));
        assert!(!b.take_dns(2));
        assert_eq!(b.dns_queries.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn the_rate_drops_past_a_second_s_worth_and_counts_what_it_dropped() {
        let t = Instant::now();
        let r = LogRate::new(3, 1000);
        for _ in 0..3 {
            assert_eq!(r.admit(10, t), LogAdmit::Write { dropped: 0 });
        }
        assert_eq!(r.admit(10, t), LogAdmit::Drop { first: true });
        assert_eq!(r.admit(10, t), LogAdmit::Drop { first: false });
        // A second later the bucket is full again; the next line says what was lost.
        let later = t + Duration::from_secs(1);
        assert_eq!(r.admit(10, later), LogAdmit::Write { dropped: 2 });
        assert_eq!(r.dropped(), 2);
        // Octets count too: a 900-octet line, then no room for another.
        let r = LogRate::new(100, 1000);
        assert_eq!(r.admit(900, t), LogAdmit::Write { dropped: 0 });
        assert_eq!(r.admit(900, t), LogAdmit::Drop { first: true });
    }
}
