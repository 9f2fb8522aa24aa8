//! Telling the next hop who the original client was: Postfix's XCLIENT
//! (<https://www.postfix.org/XCLIENT_README.html>) and XFORWARD
//! (<https://www.postfix.org/XFORWARD_README.html>).
//!
//! A [`ClientIdentity`] is what a session's facts say about its client (address, port,
//! confirmed reverse name, HELO, protocol, and the address it connected to). The
//! commands carry it as `ATTRIBUTE=value` pairs, each value xtext-encoded (RFC 3461,
//! section 4) from a value that was checked first: a name or HELO that is not plain
//! printable ASCII, or whose encoding would pass Postfix's 255-octet limit, goes out as
//! `[UNAVAILABLE]`, never as the client sent it. Only the attributes the server lists
//! after the keyword in its EHLO reply are sent, and no command passes 512 octets.
//!
//! XCLIENT changes who the server thinks its client is for the rest of the connection
//! (and, once the address is changed, usually takes away the right to send XCLIENT
//! again), so `NAME` and `ADDR` go in the last command and a connection that carries
//! one client's identity is never used for another's. XFORWARD only changes what the
//! server logs for the next transaction, so it is sent before each `MAIL`.

use std::net::IpAddr;

use crate::smtp::{Listener, SessionFacts};

/// `[UNAVAILABLE]`: the value XCLIENT and XFORWARD take for what is not known.
pub const UNAVAILABLE: &str = "[UNAVAILABLE]";

/// `[TEMPUNAVAIL]`: XCLIENT's `NAME` when the reverse lookup failed for now.
pub const TEMPUNAVAIL: &str = "[TEMPUNAVAIL]";

/// The longest attribute value (after xtext encoding) Postfix accepts.
const MAX_VALUE: usize = 255;

/// The longest command line, CRLF included (RFC 5321 4.5.3.1.4).
const MAX_LINE: usize = 512;

/// The original client of a message, as the next hop is told about it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ClientIdentity {
    /// The client's address (`None`: unknown).
    pub addr: Option<IpAddr>,
    /// The client's port (`None`: unknown).
    pub port: Option<u16>,
    /// Its forward-confirmed reverse name, if it has one.
    pub name: Option<String>,
    /// Without a name: the lookup failed for now rather than for good.
    pub name_tempfail: bool,
    /// The HELO/EHLO name it gave.
    pub helo: Option<String>,
    /// It said EHLO (`ESMTP`) rather than HELO (`SMTP`).
    pub esmtp: bool,
    /// The `Received:` protocol of the transaction (`ESMTPS`, ...), for XFORWARD.
    pub protocol: String,
    /// The address it connected to (the balancer's front end behind a PROXY listener).
    pub local: Option<(IpAddr, u16)>,
}

impl ClientIdentity {
    /// The identity of a session's client; `None` for mail the gateway wrote itself
    /// (delivery status notices), which has no client to speak of.
    pub fn of(facts: &SessionFacts) -> Option<ClientIdentity> {
        if facts.listener == Listener::Local {
            return None;
        }
        let known = |ip: IpAddr| !ip.is_unspecified();
        let ip = facts.client.ip().to_canonical();
        let local = facts.local.ip().to_canonical();
        Some(ClientIdentity {
            addr: known(ip).then_some(ip),
            port: (facts.client.port() != 0).then_some(facts.client.port()),
            name: facts.ptr_name.clone(),
            name_tempfail: facts.ptr_tempfail,
            helo: facts.helo_name().map(str::to_string),
            esmtp: facts.esmtp(),
            protocol: facts.protocol(false).to_string(),
            local: (known(local) && facts.local.port() != 0).then_some((local, facts.local.port())),
        })
    }

