//! Between our types and the generated WIT types, in one place: session facts go in,
//! verdicts and edits come out validated. Anything a plugin hands back that breaks a
//! rule (code class, control characters, lengths, counts, header syntax) is
//! [`Invalid`], which the chain treats as a plugin failure.

use std::net::{IpAddr, SocketAddr};

use super::bindings::mailgate::plugin::types as wit;
use super::edits::{HeaderEdit, HeaderRef, RecipientEdit};
use crate::delivery::{Destination, TlsPolicy, domain_of};
use crate::smtp::{BodyType, Enhanced, Envelope, MailParams, Reply, SessionFacts};

/// Lines in a plugin's reply.
pub const MAX_REPLY_LINES: usize = 8;
/// Characters per reply line.
pub const MAX_REPLY_LINE: usize = 400;
/// Header edits per plugin per message.
pub const MAX_HEADER_EDITS: usize = 64;
/// Length of a header value set by a plugin.
pub const MAX_HEADER_VALUE: usize = 4096;
/// Recipient edits per plugin per call.
pub const MAX_RECIPIENT_EDITS: usize = 64;
/// Score entries and tags per plugin per call.
pub const MAX_MARKS: usize = 64;
/// Length of a reason or quarantine note.
pub const MAX_REASON: usize = 1024;

/// A verdict or edit that breaks the rules.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid plugin output: {0}")]
pub struct Invalid(pub String);

fn invalid<T>(what: impl Into<String>) -> Result<T, Invalid> {
    Err(Invalid(what.into()))
}

/// What a plugin decided for one call, after validation.
#[derive(Clone, Debug, PartialEq)]
pub enum Decision {
    /// Ask the next plugin.
    Continue,
    /// Skip the rest of the chain for this stage.
    Accept,
    /// Refuse with this reply (4xx or 5xx).
    Reply(Reply),
    /// Send this reply, then close.
    Disconnect(Reply),
    /// 250, then drop the message.
    Discard(Option<String>),
    /// 250, then keep the message in quarantine.
    Quarantine(String),
}

/// What a plugin's `on-deliver` decided for one recipient.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Route {
    /// Deliver to this destination.
    To(Destination),
    /// Drop the recipient as delivered.
    Discard,
    /// Fail the recipient with this 5xx reply (a bounce to the sender).
    Bounce(Reply),
    /// Retry the recipient later; this 4xx reply is recorded.
    Defer(Reply),
}

/// `ip-address`, with v4-mapped v6 reported as v4.
pub fn ip(a: IpAddr) -> wit::IpAddress {
    match a {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            wit::IpAddress::Ipv4((o[0], o[1], o[2], o[3]))
        }
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => ip(IpAddr::V4(v4)),
            None => {
                let s = v6.segments();
                wit::IpAddress::Ipv6((s[0], s[1], s[2], s[3], s[4], s[5], s[6], s[7]))
            }
        },
    }
}

/// `ip-address` back to std.
pub fn std_ip(a: &wit::IpAddress) -> IpAddr {
    match *a {
        wit::IpAddress::Ipv4((a, b, c, d)) => IpAddr::from([a, b, c, d]),
        wit::IpAddress::Ipv6((a, b, c, d, e, f, g, h)) => IpAddr::from([a, b, c, d, e, f, g, h]),
    }
}

fn sock(a: SocketAddr) -> wit::SocketAddress {
    wit::SocketAddress {
        ip: ip(a.ip()),
        port: a.port(),
    }
}

/// `session-info`: the session's facts, with the chain's score and tags so far.
pub fn session_info(s: &SessionFacts, score: f64, tags: &[String]) -> wit::SessionInfo {
    wit::SessionInfo {
        id: s.id.clone(),
        client: wit::ClientInfo {
            address: sock(s.client),
            local: sock(s.local),
            listener: s.listener.name().to_string(),
            ptr_name: s.ptr_name.clone(),
            trusted: s.trusted,
        },
        tls: s.tls.as_ref().map(|t| wit::TlsInfo {
            version: t.version.clone(),
            cipher: t.cipher.clone(),
            sni: None,
        }),
        helo: s.helo.as_ref().map(|h| wit::HeloInfo {
            name: h.name.clone(),
            extended: h.extended,
        }),
        authenticated: None,
        score,
        tags: tags.to_vec(),
    }
}

/// `address` from `local@domain` (domain lowercased).
pub fn address(a: &str) -> wit::Address {
    match a.rsplit_once('@') {
        Some((l, d)) => wit::Address {
            local_part: l.to_string(),
            domain: d.to_lowercase(),
        },
        None => wit::Address {
            local_part: a.to_string(),
            domain: String::new(),
        },
    }
}

