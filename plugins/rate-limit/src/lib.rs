//! Rate limits for mailgate, in the spirit of Postfix's anvil
//! (`smtpd_client_connection_rate_limit`, `smtpd_client_message_rate_limit`,
//! `smtpd_client_recipient_rate_limit`) and rspamd's ratelimit module: connections,
//! messages and recipients per client network, per envelope sender domain or per
//! authenticated user, each over a sliding window, counted in the `kv` capability so the
//! limits hold across all sessions. Needs the `kv` and `clock` capabilities (`log` to hear
//! about trouble). See docs/rate-limit.md for every option and an example.
//!
//! Config:
//!
//! | key | values | default |
//! |---|---|---|
//! | `limits` | a list of limits (below); at least one | required |
//! | `ipv4_prefix` | the network an IPv4 client is counted as, for `per = "client"` (0–32) | `32` |
//! | `ipv6_prefix` | the same for IPv6 clients (0–128) | `64` |
//! | `allow_networks` | clients (CIDR) never limited or counted | `[]` |
//! | `allow_sender_domains` | envelope sender domains (and their subdomains) whose messages and recipients are never limited or counted | `[]` |
//! | `exempt_trusted` | clients in the gateway's `relay.trusted_networks` are never limited or counted (as Postfix's `smtpd_client_event_limit_exceptions = $mynetworks`) | `true` |
//!
//! Each limit is a table:
//!
//! | key | values | default |
//! |---|---|---|
//! | `what` | `connections` (counted at connect), `messages` (counted at MAIL FROM), `recipients` (counted at RCPT TO) | required |
//! | `per` | `client` (address or network), `sender_domain` (envelope sender; messages and recipients only), `user` (SMTP AUTH identity; messages and recipients only) | required |
//! | `max` | how many are allowed per window (1–1 000 000 000) | required |
//! | `window_secs` | the window (1–31 536 000) | required |
//! | `ipv4_prefix`, `ipv6_prefix` | override the global prefixes for this limit (`per = "client"` only) | the global ones |
//!
//! ```toml
//! [[plugin]]
//! name = "rate-limit"
//! path = "target/wasm/wasm32-wasip2/release/mailgate_rate_limit.wasm"
//! capabilities = ["kv", "clock", "log"]
//! [plugin.config]
//! limits = [
//!   { what = "connections", per = "client", max = 30, window_secs = 60 },
//!   { what = "messages", per = "sender_domain", max = 100, window_secs = 3600 },
//!   { what = "recipients", per = "client", max = 200, window_secs = 60 },
//! ]
//! ```
//!
//! Replies: over a connection limit `421 4.7.0` at connect (and the connection closes);
//! over a message limit `451 4.7.1` at MAIL FROM; over a recipient limit `451 4.7.1` at
//! RCPT TO. Each names the limit: `Too many recipients from 192.0.2.0/24: 200 per 60 s,
//! try again later`. A refusal carries the tag `ratelimit:<what>` and a reason with the
//! estimate for the decision trace.
//!
//! Counting: only what this plugin lets through is counted (a refused attempt gives its
//! count back), so `max` is exactly how many pass per window, also under concurrency.
//! Plugins earlier in the chain that refuse first keep an event from being counted; later
//! plugins that refuse do not undo the count.
//!
//! The window slides: each limit keeps one kv counter per fixed window (`floor(now /
//! window)`), incremented atomically, and an event passes while
//! `previous × (1 − elapsed/window) + current ≤ max` (the previous window's count
//! weighted by how much of it still overlaps the sliding window). Without `kv` or `clock`
//! (denied, unavailable, quota full) the plugin fails open: it lets everything through
//! and logs a warning once per session.

use std::net::IpAddr;

use mailgate_plugin_sdk::log::{self, Level};
use mailgate_plugin_sdk::net::{Net, within};
use mailgate_plugin_sdk::prelude::*;
use mailgate_plugin_sdk::{clock, kv};

/// The keys a `limits` entry may have.
const LIMIT_KEYS: &[&str] = &[
    "what",
    "per",
    "max",
    "window_secs",
    "ipv4_prefix",
    "ipv6_prefix",
];

