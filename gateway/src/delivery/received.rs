//! The `Received:` trace header (RFC 5321 4.4, RFC 5322 3.6.7).
//!
//! The gateway prepends one `Received:` header to every message it passes on
//! (continuation lines start with a TAB, shown here as four spaces):
//!
//! ```text
//! Received: from helo.name (client.example [192.0.2.1])
//!     by mx.example.test (mailgate) with ESMTPS id 7f3a.1
//!     (version=TLSv1_3 cipher=TLS13_AES_256_GCM_SHA384)
//!     for <user@example.test>; Mon, 23 Nov 2026 07:00:00 +0000
//! ```
//!
//! Each clause starts a new folded line (continuation lines begin with a TAB) and a clause
//! that does not fit in 78 characters is folded between its words. Everything taken from
//! the client (the HELO name) or from configuration is sanitised first: no control
//! characters, no parentheses or backslashes that could close or open a comment, no `;`
//! that would be mistaken for the start of the date, and a bounded length. The client
//! reverse name (forward-confirmed, when known) comes first inside the comment, as
//! Postfix writes it; the address is written as an RFC 5321 address literal (`[192.0.2.1]`, `[IPv6:2001:db8::1]`);
//! the client port is not included, as the TCP-info grammar has no place for it.
//!
//! Lines stay within 78 characters unless a single word is longer than that (only a very
//! long recipient address can be); no line can exceed the 998 octet limit of RFC 5322
//! for addresses within SMTP's own limits.

use std::net::IpAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::smtp::SessionFacts;

/// Soft line length limit of RFC 5322 2.1.1, without the CRLF.
const MAX_LINE: usize = 78;

/// Longest HELO name (or hostname) copied into the header; longer names are cut (a
/// legitimate host name that long is very rare, and this keeps every line within 78).
const MAX_NAME: usize = 64;

/// Longest session/transaction id and TLS parameter copied into the header.
const MAX_TOKEN: usize = 64;

/// Builds the `Received:` header for a message received in `session` (`smtputf8`: the
/// transaction declared SMTPUTF8), by this gateway (`hostname`), under transaction id
/// `id`, for recipient `rcpt` if the header is written per recipient, at time `now`. The
/// result ends in CRLF and contains no other CR or LF than those of its line folds.
pub fn received_header(
    session: &SessionFacts,
    smtputf8: bool,
    hostname: &str,
    id: &str,
    rcpt: Option<&str>,
    now: SystemTime,
) -> String {
    let helo = match sanitize_name(session.helo_name().unwrap_or_default()) {
        s if s.is_empty() => "unknown".to_string(),
        s => s,
    };
    let host = match sanitize_name(hostname) {
        s if s.is_empty() => "localhost".to_string(),
        s => s,
    };
    let client = session.client.ip();
    let ip = match session.ptr_name.as_deref().map(sanitize_name) {
        Some(name) if !name.is_empty() => format!("{name} {}", address_literal(client)),
        _ => address_literal(client),
    };

    let mut clauses: Vec<Vec<String>> = Vec::with_capacity(4);
    clauses.push(vec![
        "Received:".into(),
        "from".into(),
        helo,
        format!("({ip})"),
    ]);

    let protocol = match sanitize_token(session.protocol(smtputf8)) {
        s if s.is_empty() => "SMTP".to_string(),
        s => s,
    };
    let mut by = vec![
        "by".into(),
        host,
        "(mailgate)".into(),
        "with".into(),
        protocol,
    ];
    let id = sanitize_token(id);
    if !id.is_empty() {
        by.push("id".into());
        by.push(id);
    }
    clauses.push(by);

    if let Some(tls) = &session.tls {
        clauses.push(vec![
            format!("(version={}", sanitize_token(&tls.version)),
            format!("cipher={})", sanitize_token(&tls.cipher)),
        ]);
    }

    let mut last = Vec::with_capacity(8);
    if let Some(rcpt) = rcpt {
        last.push("for".into());
        last.push(format!("<{}>;", sanitize_address(rcpt)));
    } else if let Some(prev) = clauses.last_mut().and_then(|c| c.last_mut()) {
        // The date follows the last clause directly: `...id X; date`.
        prev.push(';');
    }
    // The date is kept together on one line.
    last.push(rfc5322_date(now));
    clauses.push(last);

    fold(&clauses)
}

