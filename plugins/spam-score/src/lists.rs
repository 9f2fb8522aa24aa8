//! DNS lists: DNSBLs (the client's address) and URIBLs (the registered domains of a
//! message's URLs), looked up together through the `dns` capability's
//! `lookup-a-many` (concurrently, within the plugin's deadline).
//!
//! A listing scores the list's `score`, or the score of its return code (`returns`).
//! Answers that are not listings are never scored: `127.255.255.x` (Spamhaus's "query
//! refused": a public resolver, over the free-use limit, or a typo in the zone) and
//! anything outside `127.0.0.0/8`. They are reported as a list error in the log, once per
//! list and hour when the plugin has the `kv` capability (once per session without it).

use std::net::{IpAddr, Ipv4Addr};

use mailgate_plugin_sdk::Config;

/// One DNS list from the config (`dnsbl.NAME.*` or `uribl.NAME.*`).
#[derive(Clone, Debug, PartialEq)]
pub struct List {
    /// The rule name it scores under: `DNSBL_NAME` / `URIBL_NAME`, uppercased.
    pub rule: String,
    /// The zone, e.g. `zen.spamhaus.org`.
    pub zone: String,
    /// Points for a listing whose code has no entry in `returns`.
    pub score: f64,
    /// Points per return code.
    pub returns: Vec<(Ipv4Addr, f64)>,
    /// The error answers were reported already (in this session).
    pub error_reported: bool,
}

/// What one answer means.
#[derive(Clone, Debug, PartialEq)]
pub enum Listing {
    /// Not listed.
    No,
    /// Listed: the points (the highest among the codes).
    Yes(f64),
    /// The list refused or answered something that is not a listing.
    Error(Vec<Ipv4Addr>),
}

impl List {
    /// The lists of `config` under `prefix` (`dnsbl` or `uribl`).
    pub fn all(config: &Config, prefix: &str) -> Result<Vec<List>, String> {
        let section = config.section(prefix);
        let mut names: Vec<&str> = section
            .iter()
            .filter_map(|(k, _)| k.split('.').next())
            .collect();
        names.sort_unstable();
        names.dedup();
        let mut lists = Vec::new();
        for name in names {
            let c = section.section(name);
            c.deny_unknown(&["zone", "score", "returns"])
                .map_err(|e| key_error(prefix, name, &e))?;
            let zone = c
                .require("zone")
                .map_err(|e| key_error(prefix, name, &e))?
                .trim_end_matches('.')
                .to_ascii_lowercase();
            let score: f64 = c
                .parse_or("score", 1.0)
                .map_err(|e| key_error(prefix, name, &e))?;
            let mut returns = Vec::new();
            for r in c
                .list("returns")
                .map_err(|e| key_error(prefix, name, &e))?
                .unwrap_or_default()
            {
                let (code, points) = r
                    .split_once('=')
                    .ok_or(format!("{prefix}.{name}.returns: {r:?} is not CODE=POINTS"))?;
                let code: Ipv4Addr = code.trim().parse().map_err(|_| {
                    format!("{prefix}.{name}.returns: {code:?} is not an IPv4 address")
                })?;
                let points: f64 = points
                    .trim()
                    .parse()
                    .map_err(|_| format!("{prefix}.{name}.returns: {points:?} is not a number"))?;
                returns.push((code, points));
            }
            lists.push(List {
                rule: format!(
                    "{}_{}",
                    prefix.to_ascii_uppercase(),
                    name.to_ascii_uppercase()
                        .replace(|c: char| !c.is_ascii_alphanumeric(), "_")
                ),
                zone,
                score,
                returns,
                error_reported: false,
            });
        }
        Ok(lists)
    }