/// `local@domain` from `address`.
pub fn address_text(a: &wit::Address) -> String {
    if a.domain.is_empty() {
        a.local_part.clone()
    } else {
        format!("{}@{}", a.local_part, a.domain)
    }
}

/// `mail-params`.
pub fn mail_params(p: &MailParams) -> wit::MailParams {
    wit::MailParams {
        size: p.size,
        body: match p.body {
            BodyType::SevenBit => wit::BodyType::SevenBit,
            BodyType::EightBitMime => wit::BodyType::EightBitMime,
        },
        smtputf8: p.smtputf8,
        other: vec![],
    }
}

/// `reverse-path`.
pub fn reverse_path(sender: &str) -> Option<wit::Address> {
    (!sender.is_empty()).then(|| address(sender))
}

/// `transaction`.
pub fn transaction(id: &str, env: &Envelope) -> wit::Transaction {
    wit::Transaction {
        id: id.to_string(),
        sender: reverse_path(&env.mail_from),
        params: mail_params(&env.params),
        recipients: env
            .rcpt_to
            .iter()
            .map(|r| wit::Recipient {
                address: address(r),
                params: vec![],
            })
            .collect(),
    }
}

pub(super) fn clean_text(what: &str, s: &str, max: usize) -> Result<(), Invalid> {
    if s.len() > max {
        return invalid(format!("{what} longer than {max} octets"));
    }
    if s.chars().any(char::is_control) {
        return invalid(format!("{what} contains control characters"));
    }
    Ok(())
}

fn reply(r: &wit::Reply, ok: impl Fn(u16) -> bool, what: &str) -> Result<Reply, Invalid> {
    if !ok(r.code) {
        return invalid(format!("{what} reply code {} not allowed", r.code));
    }
    if r.lines.is_empty() || r.lines.len() > MAX_REPLY_LINES {
        return invalid(format!("{what} reply needs 1..={MAX_REPLY_LINES} lines"));
    }
    for l in &r.lines {
        clean_text("reply text", l, MAX_REPLY_LINE)?;
    }
    let class = (r.code / 100) as u8;
    let enhanced = match r.enhanced {
        Some(e) if e.subject <= 999 && e.detail <= 999 => {
            Some(Enhanced(class, e.subject, e.detail))
        }
        Some(_) => return invalid("enhanced status out of range"),
        None => Some(Enhanced(class, 0, 0)),
    };
    let lines: Vec<&str> = r.lines.iter().map(String::as_str).collect();
    Reply::sanitized(r.code, enhanced, &lines)
        .ok_or_else(|| Invalid("reply code out of range".into()))
}

fn reject_code(c: u16) -> bool {
    (500..=599).contains(&c)
}
fn tempfail_code(c: u16) -> bool {
    (400..=499).contains(&c)
}
fn disconnect_code(c: u16) -> bool {
    c == 421 || reject_code(c)
}

/// Validates a stage verdict.
pub fn verdict(v: &wit::Verdict) -> Result<Decision, Invalid> {
    Ok(match v {
        wit::Verdict::Continue => Decision::Continue,
        wit::Verdict::Accept => Decision::Accept,
        wit::Verdict::Reject(r) => Decision::Reply(reply(r, reject_code, "reject")?),
        wit::Verdict::Tempfail(r) => Decision::Reply(reply(r, tempfail_code, "tempfail")?),
        wit::Verdict::Disconnect(r) => {
            Decision::Disconnect(reply(r, disconnect_code, "disconnect")?)
        }
    })
}

/// Validates a DATA verdict.
pub fn data_verdict(v: &wit::DataVerdict) -> Result<Decision, Invalid> {
    Ok(match v {
        wit::DataVerdict::Continue => Decision::Continue,
        wit::DataVerdict::Accept => Decision::Accept,
        wit::DataVerdict::Reject(r) => Decision::Reply(reply(r, reject_code, "reject")?),
        wit::DataVerdict::Tempfail(r) => Decision::Reply(reply(r, tempfail_code, "tempfail")?),
        wit::DataVerdict::Disconnect(r) => {
            Decision::Disconnect(reply(r, disconnect_code, "disconnect")?)
        }
        wit::DataVerdict::Discard => Decision::Discard(None),
        wit::DataVerdict::Quarantine(why) => {
            clean_text("quarantine reason", why, MAX_REASON)?;
            Decision::Quarantine(why.clone())
        }
    })
}