/// Joins clauses into a folded header: each clause on a new line, words wrapped at 78.
fn fold(clauses: &[Vec<String>]) -> String {
    let mut out = String::with_capacity(256);
    let mut line_len = 0usize;
    for (ci, clause) in clauses.iter().enumerate() {
        for (wi, word) in clause.iter().enumerate() {
            let first_of_header = ci == 0 && wi == 0;
            if first_of_header {
                out.push_str(word);
                line_len = word.len();
            } else if wi == 0 || line_len + 1 + word.len() > MAX_LINE {
                out.push_str("\r\n\t");
                out.push_str(word);
                line_len = 8 + word.len(); // a TAB counts as up to 8 columns
            } else {
                out.push(' ');
                out.push_str(word);
                line_len += 1 + word.len();
            }
        }
    }
    out.push_str("\r\n");
    out
}

/// An RFC 5321 address literal for `ip`; IPv4-mapped IPv6 addresses are shown as IPv4.
fn address_literal(ip: IpAddr) -> String {
    match ip.to_canonical() {
        IpAddr::V4(v4) => format!("[{v4}]"),
        IpAddr::V6(v6) => format!("[IPv6:{v6}]"),
    }
}

/// Keeps only characters that are safe in a domain name or address literal
/// (`A-Z a-z 0-9 . - _ : [ ]`), replacing anything else with `_`, cut to [`MAX_NAME`].
fn sanitize_name(s: &str) -> String {
    let mut out: String = s
        .trim()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | ':' | '[' | ']') {
                c
            } else {
                '_'
            }
        })
        .take(MAX_NAME)
        .collect();
    out.truncate(MAX_NAME);
    out
}

/// Keeps only `A-Z a-z 0-9 . - _ /`, cut to [`MAX_TOKEN`] (ids, protocol, TLS names).
fn sanitize_token(s: &str) -> String {
    s.chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | '/'))
        .take(MAX_TOKEN)
        .collect()
}

/// An address for the `for` clause: no control characters, no whitespace, no angle
/// brackets, backslashes, parentheses or `;`.
fn sanitize_address(s: &str) -> String {
    s.chars()
        .filter(|c| {
            !c.is_control()
                && !c.is_whitespace()
                && !matches!(c, '<' | '>' | '(' | ')' | '\\' | ';')
        })
        .take(512)
        .collect()
}

