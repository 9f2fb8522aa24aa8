//! The rules of the config (`rules.NAME.*`): what each looks at, compiled once at `init`.
//!
//! Each rule has one selector key saying what it looks at, a `score` (may be negative)
//! and an optional `description`:
//!
//! | selector | matches when |
//! |---|---|
//! | `header = "Subject"` with `regex = "…"` | a value of the field (RFC 2047 decoded) matches |
//! | `header = "…"` with `exists = true/false` | the field is present / absent |
//! | `header = "…"` with `count_over = N` | the field appears more than N times |
//! | `body = "regex"` | the readable text (text parts, or HTML as text) matches |
//! | `html = "regex"` | the raw HTML of a text/html part matches |
//! | `url = "regex"` | a URL of the text or HTML (normalised: `https://host/path`) matches |
//! | `attachment_name = "regex"` | an attachment's file name matches |
//! | `attachment_type = "regex"` | a part's content type (`type/subtype`) matches |
//! | `sender = "regex"` | the envelope sender (`local@domain`, empty for `<>`) matches |
//! | `recipients_over = N` | the transaction has more than N recipients |
//! | `check = "…"` | a built-in check: `helo_not_fqdn`, `helo_ip_literal`, `helo_not_ptr` (HELO differs from the confirmed reverse name), `no_fcrdns` (no confirmed reverse name), `sender_domain_no_mx` (no MX and no A) |
//! | `auth = "spf:fail"` | an auth result (`spf`, `dkim`, `dmarc`, `arc` : result name) |
//! | `all_of = ["A", "B"]` and/or `none_of = ["C"]` | a composite: every rule of `all_of` fired and none of `none_of` |
//!
//! Regexes use the `regex` crate's syntax (`(?i)` for case-insensitive matching).

use mailgate_plugin_sdk::Config;
use std::cell::OnceCell;

use regex::Regex;

/// When a rule can be judged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    /// At HELO (carried to the end of the session).
    Helo,
    /// At the end of DATA.
    Data,
}

/// A built-in check.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Check {
    HeloNotFqdn,
    HeloIpLiteral,
    HeloNotPtr,
    NoFcrdns,
    SenderDomainNoMx,
}

/// How a header rule tests the field.
#[derive(Clone, Debug)]
pub enum HeaderTest {
    Regex(Pattern),
    Exists(bool),
    CountOver(usize),
}

/// What a rule looks at.
#[derive(Clone, Debug)]
pub enum Kind {
    Header {
        name: String,
        test: HeaderTest,
    },
    Body(String),
    Html(String),
    Url(Pattern),
    AttachmentName(Pattern),
    AttachmentType(Pattern),
    Sender(Pattern),
    RecipientsOver(usize),
    Check(Check),
    Auth {
        method: String,
        result: String,
    },
    Composite {
        all_of: Vec<String>,
        none_of: Vec<String>,
    },
}

/// One rule.
#[derive(Clone, Debug)]
pub struct Rule {
    /// Its name (the key under `rules.`), as it appears in `X-Spam-Status`.
    pub name: String,
    /// Points when it matches.
    pub score: f64,
    /// What it looks at.
    pub kind: Kind,
}

impl Rule {
    /// When the rule is judged.
    pub fn stage(&self) -> Stage {
        match self.kind {
            Kind::Check(Check::HeloNotFqdn | Check::HeloIpLiteral | Check::HeloNotPtr)
            | Kind::Check(Check::NoFcrdns) => Stage::Helo,
            _ => Stage::Data,
        }
    }
}

const SELECTORS: [&str; 13] = [
    "header",
    "body",
    "html",
    "url",
    "attachment_name",
    "attachment_type",
    "sender",
    "recipients_over",
    "check",
    "auth",
    "all_of",
    "none_of",
    "regex",
];

/// A rule's pattern, checked for syntax at `init` and compiled when first used: plugin
/// instances live one session, and compiling every rule in every session (most of which
/// never reach the rules that need them) costs more than matching.
#[derive(Clone, Debug)]
pub struct Pattern {
    text: String,
    compiled: OnceCell<Option<Regex>>,
}