/// Longest window: a year.
const MAX_WINDOW: u64 = 31_536_000;
/// Largest `max`.
const MAX_MAX: u64 = 1_000_000_000;
/// Longest subject kept verbatim in a kv key (longer ones are hashed), so a key stays
/// within the host's 256 octets.
const MAX_SUBJECT: usize = 200;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum What {
    Connections,
    Messages,
    Recipients,
}

impl What {
    fn name(self) -> &'static str {
        match self {
            What::Connections => "connections",
            What::Messages => "messages",
            What::Recipients => "recipients",
        }
    }

    /// Its letter in kv keys.
    fn code(self) -> &'static str {
        match self {
            What::Connections => "c",
            What::Messages => "m",
            What::Recipients => "r",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Per {
    Client,
    SenderDomain,
    User,
}

impl Per {
    fn name(self) -> &'static str {
        match self {
            Per::Client => "client",
            Per::SenderDomain => "sender_domain",
            Per::User => "user",
        }
    }

    fn code(self) -> &'static str {
        match self {
            Per::Client => "ip",
            Per::SenderDomain => "sd",
            Per::User => "u",
        }
    }
}

/// One configured limit.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Limit {
    what: What,
    per: Per,
    max: u64,
    window_secs: u64,
    ipv4_prefix: u8,
    ipv6_prefix: u8,
}

impl Limit {
    /// How long a window's counter must live: through the next window, where it is the
    /// "previous" one (plus a second for rounding).
    fn ttl(&self) -> u32 {
        u32::try_from(self.window_secs * 2 + 1).unwrap_or(u32::MAX)
    }
}

/// The client's network for counting: `192.0.2.1` (a whole address) or `192.0.2.0/24`.
fn client_network(ip: IpAddr, v4: u8, v6: u8) -> String {
    Net::of_client(ip, v4, v6).to_string()
}

