//! mailgate's spam scorer: many small rules, each with a score, summed with what the other
//! plugins of the chain scored (SPF/DMARC results of the auth plugin, for one), and
//! actions at thresholds — in the spirit of rspamd and SpamAssassin. Needs the `dns`
//! capability for DNS lists and `sender_domain_no_mx`, `auth-results` for `auth` rules,
//! `log` to report list errors. See docs/spam.md for every option and examples.
//!
//! Config (all optional):
//!
//! | key | values | default |
//! |---|---|---|
//! | `add_header_at` | score from which the message is spam: `X-Spam-Flag: YES`, `X-Spam-Status: Yes` | `6` |
//! | `greylist_at` | score from which a message whose triplet the greylist plugin (in `defer_to_score` mode) has not seen pass yet (tag `greylist:new` or `greylist:early`) is deferred: `451 4.7.1` | `4` |
//! | `quarantine_at` | score from which the message is quarantined | none |
//! | `reject_at` | score from which the message is refused: `550 5.7.1` naming the top rules | `15` |
//! | `headers` | `always` (X-Spam-Score and X-Spam-Status on every message), `spam` (only on spam), `never` | `always` |
//! | `max_text_kb` | text and HTML read per message for body, html and url rules | `256` |
//! | `dnsbl_skip_networks` | clients (CIDR) not looked up in DNSBLs | `[]` |
//! | `default_rules` | use the shipped rules ([`defaults`]; a rule of the config with the same name replaces one, `score = 0` turns it off) | `true` |
//! | `rules.NAME.*` | a rule: see [`rules`] | none |
//! | `dnsbl.NAME.zone`, `.score`, `.returns` | a DNSBL of client addresses: points for a listing, per return code (`["127.0.0.2=6", "127.0.0.4=4"]`) | none |
//! | `uribl.NAME.zone`, `.score`, `.returns` | a URIBL of the registered domains of the message's URLs | none |
//!
//! DNSBL listings are scored at connect and carry to the end of the session; HELO checks
//! at HELO; everything else at the end of DATA, where the thresholds apply to the total.

mod defaults;
mod lists;
pub mod rules;
mod urls;

use std::collections::HashMap;
use std::rc::Rc;

use lists::{List, Listing};
use mailgate_plugin_sdk::auth;
use mailgate_plugin_sdk::dns;
use mailgate_plugin_sdk::log;
use mailgate_plugin_sdk::net::Net;
use mailgate_plugin_sdk::prelude::*;
use mailgate_plugin_sdk::{Part, PerConfig};
use rules::{Check, HeaderTest, Kind, Rule, Stage, Target};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Headers {
    Always,
    Spam,
    Never,
}

/// Rules compiled from one config (the shipped defaults merged with the configured ones).
struct Compiled {
    rules: Vec<Rule>,
    /// The pattern rules, one host-compiled set per target.
    groups: Vec<rules::Group>,
}

thread_local! {
    /// The rules the last `init` compiled, with the config they came from. The gateway
    /// runs `init` at the start of every session an instance serves; with the same config
    /// (always, until a reload brings new instances) the rules are not parsed and their
    /// pattern sets not compiled again.
    static COMPILED: PerConfig<Compiled> = const { PerConfig::new() };
}

/// The rules of `config`, from the cache when it holds them.
fn compiled(config: &Config) -> Result<Rc<Compiled>, String> {
    COMPILED.with(|cache| cache.get_or_make(config, compile))
}