impl Pattern {
    /// Whether `haystack` matches (compiling the pattern on first use: in ASCII mode when
    /// that means the same, much cheaper to compile and to run in wasm, else Unicode).
    pub fn is_match(&self, haystack: &str) -> bool {
        self.compiled
            .get_or_init(|| {
                regex::RegexBuilder::new(&self.text)
                    .unicode(!ascii_ok(&self.text))
                    .size_limit(1 << 20)
                    .build()
                    .map_err(|e| {
                        mailgate_plugin_sdk::log::warn(format!(
                            "rule pattern {:?} cannot be compiled ({e}); it never matches",
                            self.text
                        ))
                    })
                    .ok()
            })
            .as_ref()
            .is_some_and(|r| r.is_match(haystack))
    }
}

fn regex(name: &str, key: &str, pattern: &str) -> Result<Pattern, String> {
    Ok(Pattern {
        text: checked(name, key, pattern)?,
        compiled: OnceCell::new(),
    })
}

/// A pattern checked for syntax only (body and html rules are compiled together, in
/// one regex set per instance, not one by one).
fn checked(name: &str, key: &str, pattern: &str) -> Result<String, String> {
    regex_syntax::Parser::new()
        .parse(pattern)
        .map(|_| pattern.to_string())
        .map_err(|e| format!("rules.{name}.{key}: {e}"))
}

/// Whether `pattern` means the same in ASCII mode (`\b`, `\w`, `(?i)` on ASCII), which
/// matches much faster; patterns whose classes could match non-ASCII text stay Unicode.
pub fn ascii_ok(pattern: &str) -> bool {
    regex_syntax::ParserBuilder::new()
        .unicode(false)
        .utf8(true)
        .build()
        .parse(pattern)
        .is_ok()
}

/// Rules of one kind (body, or html) matched in one pass over a text: one regex set for
/// the patterns that are fine in ASCII mode, one for the others.
#[derive(Clone, Debug, Default)]
pub struct Scan {
    patterns: Vec<(usize, String)>,
    sets: OnceCell<Vec<(regex::RegexSet, Vec<usize>)>>,
}

impl Scan {
    /// A scan of `patterns` (`(rule index, pattern)`), compiled when first used.
    pub fn new(patterns: &[(usize, String)]) -> Result<Scan, String> {
        Ok(Scan {
            patterns: patterns.to_vec(),
            sets: OnceCell::new(),
        })
    }

    fn sets(&self) -> &[(regex::RegexSet, Vec<usize>)] {
        self.sets.get_or_init(|| {
            let mut sets = Vec::new();
            for ascii in [true, false] {
                let (idx, pats): (Vec<usize>, Vec<&str>) = self
                    .patterns
                    .iter()
                    .filter(|(_, p)| ascii_ok(p) == ascii)
                    .map(|(i, p)| (*i, p.as_str()))
                    .unzip();
                if pats.is_empty() {
                    continue;
                }
                match regex::RegexSetBuilder::new(&pats)
                    .unicode(!ascii)
                    .size_limit(16 << 20)
                    .dfa_size_limit(8 << 20)
                    .build()
                {
                    Ok(set) => sets.push((set, idx)),
                    Err(e) => mailgate_plugin_sdk::log::warn(format!(
                        "the body/html rules cannot be compiled together ({e}); they never match"
                    )),
                }
            }
            sets
        })
    }

    /// Whether it has any pattern.
    pub fn is_empty(&self) -> bool {
        self.patterns.is_empty()
    }

    /// Adds the indexes of the rules matching `text` to `hits`.
    pub fn matches(&self, text: &str, hits: &mut Vec<usize>) {
        for (set, idx) in self.sets() {
            for j in set.matches(text).iter() {
                if !hits.contains(&idx[j]) {
                    hits.push(idx[j]);
                }
            }
        }
    }
}

/// A rule name as `X-Spam-Status` and the score entries allow: 1..=64 of `A-Z a-z 0-9 _ - .`.
fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-'))
}