/// Validates score entries, tags and the reason.
pub fn marks(m: &wit::Marks) -> Result<(), Invalid> {
    if m.score.len() > MAX_MARKS || m.tags.len() > MAX_MARKS {
        return invalid("too many score entries or tags");
    }
    for s in &m.score {
        let ok = !s.rule.is_empty()
            && s.rule.len() <= 64
            && s.rule
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b));
        if !ok {
            return invalid(format!("bad score rule name {:?}", cut(&s.rule)));
        }
        if !s.points.is_finite() || s.points.abs() > 1000.0 {
            return invalid("score points must be finite and within ±1000");
        }
    }
    for t in &m.tags {
        let ok = !t.is_empty()
            && t.len() <= 64
            && t.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"_-.:".contains(&b));
        if !ok {
            return invalid(format!("bad tag {:?}", cut(t)));
        }
    }
    if let Some(r) = &m.reason {
        clean_text("reason", r, MAX_REASON)?;
    }
    Ok(())
}

fn cut(s: &str) -> String {
    s.chars().take(40).collect()
}

fn header_name(n: &str) -> Result<(), Invalid> {
    let ok =
        !n.is_empty() && n.len() <= 76 && n.bytes().all(|b| (33..=126).contains(&b) && b != b':');
    if ok {
        Ok(())
    } else {
        invalid(format!("bad header name {:?}", cut(n)))
    }
}

fn header_value(name: &str, v: &str) -> Result<(), Invalid> {
    if v.len() > MAX_HEADER_VALUE {
        return invalid(format!(
            "header value longer than {MAX_HEADER_VALUE} octets"
        ));
    }
    if v.chars().any(|c| c.is_control() && c != '\t') {
        return invalid("header value contains CR, LF or other control characters");
    }
    // Folding breaks lines at spaces only: a word that cannot share a line with the
    // field name would make a line over 998 octets, which next hops refuse.
    let longest = v.split(' ').map(str::len).max().unwrap_or(0);
    if name.len() + 2 + longest > super::edits::MAX_LINE {
        return invalid(format!(
            "header value has a {longest}-octet word: cannot be folded within {} octets",
            super::edits::MAX_LINE
        ));
    }
    Ok(())
}

fn header_ref(r: &wit::HeaderRef) -> Result<HeaderRef, Invalid> {
    header_name(&r.name)?;
    Ok(HeaderRef {
        name: r.name.clone(),
        occurrence: r.occurrence,
    })
}

/// Validates header edits.
pub fn header_edits(e: &[wit::HeaderEdit]) -> Result<Vec<HeaderEdit>, Invalid> {
    if e.len() > MAX_HEADER_EDITS {
        return invalid(format!("more than {MAX_HEADER_EDITS} header edits"));
    }
    let field = |h: &wit::Header| {
        header_name(&h.name)?;
        header_value(&h.name, &h.value)?;
        Ok::<_, Invalid>((h.name.clone(), h.value.clone()))
    };
    e.iter()
        .map(|edit| {
            Ok(match edit {
                wit::HeaderEdit::Append(h) => {
                    let (n, v) = field(h)?;
                    HeaderEdit::Append(n, v)
                }
                wit::HeaderEdit::Prepend(h) => {
                    let (n, v) = field(h)?;
                    HeaderEdit::Prepend(n, v)
                }
                wit::HeaderEdit::Remove(r) => HeaderEdit::Remove(header_ref(r)?),
                wit::HeaderEdit::Replace(r) => {
                    header_value(&r.target.name, &r.value)?;
                    HeaderEdit::Replace(header_ref(&r.target)?, r.value.clone())
                }
            })
        })
        .collect()
}

/// A recipient address a plugin gave, checked like one from RCPT TO: `local@domain`.
pub fn mailbox(a: &wit::Address) -> Result<String, Invalid> {
    let text = address_text(a);
    let path = format!("<{text}>");
    match crate::smtp::address::parse_forward_path(&path) {
        Ok(crate::smtp::address::Path::Mailbox(m)) if !m.has_routing() => Ok(text),
        _ => invalid(format!("bad recipient address {:?}", cut(&text))),
    }
}

/// Most routes one `on-deliver` may return.
pub const MAX_ROUTES: usize = 1000;