/// The rules of `config`: the shipped defaults (unless turned off), then the configured ones.
fn compile(config: &Config) -> Result<Compiled, String> {
    let mut entries = if config.bool_or("default_rules", true)? {
        defaults::entries(config)
    } else {
        Vec::new()
    };
    entries.extend(config.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    let all = Config::new(entries);
    let rules: Vec<Rule> = rules::parse(&all)?
        .into_iter()
        .filter(|r| r.score != 0.0)
        .collect();
    let groups = rules::groups(&rules)?;
    Ok(Compiled { rules, groups })
}

struct SpamScore {
    /// The rules and their pattern sets (shared with later sessions' `init`).
    compiled: Rc<Compiled>,
    dnsbl: Vec<List>,
    uribl: Vec<List>,
    add_header_at: f64,
    greylist_at: f64,
    quarantine_at: Option<f64>,
    reject_at: Option<f64>,
    headers: Headers,
    max_text: u32,
    dnsbl_skip: Vec<Net>,
    /// Rules that fired at connect and HELO in this session, with their points.
    session_fired: Vec<(String, f64)>,
}

/// The message as the rules see it, read lazily and once.
struct Seen<'a> {
    msg: &'a Message,
    max_text: u32,
    headers: HashMap<String, Vec<String>>,
    text: Option<String>,
    html: Option<Vec<String>>,
    parts: Option<Vec<Part>>,
    urls: Option<Vec<urls::Url>>,
}

impl<'a> Seen<'a> {
    fn new(msg: &'a Message, max_text: u32) -> Self {
        Seen {
            msg,
            max_text,
            headers: HashMap::new(),
            text: None,
            html: None,
            parts: None,
            urls: None,
        }
    }

    fn header(&mut self, name: &str) -> &[String] {
        let key = name.to_ascii_lowercase();
        let msg = self.msg;
        self.headers
            .entry(key)
            .or_insert_with(|| msg.header_decoded(name))
    }

    fn parts(&mut self) -> &[Part] {
        let msg = self.msg;
        self.parts.get_or_insert_with(|| msg.parts())
    }

    fn text(&mut self) -> &str {
        let (msg, max) = (self.msg, self.max_text);
        self.text.get_or_insert_with(|| msg.text(max))
    }

    fn html(&mut self) -> &[String] {
        if self.html.is_none() {
            let max = self.max_text;
            let msg = self.msg;
            let html: Vec<String> = self
                .parts()
                .iter()
                .filter(|p| p.content_type == "text/html")
                .take(10)
                .map(|p| String::from_utf8_lossy(&msg.read_part(p.index, 0, max)).into_owned())
                .collect();
            self.html = Some(html);
        }
        self.html.as_deref().unwrap_or_default()
    }

    fn urls(&mut self) -> &[urls::Url] {
        if self.urls.is_none() {
            // Both read (once), then looked at in place.
            self.text();
            self.html();
            let mut found = Vec::new();
            urls::find(self.text.as_deref().unwrap_or_default(), &mut found);
            for h in self.html.as_deref().unwrap_or_default() {
                urls::find(h, &mut found);
            }
            self.urls = Some(found);
        }
        self.urls.as_deref().unwrap_or_default()
    }
}

/// The auth result `method` came to, as RFC 8601 names it (`None` if not known).
/// The names (RFC 8601) of the results the host has for `method`.
fn auth_result(method: &str) -> Option<Vec<&'static str>> {
    match method {
        "spf" => auth::spf().ok().map(|s| vec![s.outcome.name()]),
        "dkim" => auth::dkim()
            .ok()
            .map(|d| d.iter().map(|c| c.outcome.name()).collect()),
        "dmarc" => auth::dmarc().ok().map(|d| vec![d.outcome.name()]),
        "arc" => auth::arc().ok().map(|a| vec![a.name()]),
        _ => None,
    }
}

fn no_mx(domain: &str) -> bool {
    match dns::mx(domain) {
        Ok(mx) if !mx.is_empty() => false,
        Ok(_) | Err(dns::DnsError::Nxdomain) => match dns::a(domain) {
            Ok(a) => a.is_empty(),
            Err(e) => e == dns::DnsError::Nxdomain,
        },
        Err(_) => false,
    }
}

impl SpamScore {
    /// Looks `names` up (one per list, in order) and scores the listings; list errors are
    /// logged once per list.
    fn score_lists(lists: &mut [List], names: &[String]) -> Vec<(String, f64, usize)> {
        let answers = dns::a_many(names);
        let mut fired = Vec::new();
        for (i, (list, answer)) in lists.iter_mut().zip(answers).enumerate() {
            match answer {
                Ok(codes) => match list.judge(&codes) {
                    Listing::Yes(points) => fired.push((list.rule.clone(), points, i)),
                    Listing::No => {}
                    Listing::Error(codes) => list.report_error(&codes),
                },
                Err(dns::DnsError::Nxdomain) => {}
                Err(e) => log::debug(format!("DNS list {}: {e:?}", list.zone)),
            }
        }
        fired
    }

