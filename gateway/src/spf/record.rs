//! Selecting and checking an SPF record (RFC 7208 4.5, 4.6, 12): the one `v=spf1` TXT
//! record of a domain, its terms checked against the grammar before mail-auth parses it.
//!
//! mail-auth's parser is lenient where the RFC says `permerror`: an unknown mechanism, a
//! mechanism missing its required argument, `all` with one, a modifier given twice, a
//! literal domain whose top label is numeric. Those are caught here, in every record a
//! check reads (the top one, included ones, redirect targets).

use mail_auth::common::parse::TxtRecordParser;
use mail_auth::spf::{Macro, Spf};

/// Why a domain's record could not be used.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Selected {
    /// Exactly one SPF record, parsed.
    One(Box<Spf>),
    /// No SPF record.
    None,
    /// More than one, or one that breaks the grammar (with the reason).
    Invalid(String),
}

/// The SPF record among a domain's TXT records (`txt`: each record's strings joined).
pub fn select(txt: &[String]) -> Selected {
    let mut found = txt.iter().filter(|t| is_spf(t));
    let Some(record) = found.next() else {
        return Selected::None;
    };
    if found.next().is_some() {
        return Selected::Invalid("more than one v=spf1 record".into());
    }
    match parse(record) {
        Ok(spf) => Selected::One(Box::new(spf)),
        Err(why) => Selected::Invalid(why),
    }
}

/// Whether a TXT record is an SPF record: `v=spf1` alone or followed by a space
/// (RFC 7208 4.5; `v=spf10` is not one).
fn is_spf(txt: &str) -> bool {
    let b = txt.as_bytes();
    b.len() >= 6 && b[..6].eq_ignore_ascii_case(b"v=spf1") && (b.len() == 6 || b[6] == b' ')
}

/// The record parsed, after our own grammar checks.
pub fn parse(record: &str) -> Result<Spf, String> {
    if !record.is_ascii() {
        return Err("the record is not ASCII".into());
    }
    let mut redirect = false;
    let mut exp = false;
    for term in record[6..].split(' ').filter(|t| !t.is_empty()) {
        check_term(term, &mut redirect, &mut exp)?;
    }
    Spf::parse(record.as_bytes()).map_err(|e| format!("the record does not parse ({e})"))
}

const MECHANISMS: [&str; 8] = ["all", "include", "a", "mx", "ptr", "ip4", "ip6", "exists"];

fn check_term(term: &str, redirect: &mut bool, exp: &mut bool) -> Result<(), String> {
    let name_end = term.find([':', '/', '=']).unwrap_or(term.len());
    if term[name_end..].starts_with('=') {
        let name = &term[..name_end];
        let valid = name.starts_with(|c: char| c.is_ascii_alphabetic())
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
        if !valid {
            return Err(format!("{term:?} is not a valid term"));
        }
        let value = &term[name_end + 1..];
        for (modifier, seen) in [("redirect", &mut *redirect), ("exp", &mut *exp)] {
            if name.eq_ignore_ascii_case(modifier) {
                if *seen {
                    return Err(format!("{modifier}= given twice"));
                }
                *seen = true;
                check_domain_spec(value, term)?;
            }
        }
        return Ok(());
    }
    let bare = term.trim_start_matches(['+', '-', '~', '?']);
    if term.len() - bare.len() > 1 {
        return Err(format!("{term:?} has more than one qualifier"));
    }
    let name_end = bare.find([':', '/']).unwrap_or(bare.len());
    let name = bare[..name_end].to_ascii_lowercase();
    if !MECHANISMS.contains(&name.as_str()) {
        return Err(format!("{term:?} is not a known mechanism"));
    }
    let rest = &bare[name_end..];
    let arg = rest.strip_prefix(':');
    match name.as_str() {
        "all" if !rest.is_empty() => Err(format!("{term:?}: all takes no argument")),
        "include" | "exists" => match arg {
            Some(spec) if !spec.is_empty() => check_domain_spec(spec, term),
            _ => Err(format!("{term:?} needs a domain")),
        },
        "ip4" | "ip6" if arg.is_none_or(str::is_empty) => Err(format!("{term:?} needs an address")),
        "a" | "mx" | "ptr" => match arg {
            Some(spec) => {
                // The domain-spec ends where the CIDR lengths begin (`a:x.test/24//64`).
                let spec = spec.split('/').next().unwrap_or_default();
                check_domain_spec(spec, term)
            }
            None => Ok(()),
        },
        _ => Ok(()),
    }
}