    /// The client's HELO name if it can stand on an `EHLO` command line as it is (the
    /// command after XCLIENT, which sets the HELO the server records); else `None` and
    /// our own name is used.
    pub fn helo_for_ehlo(&self) -> Option<&str> {
        self.helo
            .as_deref()
            .filter(|h| h.len() <= MAX_VALUE && h.bytes().all(|b| b.is_ascii_graphic()))
    }

    fn addr_value(ip: Option<IpAddr>) -> String {
        match ip {
            Some(IpAddr::V4(a)) => a.to_string(),
            Some(IpAddr::V6(a)) => format!("IPV6:{a}"),
            None => UNAVAILABLE.into(),
        }
    }

    fn port_value(port: Option<u16>) -> String {
        port.map_or_else(|| UNAVAILABLE.into(), |p| p.to_string())
    }

    /// `NAME`: the confirmed reverse name if it is a plain host name;
    /// `[TEMPUNAVAIL]` when the lookup failed for now and `tempunavail` (XCLIENT has it,
    /// XFORWARD does not); else `[UNAVAILABLE]` (no name, or reverse lookups off).
    fn name_value(&self, tempunavail: bool) -> String {
        match &self.name {
            Some(n) if is_host_name(n.trim_end_matches('.')) => {
                n.trim_end_matches('.').to_ascii_lowercase()
            }
            None if self.name_tempfail && tempunavail => TEMPUNAVAIL.into(),
            _ => UNAVAILABLE.into(),
        }
    }

    /// `HELO`: printable ASCII whose encoding fits, else `[UNAVAILABLE]`.
    fn helo_value(&self) -> String {
        match &self.helo {
            Some(h) if !h.is_empty() && h.bytes().all(|b| b.is_ascii_graphic()) => {
                let enc = xtext(h);
                if enc.len() <= MAX_VALUE {
                    return enc;
                }
                UNAVAILABLE.into()
            }
            _ => UNAVAILABLE.into(),
        }
    }

    /// The XCLIENT commands (without CRLF) for the attributes `offered` (upper case, as
    /// listed after `XCLIENT` in the EHLO reply; empty: the original four `NAME ADDR
    /// PROTO HELO`). `NAME` and `ADDR` come last, in one command of their own when all
    /// do not fit in one line.
    pub fn xclient_commands(&self, offered: &[String]) -> Vec<String> {
        let basic = ["NAME", "ADDR", "PROTO", "HELO"];
        let has = |a: &str| {
            if offered.is_empty() {
                basic.contains(&a)
            } else {
                offered.iter().any(|o| o.eq_ignore_ascii_case(a))
            }
        };
        let mut first = Vec::new();
        if has("HELO") {
            first.push(("HELO", self.helo_value()));
        }
        if has("PROTO") {
            first.push(("PROTO", if self.esmtp { "ESMTP" } else { "SMTP" }.into()));
        }
        if has("PORT") {
            first.push(("PORT", Self::port_value(self.port)));
        }
        if has("DESTADDR") {
            first.push(("DESTADDR", Self::addr_value(self.local.map(|l| l.0))));
        }
        if has("DESTPORT") {
            first.push(("DESTPORT", Self::port_value(self.local.map(|l| l.1))));
        }
        let mut last = Vec::new();
        if has("NAME") {
            last.push(("NAME", self.name_value(true)));
        }
        if has("ADDR") {
            last.push(("ADDR", Self::addr_value(self.addr)));
        }
        let all: Vec<_> = first.iter().chain(&last).cloned().collect();
        let one = pack("XCLIENT", &all);
        if one.len() <= 1 {
            return one;
        }
        let mut out = pack("XCLIENT", &first);
        out.extend(pack("XCLIENT", &last));
        out
    }