    fn judge(
        &self,
        rule: &Rule,
        seen: &mut Seen<'_>,
        txn: &Transaction,
        fired: &[(String, f64)],
        scanned: &[bool],
        index: usize,
    ) -> bool {
        match &rule.kind {
            Kind::Header {
                test: HeaderTest::Regex(_),
                ..
            }
            | Kind::Body(_)
            | Kind::Html(_)
            | Kind::Url(_)
            | Kind::AttachmentName(_)
            | Kind::AttachmentType(_)
            | Kind::Sender(_) => scanned[index],
            Kind::Header { name, test } => {
                let values = seen.header(name);
                match test {
                    HeaderTest::Exists(e) => values.is_empty() != *e,
                    HeaderTest::CountOver(n) => values.len() > *n,
                    HeaderTest::Regex(_) => false,
                }
            }
            Kind::RecipientsOver(n) => txn.recipients.len() > *n,
            Kind::Check(Check::SenderDomainNoMx) => txn
                .sender
                .as_ref()
                .is_some_and(|a| !a.domain.is_empty() && no_mx(&a.domain)),
            Kind::Check(_) => false,
            Kind::Auth { method, result } => {
                auth_result(method).is_some_and(|rs| rs.iter().any(|r| r == result))
            }
            Kind::Composite { all_of, none_of } => {
                // What fired at DATA so far, and at connect and HELO.
                let has = |n: &String| fired.iter().chain(&self.session_fired).any(|(f, _)| f == n);
                all_of.iter().all(has) && !none_of.iter().any(has)
            }
        }
    }

    /// Which pattern rules match (indexed like `rules`): each group's patterns in one
    /// host call over what the group looks at.
    fn scan(&self, seen: &mut Seen<'_>, txn: &Transaction) -> Vec<bool> {
        let mut hit = vec![false; self.compiled.rules.len()];
        for g in &self.compiled.groups {
            let found = match &g.target {
                Target::Header(name) => g.set.matches_any(seen.header(name.as_str())),
                Target::Body => g.set.matches(seen.text()),
                Target::Html => g.set.matches_any(seen.html()),
                Target::Url => {
                    let urls: Vec<String> = seen.urls().iter().map(|u| u.text.clone()).collect();
                    g.set.matches_any(&urls)
                }
                Target::AttachmentName => {
                    let names: Vec<String> = seen
                        .parts()
                        .iter()
                        .filter_map(|p| p.filename.clone())
                        .collect();
                    g.set.matches_any(&names)
                }
                Target::AttachmentType => {
                    let types: Vec<String> = seen
                        .parts()
                        .iter()
                        .map(|p| p.content_type.clone())
                        .collect();
                    g.set.matches_any(&types)
                }
                Target::Sender => {
                    let s = txn
                        .sender
                        .as_ref()
                        .map(Address::to_string)
                        .unwrap_or_default();
                    g.set.matches(&s)
                }
            };
            for j in found {
                hit[g.rules[j]] = true;
            }
        }
        hit
    }

    fn status_line(&self, spam: bool, total: f64, fired: &[(String, f64)], others: f64) -> String {
        let mut tests: Vec<String> = fired.iter().map(|(n, p)| format!("{n}({p:.1})")).collect();
        if others.abs() >= 0.05 {
            tests.push(format!("OTHER_PLUGINS({others:.1})"));
        }
        let required = if self.add_header_at.is_finite() {
            format!("{:.1}", self.add_header_at)
        } else {
            "off".to_string()
        };
        format!(
            "{}, score={total:.1} required={required} tests={}",
            if spam { "Yes" } else { "No" },
            if tests.is_empty() {
                "none".to_string()
            } else {
                tests.join(", ")
            }
        )
    }
}