/// RFC 7208 7.1 `domain-spec`: a literal one must end in a valid top label (not all
/// digits); one ending in a macro is checked once expanded.
fn check_domain_spec(spec: &str, term: &str) -> Result<(), String> {
    if spec.is_empty() {
        return Err(format!("{term:?} has an empty domain"));
    }
    if <Macro as TxtRecordParser>::parse(spec.as_bytes()).is_err() {
        return Err(format!("{term:?} has a bad macro"));
    }
    let trimmed = spec.strip_suffix('.').unwrap_or(spec);
    let last = trimmed.rsplit('.').next().unwrap_or_default();
    if last.contains('%') || last.contains('}') {
        return Ok(());
    }
    if !trimmed.contains('.') || !is_toplabel(last) {
        return Err(format!(
            "{term:?}: {spec:?} does not end in a valid top label"
        ));
    }
    Ok(())
}

/// `toplabel = ( *alphanum ALPHA *alphanum ) / ( 1*alphanum "-" *( alphanum / "-" ) alphanum )`
fn is_toplabel(label: &str) -> bool {
    let b = label.as_bytes();
    if b.is_empty() || !b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'-') {
        return false;
    }
    if b.contains(&b'-') {
        b[0].is_ascii_alphanumeric() && b[b.len() - 1].is_ascii_alphanumeric()
    } else {
        b.iter().any(u8::is_ascii_alphabetic)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn invalid(record: &str) -> bool {
        parse(record).is_err()
    }

    #[test]
    fn one_record_is_selected_and_two_are_an_error() {
        let txt = |r: &[&str]| r.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert!(matches!(select(&txt(&["v=spf1 -all"])), Selected::One(_)));
        assert_eq!(select(&txt(&["hello", "v=spf10 -all"])), Selected::None);
        assert!(matches!(
            select(&txt(&["v=spf1 -all", "V=SPF1 +all"])),
            Selected::Invalid(_)
        ));
    }

    #[test]
    fn the_grammar_is_enforced() {
        assert!(!invalid("v=spf1 ip4:192.0.2.0/24 include:x.test ~all"));
        assert!(!invalid(
            "v=spf1 a/24 mx:m.test -exists:%{i}.x.test redirect=y.test"
        ));
        assert!(!invalid("v=spf1 unknown-modifier=1 -all"));
        assert!(!invalid("v=spf1 a:%{d}.test//64 ptr"));
        assert!(invalid("v=spf1 frobnicate:x -all"));
        assert!(invalid("v=spf1 ip4 -all"));
        assert!(invalid("v=spf1 include -all"));
        assert!(invalid("v=spf1 all:x.test"));
        assert!(invalid("v=spf1 redirect=a.test redirect=b.test"));
        assert!(invalid("v=spf1 exp=a.test exp=b.test -all"));
        assert!(invalid("v=spf1 a:foo.example.123 -all"));
        assert!(invalid("v=spf1 --all"));
        assert!(invalid("v=spf1 1bad=x -all"));
        assert!(invalid("v=spf1 -all \u{e9}"));
    }

    #[test]
    fn top_labels() {
        assert!(is_toplabel("com"));
        assert!(is_toplabel("x1"));
        assert!(is_toplabel("1-a"));
        assert!(!is_toplabel("123"));
        assert!(!is_toplabel("-ab"));
        assert!(!is_toplabel(""));
    }
}
