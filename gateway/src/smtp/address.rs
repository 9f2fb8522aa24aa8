//! RFC 5321 paths and mailboxes (with RFC 6531 UTF-8), parsed strictly.
//!
//! A [`Path`] keeps the facts the relay check needs: whether a source route was given,
//! whether the local part was quoted, so that routing tricks (`%`, `!`, source routes,
//! quoted `@`) can be refused whatever the recipient domain.

/// Longest local part (RFC 5321 4.5.3.1.1).
pub const MAX_LOCAL: usize = 64;
/// Longest domain (RFC 5321 4.5.3.1.2).
pub const MAX_DOMAIN: usize = 255;
/// Longest path including angle brackets (RFC 5321 4.5.3.1.3).
pub const MAX_PATH: usize = 256;

/// A parsed path: the null path `<>`, `<Postmaster>`, or a mailbox.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Path {
    /// `<>` (only valid as a reverse-path).
    Null,
    /// `<Postmaster>` without a domain (only valid as a forward-path).
    Postmaster,
    /// `<[@route,...:]local@domain>`.
    Mailbox(Mailbox),
}

/// A mailbox `local@domain`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mailbox {
    /// Local part as written (with quotes if it was quoted).
    pub local: String,
    /// Domain or address literal as written.
    pub domain: String,
    /// The local part was a quoted string.
    pub quoted: bool,
    /// A source route (`@a,@b:`) preceded the mailbox.
    pub source_route: bool,
}

impl Mailbox {
    /// `local@domain`, without a trailing dot on the domain (`a@b.test.` is `a@b.test`).
    pub fn address(&self) -> String {
        format!("{}@{}", self.local, self.domain.trim_end_matches('.'))
    }

    /// The domain as DNS knows it, for comparisons (see [`domain_key`]).
    pub fn domain_key(&self) -> String {
        domain_key(&self.domain)
    }

    /// The domain is an address literal (`[192.0.2.1]`).
    pub fn is_literal(&self) -> bool {
        self.domain.starts_with('[')
    }

    /// Sender-specified routing inside the address: source routes, `%` or `!` in the local
    /// part, or `@` inside a quoted local part. Never accepted for relaying.
    pub fn has_routing(&self) -> bool {
        self.source_route
            || self.local.contains(['%', '!'])
            || (self.quoted && self.local[1..self.local.len() - 1].contains('@'))
    }

    /// Any non-ASCII character (needs SMTPUTF8).
    pub fn is_ascii(&self) -> bool {
        self.local.is_ascii() && self.domain.is_ascii()
    }
}

/// A domain as DNS knows it: lowercased, without a trailing dot, an internationalized
/// domain in its A-label form (`Bücher.test` is `xn--bcher-kva.test`, RFC 5890), an
/// address literal (`[192.0.2.1]`) as it is.
pub fn domain_key(domain: &str) -> String {
    let domain = domain.trim_end_matches('.');
    if domain.is_ascii() {
        return domain.to_ascii_lowercase();
    }
    idna::domain_to_ascii(domain).unwrap_or_else(|_| domain.to_lowercase())
}

/// The mailbox an address names, for telling recipients apart and for Maildir names:
/// the domain lowercased without a trailing dot, the local part unquoted (`"alice"` is
/// `alice`, `"a\\b"` is `ab`) and, with `fold_case`, lowercased (RFC 5321 lets a server
/// treat local parts case-sensitively; almost no mail system does).
pub fn mailbox_key(address: &str, fold_case: bool) -> String {
    let (local, domain) = address.rsplit_once('@').unwrap_or((address, ""));
    let mut key = match local.strip_prefix('"').and_then(|l| l.strip_suffix('"')) {
        Some(inner) => {
            let mut out = String::with_capacity(inner.len());
            let mut chars = inner.chars();
            while let Some(c) = chars.next() {
                out.push(if c == '\\' {
                    chars.next().unwrap_or(c)
                } else {
                    c
                });
            }
            out
        }
        None => local.to_string(),
    };
    if fold_case {
        key = key.to_lowercase();
    }
    key.push('@');
    key.push_str(&domain_key(domain));
    key
}

