//! mailgate's routing rules and recipient validation: where each recipient goes, which
//! recipients of your domains exist, and aliases — decided at RCPT, so the gateway
//! refuses at once what the final server would refuse later (no backscatter), and
//! applied per recipient at delivery. See docs/routing.md for worked examples.
//!
//! Config (all optional):
//!
//! | key | what | default |
//! |---|---|---|
//! | `rules` | a list of rules, first match wins (below) | `[]` |
//! | `recipients.DOMAIN` | the recipients that exist in DOMAIN (local parts, or full addresses); any other recipient of DOMAIN is refused `550 5.1.1` at RCPT (or goes to its catch-all) | none |
//! | `aliases.ADDRESS` | deliver to this address or list of addresses instead (one-to-one, one-to-many) | none |
//! | `domain_aliases.DOMAIN` | DOMAIN is another name of this domain | none |
//! | `catch_all.DOMAIN` | unknown recipients of DOMAIN go to this address | none |
//! | `plus_separator` | `user+tag@` is looked up as `user@` (aliases, recipients); `""` turns it off | `+` |
//! | `archive` | an address that gets a copy of every message | none |
//!
//! A rule (one table of `rules`) has conditions — `recipient` (glob: `*`, `?`),
//! `recipient_regex`, `domain` (glob), `sender` (glob; `<>` for the null sender),
//! `client` (CIDR list), `listener`, `tag` (set by an earlier plugin), `min_score` — all
//! of which must hold, and an `action`:
//!
//! | action | what |
//! |---|---|
//! | `relay` | deliver to `host` (`port` 25, `tls` `opportunistic` / `required` / `disabled`) |
//! | `mx` | deliver by the domain's MX records |
//! | `local` | deliver to the local Maildir |
//! | `discard` | accept and drop the recipient (logged) |
//! | `quarantine` | accept the message into the quarantine |
//! | `reject` | refuse the recipient at RCPT: `reply`, default `550 5.1.1 Recipient address rejected` |
//! | `defer` | refuse it for now: `reply`, default `451 4.3.0 Try again later` |
//!
//! `verify = true` on a `relay` or `mx` rule asks that next hop, at RCPT, whether it
//! accepts the recipient (capability `verify`; results cached by the host): refused →
//! `550 5.1.1` with its reply, not reachable → `451 4.4.3`.
//!
//! Order at RCPT: plus-address stripped for lookups; domain alias; alias; the domain's
//! recipient list (unknown → catch-all or 550 5.1.1); the first matching rule for each
//! resulting address (reject, defer, discard, verification). At delivery: the first
//! matching rule's route for each recipient; none → the gateway's default route.

mod matching;

use std::rc::Rc;

use mailgate_plugin_sdk::prelude::*;
use mailgate_plugin_sdk::{PerConfig, RelayHost, TlsPolicy, routing, verify};
use matching::{Conditions, Facts};

/// What a rule does.
#[derive(Clone, Debug)]
enum Action {
    Relay {
        host: String,
        port: u16,
        tls: TlsPolicy,
    },
    Mx,
    Local,
    Discard,
    Quarantine,
    Reject(u16, String, String),
    Defer(u16, String, String),
}

#[derive(Clone, Debug)]
struct Rule {
    name: String,
    when: Conditions,
    action: Action,
    verify: bool,
}

/// `CODE X.Y.Z text` with the code's class checked.
fn reply(text: &str, class: u16, name: &str) -> Result<(u16, String, String), String> {
    let mut words = text.splitn(3, ' ');
    let code: u16 = words
        .next()
        .and_then(|c| c.parse().ok())
        .filter(|c| (class * 100..class * 100 + 100).contains(c))
        .ok_or(format!(
            "{name}.reply: {text:?} does not start with a {class}xx code"
        ))?;
    let enhanced = words
        .next()
        .filter(|e| e.starts_with(char::from(b'0' + class as u8)) && e.split('.').count() == 3)
        .ok_or(format!(
            "{name}.reply: {text:?} has no {class}.x.y enhanced code"
        ))?;
    Ok((
        code,
        enhanced.to_string(),
        words.next().unwrap_or("").to_string(),
    ))
}