/// Validates `on-deliver` routes: known-good recipient syntax, each recipient once, relay
/// hosts that are a host name or IP literal, bounce replies 5xx and defer replies 4xx.
/// Returns each recipient (`local@domain`) with its route.
pub fn routes(routes: &[wit::RecipientRoute]) -> Result<Vec<(String, Route)>, Invalid> {
    if routes.len() > MAX_ROUTES {
        return invalid(format!("more than {MAX_ROUTES} routes"));
    }
    let mut seen = std::collections::HashSet::new();
    let mut out = Vec::with_capacity(routes.len());
    for r in routes {
        let rcpt = mailbox(&r.recipient)?;
        if !seen.insert(rcpt.to_ascii_lowercase()) {
            return invalid(format!("recipient {:?} routed twice", cut(&rcpt)));
        }
        let route = match &r.route {
            wit::Route::Relay(h) => Route::To(relay_host(h)?),
            wit::Route::Bounce(rep) => Route::Bounce(reply(rep, reject_code, "bounce")?),
            wit::Route::Defer(rep) => Route::Defer(reply(rep, tempfail_code, "defer")?),
            wit::Route::Mx => Route::To(Destination::Mx(domain_of(&rcpt))),
            wit::Route::Local => Route::To(Destination::Local),
            wit::Route::Discard => Route::Discard,
        };
        out.push((rcpt, route));
    }
    Ok(out)
}

/// A plugin's relay host (an `on-deliver` route, a `verify` next hop) as a destination: a
/// host name or IP literal and a port other than 0, with its TLS policy.
pub fn relay_host(h: &wit::RelayHost) -> Result<Destination, Invalid> {
    let host = h.host.as_str();
    let ok = !host.is_empty()
        && host.len() <= 253
        && (host.parse::<IpAddr>().is_ok()
            || host.split('.').all(|l| {
                !l.is_empty()
                    && l.len() <= 63
                    && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            }));
    if !ok || h.port == 0 {
        return invalid(format!("bad relay host {:?}:{}", cut(host), h.port));
    }
    let addr = if host.contains(':') {
        format!("[{host}]:{}", h.port)
    } else {
        format!("{host}:{}", h.port)
    };
    let tls = match h.tls {
        wit::TlsPolicy::Opportunistic => TlsPolicy::Opportunistic,
        wit::TlsPolicy::Required => TlsPolicy::Required,
        wit::TlsPolicy::Disabled => TlsPolicy::None,
    };
    Ok(Destination::Relay(addr, tls))
}