/// Why a path was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BadPath;

/// Splits `<path> params` into the path (brackets included) and the parameters.
/// Quoted strings may contain `>` and spaces.
pub fn split_path(arg: &str) -> Option<(&str, &str)> {
    if !arg.starts_with('<') {
        return None;
    }
    let bytes = arg.as_bytes();
    let mut i = 1;
    let mut in_quote = false;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' if in_quote => i += 1,
            b'"' => in_quote = !in_quote,
            b'>' if !in_quote => {
                let rest = &arg[i + 1..];
                if !rest.is_empty() && !rest.starts_with(' ') {
                    return None;
                }
                return Some((&arg[..=i], rest.trim_start_matches(' ')));
            }
            _ => {}
        }
        i += 1;
    }
    None
}

/// Parses a reverse-path (`<>` allowed).
pub fn parse_reverse_path(path: &str) -> Result<Path, BadPath> {
    match parse(path)? {
        Path::Postmaster => Err(BadPath),
        p => Ok(p),
    }
}

/// Parses a forward-path (`<Postmaster>` allowed, `<>` not).
pub fn parse_forward_path(path: &str) -> Result<Path, BadPath> {
    match parse(path)? {
        Path::Null => Err(BadPath),
        p => Ok(p),
    }
}

fn parse(path: &str) -> Result<Path, BadPath> {
    if path.len() > MAX_PATH {
        return Err(BadPath);
    }
    let inner = path
        .strip_prefix('<')
        .and_then(|p| p.strip_suffix('>'))
        .ok_or(BadPath)?;
    if inner.is_empty() {
        return Ok(Path::Null);
    }
    if inner.eq_ignore_ascii_case("postmaster") {
        return Ok(Path::Postmaster);
    }
    let (source_route, mailbox) = match inner.strip_prefix('@') {
        Some(_) => {
            let (route, mb) = inner.split_once(':').ok_or(BadPath)?;
            for hop in route.split(',') {
                let d = hop.strip_prefix('@').ok_or(BadPath)?;
                if !is_domain(d) {
                    return Err(BadPath);
                }
            }
            (true, mb)
        }
        None => (false, inner),
    };
    let (local, quoted, rest) = if mailbox.starts_with('"') {
        let end = quoted_end(mailbox).ok_or(BadPath)?;
        (&mailbox[..end], true, &mailbox[end..])
    } else {
        let at = mailbox.find('@').ok_or(BadPath)?;
        let local = &mailbox[..at];
        if !is_dot_atom(local) {
            return Err(BadPath);
        }
        (local, false, &mailbox[at..])
    };
    let domain = rest.strip_prefix('@').ok_or(BadPath)?;
    if local.len() > MAX_LOCAL || domain.len() > MAX_DOMAIN {
        return Err(BadPath);
    }
    if !(is_domain(domain) || is_address_literal(domain)) {
        return Err(BadPath);
    }
    Ok(Path::Mailbox(Mailbox {
        local: local.into(),
        domain: domain.into(),
        quoted,
        source_route,
    }))
}

/// Index just past the closing quote of a quoted string starting at 0.
fn quoted_end(s: &str) -> Option<usize> {
    let bytes = s.as_bytes();
    let mut i = 1;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' => {
                let next = *bytes.get(i + 1)?;
                if !(32..=126).contains(&next) {
                    return None;
                }
                i += 2;
                continue;
            }
            b'"' => return Some(i + 1),
            b if b < 32 || b == 127 => return None,
            _ => {}
        }
        i += 1;
    }
    None
}

fn is_atext(c: char) -> bool {
    c.is_ascii_alphanumeric()
        || "!#$%&'*+-/=?^_`{|}~".contains(c)
        || (!c.is_ascii() && !c.is_control())
}

fn is_dot_atom(s: &str) -> bool {
    !s.is_empty()
        && s.split('.')
            .all(|atom| !atom.is_empty() && atom.chars().all(is_atext))
}

/// A domain name: labels of letters, digits and hyphens (UTF-8 letters allowed for
/// SMTPUTF8), an optional trailing dot.
pub fn is_domain(d: &str) -> bool {
    let d = d.strip_suffix('.').unwrap_or(d);
    !d.is_empty()
        && d.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.chars().all(|c| {
                    c.is_ascii_alphanumeric() || c == '-' || (!c.is_ascii() && c.is_alphanumeric())
                })
        })
}

