//! Fuzz target `reply`: the two ways a reply is built from untrusted text,
//! `Reply::parse_line` (the queue's state files) and `Reply::sanitized` (an upstream
//! server's or a plugin's reply).
//!
//! Input: octet 0 bit 7 set: the code is 200 + (little-endian u16 of octets 1..3) mod
//! 400, else that u16 as it is (mostly out of range); octet 3, the enhanced code: bit 0
//! set, none; else bit 1 set, `Enhanced::parse` of the text's first word (as the SMTP
//! client does); else class (any, octet 4 mod 6), subject and detail (within 999, from
//! octets 5..8) as the plugin layer builds them; the rest is text: all of it for `parse_line`, its pieces between 0xFF octets (at
//! most 20; none if octet 3 bit 2 is set) as the lines for `sanitized`, invalid UTF-8
//! replaced.
//!
//! Invariants of the result (`sanitized` returns `None` only for a code outside
//! 200..=599): the wire form (`to_bytes()`) is a well-formed reply (`check::reply_stream`),
//! is UTF-8 with no control characters besides the CRLF line ends, at most 16 lines of
//! at most `MAX_REPLY_TEXT` octets of text; a 2xx, 4xx or 5xx reply carries on every line
//! an enhanced code of its class (subject and detail within 999), a 3xx reply none (RFC
//! 3463 has no class 3); and the one-line form (`Display`) reads back with `parse_line`
//! to the same code and enhanced code.

#![no_main]

use libfuzzer_sys::fuzz_target;
use mailgate_fuzz::check;
use mailgate_fuzz::smtp::reply::MAX_REPLY_TEXT;
use mailgate_fuzz::smtp::{Enhanced, Reply};

fn check_reply(r: &Reply) {
    let wire = r.to_bytes();
    if let Err(e) = check::reply_stream(&wire) {
        panic!("{e}: {:?}", String::from_utf8_lossy(&wire));
    }
    let text = std::str::from_utf8(&wire).expect("reply is UTF-8");
    let body = &text[..text.len() - 2];
    assert!(
        !body.replace("\r\n", "").chars().any(char::is_control),
        "control character in {text:?}"
    );
    assert!((200..=599).contains(&r.code()));
    assert!(!r.lines().is_empty() && r.lines().len() <= 16);
    for l in r.lines() {
        assert!(l.len() <= MAX_REPLY_TEXT, "{} octets", l.len());
    }
    // RFC 3463 has enhanced codes for the classes 2, 4 and 5 only.
    let class = (r.code() / 100) as u8;
    match r.enhanced() {
        None => assert_eq!(class, 3, "no enhanced code on a {}", r.code()),
        Some(e) => {
            assert!(
                e.0 == class && e.0 != 3 && e.1 <= 999 && e.2 <= 999,
                "{e:?} for {}",
                r.code()
            );
            for line in body.split("\r\n") {
                let rest = &line[4..];
                let (enh, _) = rest.split_once(' ').unwrap_or((rest, ""));
                assert_eq!(Enhanced::parse(enh), Some(e), "{line:?}");
            }
        }
    }
    // The one-line form reads back with the same codes.
    let back = Reply::parse_line(&r.to_string());
    assert_eq!(
        (back.code(), back.enhanced()),
        (r.code(), r.enhanced()),
        "{r}"
    );
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 8 {
        return;
    }
    let code = if data[0] & 0x80 != 0 {
        200 + u16::from_le_bytes([data[1], data[2]]) % 400
    } else {
        u16::from_le_bytes([data[1], data[2]])
    };
    let rest = &data[8..];
    let text = String::from_utf8_lossy(rest);
    let enhanced = match data[3] & 3 {
        1 | 3 => None,
        2 => Enhanced::parse(text.split(' ').next().unwrap_or_default()),
        _ => Some(Enhanced(
            data[4] % 6,
            u16::from_le_bytes([data[5], data[6]]) % 1000,
            u16::from(data[7]) * 4 % 1000,
        )),
    };

    check_reply(&Reply::parse_line(&text));

    let lines: Vec<String> = rest
        .split(|&b| b == 0xff)
        .take(20)
        .map(|l| String::from_utf8_lossy(l).into_owned())
        .collect();
    let mut lines: Vec<&str> = lines.iter().map(String::as_str).collect();
    if data[3] & 4 != 0 {
        lines.clear();
    }
    match Reply::sanitized(code, enhanced, &lines) {
        Some(r) => {
            assert_eq!(r.code(), code);
            check_reply(&r);
        }
        None => assert!(!(200..=599).contains(&code), "sanitized refused {code}"),
    }
});