fn parse_rule(c: &Config, name: String) -> Result<Rule, String> {
    let mut known: Vec<&str> = matching::KEYS.to_vec();
    known.extend(["name", "action", "host", "port", "tls", "reply", "verify"]);
    c.deny_unknown(&known)
        .map_err(|e| format!("{name}.{}: {}", e.key(), e.message()))?;
    let when = Conditions::parse(c, &name)?;
    let action = match c.get("action").unwrap_or_default() {
        "relay" => {
            let host = c
                .get("host")
                .filter(|h| !h.is_empty())
                .ok_or(format!("{name}.host: a relay rule needs a host"))?;
            // `host = "10.0.0.5:2525"` or `host` and `port`.
            let (host, port) = match host.rsplit_once(':') {
                Some((h, p)) if !h.contains(':') => (
                    h.to_string(),
                    p.parse()
                        .map_err(|_| format!("{name}.host: bad port in {host:?}"))?,
                ),
                _ => (
                    host.trim_matches(['[', ']']).to_string(),
                    c.parse::<u16>("port")
                        .map_err(|e| format!("{name}.port: {}", e.message()))?
                        .unwrap_or(25),
                ),
            };
            let tls = match c.str_or("tls", "opportunistic") {
                "opportunistic" => TlsPolicy::Opportunistic,
                "required" => TlsPolicy::Required,
                "disabled" | "none" => TlsPolicy::Disabled,
                other => {
                    return Err(format!(
                        "{name}.tls: {other:?} is not opportunistic, required or disabled"
                    ));
                }
            };
            Action::Relay { host, port, tls }
        }
        "mx" => Action::Mx,
        "local" => Action::Local,
        "discard" => Action::Discard,
        "quarantine" => Action::Quarantine,
        "reject" => {
            let (c3, e, t) = reply(
                c.str_or("reply", "550 5.1.1 Recipient address rejected"),
                5,
                &name,
            )?;
            Action::Reject(c3, e, t)
        }
        "defer" => {
            let (c3, e, t) = reply(c.str_or("reply", "451 4.3.0 Try again later"), 4, &name)?;
            Action::Defer(c3, e, t)
        }
        "" => return Err(format!("{name}.action: a rule needs an action")),
        other => {
            return Err(format!(
                "{name}.action: {other:?} is not relay, mx, local, discard, quarantine, reject or defer"
            ));
        }
    };
    let verify = c
        .bool_or("verify", false)
        .map_err(|e| format!("{name}.verify: {}", e.message()))?;
    if verify && !matches!(action, Action::Relay { .. } | Action::Mx) {
        return Err(format!(
            "{name}.verify: only relay and mx rules have a next hop to ask"
        ));
    }
    Ok(Rule {
        name: c.get("name").map_or(name, str::to_string),
        when,
        action,
        verify,
    })
}

/// What a config says, parsed.
struct Tables {
    rules: Vec<Rule>,
    recipients: Vec<(String, Vec<String>)>,
    aliases: Vec<(String, Vec<Address>)>,
    domain_aliases: Vec<(String, String)>,
    catch_all: Vec<(String, Address)>,
    plus: String,
    archive: Option<Address>,
}

fn address(text: &str, key: &str) -> Result<Address, String> {
    Address::parse(text.trim()).ok_or(format!("{key}: {text:?} is not an address"))
}

thread_local! {
    /// The tables the last `init` parsed, with the config they came from. The gateway
    /// runs `init` at the start of every session (and delivery) an instance serves; with
    /// the same config (always, until a reload brings new instances) nothing is parsed
    /// again.
    static TABLES: PerConfig<Tables> = const { PerConfig::new() };
}

