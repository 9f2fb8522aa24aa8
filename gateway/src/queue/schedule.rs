//! The queue's decisions after an attempt, as pure functions of the entry, the settings
//! and the time (and a jitter draw), so each rule is a plain unit test: retry backoff,
//! expiry after the maximum lifetime, the one "delayed" notice, and the status a
//! notice reports for a recipient.

use std::time::Duration;

use super::Settings;
use super::dsn::Action;
use super::entry::{Entry, RcptStatus};
use crate::smtp::{Enhanced, Reply};

/// What comes after an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Nothing is pending: notify the sender of failures, then remove the entry.
    Done,
    /// Attempt again at `at_ms`; `warn`: send the "delayed" notice now.
    Retry {
        /// Unix milliseconds.
        at_ms: u64,
        /// Send the delay notice (once per entry).
        warn: bool,
    },
}

/// The delay before attempt `attempts + 1`: `retry_initial` doubled per attempt, capped
/// at `retry_max`, spread by ±20 % (`jitter` in `0.0..1.0`) so a burst does not retry
/// in lockstep.
pub fn backoff(s: &Settings, attempts: u32, jitter: f64) -> Duration {
    let base = s
        .retry_initial
        .saturating_mul(1u32 << attempts.saturating_sub(1).min(20))
        .min(s.retry_max);
    base.mul_f64(0.8 + jitter.clamp(0.0, 1.0) * 0.4)
        .max(Duration::from_millis(10))
}

/// Decides what follows an attempt that ended at `now_ms`. Recipients still pending
/// after the maximum lifetime fail with `4.4.7` (counted in the result).
pub fn after_attempt(entry: &mut Entry, s: &Settings, now_ms: u64, jitter: f64) -> (Next, usize) {
    let age = Duration::from_millis(now_ms.saturating_sub(entry.arrival * 1000));
    let mut expired = 0;
    if !entry.done() && age >= s.max_lifetime {
        let attempts = entry.attempts;
        for r in entry.recipients.iter_mut() {
            if r.status == RcptStatus::Pending {
                let last = r
                    .last_reply
                    .take()
                    .map(|l| l.to_string())
                    .unwrap_or_default();
                r.last_reply = Some(Reply::new(
                    550,
                    "5.4.7",
                    format!("delivery time expired after {attempts} attempts; last answer: {last}"),
                ));
                r.remote = None;
                r.status = RcptStatus::Failed;
                expired += 1;
            }
        }
    }
    if entry.done() {
        return (Next::Done, expired);
    }
    let warn = !s.delay_warning.is_zero() && !entry.warned && age >= s.delay_warning;
    let at_ms = now_ms + backoff(s, entry.attempts, jitter).as_millis() as u64;
    (Next::Retry { at_ms, warn }, expired)
}

/// The RFC 3464 `Status` for a recipient whose last reply was `reply`: its enhanced code,
/// made permanent for a failure (a recipient that failed after 4xx answers failed for
/// good), or the class default.
pub fn dsn_status(reply: Option<&Reply>, kind: Action) -> String {
    let class = match kind {
        Action::Failed => 5,
        Action::Delayed => 4,
    };
    match reply.and_then(Reply::enhanced) {
        Some(Enhanced(_, subject, detail)) => format!("{class}.{subject}.{detail}"),
        None => format!("{class}.0.0"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queue::entry::tests::sample;

    fn settings() -> Settings {
        Settings {
            spool: "/nonexistent".into(),
            concurrency: 4,
            per_destination: 2,
            retry_initial: Duration::from_secs(60),
            retry_max: Duration::from_secs(3600),
            max_lifetime: Duration::from_secs(5 * 86400),
            delay_warning: Duration::from_secs(4 * 3600),
            connection_idle: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(30),
            maildir: "/nonexistent".into(),
            fold_local_part: true,
        }
    }

    #[test]
    fn backoff_doubles_with_jitter_and_cap() {
        let s = settings();
        for (attempt, base) in [
            (1u32, 60.0),
            (2, 120.0),
            (3, 240.0),
            (7, 3600.0),
            (40, 3600.0),
        ] {
            assert_eq!(backoff(&s, attempt, 0.5).as_secs_f64(), base, "{attempt}");
            assert_eq!(backoff(&s, attempt, 0.0).as_secs_f64(), base * 0.8);
            assert!((backoff(&s, attempt, 1.0).as_secs_f64() - base * 1.2).abs() < 1e-6);
        }
    }

    #[test]
    fn retry_then_delay_notice_once_then_expiry() {
        let s = settings();
        let mut e = sample("Q1");
        e.arrival = 1_000;
        e.attempts = 1;
        let at = |secs: u64| 1_000_000 + secs * 1000;
        assert_eq!(
            after_attempt(&mut e, &s, at(10), 0.5),
            (
                Next::Retry {
                    at_ms: at(10) + 60_000,
                    warn: false
                },
                0
            )
        );
        let (next, _) = after_attempt(&mut e, &s, at(4 * 3600), 0.5);
        assert!(matches!(next, Next::Retry { warn: true, .. }), "{next:?}");
        e.warned = true;
        let (next, _) = after_attempt(&mut e, &s, at(5 * 3600), 0.5);
        assert!(
            matches!(next, Next::Retry { warn: false, .. }),
            "warned once"
        );
        e.recipients[0].last_reply = Some(Reply::new(451, "4.4.1", "refused"));
        e.recipients[1].status = RcptStatus::Delivered;
        assert_eq!(
            after_attempt(&mut e, &s, at(5 * 86400), 0.5),
            (Next::Done, 1)
        );
        let r = &e.recipients[0];
        assert_eq!(r.status, RcptStatus::Failed);
        let reply = r.last_reply.as_ref().unwrap().to_string();
        assert!(
            reply.starts_with("550 5.4.7 delivery time expired after 1 attempts"),
            "{reply}"
        );
        assert!(reply.ends_with("last answer: 451 4.4.1 refused"), "{reply}");
        assert_eq!(e.recipients[1].status, RcptStatus::Delivered, "not touched");
    }

    #[test]
    fn nothing_pending_is_done() {
        let mut e = sample("Q2");
        for r in &mut e.recipients {
            r.status = RcptStatus::Delivered;
        }
        assert_eq!(after_attempt(&mut e, &settings(), 0, 0.5), (Next::Done, 0));
    }

    #[test]
    fn dsn_status_codes() {
        let r = |c, e| Some(Reply::new(c, e, "x"));
        assert_eq!(
            dsn_status(r(550, "5.1.1").as_ref(), Action::Failed),
            "5.1.1"
        );
        assert_eq!(
            dsn_status(r(451, "4.4.7").as_ref(), Action::Failed),
            "5.4.7"
        );
        assert_eq!(
            dsn_status(r(451, "4.3.0").as_ref(), Action::Delayed),
            "4.3.0"
        );
        assert_eq!(dsn_status(None, Action::Failed), "5.0.0");
        let plain = Reply::plain(421, "bye");
        assert_eq!(dsn_status(Some(&plain), Action::Delayed), "4.0.0");
    }
}