/// Validates recipient edits.
pub fn recipient_edits(e: &[wit::RecipientEdit]) -> Result<Vec<RecipientEdit>, Invalid> {
    if e.len() > MAX_RECIPIENT_EDITS {
        return invalid(format!("more than {MAX_RECIPIENT_EDITS} recipient edits"));
    }
    e.iter()
        .map(|edit| {
            Ok(match edit {
                wit::RecipientEdit::Add(a) => RecipientEdit::Add(mailbox(a)?),
                wit::RecipientEdit::Remove(a) => RecipientEdit::Remove(mailbox(a)?),
                wit::RecipientEdit::Rewrite(r) => {
                    RecipientEdit::Rewrite(mailbox(&r.original)?, mailbox(&r.replacement)?)
                }
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(code: u16, text: &str) -> wit::Reply {
        wit::Reply {
            code,
            enhanced: Some(wit::EnhancedStatus {
                subject: 7,
                detail: 1,
            }),
            lines: vec![text.into()],
        }
    }

    #[test]
    fn deliver_routes_are_validated() {
        let route = |rcpt: &str, route: wit::Route| wit::RecipientRoute {
            recipient: address(rcpt),
            route,
        };
        let relay = |host: &str, port: u16| {
            wit::Route::Relay(wit::RelayHost {
                host: host.into(),
                port,
                tls: wit::TlsPolicy::Opportunistic,
            })
        };
        let ok = routes(&[
            route("a@x.test", relay("mx.internal", 25)),
            route("b@x.test", relay("2001:db8::1", 2525)),
            route("c@x.test", wit::Route::Bounce(r(550, "gone"))),
            route("d@x.test", wit::Route::Defer(r(451, "later"))),
            route("e@X.test", wit::Route::Mx),
        ])
        .unwrap();
        assert_eq!(
            ok[0].1,
            Route::To(Destination::Relay(
                "mx.internal:25".into(),
                TlsPolicy::Opportunistic
            ))
        );
        assert_eq!(
            ok[1].1,
            Route::To(Destination::Relay(
                "[2001:db8::1]:2525".into(),
                TlsPolicy::Opportunistic
            ))
        );
        assert!(matches!(&ok[2].1, Route::Bounce(r) if r.code() == 550));
        assert!(matches!(&ok[3].1, Route::Defer(r) if r.code() == 451));
        assert_eq!(
            ok[4],
            (
                "e@x.test".into(),
                Route::To(Destination::Mx("x.test".into()))
            )
        );
        for bad in [
            vec![route("a@x.test", relay("bad host", 25))],
            vec![route("a@x.test", relay("h\r\nX", 25))],
            vec![route("a@x.test", relay("mx.test", 0))],
            vec![route(
                "a@x.test",
                wit::Route::Bounce(r(451, "not permanent")),
            )],
            vec![route(
                "a@x.test",
                wit::Route::Defer(r(550, "not temporary")),
            )],
            vec![
                route("a@x.test", wit::Route::Mx),
                route("A@x.test", wit::Route::Local),
            ],
            vec![route("a%b@x.test", wit::Route::Mx)],
        ] {
            assert!(routes(&bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn verdict_codes_must_match_their_kind() {
        assert!(
            matches!(verdict(&wit::Verdict::Reject(r(550, "no"))), Ok(Decision::Reply(x)) if x.to_bytes() == b"550 5.7.1 no\r\n")
        );
        assert!(verdict(&wit::Verdict::Reject(r(450, "no"))).is_err());
        assert!(verdict(&wit::Verdict::Tempfail(r(550, "no"))).is_err());
        assert!(verdict(&wit::Verdict::Reject(r(250, "no"))).is_err());
        assert!(verdict(&wit::Verdict::Disconnect(r(421, "bye"))).is_ok());
        assert!(verdict(&wit::Verdict::Disconnect(r(451, "bye"))).is_err());
        assert!(
            verdict(&wit::Verdict::Reject(r(550, "a\r\n250 ok"))).is_err(),
            "CR/LF refused"
        );
        assert!(verdict(&wit::Verdict::Reject(r(550, &"x".repeat(401)))).is_err());
        let mut many = r(550, "x");
        many.lines = vec!["x".into(); 9];
        assert!(verdict(&wit::Verdict::Reject(many)).is_err());
        let mut none = r(550, "x");
        none.enhanced = None;
        assert!(
            matches!(verdict(&wit::Verdict::Reject(none)), Ok(Decision::Reply(x)) if x.to_bytes() == b"550 5.0.0 x\r\n")
        );
    }

    #[test]
    fn header_edits_are_checked() {
        let h = |n: &str, v: &str| {
            wit::HeaderEdit::Append(wit::Header {
                name: n.into(),
                value: v.into(),
            })
        };
        assert!(header_edits(&[h("X-Ok", "fine\tvalue")]).is_ok());
        assert!(header_edits(&[h("X-Bad", "a\r\nBcc: evil@x.test")]).is_err());
        assert!(header_edits(&[h("Bad Name", "v")]).is_err());
        assert!(header_edits(&[h("X:y", "v")]).is_err());
        assert!(header_edits(&vec![h("X", "v"); MAX_HEADER_EDITS + 1]).is_err());
    }

    #[test]
    fn marks_and_recipients_are_checked() {
        let m = |rule: &str, points: f64, tag: &str| wit::Marks {
            score: vec![wit::ScoreEntry {
                rule: rule.into(),
                points,
            }],
            tags: vec![tag.into()],
            reason: None,
        };
        assert!(marks(&m("DNSBL_X", 2.5, "listed")).is_ok());
        assert!(marks(&m("bad rule", 1.0, "t")).is_err());
        assert!(marks(&m("R", f64::NAN, "t")).is_err());
        assert!(marks(&m("R", 1.0, "Upper")).is_err());
        let a = |s: &str| wit::RecipientEdit::Add(address(s));
        assert!(recipient_edits(&[a("archive@example.test")]).is_ok());
        assert!(recipient_edits(&[a("a%b@example.test")]).is_err());
        assert!(recipient_edits(&[a("no-at-sign")]).is_err());
    }

    #[test]
    fn addresses_and_ips() {
        assert_eq!(address("User@Example.TEST").domain, "example.test");
        assert_eq!(address_text(&address("u@d.test")), "u@d.test");
        assert!(matches!(
            ip("::ffff:192.0.2.1".parse().unwrap()),
            wit::IpAddress::Ipv4((192, 0, 2, 1))
        ));
        assert!(matches!(
            ip("2001:db8::1".parse().unwrap()),
            wit::IpAddress::Ipv6((0x2001, 0xdb8, 0, 0, 0, 0, 0, 1))
        ));
    }
}
