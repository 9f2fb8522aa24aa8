//! DKIM body canonicalization (RFC 6376 3.4.3, 3.4.4) and the `l=` body length, done here
//! because mail-auth 0.13 gets two things wrong and its body hashes are public to fix:
//!
//! - relaxed canonicalization of a body ending in whitespace-only lines keeps one of them
//!   (`"Hi\r\n \r\n"` comes out `"Hi\r\n\r\n"`, not `"Hi\r\n"`), so `bh=` does not match
//!   for legitimate mail that other verifiers pass (fixed upstream in mail-auth 0.15, which
//!   needs a newer Rust; our replacement is this module);
//! - `l=` is applied to the raw body before canonicalization, where RFC 6376 3.5 counts
//!   octets of the canonicalized body.
//!
//! [`fix_body_hashes`] recomputes every body hash of a parsed message; [`canonical_len`]
//! tells how much of the body an `l=` leaves unsigned.

use mail_auth::AuthenticatedMessage;
use mail_auth::common::headers::{Writable, Writer};
use mail_auth::dkim::Canonicalization;

/// Feeds the canonical form of `body` to `out`, piece by piece.
fn canonicalize(body: &[u8], relaxed: bool, mut out: impl FnMut(&[u8])) {
    let mut empty_lines = 0usize;
    let mut wrote_any = false;
    let mut line_buf = Vec::new();
    let mut rest = body;
    while !rest.is_empty() {
        let (line, next) = match rest.windows(2).position(|w| w == b"\r\n") {
            Some(i) => (&rest[..i], &rest[i + 2..]),
            // A last line without CRLF gets one (3.4.3, 3.4.4).
            None => (rest, &rest[rest.len()..]),
        };
        rest = next;
        let line: &[u8] = if relaxed {
            line_buf.clear();
            let mut in_wsp = false;
            for &b in line {
                if b == b' ' || b == b'\t' {
                    in_wsp = true;
                } else {
                    if in_wsp {
                        line_buf.push(b' ');
                    }
                    in_wsp = false;
                    line_buf.push(b);
                }
            }
            &line_buf
        } else {
            line
        };
        if line.is_empty() {
            // Held back: empty lines at the end are not part of the canonical body.
            empty_lines += 1;
            continue;
        }
        for _ in 0..empty_lines {
            out(b"\r\n");
        }
        empty_lines = 0;
        out(line);
        out(b"\r\n");
        wrote_any = true;
    }
    // Simple: an empty body is one CRLF. Relaxed: it is nothing.
    if !wrote_any && !relaxed {
        out(b"\r\n");
    }
}

/// Octets in the canonical form of `body`.
pub fn canonical_len(body: &[u8], relaxed: bool) -> u64 {
    let mut n = 0u64;
    canonicalize(body, relaxed, |p| n += p.len() as u64);
    n
}

/// The canonical body, cut at `limit` octets (`l=`; 0 for none), as mail-auth hashes it.
struct Canonical<'a> {
    body: &'a [u8],
    relaxed: bool,
    limit: u64,
}

impl Writable for Canonical<'_> {
    fn write(self, writer: &mut impl Writer) {
        let mut left = if self.limit == 0 {
            u64::MAX
        } else {
            self.limit
        };
        canonicalize(self.body, self.relaxed, |piece| {
            let take = (piece.len() as u64).min(left) as usize;
            if take > 0 {
                writer.write(&piece[..take]);
                left -= take as u64;
            }
        });
    }
}

/// The body of `msg`.
pub fn body<'x>(msg: &AuthenticatedMessage<'x>) -> &'x [u8] {
    msg.raw_message
        .get(msg.body_offset as usize..)
        .unwrap_or_default()
}

/// Recomputes every body hash mail-auth computed at parse time (it compares signatures'
/// `bh=` with these, for DKIM and ARC alike).
pub fn fix_body_hashes(msg: &mut AuthenticatedMessage<'_>) {
    let body = body(msg);
    for (canon, algorithm, limit, hash) in &mut msg.body_hashes {
        let relaxed = *canon == Canonicalization::Relaxed;
        *hash = algorithm
            .hash(Canonical {
                body,
                relaxed,
                limit: *limit,
            })
            .as_ref()
            .to_vec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn canon(body: &str, relaxed: bool) -> String {
        let mut out = Vec::new();
        canonicalize(body.as_bytes(), relaxed, |p| out.extend_from_slice(p));
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn relaxed_bodies() {
        // RFC 6376 3.4.6's example.
        assert_eq!(canon(" C \r\nD \t E\r\n\r\n\r\n", true), " C\r\nD E\r\n");
        // Whitespace-only lines at the end go (mail-auth 0.13 keeps one).
        assert_eq!(canon("Hi\r\n  \r\n\t\r\n\r\n", true), "Hi\r\n");
        assert_eq!(canon("Hi\r\n \r\nthere \r\n", true), "Hi\r\n\r\nthere\r\n");
        assert_eq!(canon("", true), "");
        assert_eq!(canon(" \r\n\r\n", true), "");
        assert_eq!(canon("no end", true), "no end\r\n");
    }

    #[test]
    fn simple_bodies() {
        assert_eq!(
            canon(" C \r\nD \t E\r\n\r\n\r\n", false),
            " C \r\nD \t E\r\n"
        );
        assert_eq!(canon("Hi\r\n  \r\n\r\n", false), "Hi\r\n  \r\n");
        assert_eq!(canon("", false), "\r\n");
        assert_eq!(canon("\r\n\r\n", false), "\r\n");
    }

    #[test]
    fn lengths_count_canonical_octets() {
        assert_eq!(canonical_len(b"a  b \r\n\r\n", true), 5);
        assert_eq!(canonical_len(b"a  b \r\n\r\n", false), 7);
    }
}