    /// The XFORWARD commands (without CRLF) for the attributes `offered` (as listed
    /// after `XFORWARD`), with `ident` (our message or queue id) as `IDENT` and
    /// `SOURCE=REMOTE`.
    pub fn xforward_commands(&self, ident: Option<&str>, offered: &[String]) -> Vec<String> {
        let has = |a: &str| offered.iter().any(|o| o.eq_ignore_ascii_case(a));
        let mut attrs = Vec::new();
        if has("NAME") {
            attrs.push(("NAME", self.name_value(false)));
        }
        if has("ADDR") {
            attrs.push(("ADDR", Self::addr_value(self.addr)));
        }
        if has("PORT") {
            attrs.push(("PORT", Self::port_value(self.port)));
        }
        if has("PROTO") {
            let p = &self.protocol;
            let ok = !p.is_empty() && p.len() <= 64 && p.bytes().all(|b| b.is_ascii_alphanumeric());
            attrs.push(("PROTO", if ok { p.clone() } else { UNAVAILABLE.into() }));
        }
        if has("HELO") {
            attrs.push(("HELO", self.helo_value()));
        }
        if has("IDENT") {
            let v = ident
                .filter(|i| !i.is_empty() && i.bytes().all(|b| b.is_ascii_graphic()))
                .map(xtext)
                .filter(|v| v.len() <= MAX_VALUE)
                .unwrap_or_else(|| UNAVAILABLE.into());
            attrs.push(("IDENT", v));
        }
        if has("SOURCE") {
            attrs.push(("SOURCE", "REMOTE".into()));
        }
        pack("XFORWARD", &attrs)
    }
}

/// Packs `name=value` pairs into as few `verb ...` commands as fit in a command line.
fn pack(verb: &str, attrs: &[(&str, String)]) -> Vec<String> {
    let mut out = Vec::new();
    let mut line = String::new();
    for (name, value) in attrs {
        let pair = format!("{name}={value}");
        if !line.is_empty() && line.len() + 1 + pair.len() + 2 > MAX_LINE {
            out.push(std::mem::take(&mut line));
        }
        if line.is_empty() {
            line.push_str(verb);
        }
        line.push(' ');
        line.push_str(&pair);
    }
    if !line.is_empty() {
        out.push(line);
    }
    out
}

/// RFC 3461 xtext: printable ASCII other than `+` and `=` as it is, every other octet
/// as `+XX` (upper-case hex).
pub fn xtext(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if (33..=126).contains(&b) && b != b'+' && b != b'=' {
            out.push(b as char);
        } else {
            out.push_str(&format!("+{b:02X}"));
        }
    }
    out
}

/// A DNS host name of letters, digits, hyphens and underscores in dot-separated labels
/// of 1 to 63 octets, at most 255 in all, not all digits (Postfix refuses a "numeric
/// hostname").
fn is_host_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= MAX_VALUE
        && n.bytes().any(|b| b.is_ascii_alphabetic())
        && n.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