#[plugin]
impl Plugin for SpamScore {
    fn init(config: &Config) -> Result<Self, String> {
        config.deny_unknown(&[
            "add_header_at",
            "greylist_at",
            "quarantine_at",
            "reject_at",
            "headers",
            "max_text_kb",
            "dnsbl_skip_networks",
            "default_rules",
            "rules",
            "dnsbl",
            "uribl",
        ])?;
        // Absent: the default; "off": never; else the number.
        let threshold = |key: &str, default: Option<f64>| -> Result<Option<f64>, String> {
            match config.get(key) {
                None => Ok(default),
                Some("off") | Some("none") => Ok(None),
                Some(_) => Ok(config.parse::<f64>(key)?),
            }
        };
        let headers = match config.str_or("headers", "always") {
            "always" => Headers::Always,
            "spam" => Headers::Spam,
            "never" => Headers::Never,
            other => return Err(format!("headers: {other:?} is not always, spam or never")),
        };
        let dnsbl_skip = config
            .list("dnsbl_skip_networks")?
            .unwrap_or_default()
            .iter()
            .map(|n| Net::parse(n).ok_or(format!("dnsbl_skip_networks: {n:?} is not a network")))
            .collect::<Result<Vec<_>, _>>()?;
        let max_text_kb: u32 = config.parse_or("max_text_kb", 256)?;
        Ok(SpamScore {
            compiled: compiled(config)?,
            dnsbl: List::all(config, "dnsbl")?,
            uribl: List::all(config, "uribl")?,
            add_header_at: threshold("add_header_at", Some(6.0))?.unwrap_or(f64::INFINITY),
            greylist_at: threshold("greylist_at", Some(4.0))?.unwrap_or(f64::INFINITY),
            quarantine_at: threshold("quarantine_at", None)?,
            reject_at: threshold("reject_at", Some(15.0))?,
            headers,
            max_text: max_text_kb.clamp(1, 4096) * 1024,
            dnsbl_skip,
            session_fired: Vec::new(),
        })
    }

    fn on_connect(&mut self, s: &SessionInfo) -> Outcome {
        self.session_fired.clear();
        let ip = s.client_ip();
        if self.dnsbl.is_empty() || self.dnsbl_skip.iter().any(|n| n.contains(ip)) {
            return Outcome::continue_();
        }
        let names: Vec<String> = self
            .dnsbl
            .iter()
            .map(|l| lists::ip_query(ip, &l.zone))
            .collect();
        let mut out = Outcome::continue_();
        for (rule, points, i) in Self::score_lists(&mut self.dnsbl, &names) {
            out = out
                .with_score(rule.clone(), points)
                .with_tag(format!("dnsbl:{}", self.dnsbl[i].zone));
            self.session_fired.push((rule, points));
        }
        out
    }

    fn on_helo(&mut self, s: &SessionInfo, helo: &HeloInfo) -> Outcome {
        // A second HELO replaces the first one's checks.
        self.session_fired
            .retain(|(n, _)| !n.starts_with("HELO_") || n.starts_with("DNSBL_"));
        let mut out = Outcome::continue_();
        for rule in self
            .compiled
            .rules
            .iter()
            .filter(|r| r.stage() == Stage::Helo)
        {
            let hit = match rule.kind {
                Kind::Check(Check::HeloNotFqdn) => !rules::helo_is_fqdn(&helo.name),
                Kind::Check(Check::HeloIpLiteral) => rules::helo_is_ip(&helo.name),
                Kind::Check(Check::HeloNotPtr) => s
                    .client
                    .ptr_name
                    .as_deref()
                    .is_some_and(|p| !p.eq_ignore_ascii_case(helo.name.trim_end_matches('.'))),
                Kind::Check(Check::NoFcrdns) => s.client.ptr_name.is_none(),
                _ => false,
            };
            if hit && !self.session_fired.iter().any(|(n, _)| *n == rule.name) {
                out = out.with_score(rule.name.clone(), rule.score);
                self.session_fired.push((rule.name.clone(), rule.score));
            }
        }
        out
    }

