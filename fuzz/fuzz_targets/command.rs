//! Fuzz target `command`: the command line parser (`smtp::command::parse`) and the path
//! and mailbox functions of `smtp::address`, on arbitrary text (the input, invalid UTF-8
//! replaced).
//!
//! Besides "no panic":
//! - a parsed command holds what its grammar allows: EHLO/HELO a non-empty name without
//!   spaces or ASCII controls; MAIL never `<Postmaster>`, RCPT never `<>`; a BDAT size
//!   of at most 18 digits;
//! - `split_path` returns a prefix of its argument from `<` to `>` and the parameters
//!   without leading spaces;
//! - a parsed mailbox (from the input as a whole, the path `split_path` found, and the
//!   MAIL/RCPT argument): local part within 64 octets and non-empty, domain within 255;
//!   `address()` has an `@`; written back as `<address()>` it parses to the same mailbox
//!   (without the source route, the trailing dot of the domain dropped); its
//!   `mailbox_key` ends in `@` + `domain_key(domain)`; `domain_key` is canonical (no
//!   trailing dot, ASCII-lowercase when ASCII, and the key of a key is the key).

#![no_main]

use libfuzzer_sys::fuzz_target;
use mailgate_fuzz::smtp::address::{
    self, MAX_DOMAIN, MAX_LOCAL, Mailbox, Path, domain_key, mailbox_key,
};
use mailgate_fuzz::smtp::command::{self, Command};

fn check_mailbox(m: &Mailbox) {
    assert!(!m.local.is_empty() && m.local.len() <= MAX_LOCAL, "{m:?}");
    assert!(
        !m.domain.is_empty() && m.domain.len() <= MAX_DOMAIN,
        "{m:?}"
    );
    if m.quoted {
        assert!(m.local.len() >= 2 && m.local.starts_with('"') && m.local.ends_with('"'));
    }
    let _ = (m.has_routing(), m.is_literal(), m.is_ascii());
    let addr = m.address();
    assert!(addr.contains('@'), "{addr:?}");

    // Written back, the address reads the same (routes and the trailing dot are dropped
    // by address()).
    let expect = Mailbox {
        domain: m.domain.trim_end_matches('.').to_string(),
        source_route: false,
        ..m.clone()
    };
    let again = address::parse_forward_path(&format!("<{addr}>"));
    assert_eq!(again, Ok(Path::Mailbox(expect.clone())), "{addr:?}");
    let again = address::parse_reverse_path(&format!("<{addr}>"));
    assert_eq!(again, Ok(Path::Mailbox(expect)), "{addr:?}");

    let dk = m.domain_key();
    assert_eq!(dk, domain_key(&m.domain));
    assert!(!dk.ends_with('.'), "{dk:?}");
    if dk.is_ascii() {
        assert!(!dk.bytes().any(|b| b.is_ascii_uppercase()), "{dk:?}");
    }
    assert_eq!(
        domain_key(&dk),
        dk,
        "domain_key not canonical for {:?}",
        m.domain
    );
    for fold in [false, true] {
        let key = mailbox_key(&addr, fold);
        assert!(key.ends_with(&format!("@{dk}")), "{addr:?} -> {key:?}");
    }
}

fn check_path(p: &Path) {
    if let Path::Mailbox(m) = p {
        check_mailbox(m);
    }
}

fn check_command(c: &Command) {
    match c {
        Command::Ehlo(name) | Command::Helo(name) => {
            assert!(!name.is_empty() && !name.contains(' '), "{name:?}");
            assert!(!name.chars().any(|c| c.is_ascii_control()), "{name:?}");
        }
        Command::Mail(path, _) => {
            assert!(*path != Path::Postmaster);
            check_path(path);
        }
        Command::Rcpt(path) => {
            assert!(*path != Path::Null);
            check_path(path);
        }
        Command::Bdat(size, _) => assert!(*size < 1_000_000_000_000_000_000),
        _ => {}
    }
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let line: &str = &text;

    if let Ok(c) = command::parse(line) {
        check_command(&c);
    }

    for candidate in [Some(line), address::split_path(line).map(|(p, _)| p)]
        .into_iter()
        .flatten()
    {
        for p in [
            address::parse_forward_path(candidate),
            address::parse_reverse_path(candidate),
        ]
        .into_iter()
        .flatten()
        {
            check_path(&p);
        }
    }

    if let Some((path, params)) = address::split_path(line) {
        assert!(line.starts_with(path), "{line:?} -> {path:?}");
        assert!(path.starts_with('<') && path.ends_with('>'), "{path:?}");
        assert!(!params.starts_with(' '), "{params:?}");
        assert!(line.ends_with(params), "{line:?} -> {params:?}");
    }

    // Never panics, whatever the text.
    let _ = (
        mailbox_key(line, true),
        mailbox_key(line, false),
        domain_key(line),
    );
});