    /// What the A records `codes` of a query mean for this list.
    pub fn judge(&self, codes: &[Ipv4Addr]) -> Listing {
        if codes.is_empty() {
            return Listing::No;
        }
        let errors: Vec<Ipv4Addr> = codes
            .iter()
            .copied()
            .filter(|c| c.octets()[0] != 127 || c.octets()[..3] == [127, 255, 255])
            .collect();
        if !errors.is_empty() {
            return Listing::Error(errors);
        }
        let points = codes
            .iter()
            .map(|c| {
                self.returns
                    .iter()
                    .find(|(r, _)| r == c)
                    .map_or(self.score, |(_, p)| *p)
            })
            .fold(f64::MIN, f64::max);
        Listing::Yes(points)
    }
}

impl List {
    /// Logs that the list answered `codes`, which are not listings: once per session, and
    /// once per hour across sessions when the kv capability is granted.
    pub fn report_error(&mut self, codes: &[Ipv4Addr]) {
        if self.error_reported {
            return;
        }
        self.error_reported = true;
        let key = format!("list-error:{}", self.zone);
        if let Ok(false) = mailgate_plugin_sdk::kv::set_if_absent(&key, b"1", Some(3600)) {
            return;
        }
        mailgate_plugin_sdk::log::warn(format!(
            "DNS list {} answered {codes:?}, which is not a listing (query refused: a public \
             resolver, over the free-use limit, or a wrong zone); ignored",
            self.zone
        ));
    }
}

/// Formats a config error of list `name` under `prefix`.
pub fn key_error(prefix: &str, name: &str, e: &mailgate_plugin_sdk::ConfigError) -> String {
    format!("{prefix}.{name}.{}: {}", e.key(), e.message())
}

/// The DNSBL query name of `ip` in `zone` (RFC 5782).
pub fn ip_query(ip: IpAddr, zone: &str) -> String {
    mailgate_plugin_sdk::dns::dnsbl_name(ip, zone)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list() -> List {
        List {
            rule: "DNSBL_ZEN".into(),
            zone: "zen.test".into(),
            score: 3.0,
            returns: vec![("127.0.0.4".parse().unwrap(), 5.0)],
            error_reported: false,
        }
    }

    #[test]
    fn return_codes_score_and_refusals_never_do() {
        let l = list();
        let ip = |s: &str| s.parse::<Ipv4Addr>().unwrap();
        assert_eq!(l.judge(&[]), Listing::No);
        assert_eq!(l.judge(&[ip("127.0.0.2")]), Listing::Yes(3.0));
        assert_eq!(
            l.judge(&[ip("127.0.0.2"), ip("127.0.0.4")]),
            Listing::Yes(5.0)
        );
        assert!(matches!(
            l.judge(&[ip("127.255.255.254")]),
            Listing::Error(_)
        ));
        assert!(matches!(
            l.judge(&[ip("127.255.255.255")]),
            Listing::Error(_)
        ));
        assert!(matches!(l.judge(&[ip("10.0.0.1")]), Listing::Error(_)));
    }

    #[test]
    fn lists_parse_from_the_config() {
        let c = Config::from_pairs([
            ("dnsbl.zen.zone", "zen.test."),
            ("dnsbl.zen.returns", r#"["127.0.0.2=6", "127.0.0.10=1.5"]"#),
        ]);
        let lists = List::all(&c, "dnsbl").unwrap();
        assert_eq!(lists.len(), 1);
        assert_eq!(lists[0].rule, "DNSBL_ZEN");
        assert_eq!(lists[0].zone, "zen.test");
        assert_eq!(lists[0].score, 1.0);
        assert_eq!(lists[0].returns.len(), 2);
        let bad =
            Config::from_pairs([("dnsbl.x.zone", "a.test"), ("dnsbl.x.returns", "127.0.0.2")]);
        assert!(
            List::all(&bad, "dnsbl")
                .unwrap_err()
                .contains("CODE=POINTS")
        );
        let missing = Config::from_pairs([("dnsbl.x.score", "2")]);
        assert!(
            List::all(&missing, "dnsbl")
                .unwrap_err()
                .starts_with("dnsbl.x.zone")
        );
    }
}
