//! What a rule matches: recipient (glob or regex), domain, sender, client network,
//! listener, tags and score set by earlier plugins. Every condition given must hold.

use std::net::IpAddr;

use mailgate_plugin_sdk::Config;
use mailgate_plugin_sdk::net::Net;
use regex::Regex;

/// `*` (any run of characters) and `?` (one character) glob, ASCII case-insensitive.
pub fn glob(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.to_lowercase().chars().collect();
    let t: Vec<char> = text.to_lowercase().chars().collect();
    // Iterative matching with one backtrack point for the last `*` (linear-ish, bounded).
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ti));
            pi += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    while pi < p.len() && p[pi] == '*' {
        pi += 1;
    }
    pi == p.len()
}

/// The conditions of one rule.
#[derive(Clone, Debug, Default)]
pub struct Conditions {
    recipient: Option<String>,
    recipient_regex: Option<Regex>,
    domain: Option<String>,
    sender: Option<String>,
    client: Vec<Net>,
    listener: Option<String>,
    tag: Option<String>,
    min_score: Option<f64>,
}

/// What a rule is matched against.
#[derive(Clone, Copy, Debug)]
pub struct Facts<'a> {
    /// The recipient, `local@domain`.
    pub recipient: &'a str,
    /// Its domain, lowercase.
    pub domain: &'a str,
    /// The envelope sender (`""` for `<>`).
    pub sender: &'a str,
    /// The client's address.
    pub client: IpAddr,
    /// The listener's name.
    pub listener: &'a str,
    /// Tags earlier plugins set.
    pub tags: &'a [String],
    /// The score so far.
    pub score: f64,
}

/// The condition keys of a rule.
pub const KEYS: [&str; 8] = [
    "recipient",
    "recipient_regex",
    "domain",
    "sender",
    "client",
    "listener",
    "tag",
    "min_score",
];

impl Conditions {
    /// The conditions in `c` (a rule's table); `name` for errors.
    pub fn parse(c: &Config, name: &str) -> Result<Conditions, String> {
        let e = |k: &str, m: String| format!("{name}.{k}: {m}");
        let recipient_regex = match c.get("recipient_regex") {
            Some(p) => Some(
                regex::RegexBuilder::new(p)
                    .case_insensitive(true)
                    .size_limit(1 << 20)
                    .build()
                    .map_err(|x| e("recipient_regex", x.to_string()))?,
            ),
            None => None,
        };
        let client = c
            .list("client")
            .map_err(|x| e("client", x.message().to_string()))?
            .unwrap_or_default()
            .iter()
            .map(|n| Net::parse(n).ok_or(e("client", format!("{n:?} is not a network"))))
            .collect::<Result<Vec<_>, _>>()?;
        let min_score = c
            .parse::<f64>("min_score")
            .map_err(|x| e("min_score", x.message().to_string()))?;
        Ok(Conditions {
            recipient: c.get("recipient").map(str::to_lowercase),
            recipient_regex,
            domain: c
                .get("domain")
                .map(|d| d.trim_end_matches('.').to_lowercase()),
            sender: c.get("sender").map(str::to_lowercase),
            client,
            listener: c.get("listener").map(str::to_string),
            tag: c.get("tag").map(str::to_string),
            min_score,
        })
    }

    /// Whether every condition holds for `f`.
    pub fn matches(&self, f: &Facts<'_>) -> bool {
        self.recipient.as_ref().is_none_or(|p| glob(p, f.recipient))
            && self
                .recipient_regex
                .as_ref()
                .is_none_or(|r| r.is_match(f.recipient))
            && self.domain.as_ref().is_none_or(|p| glob(p, f.domain))
            && self.sender.as_ref().is_none_or(|p| {
                if p == "<>" {
                    f.sender.is_empty()
                } else {
                    glob(p, f.sender)
                }
            })
            && (self.client.is_empty() || self.client.iter().any(|n| n.contains(f.client)))
            && self.listener.as_ref().is_none_or(|l| l == f.listener)
            && self.tag.as_ref().is_none_or(|t| f.tags.contains(t))
            && self.min_score.is_none_or(|m| f.score >= m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        assert!(glob("*@example.com", "Anne@Example.com"));
        assert!(glob("sales-*@example.com", "sales-eu@example.com"));
        assert!(!glob("sales-*@example.com", "sales@example.com"));
        assert!(glob("a?c", "abc"));
        assert!(glob("*", ""));
        assert!(glob("*.example.com", "eu.example.com"));
        assert!(!glob("*.example.com", "example.com"));
        assert!(glob("a*b*c", "axxbyyc"));
        assert!(!glob("a*b*c", "axxbyy"));
    }

    #[test]
    fn conditions() {
        let c = Config::from_pairs([
            ("domain", "*.example.com"),
            ("client", r#"["192.0.2.0/24"]"#),
            ("tag", "spam:no"),
            ("sender", "<>"),
        ]);
        let cond = Conditions::parse(&c, "rules[0]").unwrap();
        let tags = vec!["spam:no".to_string()];
        let mut f = Facts {
            recipient: "a@eu.example.com",
            domain: "eu.example.com",
            sender: "",
            client: "192.0.2.7".parse().unwrap(),
            listener: "smtp",
            tags: &tags,
            score: 0.0,
        };
        assert!(cond.matches(&f));
        f.client = "198.51.100.1".parse().unwrap();
        assert!(!cond.matches(&f));
        let bad = Config::from_pairs([("client", r#"["nope"]"#)]);
        assert!(
            Conditions::parse(&bad, "rules[2]")
                .unwrap_err()
                .starts_with("rules[2].client")
        );
    }
}