/// The rules of `config` (`rules.NAME.*`), composites last, their references checked.
pub fn parse(config: &Config) -> Result<Vec<Rule>, String> {
    let section = config.section("rules");
    let mut names: Vec<&str> = section
        .iter()
        .filter_map(|(k, _)| k.split('.').next())
        .collect();
    names.dedup();
    let mut seen = std::collections::HashSet::new();
    names.retain(|n| seen.insert(*n));
    let mut rules = Vec::new();
    for name in names {
        if !valid_name(name) {
            return Err(format!(
                "rules.{name}: a rule name is 1 to 64 of A-Z a-z 0-9 _ -"
            ));
        }
        let c = section.section(name);
        let mut known = SELECTORS.to_vec();
        known.extend(["score", "description", "exists", "count_over"]);
        c.deny_unknown(&known)
            .map_err(|e| crate::lists::key_error("rules", name, &e))?;
        let score: f64 = c
            .parse_or("score", 1.0)
            .map_err(|e| crate::lists::key_error("rules", name, &e))?;
        if !score.is_finite() || score.abs() > 1000.0 {
            return Err(format!("rules.{name}.score: must be within ±1000"));
        }
        let selectors: Vec<&str> = SELECTORS[..12]
            .iter()
            .copied()
            .filter(|s| c.contains(s))
            .filter(|s| *s != "none_of" || !c.contains("all_of"))
            .collect();
        let kind = match selectors.as_slice() {
            ["header"] => {
                let header = c
                    .require("header")
                    .map_err(|e| crate::lists::key_error("rules", name, &e))?
                    .to_string();
                let test = match (c.get("regex"), c.bool("exists"), c.int("count_over")) {
                    (Some(p), Ok(None), Ok(None)) => HeaderTest::Regex(regex(name, "regex", p)?),
                    (None, Ok(Some(e)), Ok(None)) => HeaderTest::Exists(e),
                    (None, Ok(None), Ok(Some(n))) if n >= 0 => HeaderTest::CountOver(n as usize),
                    _ => {
                        return Err(format!(
                            "rules.{name}: a header rule takes one of regex, exists, count_over"
                        ));
                    }
                };
                Kind::Header { name: header, test }
            }
            [
                sel @ ("body" | "html" | "url" | "attachment_name" | "attachment_type" | "sender"),
            ] => {
                let pattern = c.get(sel).unwrap_or_default();
                let r = || regex(name, sel, pattern);
                match *sel {
                    "body" => Kind::Body(checked(name, sel, pattern)?),
                    "html" => Kind::Html(checked(name, sel, pattern)?),
                    "url" => Kind::Url(r()?),
                    "attachment_name" => Kind::AttachmentName(r()?),
                    "attachment_type" => Kind::AttachmentType(r()?),
                    _ => Kind::Sender(r()?),
                }
            }
            ["recipients_over"] => {
                let n = c
                    .int("recipients_over")
                    .map_err(|e| crate::lists::key_error("rules", name, &e))?
                    .unwrap_or(0);
                Kind::RecipientsOver(n.max(0) as usize)
            }
            ["check"] => Kind::Check(match c.get("check").unwrap_or_default() {
                "helo_not_fqdn" => Check::HeloNotFqdn,
                "helo_ip_literal" => Check::HeloIpLiteral,
                "helo_not_ptr" => Check::HeloNotPtr,
                "no_fcrdns" => Check::NoFcrdns,
                "sender_domain_no_mx" => Check::SenderDomainNoMx,
                other => return Err(format!("rules.{name}.check: {other:?} is not a check")),
            }),
            ["auth"] => {
                let v = c.get("auth").unwrap_or_default().to_ascii_lowercase();
                let (method, result) = v
                    .split_once(':')
                    .ok_or(format!("rules.{name}.auth: {v:?} is not METHOD:RESULT"))?;
                if !["spf", "dkim", "dmarc", "arc"].contains(&method) {
                    return Err(format!(
                        "rules.{name}.auth: {method:?} is not spf, dkim, dmarc or arc"
                    ));
                }
                Kind::Auth {
                    method: method.to_string(),
                    result: result.to_string(),
                }
            }
            ["all_of"] | ["none_of"] => {
                let list = |k: &str| -> Result<Vec<String>, String> {
                    Ok(c.list(k)
                        .map_err(|e| crate::lists::key_error("rules", name, &e))?
                        .unwrap_or_default())
                };
                Kind::Composite {
                    all_of: list("all_of")?,
                    none_of: list("none_of")?,
                }
            }
            [] => {
                return Err(format!(
                    "rules.{name}: says nothing to look at (one of {})",
                    SELECTORS[..12].join(", ")
                ));
            }
            many => {
                return Err(format!(
                    "rules.{name}: more than one thing to look at: {}",
                    many.join(", ")
                ));
            }
        };
        if c.contains("regex") && !matches!(kind, Kind::Header { .. }) {
            return Err(format!("rules.{name}.regex: only header rules take regex"));
        }
        rules.push(Rule {
            name: name.to_string(),
            score,
            kind,
        });
    }
    // Composites refer to plain rules only, and are judged after them.
    let plain: Vec<String> = rules
        .iter()
        .filter(|r| !matches!(r.kind, Kind::Composite { .. }))
        .map(|r| r.name.clone())
        .collect();
    for r in &rules {
        if let Kind::Composite { all_of, none_of } = &r.kind {
            if all_of.is_empty() && none_of.is_empty() {
                return Err(format!(
                    "rules.{}: a composite needs all_of or none_of",
                    r.name
                ));
            }
            for n in all_of.iter().chain(none_of) {
                if !plain.contains(n) {
                    return Err(format!(
                        "rules.{}: {n:?} is not a (non-composite) rule",
                        r.name
                    ));
                }
            }
        }
    }
    rules.sort_by_key(|r| matches!(r.kind, Kind::Composite { .. }));
    Ok(rules)
}