    fn on_data(&mut self, s: &SessionInfo, txn: &Transaction, m: &Message) -> DataOutcome {
        let mut seen = Seen::new(m, self.max_text);
        // Pattern rules: one pass over each text for all the rules looking at it.
        let scanned = self.scan(&mut seen, txn);
        let mut fired: Vec<(String, f64)> = Vec::new();
        for (i, rule) in self.compiled.rules.iter().enumerate() {
            if rule.stage() != Stage::Data {
                continue;
            }
            if self.judge(rule, &mut seen, txn, &fired, &scanned, i) {
                fired.push((rule.name.clone(), rule.score));
            }
        }
        if !self.uribl.is_empty() {
            let mut domains: Vec<String> = seen
                .urls()
                .iter()
                .filter_map(urls::Url::registered_domain)
                .collect();
            domains.sort();
            domains.dedup();
            domains.truncate(20);
            // One query per list and domain, all at once.
            let mut names = Vec::new();
            let mut which = Vec::new();
            for d in &domains {
                for (i, l) in self.uribl.iter().enumerate() {
                    names.push(format!("{d}.{}", l.zone));
                    which.push(i);
                }
            }
            let answers = dns::a_many(&names);
            let mut best: HashMap<usize, f64> = HashMap::new();
            for (answer, i) in answers.into_iter().zip(which) {
                let list = &mut self.uribl[i];
                match answer.map(|codes| list.judge(&codes)) {
                    Ok(Listing::Yes(p)) => {
                        let e = best.entry(i).or_insert(f64::MIN);
                        *e = e.max(p);
                    }
                    Ok(Listing::Error(codes)) => list.report_error(&codes),
                    _ => {}
                }
            }
            let mut hits: Vec<(usize, f64)> = best.into_iter().collect();
            hits.sort_by_key(|(i, _)| *i);
            for (i, p) in hits {
                fired.push((self.uribl[i].rule.clone(), p));
            }
        }
        let ours_now: f64 = fired.iter().map(|(_, p)| p).sum();
        let ours_before: f64 = self.session_fired.iter().map(|(_, p)| p).sum();
        // The session's score already holds ours from connect/HELO and every other
        // plugin's (the auth plugin's SPF/DMARC points, …).
        let total = s.score + ours_now;
        let others = s.score - ours_before;
        let mut all = self.session_fired.clone();
        all.extend(fired.iter().cloned());
        let spam = total >= self.add_header_at;

        let mut out = DataOutcome::continue_();
        for (rule, points) in &fired {
            out = out.with_score(rule.clone(), *points);
        }
        // Nobody upstream decides what our headers say.
        for h in ["X-Spam-Flag", "X-Spam-Score", "X-Spam-Status"] {
            if !m.header(h).is_empty() {
                out = out.with_header_edit(HeaderEdit::remove(h));
            }
        }
        if self.headers == Headers::Always || (self.headers == Headers::Spam && spam) {
            out = out
                .with_header_edit(HeaderEdit::prepend("X-Spam-Score", format!("{total:.1}")))
                .with_header_edit(HeaderEdit::prepend(
                    "X-Spam-Status",
                    self.status_line(spam, total, &all, others),
                ));
            if spam {
                out = out.with_header_edit(HeaderEdit::prepend("X-Spam-Flag", "YES"));
            }
        }
        out = out.with_tag(if spam { "spam:yes" } else { "spam:no" });
        let mut top = all.clone();
        top.sort_by(|a, b| b.1.total_cmp(&a.1));
        let named: Vec<&str> = top.iter().take(3).map(|(n, _)| n.as_str()).collect();
        let reason = format!(
            "spam score {total:.1}: {}",
            if named.is_empty() {
                "no rule".into()
            } else {
                named.join(", ")
            }
        );
        out = out.with_reason(reason.clone());
        if let Some(r) = self.reject_at
            && total >= r
        {
            out.verdict = DataVerdict::reject(
                550,
                "5.7.1",
                format!(
                    "Message rejected as spam (score {total:.1}, {})",
                    named.join(", ")
                ),
            );
        } else if let Some(q) = self.quarantine_at
            && total >= q
        {
            out.verdict = DataVerdict::quarantine(reason);
        } else if total >= self.greylist_at
            && s.tags
                .iter()
                .any(|t| t == "greylist:new" || t == "greylist:early")
        {
            out.verdict = DataVerdict::tempfail(
                451,
                "4.7.1",
                "Suspicious message greylisted, please try again later",
            );
        }
        out
    }
}

export_plugin!(SpamScore);
