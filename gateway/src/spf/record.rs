//! Selecting and parsing an SPF record (RFC 7208 4.5, 4.6, 12): the one `v=spf1` TXT
//! record of a domain, parsed term by term against the grammar into mail-auth's
//! directive types (its macro parser does the macro-strings).
//!
//! Our own parser, because mail-auth's is lenient where the RFC says `permerror` (an
//! unknown mechanism, a missing argument, `all` with one, a modifier given twice, a prefix
//! length out of range or with a leading zero, a control character, a numeric top label)
//! and strict where it should not be (a domain-spec holding `:` or `/`, a modifier name
//! with `.` or `_`). It applies to every record a check reads (the top one, included
//! ones, redirect targets).

use std::net::{Ipv4Addr, Ipv6Addr};

use mail_auth::common::parse::TxtRecordParser;
use mail_auth::spf::{Directive, Macro, Mechanism, Qualifier, Variable};

/// A parsed SPF record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    /// The mechanisms, in order.
    pub directives: Vec<Directive>,
    /// `redirect=`.
    pub redirect: Option<Macro>,
    /// `exp=`.
    pub exp: Option<Macro>,
}

/// Why a domain's record could not be used.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Selected {
    /// Exactly one SPF record, parsed.
    One(Box<Record>),
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

/// The record parsed (unknown modifiers, which RFC 7208 6 says to ignore, left out).
pub fn parse(record: &str) -> Result<Record, String> {
    // Terms are separated by spaces only; anything but printable ASCII is an error.
    if !record.bytes().all(|b| (0x20..0x7f).contains(&b)) {
        return Err("the record holds characters other than printable ASCII".into());
    }
    let mut parsed = Record {
        directives: vec![],
        redirect: None,
        exp: None,
    };
    for term in record[6..].split(' ').filter(|t| !t.is_empty()) {
        term_into(term, &mut parsed).map_err(|what| format!("{term:?}: {what}"))?;
    }
    Ok(parsed)
}

const MECHANISMS: [&str; 8] = ["all", "include", "a", "mx", "ptr", "ip4", "ip6", "exists"];

/// Parses one term into `record`.
fn term_into(term: &str, record: &mut Record) -> Result<(), &'static str> {
    let name_end = term.find([':', '/', '=']).unwrap_or(term.len());
    if term[name_end..].starts_with('=') {
        let name = &term[..name_end];
        let valid = name.starts_with(|c: char| c.is_ascii_alphabetic())
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
        if !valid {
            return Err("not a valid term");
        }
        let value = &term[name_end + 1..];
        let slot = if name.eq_ignore_ascii_case("redirect") {
            &mut record.redirect
        } else if name.eq_ignore_ascii_case("exp") {
            &mut record.exp
        } else {
            // An unknown modifier: ignored, once its value is a valid macro-string.
            return macro_string(value).map(|_| ());
        };
        if slot.is_some() {
            return Err("the modifier is given twice");
        }
        *slot = Some(domain_spec(value)?);
        return Ok(());
    }
    let bare = term.trim_start_matches(['+', '-', '~', '?']);
    let qualifier = match term.len() - bare.len() {
        0 => Qualifier::Pass,
        1 => match term.as_bytes()[0] {
            b'-' => Qualifier::Fail,
            b'~' => Qualifier::SoftFail,
            b'?' => Qualifier::Neutral,
            _ => Qualifier::Pass,
        },
        _ => return Err("more than one qualifier"),
    };
    let name_end = bare.find([':', '/']).unwrap_or(bare.len());
    let name = bare[..name_end].to_ascii_lowercase();
    if !MECHANISMS.contains(&name.as_str()) {
        return Err("not a known mechanism");
    }
    let rest = &bare[name_end..];
    let mechanism = match name.as_str() {
        "all" if !rest.is_empty() => return Err("all takes no argument"),
        "all" => Mechanism::All,
        "include" | "exists" => {
            let spec = rest.strip_prefix(':').ok_or("a domain is needed")?;
            let macro_string = domain_spec(spec)?;
            if name == "include" {
                Mechanism::Include { macro_string }
            } else {
                Mechanism::Exists { macro_string }
            }
        }
        "ip4" | "ip6" => {
            let arg = rest.strip_prefix(':').ok_or("an address is needed")?;
            let (addr, cidr) = match arg.rsplit_once('/') {
                Some((a, c)) => (a, Some(c)),
                None => (arg, None),
            };
            if name == "ip4" {
                Mechanism::Ip4 {
                    addr: addr.parse::<Ipv4Addr>().map_err(|_| "not an address")?,
                    mask: v4_mask(cidr.map_or(Ok(32), |c| prefix(c, 32))?),
                }
            } else {
                Mechanism::Ip6 {
                    addr: addr.parse::<Ipv6Addr>().map_err(|_| "not an address")?,
                    mask: v6_mask(cidr.map_or(Ok(128), |c| prefix(c, 128))?),
                }
            }
        }
        // a, mx, ptr: [ ":" domain-spec ]; a and mx: [ "/" ip4-cidr ] [ "//" ip6-cidr ].
        _ => {
            let mut spec = rest;
            let (mut v4, mut v6) = (32, 128);
            if name != "ptr" {
                if let Some((head, c)) = spec.rsplit_once("//")
                    && c.bytes().all(|b| b.is_ascii_digit())
                {
                    v6 = prefix(c, 128)?;
                    spec = head;
                }
                if let Some((head, c)) = spec.rsplit_once('/')
                    && c.bytes().all(|b| b.is_ascii_digit())
                {
                    v4 = prefix(c, 32)?;
                    spec = head;
                }
            }
            let macro_string = match spec.strip_prefix(':') {
                Some(spec) => domain_spec(spec)?,
                None if spec.is_empty() => Macro::None,
                None => return Err("unexpected text after the mechanism"),
            };
            match name.as_str() {
                "a" => Mechanism::A {
                    macro_string,
                    ip4_mask: v4_mask(v4),
                    ip6_mask: v6_mask(v6),
                },
                "mx" => Mechanism::Mx {
                    macro_string,
                    ip4_mask: v4_mask(v4),
                    ip6_mask: v6_mask(v6),
                },
                _ => Mechanism::Ptr { macro_string },
            }
        }
    };
    record.directives.push(Directive {
        qualifier,
        mechanism,
    });
    Ok(())
}