fn is_address_literal(d: &str) -> bool {
    let Some(inner) = d.strip_prefix('[').and_then(|d| d.strip_suffix(']')) else {
        return false;
    };
    match inner.get(..5) {
        Some(p) if p.eq_ignore_ascii_case("IPv6:") => {
            inner[5..].parse::<std::net::Ipv6Addr>().is_ok()
        }
        _ => inner.parse::<std::net::Ipv4Addr>().is_ok(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mb(s: &str) -> Mailbox {
        match parse_forward_path(s).unwrap() {
            Path::Mailbox(m) => m,
            p => panic!("{p:?}"),
        }
    }

    #[test]
    fn good_paths() {
        assert_eq!(parse_reverse_path("<>"), Ok(Path::Null));
        assert_eq!(parse_forward_path("<postMaster>"), Ok(Path::Postmaster));
        let m = mb("<a.b+tag@Example.TEST.>");
        assert_eq!(
            (m.local.as_str(), m.domain_key().as_str()),
            ("a.b+tag", "example.test")
        );
        let m = mb("<\"john doe\"@example.test>");
        assert!(m.quoted && !m.has_routing());
        assert!(mb("<u@[192.0.2.1]>").is_literal());
        assert!(mb("<u@[IPv6:2001:db8::1]>").is_literal());
        assert!(!mb("<jösé@bücher.example>").is_ascii());
    }

    #[test]
    fn bad_paths() {
        for p in [
            "a@b",
            "<a@b",
            "<@>",
            "<a@>",
            "<@b>",
            "<a..b@c>",
            "<.a@c>",
            "<a.@c>",
            "<a@b..c>",
            "<a@-b.c>",
            "<a@[1.2.3]>",
            "<a b@c>",
            "<\"unterminated@c>",
            "<a@b@c>",
            "<a@b_c>",
        ] {
            assert_eq!(parse_forward_path(p), Err(BadPath), "{p}");
        }
        assert_eq!(parse_forward_path("<>"), Err(BadPath));
        assert_eq!(parse_reverse_path("<postmaster>"), Err(BadPath));
        let long_local = format!("<{}@c.test>", "a".repeat(65));
        assert_eq!(parse_forward_path(&long_local), Err(BadPath));
        let long_path = format!("<a@{}.test>", "b".repeat(260));
        assert_eq!(parse_forward_path(&long_path), Err(BadPath));
    }

    #[test]
    fn routing_tricks_are_flagged() {
        assert!(mb("<u%evil.test@example.test>").has_routing());
        assert!(mb("<evil.test!u@example.test>").has_routing());
        assert!(mb("<@relay.test,@b.test:u@example.test>").has_routing());
        assert!(mb("<\"u@evil.test\"@example.test>").has_routing());
        assert!(!mb("<u@example.test>").has_routing());
    }

    #[test]
    fn split_path_handles_quotes_and_params() {
        assert_eq!(split_path("<a@b> SIZE=10"), Some(("<a@b>", "SIZE=10")));
        assert_eq!(split_path("<\"a>b\"@c>"), Some(("<\"a>b\"@c>", "")));
        assert_eq!(split_path("<a@b>x"), None);
        assert_eq!(split_path("a@b"), None);
    }

    #[test]
    fn mailbox_keys_fold_quoting_case_and_domain() {
        for a in [
            "alice@Example.TEST",
            "Alice@example.test.",
            "ALICE@example.test",
            "\"alice\"@example.test",
            "\"al\\ice\"@EXAMPLE.test",
        ] {
            assert_eq!(mailbox_key(a, true), "alice@example.test", "{a}");
        }
        assert_eq!(
            mailbox_key("Alice@Example.test", false),
            "Alice@example.test"
        );
        assert_eq!(mailbox_key("\"a b\"@x.test", true), "a b@x.test");
        assert_eq!(mailbox_key("Ünïcode@X.test", true), "ünïcode@x.test");
    }
}
