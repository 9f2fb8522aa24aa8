//! Recipient verification (capability `verify`): ask the next hop whether it accepts a
//! recipient, the way Postfix's verify(8) does for `reject_unverified_recipient`.
//!
//! The host opens an SMTP session with the next hop and sends `EHLO`, `MAIL FROM:<>`,
//! `RCPT TO:<recipient>` and `QUIT`, never `DATA`. [`recipient`] asks the next hop the
//! gateway's queue would deliver to (a static route, `delivery.upstream`, or the domain's
//! MX hosts); [`recipient_via`] asks the host you name (say, the old server of a
//! migration). The host caches the answers per recipient and next hop (accepted ones and
//! refused ones for their own TTLs, the gateway's `[verify]` settings), so asking at every
//! `RCPT TO` costs one probe per recipient per TTL; concurrent calls share one probe.
//!
//! - `Ok(v)` with `v.accepted`: the next hop answered 2xx; continue.
//! - `Ok(v)` with `!v.accepted`: it answered 5xx (`v.reply` is its reply, e.g.
//!   `550 5.1.1 <x@example.com>: Recipient address rejected: User unknown`); refuse the
//!   recipient with `550 5.1.1` and its text ([`Verification::text`]).
//! - `Err(VerifyError::Unavailable(why))`: it could not be asked or answered 4xx; answer
//!   `451 4.4.3` so the client retries later.
//! - `Err(VerifyError::Denied)`: the plugin is not granted `verify`.
//!
//! A call waits at most the gateway's `[verify] timeout_secs` and never past the hook's
//! deadline (give the plugin a `limits.deadline_ms` above that timeout); when it stops
//! waiting it answers `Unavailable`, and the probe goes on and fills the cache for the
//! client's retry. Since WIT 0.1.1: a plugin that calls these does not load on an older
//! host.
//!
//! ```no_run
//! use mailgate_plugin_sdk::prelude::*;
//! use mailgate_plugin_sdk::verify::{self, VerifyError};
//!
//! fn check(rcpt: &Recipient) -> RcptOutcome {
//!     match verify::recipient(&rcpt.address) {
//!         Ok(v) if v.accepted => RcptOutcome::continue_(),
//!         Ok(v) => RcptOutcome::reject(550, "5.1.1", v.text()),
//!         Err(VerifyError::Unavailable(_)) => {
//!             RcptOutcome::tempfail(451, "4.4.3", "Recipient verification unavailable")
//!         }
//!         Err(VerifyError::Denied) => RcptOutcome::continue_(),
//!     }
//! }
//! # let _ = check;
//! ```

use crate::bindings::mailgate::plugin::verify as raw;
use crate::{Address, RelayHost};

pub use raw::{Verification, VerifyError};

/// Asks the next hop the gateway would deliver `addr` to (a static route,
/// `delivery.upstream`, or the domain's MX, with the queue's loop and private-address
/// checks) whether it accepts `addr`. In proxy mode the next hop is `delivery.upstream`;
/// in maildir mode there is none and the answer is [`VerifyError::Unavailable`].
pub fn recipient(addr: &Address) -> Result<Verification, VerifyError> {
    raw::recipient(addr)
}

/// Asks `via` (host name or IP literal, port, STARTTLS policy) whether it accepts `addr`.
/// A relay host that is not a valid host name or has port 0 answers
/// [`VerifyError::Unavailable`].
pub fn recipient_via(addr: &Address, via: &RelayHost) -> Result<Verification, VerifyError> {
    raw::recipient_via(addr, via)
}

impl Verification {
    /// The next hop's reply without its status codes: `<x@example.com>: Recipient address
    /// rejected` for `550 5.1.1 <x@example.com>: Recipient address rejected`, for a reply of
    /// your own with the same text.
    pub fn text(&self) -> &str {
        strip_codes(&self.reply)
    }
}

/// `text` without a leading basic status code (`550 `, `550-`) and then a leading enhanced
/// one (`5.1.1 `).
fn strip_codes(text: &str) -> &str {
    let b = text.as_bytes();
    let mut rest = text;
    if b.len() >= 4 && b[..3].iter().all(u8::is_ascii_digit) && matches!(b[3], b' ' | b'-') {
        rest = &text[4..];
    }
    if let Some((first, after)) = rest.split_once(' ') {
        let parts: Vec<&str> = first.split('.').collect();
        let enhanced = parts.len() == 3
            && parts
                .iter()
                .all(|p| !p.is_empty() && p.len() <= 3 && p.bytes().all(|c| c.is_ascii_digit()));
        if enhanced {
            rest = after;
        }
    }
    rest
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_the_reply_without_its_codes() {
        let v = |reply: &str| Verification {
            accepted: false,
            reply: reply.into(),
            cached: false,
        };
        assert_eq!(
            v("550 5.1.1 <x@example.com>: Recipient address rejected").text(),
            "<x@example.com>: Recipient address rejected"
        );
        assert_eq!(v("250 2.1.5 Ok").text(), "Ok");
        assert_eq!(v("550 No such user").text(), "No such user");
        assert_eq!(v("550 1.2 x").text(), "1.2 x");
        assert_eq!(v("no codes at all").text(), "no codes at all");
        assert_eq!(v("550").text(), "550");
    }
}