/// FNV-1a, 64 bits.
fn fnv(bytes: &[u8], basis: u64) -> u64 {
    bytes.iter().fold(basis, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// The kv key of `limit`'s counter for `subject` in window `index`. A subject too long
/// for a key, or with characters a key may not hold, is replaced by a hash of it.
fn counter_key(limit: &Limit, subject: &str, index: u64) -> String {
    let subject = if subject.len() > MAX_SUBJECT || subject.chars().any(char::is_control) {
        let b = subject.as_bytes();
        format!(
            "#{:016x}{:016x}",
            fnv(b, 0xcbf2_9ce4_8422_2325),
            fnv(b, 0x6c62_272e_07bb_0142)
        )
    } else {
        subject.to_string()
    };
    let prefixes = match limit.per {
        Per::Client => format!("/{}/{}", limit.ipv4_prefix, limit.ipv6_prefix),
        _ => String::new(),
    };
    format!(
        "{}:{}{prefixes}:{}:{subject}:{index}",
        limit.what.code(),
        limit.per.code(),
        limit.window_secs
    )
}

/// The count the sliding window holds: `current` plus `previous` weighted by the share of
/// the previous window still inside it (`phase_ms` into the current one).
fn estimate(previous: i64, current: i64, phase_ms: u64, window_ms: u64) -> f64 {
    let weight = (window_ms - phase_ms.min(window_ms)) as f64 / window_ms as f64;
    previous.max(0) as f64 * weight + current.max(0) as f64
}

/// `estimate(..) > max`, in exact integer arithmetic.
fn over(previous: i64, current: i64, phase_ms: u64, window_ms: u64, max: u64) -> bool {
    let p = u128::try_from(previous.max(0)).unwrap_or(0);
    let c = u128::try_from(current.max(0)).unwrap_or(0);
    let (w, ph) = (u128::from(window_ms), u128::from(phase_ms.min(window_ms)));
    p * (w - ph) + c * w > u128::from(max) * w
}

// ------------------------------------------------------------------ config

/// An integer in `lo..=hi` from a table value (a number, or a string holding one).
fn integer(text: &str, lo: u64, hi: u64) -> Result<u64, String> {
    let text = text.trim();
    let n: u64 = text
        .parse()
        .map_err(|_| format!("expected an integer, got {text:?}"))?;
    if (lo..=hi).contains(&n) {
        Ok(n)
    } else {
        Err(format!("{n} is not within {lo}..={hi}"))
    }
}

/// One `limits` entry.
fn parse_limit(entry: &Config, v4: u8, v6: u8) -> Result<Limit, String> {
    let get = |k: &str| entry.get(k);
    if let Err(e) = entry.deny_unknown(LIMIT_KEYS) {
        return Err(format!(
            "unknown key `{}` (expected one of: {})",
            e.key(),
            LIMIT_KEYS.join(", ")
        ));
    }
    let need = |k: &str| get(k).ok_or(format!("`{k}` is required"));
    let what = match need("what")? {
        "connections" => What::Connections,
        "messages" => What::Messages,
        "recipients" => What::Recipients,
        other => {
            return Err(format!(
                "what: {other:?} is not connections, messages or recipients"
            ));
        }
    };
    let per = match need("per")? {
        "client" => Per::Client,
        "sender_domain" => Per::SenderDomain,
        "user" => Per::User,
        other => {
            return Err(format!(
                "per: {other:?} is not client, sender_domain or user"
            ));
        }
    };
    if what == What::Connections && per != Per::Client {
        return Err(format!(
            "connections can only be limited per client (at connect there is no {})",
            if per == Per::User {
                "authenticated user"
            } else {
                "sender"
            }
        ));
    }
    let max = integer(need("max")?, 1, MAX_MAX).map_err(|e| format!("max: {e}"))?;
    let window_secs =
        integer(need("window_secs")?, 1, MAX_WINDOW).map_err(|e| format!("window_secs: {e}"))?;
    let prefix = |k: &str, default: u8, top: u64| -> Result<u8, String> {
        match get(k) {
            None => Ok(default),
            Some(_) if per != Per::Client => Err(format!("{k}: only for per = \"client\"")),
            Some(v) => Ok(integer(v, 0, top).map_err(|e| format!("{k}: {e}"))? as u8),
        }
    };
    Ok(Limit {
        what,
        per,
        max,
        window_secs,
        ipv4_prefix: prefix("ipv4_prefix", v4, 32)?,
        ipv6_prefix: prefix("ipv6_prefix", v6, 128)?,
    })
}

/// The `limits` key.
fn parse_limits(config: &Config, v4: u8, v6: u8) -> Result<Vec<Limit>, String> {
    if config.get("limits").is_none() {
        return Err(if config.section("limits").is_empty() {
            "config key `limits`: is required (e.g. limits = [{ what = \"messages\", per = \"client\", max = 100, window_secs = 3600 }])".into()
        } else {
            "config key `limits`: must be a list of tables, limits = [{ what = …, per = …, max = …, window_secs = … }]".into()
        });
    }
    let tables = config
        .tables("limits")
        .map_err(|e| {
            format!(
                "config key `limits`: expected a list of tables ({})",
                e.message()
            )
        })?
        .unwrap_or_default();
    if tables.is_empty() {
        return Err("config key `limits`: at least one limit is needed".into());
    }
    let mut limits: Vec<Limit> = Vec::new();
    for (i, t) in tables.iter().enumerate() {
        let l = parse_limit(t, v4, v6).map_err(|e| format!("config key `limits[{i}]`: {e}"))?;
        if let Some(j) = limits.iter().position(|o| {
            *o == Limit {
                max: o.max,
                ..l.clone()
            }
        }) {
            return Err(format!(
                "config key `limits[{i}]`: counts the same as limits[{j}] (same what, per, window and prefixes); keep one"
            ));
        }
        limits.push(l);
    }
    Ok(limits)
}

// ------------------------------------------------------------------ the plugin

/// A limit an event went over.
struct Refusal {
    limit: Limit,
    /// Who, as the reply names it: `192.0.2.0/24`, `sender domain example.com`, `user x`.
    who: String,
    estimate: f64,
}

impl Refusal {
    fn text(&self) -> String {
        format!(
            "Too many {} from {}: {} per {} s, try again later",
            self.limit.what.name(),
            self.who,
            self.limit.max,
            self.limit.window_secs
        )
    }

    fn reason(&self) -> String {
        format!(
            "{} per {} {}: {:.2} in the sliding {} s window, limit {}",
            self.limit.what.name(),
            self.limit.per.name(),
            self.who,
            self.estimate,
            self.limit.window_secs,
            self.limit.max
        )
    }

    fn tag(&self) -> String {
        format!("ratelimit:{}", self.limit.what.name())
    }
}

struct RateLimit {
    limits: Vec<Limit>,
    allow_networks: Vec<Net>,
    allow_sender_domains: Vec<String>,
    exempt_trusted: bool,
    /// A fail-open warning was logged in this session.
    warned: bool,
}

/// Logs, once per session, that limits are not enforced because of `what`.
fn fail_open(warned: &mut bool, what: &str, error: &str) {
    if !std::mem::replace(warned, true) {
        log::log(
            Level::Warn,
            format!("rate limits not enforced in this session (failing open): {what} failed"),
            &[("error", error)],
        );
    }
}

fn kv_error(e: &kv::KvError) -> String {
    match e {
        kv::KvError::Denied => "denied (grant the kv capability)".into(),
        kv::KvError::InvalidKey => "invalid key".into(),
        kv::KvError::ValueTooLarge => "value too large".into(),
        kv::KvError::QuotaExceeded => "quota exceeded (raise limits.kv_entries)".into(),
        kv::KvError::NotACounter => "not a counter".into(),
        kv::KvError::Unavailable(why) => format!("unavailable: {why}"),
    }
}

impl RateLimit {
    /// The event is exempt before any counting: allowlisted client or trusted network.
    fn exempt_client(&self, s: &SessionInfo) -> bool {
        (self.exempt_trusted && s.client.trusted)
            || self
                .allow_networks
                .iter()
                .any(|n| n.contains(s.client_ip()))
    }

    fn allowed_sender(&self, domain: Option<&str>) -> bool {
        domain.is_some_and(|d| self.allow_sender_domains.iter().any(|a| within(d, a)))
    }

    /// Counts one `what` event against every limit on it; the first limit it goes over,
    /// with the counts of this event given back.
    fn count(
        &mut self,
        what: What,
        s: &SessionInfo,
        sender_domain: Option<&str>,
    ) -> Option<Refusal> {
        if !self.limits.iter().any(|l| l.what == what) || self.exempt_client(s) {
            return None;
        }
        let RateLimit { limits, warned, .. } = self;
        let now_ms = match clock::now_ms() {
            Ok(t) => t,
            Err(e) => {
                fail_open(warned, "clock", &format!("{e:?}"));
                return None;
            }
        };
        let mut taken: Vec<(String, u32)> = Vec::new();
        let mut refusal = None;
        for limit in limits.iter().filter(|l| l.what == what) {
            let (subject, who) = match limit.per {
                Per::Client => {
                    let n = client_network(s.client_ip(), limit.ipv4_prefix, limit.ipv6_prefix);
                    (n.clone(), n)
                }
                Per::SenderDomain => match sender_domain {
                    Some(d) => (d.to_string(), format!("sender domain {d}")),
                    None => continue,
                },
                Per::User => match s.authenticated.as_deref() {
                    Some(u) if !u.is_empty() => {
                        let shown: String = u.chars().take(64).collect();
                        (u.to_string(), format!("user {shown}"))
                    }
                    _ => continue,
                },
            };
            let window_ms = limit.window_secs * 1000;
            let (index, phase) = (now_ms / window_ms, now_ms % window_ms);
            let key = counter_key(limit, &subject, index);
            let current = match kv::increment(&key, 1, Some(limit.ttl())) {
                Ok(v) => v,
                Err(e) => {
                    fail_open(warned, "kv", &kv_error(&e));
                    continue;
                }
            };
            taken.push((key, limit.ttl()));
            // Over on its own: no need to read the previous window.
            let previous = if current > limit.max as i64 {
                0
            } else {
                match kv::get(&counter_key(limit, &subject, index.saturating_sub(1))) {
                    Ok(v) => v
                        .and_then(|v| String::from_utf8_lossy(&v).parse::<i64>().ok())
                        .unwrap_or(0),
                    Err(e) => {
                        fail_open(warned, "kv", &kv_error(&e));
                        0
                    }
                }
            };
            if over(previous, current, phase, window_ms, limit.max) {
                refusal = Some(Refusal {
                    limit: limit.clone(),
                    who,
                    estimate: estimate(previous, current, phase, window_ms),
                });
                break;
            }
        }
        if refusal.is_some() {
            // Only what passes is counted.
            for (key, ttl) in &taken {
                let _ = kv::increment(key, -1, Some(*ttl));
            }
        }
        refusal
    }
}

/// The envelope sender's domain, lowercase, if there is one (not for `<>`).
fn sender_domain(sender: Option<&Address>) -> Option<String> {
    sender
        .map(|a| a.domain.trim_end_matches('.').to_ascii_lowercase())
        .filter(|d| !d.is_empty())
}

#[plugin]
impl Plugin for RateLimit {
    fn init(config: &Config) -> Result<Self, String> {
        config.deny_unknown(&[
            "limits",
            "ipv4_prefix",
            "ipv6_prefix",
            "allow_networks",
            "allow_sender_domains",
            "exempt_trusted",
        ])?;
        let v4: u8 = config.parse_or("ipv4_prefix", 32)?;
        if v4 > 32 {
            return Err("config key `ipv4_prefix`: must be within 0..=32".into());
        }
        let v6: u8 = config.parse_or("ipv6_prefix", 64)?;
        if v6 > 128 {
            return Err("config key `ipv6_prefix`: must be within 0..=128".into());
        }
        let allow_networks = config
            .list("allow_networks")?
            .unwrap_or_default()
            .iter()
            .map(|n| {
                Net::parse(n).ok_or(format!(
                    "config key `allow_networks`: {n:?} is not a network"
                ))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let allow_sender_domains = config
            .list("allow_sender_domains")?
            .unwrap_or_default()
            .iter()
            .map(|d| d.trim().trim_end_matches('.').to_ascii_lowercase())
            .collect::<Vec<_>>();
        if allow_sender_domains.iter().any(String::is_empty) {
            return Err("config key `allow_sender_domains`: an empty domain".into());
        }
        Ok(RateLimit {
            limits: parse_limits(config, v4, v6)?,
            allow_networks,
            allow_sender_domains,
            exempt_trusted: config.bool_or("exempt_trusted", true)?,
            warned: false,
        })
    }

    fn on_connect(&mut self, s: &SessionInfo) -> Outcome {
        match self.count(What::Connections, s, None) {
            Some(r) => Outcome::disconnect(421, "4.7.0", r.text())
                .with_tag(r.tag())
                .with_reason(r.reason()),
            None => Outcome::continue_(),
        }
    }

    fn on_mail_from(
        &mut self,
        s: &SessionInfo,
        sender: Option<&Address>,
        _: &MailParams,
    ) -> Outcome {
        let domain = sender_domain(sender);
        if self.allowed_sender(domain.as_deref()) {
            return Outcome::continue_();
        }
        match self.count(What::Messages, s, domain.as_deref()) {
            Some(r) => Outcome::tempfail(451, "4.7.1", r.text())
                .with_tag(r.tag())
                .with_reason(r.reason()),
            None => Outcome::continue_(),
        }
    }

    fn on_rcpt_to(&mut self, s: &SessionInfo, txn: &Transaction, _: &Recipient) -> RcptOutcome {
        let domain = sender_domain(txn.sender.as_ref());
        if self.allowed_sender(domain.as_deref()) {
            return RcptOutcome::continue_();
        }
        match self.count(What::Recipients, s, domain.as_deref()) {
            Some(r) => RcptOutcome::tempfail(451, "4.7.1", r.text())
                .with_tag(r.tag())
                .with_reason(r.reason()),
            None => RcptOutcome::continue_(),
        }
    }
}

export_plugin!(RateLimit);

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(pairs: &[(&str, &str)]) -> Result<RateLimit, String> {
        RateLimit::init(&Config::from_pairs(pairs.iter().copied()))
    }

    const ONE: &str = r#"[{"max":30,"per":"client","what":"connections","window_secs":60}]"#;

    #[test]
    fn limits_parse_from_the_json_the_host_passes() {
        let r = cfg(&[(
            "limits",
            r#"[{"max":30,"per":"client","what":"connections","window_secs":60},
                {"max":"100","per":"sender_domain","what":"messages","window_secs":3600},
                {"ipv4_prefix":24,"max":200,"per":"client","what":"recipients","window_secs":60}]"#,
        )])
        .unwrap();
        assert_eq!(r.limits.len(), 3);
        assert_eq!(r.limits[0].what, What::Connections);
        assert_eq!((r.limits[0].ipv4_prefix, r.limits[0].ipv6_prefix), (32, 64));
        assert_eq!(r.limits[1].per, Per::SenderDomain);
        assert_eq!(r.limits[1].max, 100);
        assert_eq!(r.limits[2].ipv4_prefix, 24);
        assert!(r.exempt_trusted);
        let r = cfg(&[
            ("limits", ONE),
            ("ipv6_prefix", "48"),
            ("ipv4_prefix", "28"),
        ])
        .unwrap();
        assert_eq!((r.limits[0].ipv4_prefix, r.limits[0].ipv6_prefix), (28, 48));
    }

    #[test]
    fn bad_configs_are_refused_with_the_key() {
        let bad = |pairs: &[(&str, &str)], needle: &str| {
            let e = cfg(pairs)
                .err()
                .unwrap_or_else(|| panic!("{pairs:?} accepted"));
            assert!(e.contains(needle), "{pairs:?}: {e}");
        };
        bad(&[], "`limits`: is required");
        bad(&[("limits", "[]")], "at least one");
        bad(&[("limits.what", "messages")], "list of tables");
        bad(&[("limits", ONE), ("limit", "1")], "`limit`: unknown key");
        bad(
            &[(
                "limits",
                r#"[{"what":"messages","per":"client","max":1,"window_secs":60,"windw":1}]"#,
            )],
            "limits[0]`: unknown key `windw`",
        );
        bad(
            &[(
                "limits",
                r#"[{"what":"connections","per":"sender_domain","max":1,"window_secs":60}]"#,
            )],
            "only be limited per client",
        );
        bad(
            &[(
                "limits",
                r#"[{"what":"messages","per":"client","max":0,"window_secs":60}]"#,
            )],
            "max: 0 is not within",
        );
        bad(
            &[(
                "limits",
                r#"[{"what":"messages","per":"client","max":1,"window_secs":0}]"#,
            )],
            "window_secs",
        );
        bad(
            &[("limits", r#"[{"what":"messages","per":"client","max":1}]"#)],
            "`window_secs` is required",
        );
        bad(
            &[(
                "limits",
                r#"[{"what":"mails","per":"client","max":1,"window_secs":1}]"#,
            )],
            "\"mails\" is not",
        );
        bad(
            &[(
                "limits",
                r#"[{"what":"messages","per":"user","max":1,"window_secs":1,"ipv4_prefix":24}]"#,
            )],
            "only for per = \"client\"",
        );
        bad(
            &[(
                "limits",
                r#"[{"what":"messages","per":"client","max":1,"window_secs":1,"ipv4_prefix":33}]"#,
            )],
            "ipv4_prefix: 33",
        );
        bad(
            &[(
                "limits",
                r#"[{"what":"messages","per":"client","max":1,"window_secs":60},{"what":"messages","per":"client","max":5,"window_secs":60}]"#,
            )],
            "same as limits[0]",
        );
        bad(&[("limits", r#"[[1]]"#)], "expected a table");
        bad(
            &[("limits", r#"[{"what":["x"]}]"#)],
            "is not connections, messages or recipients",
        );
        bad(
            &[("limits", ONE), ("allow_networks", "[\"10.0.0.0/33\"]")],
            "allow_networks",
        );
        bad(&[("limits", ONE), ("ipv4_prefix", "40")], "ipv4_prefix");
        bad(
            &[("limits", ONE), ("exempt_trusted", "maybe")],
            "exempt_trusted",
        );
        // Same what and per, another window: two limits, both kept.
        cfg(&[(
            "limits",
            r#"[{"what":"messages","per":"client","max":10,"window_secs":60},{"what":"messages","per":"client","max":100,"window_secs":3600}]"#,
        )])
        .unwrap();
    }

    #[test]
    fn client_networks() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(client_network(ip("192.0.2.77"), 32, 64), "192.0.2.77");
        assert_eq!(client_network(ip("192.0.2.77"), 24, 64), "192.0.2.0/24");
        assert_eq!(client_network(ip("192.0.2.77"), 0, 64), "0.0.0.0/0");
        assert_eq!(
            client_network(ip("2001:db8:1:2:3:4:5:6"), 32, 64),
            "2001:db8:1:2::/64"
        );
        assert_eq!(client_network(ip("2001:db8::1"), 32, 128), "2001:db8::1");
        assert_eq!(client_network(ip("::ffff:192.0.2.9"), 32, 64), "192.0.2.9");
        let n = Net::parse("192.0.2.0/24").unwrap();
        assert!(n.contains(ip("192.0.2.200")) && !n.contains(ip("192.0.3.1")));
        assert!(n.contains(ip("::ffff:192.0.2.1")));
        assert!(
            Net::parse("2001:db8::/32")
                .unwrap()
                .contains(ip("2001:db8:ffff::1"))
        );
        assert!(
            !Net::parse("2001:db8::/32")
                .unwrap()
                .contains(ip("192.0.2.1"))
        );
        assert!(Net::parse("127.0.0.1").unwrap().contains(ip("127.0.0.1")));
        assert!(Net::parse("1.2.3.4/33").is_none() && Net::parse("x").is_none());
    }

    #[test]
    fn sender_domains_match_themselves_and_subdomains() {
        assert!(within("friends.test", "friends.test"));
        assert!(within("Mail.Friends.Test.", "friends.test"));
        assert!(!within("notfriends.test", "friends.test"));
        assert!(!within("friends.test.evil", "friends.test"));
    }

    #[test]
    fn keys_stay_short_and_clean() {
        let l = Limit {
            what: What::Messages,
            per: Per::SenderDomain,
            max: 1,
            window_secs: 3600,
            ipv4_prefix: 32,
            ipv6_prefix: 64,
        };
        assert_eq!(counter_key(&l, "example.com", 7), "m:sd:3600:example.com:7");
        let long = "a".repeat(250);
        let k = counter_key(&l, &long, u64::MAX);
        assert!(k.len() <= 256 && k.contains(":#"), "{k}");
        assert_ne!(k, counter_key(&l, &"b".repeat(250), u64::MAX));
        assert!(!counter_key(&l, "a\u{1}b", 1).contains('\u{1}'));
        let c = Limit {
            per: Per::Client,
            what: What::Connections,
            ..l
        };
        assert_eq!(
            counter_key(&c, "192.0.2.1", 3),
            "c:ip/32/64:3600:192.0.2.1:3"
        );
        assert_eq!(c.ttl(), 7201);
    }

    #[test]
    fn the_sliding_estimate_weights_the_previous_window() {
        // 10 per 600 s; 10 in the previous window.
        let w = 600_000;
        assert!(
            over(10, 1, 0, w, 10),
            "at the boundary the previous counts in full"
        );
        assert!(over(10, 1, 59_999, w, 10));
        assert!(
            !over(10, 1, 60_000, w, 10),
            "a tenth of the way in, one fits"
        );
        assert!(over(10, 2, 60_000, w, 10));
        assert!(!over(10, 2, 120_000, w, 10));
        assert!(!over(0, 10, 0, w, 10) && over(0, 11, 0, w, 10));
        assert!(!over(10, 10, w, w, 10));
        assert!((estimate(10, 1, 300_000, w) - 6.0).abs() < 1e-9);
        assert!(!over(-3, 10, 0, w, 10), "a negative count reads as 0");
        assert!(over(i64::MAX, i64::MAX, 0, w, MAX_MAX));
    }
}