/// The plugin: the tables of its config, shared with the other sessions' `init`.
struct Routing(Rc<Tables>);

impl std::ops::Deref for Routing {
    type Target = Tables;
    fn deref(&self) -> &Tables {
        &self.0
    }
}

impl Tables {
    /// The lookup form of `a`: lowercase, the plus tag stripped.
    fn key(&self, a: &Address) -> String {
        let local = a.local_part.to_lowercase();
        let local = match (!self.plus.is_empty()).then(|| local.split_once(self.plus.as_str())) {
            Some(Some((base, _))) if !base.is_empty() => base.to_string(),
            _ => local,
        };
        format!("{local}@{}", a.domain.to_lowercase())
    }

    /// Where `a` goes: domain alias, then alias (possibly several addresses).
    fn expand(&self, a: &Address) -> Vec<Address> {
        let mut a = a.clone();
        if let Some((_, to)) = self.domain_aliases.iter().find(|(d, _)| a.is_in_domain(d)) {
            a = Address::new(a.local_part.clone(), to);
        }
        let key = self.key(&a);
        match self.aliases.iter().find(|(k, _)| *k == key) {
            Some((_, targets)) => targets.clone(),
            None => vec![a],
        }
    }

    /// `a` exists, by its domain's recipient list (`None`: the domain has no list).
    fn known(&self, a: &Address) -> Option<bool> {
        let (_, list) = self.recipients.iter().find(|(d, _)| a.is_in_domain(d))?;
        let key = self.key(a);
        let local = key.split('@').next().unwrap_or_default();
        Some(list.iter().any(|r| r == local || *r == key))
    }

    fn rule(&self, f: &Facts<'_>) -> Option<&Rule> {
        self.rules.iter().find(|r| r.when.matches(f))
    }
}

fn facts<'a>(s: &'a SessionInfo, sender: &'a str, rcpt: &'a str, domain: &'a str) -> Facts<'a> {
    Facts {
        recipient: rcpt,
        domain,
        sender,
        client: s.client_ip(),
        listener: &s.client.listener,
        tags: &s.tags,
        score: s.score,
    }
}

fn sender_text(txn: &Transaction) -> String {
    txn.sender
        .as_ref()
        .map(Address::to_string)
        .unwrap_or_default()
}

impl Tables {
    fn parse(config: &Config) -> Result<Tables, String> {
        config.deny_unknown(&[
            "rules",
            "recipients",
            "aliases",
            "domain_aliases",
            "catch_all",
            "plus_separator",
            "archive",
        ])?;
        let rules = config
            .tables("rules")?
            .unwrap_or_default()
            .iter()
            .enumerate()
            .map(|(i, c)| parse_rule(c, format!("rules[{i}]")))
            .collect::<Result<Vec<_>, _>>()?;
        let recipients = config
            .section("recipients")
            .iter()
            .map(|(d, _)| {
                let list = config.section("recipients").list(d)?.unwrap_or_default();
                Ok((
                    d.trim_end_matches('.').to_lowercase(),
                    list.into_iter().map(|r| r.trim().to_lowercase()).collect(),
                ))
            })
            .collect::<Result<Vec<_>, ConfigError>>()?;
        let aliases = config
            .section("aliases")
            .iter()
            .map(|(from, _)| {
                let key = format!("aliases.{from}");
                let from_addr = address(from, &key)?;
                let targets = config
                    .section("aliases")
                    .list(from)
                    .map_err(|e| e.to_string())?
                    .unwrap_or_default()
                    .iter()
                    .map(|t| address(t, &key))
                    .collect::<Result<Vec<_>, _>>()?;
                if targets.is_empty() {
                    return Err(format!("{key}: an alias needs at least one address"));
                }
                Ok((from_addr, targets))
            })
            .collect::<Result<Vec<_>, String>>()?;
        let domain_aliases: Vec<(String, String)> = config
            .section("domain_aliases")
            .iter()
            .map(|(d, to)| (d.to_lowercase(), to.trim_end_matches('.').to_lowercase()))
            .collect();
        let catch_all = config
            .section("catch_all")
            .iter()
            .map(|(d, to)| Ok((d.to_lowercase(), address(to, &format!("catch_all.{d}"))?)))
            .collect::<Result<Vec<_>, String>>()?;
        let mut me = Tables {
            rules,
            recipients,
            aliases: Vec::new(),
            domain_aliases,
            catch_all,
            plus: config.string_or("plus_separator", "+"),
            archive: config
                .get("archive")
                .map(|a| address(a, "archive"))
                .transpose()?,
        };
        me.aliases = aliases
            .into_iter()
            .map(|(from, to)| (me.key(&from), to))
            .collect();
        Ok(me)
    }
}