/// `now` in RFC 5322 3.3 form, UTC: `Mon, 23 Nov 2026 07:00:00 +0000`.
pub(crate) fn rfc5322_date(now: SystemTime) -> String {
    // httpdate panics outside 1970..=9999; clamp instead (the clock is not peer input,
    // but a broken clock must not take the gateway down).
    const MAX_SECS: u64 = 253_402_300_799; // 9999-12-31T23:59:59Z
    let secs = now
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
        .min(MAX_SECS);
    let imf = httpdate::fmt_http_date(UNIX_EPOCH + Duration::from_secs(secs));
    match imf.strip_suffix(" GMT") {
        Some(base) => format!("{base} +0000"),
        None => imf,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::smtp::{Helo, Listener, TlsInfo};

    fn trace(helo: &str, client: &str, tls: bool) -> SessionFacts {
        SessionFacts {
            helo: Some(Helo {
                name: helo.into(),
                extended: true,
            }),
            tls: tls.then(|| TlsInfo {
                version: "TLSv1_3".into(),
                cipher: "TLS13_AES_256_GCM_SHA384".into(),
            }),
            ..SessionFacts::new(
                "s1".into(),
                client.parse().unwrap(),
                "192.0.2.250:25".parse().unwrap(),
                Listener::Smtp,
            )
        }
    }

    /// The header for an ESMTP transaction without SMTPUTF8.
    fn rh(s: &SessionFacts, host: &str, id: &str, rcpt: Option<&str>, now: SystemTime) -> String {
        received_header(s, false, host, id, rcpt, now)
    }

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    fn assert_well_formed(h: &str) {
        assert!(h.starts_with("Received: "));
        assert!(h.ends_with("\r\n"));
        let body = &h[..h.len() - 2];
        for (i, line) in body.split("\r\n").enumerate() {
            assert!(
                !line.contains('\r') && !line.contains('\n'),
                "bare CR/LF in {line:?}"
            );
            assert!(line.len() <= MAX_LINE, "line too long: {line:?}");
            if i > 0 {
                assert!(line.starts_with('\t'), "continuation without WSP: {line:?}");
            }
        }
    }

    #[test]
    fn confirmed_reverse_name_is_written_before_the_address() {
        let mut t = trace("helo.name", "192.0.2.1:40000", false);
        t.ptr_name = Some("client.example.test".into());
        let h = rh(&t, "mx.example.test", "abc.1", None, at(1_795_417_200));
        assert!(
            h.starts_with("Received: from helo.name (client.example.test [192.0.2.1])\r\n"),
            "{h}"
        );
        t.ptr_name = Some("evil) (x;y".into());
        let h = rh(&t, "mx.example.test", "abc.1", None, at(1_795_417_200));
        let first = h.lines().next().unwrap();
        assert_eq!(first.matches('(').count(), 1, "{first}");
        assert!(!first.contains(';'), "{first}");
        assert_well_formed(&h);
    }

    #[test]
    fn full_header_with_tls_and_rcpt() {
        // 2026-11-23T07:00:00Z
        let h = rh(
            &trace("helo.name", "192.0.2.1:40000", true),
            "mx.example.test",
            "abc.1",
            Some("user@example.test"),
            at(1_795_417_200),
        );
        assert_eq!(
            h,
            "Received: from helo.name ([192.0.2.1])\r\n\
             \tby mx.example.test (mailgate) with ESMTPS id abc.1\r\n\
             \t(version=TLSv1_3 cipher=TLS13_AES_256_GCM_SHA384)\r\n\
             \tfor <user@example.test>; Mon, 23 Nov 2026 07:00:00 +0000\r\n"
        );
        assert_well_formed(&h);
    }

    #[test]
    fn without_rcpt_and_tls_date_follows_id() {
        let h = rh(
            &trace("client.example", "[2001:db8::1]:25", false),
            "mx.example.test",
            "s.2",
            None,
            at(0),
        );
        assert_eq!(
            h,
            "Received: from client.example ([IPv6:2001:db8::1])\r\n\
             \tby mx.example.test (mailgate) with ESMTP id s.2;\r\n\
             \tThu, 01 Jan 1970 00:00:00 +0000\r\n"
        );
        assert_well_formed(&h);
    }

    #[test]
    fn ipv4_mapped_shown_as_ipv4() {
        let h = rh(
            &trace("x", "[::ffff:192.0.2.7]:1", false),
            "mx",
            "i",
            None,
            at(0),
        );
        assert!(h.contains("([192.0.2.7])"), "{h}");
    }

    #[test]
    fn helo_is_sanitised() {
        let evil = "evil.example) by trusted.example\r\nX-Injected: yes (\\;";
        let h = rh(&trace(evil, "192.0.2.1:1", false), "mx", "i", None, at(0));
        assert_well_formed(&h);
        assert!(!h.contains("X-Injected: "), "{h}");
        // The from clause, up to the by clause: one comment only, the address literal.
        let (from, _) = h.split_once("\r\n\tby ").unwrap();
        assert_eq!(from.matches('(').count(), 1, "{from}");
        assert_eq!(from.matches(')').count(), 1, "{from}");
        assert!(from.ends_with("([192.0.2.1])"), "{from}");
        assert!(
            from.contains("evil.example__by_trusted.example__X-Injected:_yes"),
            "{from}"
        );
        // Only the date separator.
        assert_eq!(h.matches(';').count(), 1);
    }

    #[test]
    fn empty_and_overlong_helo() {
        let h = rh(&trace("", "192.0.2.1:1", false), "mx", "i", None, at(0));
        assert!(
            h.starts_with("Received: from unknown ([192.0.2.1])\r\n"),
            "{h}"
        );
        let long = "a".repeat(300);
        let h = rh(&trace(&long, "192.0.2.1:1", false), "mx", "i", None, at(0));
        assert_well_formed(&h);
        assert!(h.contains(&"a".repeat(MAX_NAME)) && !h.contains(&"a".repeat(MAX_NAME + 1)));
    }

    #[test]
    fn long_clauses_fold_between_words() {
        let host = "m".repeat(60);
        let rcpt = format!("{}@example.test", "r".repeat(40));
        let h = rh(
            &trace("helo", "192.0.2.1:1", true),
            &host,
            "0123456789abcdef.42",
            Some(&rcpt),
            at(1_795_417_200),
        );
        assert_well_formed(&h);
        assert!(h.contains(&format!("for <{rcpt}>;")));
        assert!(
            h.ends_with("; Mon, 23 Nov 2026 07:00:00 +0000\r\n")
                || h.ends_with("\tMon, 23 Nov 2026 07:00:00 +0000\r\n"),
            "{h}"
        );
        assert!(h.lines().count() >= 5);
    }

    #[test]
    fn rcpt_cannot_inject() {
        let h = rh(
            &trace("h", "192.0.2.1:1", false),
            "mx",
            "i",
            Some("a>\r\nBcc: x@y; (c)"),
            at(0),
        );
        assert_well_formed(&h);
        assert!(h.contains("for <aBcc:x@yc>; Thu"), "{h}");
    }

    #[test]
    fn date_is_rfc5322() {
        assert_eq!(
            rfc5322_date(at(1_795_417_200)),
            "Mon, 23 Nov 2026 07:00:00 +0000"
        );
        // Clock before the epoch: clamped, no panic.
        let before = UNIX_EPOCH - Duration::from_secs(10);
        assert_eq!(rfc5322_date(before), "Thu, 01 Jan 1970 00:00:00 +0000");
    }
}