/// The attribute names listed after an `XCLIENT` or `XFORWARD` keyword in an EHLO
/// reply line, upper case.
pub fn attribute_list<'a>(words: impl Iterator<Item = &'a str>) -> Vec<String> {
    words.map(str::to_ascii_uppercase).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::smtp::Helo;

    fn facts(client: &str) -> SessionFacts {
        let mut f = SessionFacts::new(
            "S1".into(),
            client.parse().unwrap(),
            "192.0.2.25:25".parse().unwrap(),
            Listener::Smtp,
        );
        f.ptr_name = Some("mail.client.test.".into());
        f.helo = Some(Helo {
            name: "mail.client.test".into(),
            extended: true,
        });
        f
    }

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    /// What Postfix 3.7 lists after XCLIENT and XFORWARD.
    fn postfix_xclient() -> Vec<String> {
        strings(&[
            "NAME",
            "ADDR",
            "PROTO",
            "HELO",
            "REVERSE_NAME",
            "PORT",
            "LOGIN",
            "DESTADDR",
            "DESTPORT",
        ])
    }

    fn postfix_xforward() -> Vec<String> {
        strings(&["NAME", "ADDR", "PROTO", "HELO", "SOURCE", "PORT", "IDENT"])
    }

    #[test]
    fn xtext_encodes_plus_equals_controls_space_and_non_ascii() {
        assert_eq!(xtext("mail.client.test"), "mail.client.test");
        assert_eq!(xtext("a+b=c"), "a+2Bb+3Dc");
        assert_eq!(xtext("a b\r\nc"), "a+20b+0D+0Ac");
        assert_eq!(xtext("é"), "+C3+A9");
        assert_eq!(xtext("[192.0.2.1]"), "[192.0.2.1]");
    }

    #[test]
    fn xclient_names_the_client_with_name_and_addr_last() {
        let id = ClientIdentity::of(&facts("203.0.113.7:40001")).unwrap();
        assert_eq!(
            id.xclient_commands(&postfix_xclient()),
            vec![
                "XCLIENT HELO=mail.client.test PROTO=ESMTP PORT=40001 DESTADDR=192.0.2.25 \
                 DESTPORT=25 NAME=mail.client.test ADDR=203.0.113.7"
            ]
        );
        // Only what the server lists; nothing listed: the original four.
        assert_eq!(
            id.xclient_commands(&strings(&["ADDR", "NAME"])),
            vec!["XCLIENT NAME=mail.client.test ADDR=203.0.113.7"]
        );
        assert_eq!(
            id.xclient_commands(&[]),
            vec![
                "XCLIENT HELO=mail.client.test PROTO=ESMTP NAME=mail.client.test ADDR=203.0.113.7"
            ]
        );
        let v6 = ClientIdentity::of(&facts("[2001:db8::7]:40001")).unwrap();
        assert!(
            v6.xclient_commands(&postfix_xclient())[0].ends_with(" ADDR=IPV6:2001:db8::7"),
            "{:?}",
            v6.xclient_commands(&postfix_xclient())
        );
        let mapped = ClientIdentity::of(&facts("[::ffff:203.0.113.7]:1")).unwrap();
        assert!(mapped.xclient_commands(&[])[0].ends_with(" ADDR=203.0.113.7"));
    }

    #[test]
    fn unknown_or_unsafe_values_are_unavailable_never_passed_on() {
        let mut f = facts("203.0.113.7:40001");
        f.ptr_name = None;
        f.helo = Some(Helo {
            name: "evil\r\nRCPT TO:<x@y>".into(),
            extended: false,
        });
        let id = ClientIdentity::of(&f).unwrap();
        let cmds = id.xclient_commands(&[]);
        assert_eq!(
            cmds,
            vec!["XCLIENT HELO=[UNAVAILABLE] PROTO=SMTP NAME=[UNAVAILABLE] ADDR=203.0.113.7"]
        );
        assert_eq!(id.helo_for_ehlo(), None, "not on an EHLO line either");
        for c in cmds
            .iter()
            .chain(&id.xforward_commands(Some("ID\r\n"), &postfix_xforward()))
        {
            assert!(!c.contains(['\r', '\n']), "{c:?}");
        }
        // A HELO with `=` or `+` is encoded, not cut or passed raw.
        f.helo = Some(Helo {
            name: "a=b+c".into(),
            extended: true,
        });
        let id = ClientIdentity::of(&f).unwrap();
        assert_eq!(
            id.xclient_commands(&strings(&["HELO"])),
            vec!["XCLIENT HELO=a+3Db+2Bc"]
        );
        assert_eq!(id.helo_for_ehlo(), Some("a=b+c"));
        // A reverse name that is not a host name.
        f.ptr_name = Some("bad name.test".into());
        let id = ClientIdentity::of(&f).unwrap();
        assert_eq!(
            id.xclient_commands(&strings(&["NAME"])),
            vec!["XCLIENT NAME=[UNAVAILABLE]"]
        );
        // Unknown address and port.
        f.client = "0.0.0.0:0".parse().unwrap();
        let id = ClientIdentity::of(&f).unwrap();
        assert_eq!(
            id.xclient_commands(&strings(&["ADDR", "PORT"])),
            vec!["XCLIENT PORT=[UNAVAILABLE] ADDR=[UNAVAILABLE]"]
        );
        // A reverse lookup that failed for now.
        f.ptr_name = None;
        f.ptr_tempfail = true;
        let id = ClientIdentity::of(&f).unwrap();
        assert_eq!(
            id.xclient_commands(&strings(&["NAME"])),
            vec!["XCLIENT NAME=[TEMPUNAVAIL]"]
        );
        assert_eq!(
            id.xforward_commands(None, &strings(&["NAME"])),
            vec!["XFORWARD NAME=[UNAVAILABLE]"],
            "XFORWARD has no [TEMPUNAVAIL]"
        );
        // A numeric "name" is none.
        f.ptr_name = Some("192.0.2.1".into());
        let id = ClientIdentity::of(&f).unwrap();
        assert_eq!(
            id.xclient_commands(&strings(&["NAME"])),
            vec!["XCLIENT NAME=[UNAVAILABLE]"]
        );
        // Notices have no client.
        assert_eq!(ClientIdentity::of(&SessionFacts::local("N1".into())), None);
    }

    #[test]
    fn long_values_split_commands_within_512_octets_name_and_addr_last() {
        let mut f = facts("[2001:db8:aaaa:bbbb:cccc:dddd:eeee:ffff]:65535");
        let label = "a".repeat(63);
        let long = [label.as_str(); 4].join(".");
        assert_eq!(long.len(), 255);
        f.ptr_name = Some(long.clone());
        f.helo = Some(Helo {
            name: long.clone(),
            extended: true,
        });
        let id = ClientIdentity::of(&f).unwrap();
        let cmds = id.xclient_commands(&postfix_xclient());
        assert_eq!(cmds.len(), 2, "{cmds:?}");
        for c in &cmds {
            assert!(c.len() + 2 <= 512, "{} octets", c.len() + 2);
            assert!(c.starts_with("XCLIENT "));
        }
        assert!(cmds[0].contains(&format!("HELO={long}")));
        assert_eq!(
            cmds[1],
            format!("XCLIENT NAME={long} ADDR=IPV6:2001:db8:aaaa:bbbb:cccc:dddd:eeee:ffff")
        );
        // A HELO whose encoding passes 255 octets is unavailable.
        f.helo = Some(Helo {
            name: "+".repeat(100),
            extended: true,
        });
        let id = ClientIdentity::of(&f).unwrap();
        assert_eq!(
            id.xclient_commands(&strings(&["HELO"])),
            vec!["XCLIENT HELO=[UNAVAILABLE]"]
        );
    }

    #[test]
    fn xforward_carries_the_message_id_and_protocol() {
        let mut f = facts("203.0.113.7:40001");
        f.tls = Some(crate::smtp::TlsInfo {
            version: "TLSv1_3".into(),
            cipher: "x".into(),
        });
        let id = ClientIdentity::of(&f).unwrap();
        assert_eq!(
            id.xforward_commands(Some("ABC.1"), &postfix_xforward()),
            vec![
                "XFORWARD NAME=mail.client.test ADDR=203.0.113.7 PORT=40001 PROTO=ESMTPS \
                 HELO=mail.client.test IDENT=ABC.1 SOURCE=REMOTE"
            ]
        );
        assert_eq!(
            id.xforward_commands(None, &strings(&["ADDR", "IDENT"])),
            vec!["XFORWARD ADDR=203.0.113.7 IDENT=[UNAVAILABLE]"]
        );
        assert!(id.xforward_commands(None, &[]).is_empty());
    }

    #[test]
    fn attribute_lists_are_upper_case() {
        assert_eq!(
            attribute_list("name addr Proto".split_whitespace()),
            strings(&["NAME", "ADDR", "PROTO"])
        );
    }
}
