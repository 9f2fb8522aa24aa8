//! Fuzz target `received`: the `Received:` header builder
//! (`delivery::received::received_header`), with every value it copies from outside
//! fuzzed: the HELO name, the client's reverse name and address, TLS version and cipher,
//! our host name, the transaction id, the recipient, SMTPUTF8/EHLO, and the clock
//! (including before 1970 and after 9999).
//!
//! Input: octet 0 flags (1 HELO given, 2 EHLO, 4 reverse name known, 8 TLS, 16 IPv6
//! client, 32 SMTPUTF8, 64 a recipient, 128 the time is before 1970); octets 1..17 the
//! client address (IPv4: the first four); 17..25 the time in seconds, little-endian;
//! then the text fields, separated by 0xFF: HELO name, reverse name, TLS version, TLS
//! cipher, our host name, transaction id, recipient (cut to the 254 octets a forward-path
//! can hold).
//!
//! Invariants: the header starts with `Received: from` (then a space or a fold), has CRLF line ends only (no bare
//! CR or LF) and ends in CRLF, every continuation line starts with a TAB, no line exceeds
//! 998 octets (RFC 5322 2.1.1); nothing from outside can add a comment or a date: the
//! parentheses are balanced, never nested, and there are exactly as many as the builder
//! writes (the client comment, `(mailgate)`, and the TLS comment), there is exactly one
//! `;`, and the header ends with the date.

#![no_main]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use libfuzzer_sys::fuzz_target;
use mailgate_fuzz::check;
use mailgate_fuzz::delivery::received::received_header;
use mailgate_fuzz::delivery::rfc5322_date;
use mailgate_fuzz::input::{fields, time, u64_at};
use mailgate_fuzz::smtp::address::MAX_PATH;
use mailgate_fuzz::smtp::{Helo, Listener, SessionFacts, TlsInfo};

const HEADER: usize = 25;

fuzz_target!(|data: &[u8]| {
    if data.len() < HEADER {
        return;
    }
    let flags = data[0];
    let on = |bit: u8| flags & bit != 0;
    let ip = if on(16) {
        IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(&data[1..17]).unwrap()))
    } else {
        IpAddr::V4(Ipv4Addr::new(data[1], data[2], data[3], data[4]))
    };
    let now = time(u64_at(data, 17), on(128));
    let (f, _) = fields(&data[HEADER..], 7);
    let facts = SessionFacts {
        helo: on(1).then(|| Helo {
            name: f[0].clone(),
            extended: on(2),
        }),
        ptr_name: on(4).then(|| f[1].clone()),
        tls: on(8).then(|| TlsInfo {
            version: f[2].clone(),
            cipher: f[3].clone(),
        }),
        ..SessionFacts::new(
            "F1".into(),
            SocketAddr::new(ip, 4321),
            "192.0.2.1:25".parse().unwrap(),
            Listener::Smtp,
        )
    };
    // The builder promises 998 octets "for addresses within SMTP's own limits": a
    // recipient comes from a parsed forward-path, at most 256 octets with its brackets
    // (its own cap of 512 characters alone allows up to 2048 octets).
    let mut cut = f[6].len().min(MAX_PATH - 2);
    while !f[6].is_char_boundary(cut) {
        cut -= 1;
    }
    let rcpt = on(64).then_some(&f[6][..cut]);
    let h = received_header(&facts, on(32), &f[4], &f[5], rcpt, now);

    assert!(
        h.starts_with("Received: from ") || h.starts_with("Received: from\r\n\t"),
        "{h:?}"
    );
    if let Err(e) = check::lines_within(h.as_bytes(), 998) {
        panic!("{e}: {h:?}");
    }
    for line in h[..h.len() - 2].split("\r\n").skip(1) {
        assert!(line.starts_with('\t'), "continuation without TAB: {h:?}");
    }

    let mut depth = 0;
    let mut comments = 0;
    for c in h.chars() {
        match c {
            '(' => {
                assert_eq!(depth, 0, "nested comment: {h:?}");
                depth += 1;
                comments += 1;
            }
            ')' => {
                assert_eq!(depth, 1, "unbalanced ')': {h:?}");
                depth -= 1;
            }
            _ => {}
        }
    }
    assert_eq!(depth, 0, "unclosed comment: {h:?}");
    let expected = 2 + usize::from(facts.tls.is_some());
    assert_eq!(comments, expected, "comments: {h:?}");
    assert_eq!(h.matches(';').count(), 1, "';' count: {h:?}");
    let date = rfc5322_date(now);
    assert!(
        h.ends_with(&format!("{date}\r\n")),
        "{h:?} does not end with {date}"
    );
    let after_semicolon = h.split_once(';').unwrap().1;
    assert_eq!(
        after_semicolon.trim_start_matches([' ', '\r', '\n', '\t']),
        format!("{date}\r\n"),
        "{h:?}"
    );
});
