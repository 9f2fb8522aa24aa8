//! The rules of the config (`rules.NAME.*`): what each looks at, checked at `init`.
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
//! Regexes use the `regex` crate's syntax (`(?i)` for case-insensitive matching). They
//! run in the gateway (the SDK's `patterns`): each kind's patterns compiled together once
//! per gateway process and matched in one pass, not compiled in every session's instance.

use mailgate_plugin_sdk::Config;
use mailgate_plugin_sdk::patterns::{PatternError, PatternSet};

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
    Regex(String),
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
    Url(String),
    AttachmentName(String),
    AttachmentType(String),
    Sender(String),
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

/// The pattern rules of one target, compiled together into one host [`PatternSet`]
/// (natively, once per gateway process, not per session): one pass over the text finds
/// every rule of the group that matches.
#[derive(Debug)]
pub struct Group {
    /// What the group's patterns look at.
    pub target: Target,
    /// The patterns, in the order of `rules`.
    pub set: PatternSet,
    /// The index (into the rule list) of each pattern's rule.
    pub rules: Vec<usize>,
}

/// What a group of pattern rules looks at.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// The values of one header field (lowercase name).
    Header(String),
    Body,
    Html,
    Url,
    AttachmentName,
    AttachmentType,
    Sender,
}

impl Rule {
    /// The rule's pattern, what it looks at and the config key holding the pattern.
    fn pattern(&self) -> Option<(Target, &'static str, &str)> {
        Some(match &self.kind {
            Kind::Header {
                name,
                test: HeaderTest::Regex(p),
            } => (Target::Header(name.to_ascii_lowercase()), "regex", p),
            Kind::Body(p) => (Target::Body, "body", p),
            Kind::Html(p) => (Target::Html, "html", p),
            Kind::Url(p) => (Target::Url, "url", p),
            Kind::AttachmentName(p) => (Target::AttachmentName, "attachment_name", p),
            Kind::AttachmentType(p) => (Target::AttachmentType, "attachment_type", p),
            Kind::Sender(p) => (Target::Sender, "sender", p),
            _ => return None,
        })
    }
}

/// The pattern rules of `rules` grouped by target and compiled; a bad pattern is an
/// error naming its rule and key.
pub fn groups(rules: &[Rule]) -> Result<Vec<Group>, String> {
    let mut lists: Vec<(Target, Vec<usize>, Vec<String>)> = Vec::new();
    for (i, rule) in rules.iter().enumerate() {
        let Some((target, _, pattern)) = rule.pattern() else {
            continue;
        };
        let at = match lists.iter().position(|(t, _, _)| *t == target) {
            Some(at) => at,
            None => {
                lists.push((target, Vec::new(), Vec::new()));
                lists.len() - 1
            }
        };
        lists[at].1.push(i);
        lists[at].2.push(pattern.to_string());
    }
    lists
        .into_iter()
        .map(|(target, idx, patterns)| {
            let set = PatternSet::new(patterns).map_err(|e| match e {
                PatternError::Invalid { index, reason } => {
                    let rule = &rules[idx[index]];
                    let key = rule.pattern().map(|(_, k, _)| k).unwrap_or_default();
                    format!("rules.{}.{key}: {reason}", rule.name)
                }
                PatternError::TooBig(why) => format!("rules: {why}"),
            })?;
            Ok(Group {
                target,
                set,
                rules: idx,
            })
        })
        .collect()
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
    // Each rule's keys, in one pass over the config (rules in order of first mention).
    let mut by_rule: Vec<(String, Vec<(String, String)>)> = Vec::new();
    let mut at: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
    for (k, v) in config.iter() {
        let Some(k) = k.strip_prefix("rules.") else {
            continue;
        };
        let (name, key) = k.split_once('.').unwrap_or((k, ""));
        let i = *at.entry(name.to_string()).or_insert_with(|| {
            by_rule.push((name.to_string(), Vec::new()));
            by_rule.len() - 1
        });
        if !key.is_empty() {
            by_rule[i].1.push((key.to_string(), v.to_string()));
        }
    }
    let mut rules = Vec::new();
    for (name, keys) in by_rule {
        let name = name.as_str();
        if !valid_name(name) {
            return Err(format!(
                "rules.{name}: a rule name is 1 to 64 of A-Z a-z 0-9 _ -"
            ));
        }
        let c = Config::new(keys);
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
                    (Some(p), Ok(None), Ok(None)) => HeaderTest::Regex(p.to_string()),
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
                let p = c.get(sel).unwrap_or_default().to_string();
                match *sel {
                    "body" => Kind::Body(p),
                    "html" => Kind::Html(p),
                    "url" => Kind::Url(p),
                    "attachment_name" => Kind::AttachmentName(p),
                    "attachment_type" => Kind::AttachmentType(p),
                    _ => Kind::Sender(p),
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
        let bad = parse(&cfg(&[("rules.X.body", "(")])).unwrap();
        assert!(groups_err(&bad).contains("rules.X.body"));
        assert!(err(&[("rules.X.bodyy", "a")]).contains("bodyy"));
        assert!(err(&[("rules.X.score", "1")]).contains("nothing to look at"));
        assert!(err(&[("rules.X.body", "a"), ("rules.X.url", "b")]).contains("more than one"));
        assert!(err(&[("rules.X.all_of", r#"["Y"]"#)]).contains("\"Y\""));
        assert!(err(&[("rules.X.check", "moon_phase")]).contains("moon_phase"));
        assert!(err(&[("rules.X.auth", "spf")]).contains("METHOD:RESULT"));
        assert!(err(&[("rules.X Y.body", "a")]).contains("rule name"));
    }

    #[test]
    fn each_target_is_one_set_and_bad_patterns_name_their_rule() {
        let rules = parse(&cfg(&[
            ("rules.A.body", "(?i)\\bfree money\\b"),
            ("rules.B.header", "Subject"),
            ("rules.B.regex", "^[A-Z !]+$"),
            ("rules.C.body", "[^a-z]{5}"),
            ("rules.D.header", "subject"),
            ("rules.D.regex", "never"),
        ]))
        .unwrap();
        let groups = groups(&rules).unwrap();
        assert_eq!(groups.len(), 2);
        let body = groups.iter().find(|g| g.target == Target::Body).unwrap();
        assert_eq!(body.set.matches("Get FREE MONEY now"), [0, 1]);
        let subject = groups
            .iter()
            .find(|g| g.target == Target::Header("subject".into()))
            .unwrap();
        assert_eq!(subject.rules.len(), 2);
        let bad = parse(&cfg(&[("rules.OK.url", "x"), ("rules.X.url", "(")])).unwrap();
        assert!(groups_err(&bad).starts_with("rules.X.url: "));
    }

    fn groups_err(rules: &[Rule]) -> String {
        groups(rules).unwrap_err()
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