#[plugin]
impl Plugin for Routing {
    fn init(config: &Config) -> Result<Self, String> {
        TABLES
            .with(|cache| cache.get_or_make(config, Tables::parse))
            .map(Routing)
    }

    fn on_rcpt_to(&mut self, s: &SessionInfo, txn: &Transaction, rcpt: &Recipient) -> RcptOutcome {
        let original = &rcpt.address;
        let mut targets = Vec::new();
        for a in self.expand(original) {
            match self.known(&a) {
                Some(false) => match self.catch_all.iter().find(|(d, _)| a.is_in_domain(d)) {
                    Some((_, to)) => targets.push(to.clone()),
                    None => {
                        return RcptOutcome::reject(
                            550,
                            "5.1.1",
                            format!("<{original}>: Recipient address rejected: User unknown"),
                        )
                        .with_reason(format!("{a} is not in recipients.{}", a.domain));
                    }
                },
                _ => targets.push(a),
            }
        }
        let sender = sender_text(txn);
        let mut out = RcptOutcome::continue_();
        for a in &targets {
            let text = a.to_string();
            let Some(rule) = self.rule(&facts(s, &sender, &text, &a.domain)) else {
                continue;
            };
            match &rule.action {
                Action::Reject(code, enhanced, msg) => {
                    return RcptOutcome::reject(*code, enhanced, msg)
                        .with_reason(format!("{text}: rule {}", rule.name));
                }
                Action::Defer(code, enhanced, msg) => {
                    return RcptOutcome::tempfail(*code, enhanced, msg)
                        .with_reason(format!("{text}: rule {}", rule.name));
                }
                Action::Discard => {
                    out = out
                        .remove_recipient(a.clone())
                        .with_reason(format!("{text} discarded: rule {}", rule.name));
                }
                Action::Relay { host, port, tls } => {
                    if rule.verify {
                        let via = RelayHost {
                            host: host.clone(),
                            port: *port,
                            tls: *tls,
                        };
                        if let Some(refusal) =
                            verified(verify::recipient_via(a, &via), original, &rule.name)
                        {
                            return refusal;
                        }
                    }
                    // Proxy mode relays each transaction to the route set here.
                    routing::set_route(a, &Route::relay(host.as_str(), *port, *tls));
                }
                Action::Mx => {
                    if rule.verify
                        && let Some(refusal) = verified(verify::recipient(a), original, &rule.name)
                    {
                        return refusal;
                    }
                    routing::set_route(a, &Route::Mx);
                }
                Action::Local => routing::set_route(a, &Route::Local),
                Action::Quarantine => {}
            }
        }
        // The client's recipient becomes the targets (one-to-one or one-to-many).
        if targets.len() != 1 || targets[0] != *original {
            let mut rest = targets.into_iter();
            if let Some(first) = rest.next() {
                out = out.rewrite_recipient(original.clone(), first);
            }
            for more in rest {
                out = out.add_recipient(more);
            }
            out = out.with_tag("routing:rewritten");
        }
        out
    }