fn v4_mask(len: u32) -> u32 {
    u32::MAX.checked_shl(32 - len).unwrap_or(0)
}

fn v6_mask(len: u32) -> u128 {
    u128::MAX.checked_shl(128 - len).unwrap_or(0)
}

/// A macro-string (RFC 7208 7.1), by mail-auth's parser.
fn macro_string(s: &str) -> Result<Macro, &'static str> {
    <Macro as TxtRecordParser>::parse(s.as_bytes()).map_err(|_| "a bad macro")
}

/// A domain-spec (RFC 7208 7.1): a macro-string without the explanation-only letters
/// `c`, `r`, `t`; a literal end must be a valid top label (not all digits).
fn domain_spec(spec: &str) -> Result<Macro, &'static str> {
    if spec.is_empty() {
        return Err("an empty domain");
    }
    let m = macro_string(spec)?;
    let letters: &[Macro] = match &m {
        Macro::List(items) => items,
        one => std::slice::from_ref(one),
    };
    let exp_only = letters.iter().any(|l| {
        matches!(l, Macro::Variable { letter, .. }
            if matches!(letter, Variable::SmtpIp | Variable::HostDomain | Variable::CurrentTime))
    });
    if exp_only {
        return Err("c, r and t are for explanations only");
    }
    let trimmed = spec.strip_suffix('.').unwrap_or(spec);
    let last = trimmed.rsplit('.').next().unwrap_or_default();
    if last.contains('%') || last.contains('}') {
        return Ok(m);
    }
    if !trimmed.contains('.') || !is_toplabel(last) {
        return Err("the domain does not end in a valid top label");
    }
    Ok(m)
}

/// A prefix length: digits without a leading zero, at most `max`.
fn prefix(c: &str, max: u32) -> Result<u32, &'static str> {
    let ok =
        !c.is_empty() && c.bytes().all(|b| b.is_ascii_digit()) && (c == "0" || !c.starts_with('0'));
    c.parse::<u32>()
        .ok()
        .filter(|n| ok && *n <= max)
        .ok_or("a bad prefix length")
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
        assert!(invalid("v=spf1 ip4:192.0.2.5\n -all"));
        assert!(invalid("v=spf1 ip4:192.0.2.0/33 -all"));
        assert!(invalid("v=spf1 ip4:192.0.2.0/024 -all"));
        assert!(invalid("v=spf1 ip6:::1/129 -all"));
        assert!(invalid("v=spf1 a/24/64 -all"));
        assert!(invalid("v=spf1 mx//129 -all"));
        assert_eq!(parse("v=spf1 a:foo:bar/baz.example.com -all").err(), None);
        assert!(invalid("v=spf1 a:%{r}.example.com -all"));
        assert!(!invalid("v=spf1 mx/24//64 a//0 ip6:2001:db8::/32 -all"));
        assert!(!invalid(
            "v=spf1 moo.cow-far_out=man:dog/cat ip4:1.2.3.4 -all"
        ));
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