/// Whether `helo` is a fully qualified domain name (at least two labels, not a literal).
pub fn helo_is_fqdn(helo: &str) -> bool {
    let h = helo.trim_end_matches('.');
    h.contains('.') && !h.starts_with('[') && h.parse::<std::net::IpAddr>().is_err()
}

/// Whether `helo` is an address literal or a bare address.
pub fn helo_is_ip(helo: &str) -> bool {
    helo.starts_with('[') || helo.parse::<std::net::IpAddr>().is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(pairs: &[(&str, &str)]) -> Config {
        Config::from_pairs(pairs.iter().copied())
    }

    #[test]
    fn rules_parse_and_composites_come_last() {
        let rules = parse(&cfg(&[
            ("rules.BOTH.all_of", r#"["CAPS","FREE"]"#),
            ("rules.BOTH.score", "1.5"),
            ("rules.CAPS.header", "Subject"),
            ("rules.CAPS.regex", "^[A-Z !]+$"),
            ("rules.FREE.body", "(?i)free money"),
            ("rules.FREE.score", "3"),
            ("rules.NOMID.header", "Message-ID"),
            ("rules.NOMID.exists", "false"),
        ]))
        .unwrap();
        let names: Vec<&str> = rules.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, ["CAPS", "FREE", "NOMID", "BOTH"]);
        assert_eq!(rules[1].score, 3.0);
    }

    #[test]
    fn mistakes_are_named() {
        let err = |pairs: &[(&str, &str)]| parse(&cfg(pairs)).unwrap_err();
        assert!(err(&[("rules.X.body", "(")]).contains("rules.X.body"));
        assert!(err(&[("rules.X.bodyy", "a")]).contains("bodyy"));
        assert!(err(&[("rules.X.score", "1")]).contains("nothing to look at"));
        assert!(err(&[("rules.X.body", "a"), ("rules.X.url", "b")]).contains("more than one"));
        assert!(err(&[("rules.X.all_of", r#"["Y"]"#)]).contains("\"Y\""));
        assert!(err(&[("rules.X.check", "moon_phase")]).contains("moon_phase"));
        assert!(err(&[("rules.X.auth", "spf")]).contains("METHOD:RESULT"));
        assert!(err(&[("rules.X Y.body", "a")]).contains("rule name"));
    }

    #[test]
    fn one_scan_finds_every_matching_rule() {
        let scan = Scan::new(&[
            (0, "(?i)\\bfree money\\b".into()),
            (3, "[^a-z]{5}".into()),
            (7, "never".into()),
        ])
        .unwrap();
        let mut hits = vec![];
        scan.matches("Get FREE MONEY now", &mut hits);
        hits.sort();
        assert_eq!(hits, [0, 3]);
        assert!(ascii_ok("(?i)\\bfree\\b"));
        assert!(!ascii_ok("[^a-z]{5}"));
    }

    #[test]
    fn helo_shapes() {
        assert!(helo_is_fqdn("mail.example.com"));
        assert!(!helo_is_fqdn("localhost"));
        assert!(!helo_is_fqdn("[192.0.2.1]"));
        assert!(helo_is_ip("[192.0.2.1]"));
        assert!(helo_is_ip("192.0.2.1"));
        assert!(!helo_is_ip("a.example"));
    }
}