    fn on_data(&mut self, s: &SessionInfo, txn: &Transaction, _: &Message) -> DataOutcome {
        let mut out = DataOutcome::continue_();
        if let Some(a) = &self.archive
            && !txn.recipients.iter().any(|r| r.address == *a)
        {
            out = out.add_recipient(a.clone());
        }
        let sender = sender_text(txn);
        for r in &txn.recipients {
            let text = r.address.to_string();
            if let Some(rule) = self.rule(&facts(s, &sender, &text, &r.address.domain))
                && matches!(rule.action, Action::Quarantine)
            {
                out.verdict = DataVerdict::quarantine(format!("{text}: rule {}", rule.name));
                break;
            }
        }
        out
    }

    fn on_deliver(&mut self, d: &DeliveryInfo, txn: &Transaction, _: &Message) -> DeliverOutcome {
        let sender = sender_text(txn);
        let mut out = DeliverOutcome::none();
        let mut why = Vec::new();
        for r in &txn.recipients {
            let text = r.address.to_string();
            let Some(rule) = self.rule(&facts(&d.session, &sender, &text, &r.address.domain))
            else {
                continue;
            };
            let route = match &rule.action {
                Action::Relay { host, port, tls } => Route::relay(host.as_str(), *port, *tls),
                Action::Mx => Route::Mx,
                Action::Local => Route::Local,
                Action::Discard => Route::Discard,
                Action::Reject(code, enhanced, msg) => Route::bounce(*code, enhanced, msg),
                Action::Defer(code, enhanced, msg) => Route::defer(*code, enhanced, msg),
                // The message was quarantined at DATA; nothing to route.
                Action::Quarantine => continue,
            };
            why.push(format!("{text}: {}", rule.name));
            out = out.route(r.address.clone(), route);
        }
        if !why.is_empty() {
            out = out.with_reason(why.join(", "));
        }
        out
    }
}

/// The RCPT refusal a verification calls for, if any.
fn verified(
    answer: Result<verify::Verification, verify::VerifyError>,
    original: &Address,
    rule: &str,
) -> Option<RcptOutcome> {
    match answer {
        Ok(v) if v.accepted => None,
        Ok(v) => Some(
            RcptOutcome::reject(
                550,
                "5.1.1",
                format!("<{original}>: Recipient address rejected: undeliverable address: {}", v.reply),
            )
            .with_reason(format!("rule {rule}: the next hop refused it{}", if v.cached { " (cached)" } else { "" })),
        ),
        Err(verify::VerifyError::Unavailable(why)) => Some(
            RcptOutcome::tempfail(
                451,
                "4.4.3",
                format!("<{original}>: Recipient address rejected: unverified address: next hop unavailable"),
            )
            .with_reason(format!("rule {rule}: verification failed: {why}")),
        ),
        Err(verify::VerifyError::Denied) => {
            mailgate_plugin_sdk::log::warn("verify = true needs the verify capability: not verified");
            None
        }
    }
}

export_plugin!(Routing);

#[cfg(test)]
mod tests {
    use super::*;

    fn config(plus: &str) -> Config {
        Config::new(vec![("plus_separator".into(), plus.into())])
    }

    /// `init` shares the tables it parsed with later `init`s of the same config, and
    /// parses a different config anew.
    #[test]
    fn init_parses_a_config_once() {
        let a = Routing::init(&config("-")).unwrap();
        let again = Routing::init(&config("-")).unwrap();
        assert!(Rc::ptr_eq(&a.0, &again.0));
        let b = Routing::init(&config("=")).unwrap();
        assert!(!Rc::ptr_eq(&a.0, &b.0));
        assert_eq!((a.plus.as_str(), b.plus.as_str()), ("-", "="));
        assert!(Routing::init(&Config::new(vec![("nope".into(), "1".into())])).is_err());
    }
}
