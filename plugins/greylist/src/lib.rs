//! Triplet greylisting for mailgate, as postgrey does it: the first time a (client network,
//! envelope sender, recipient) triplet is seen, the recipient is answered
//! `451 4.7.1 Greylisted, please try again in 300 seconds`; a retry after `delay_secs` and
//! within `retry_window_secs` passes, and the triplet is then remembered for
//! `max_age_days` after it was last seen. A client network whose triplets passed
//! `auto_allow_after` times (counted at most once an hour) is let through without
//! greylisting for `max_age_days` after it was last seen. Decided at RCPT, per recipient.
//!
//! Needs the `kv` and `clock` capabilities (`log` for its log lines, `auth-results` for
//! `skip_if_authenticated`). Without `kv` or `clock`, or when the kv store fails or is
//! full, it lets the mail through (fails open) and logs a warning once per session: it
//! never answers 5xx. See docs/greylist.md.
//!
//! Config (all optional):
//!
//! | key | values | default |
//! |---|---|---|
//! | `delay_secs` | how long a new triplet is refused: a retry passes after this many seconds (1..) | `300` |
//! | `retry_window_secs` | a first retry later than this after the first attempt starts over (greater than `delay_secs`) | `172800` (2 days) |
//! | `max_age_days` | a passed triplet, and an auto-allowed client network, are forgotten this many days after they were last seen (1..=3650) | `35` |
//! | `auto_allow_after` | let a client network through without greylisting once this many of its triplets passed (counted at most once an hour); `0` disables | `5` |
//! | `ipv4_prefix` | the client network of an IPv4 client (0..=32) | `24` |
//! | `ipv6_prefix` | the client network of an IPv6 client (0..=128) | `64` |
//! | `normalize_sender` | postgrey's sender substitutions: BATV `prvs=` tags removed, `+extension` stripped, all-digit words of the local part replaced by `#` | `true` |
//! | `allow_networks` | clients never greylisted (CIDR or single addresses) | `[]` |
//! | `allow_sender_domains` | envelope sender domains (or a parent of them) never greylisted | `[]` |
//! | `allow_recipients` | recipients never greylisted: `user@domain`, `user@` (any domain) or `domain` (or a parent); `user` also matches `user+extension` | `["postmaster@", "abuse@"]` |
//! | `skip_if_authenticated` | do not greylist when SPF passes for the MAIL FROM domain (for `<>`, the HELO name); needs `auth-results`; DKIM is not known at RCPT | `false` |
//! | `message` | the 451 text: `%s` is the seconds left, `%r` the recipient's domain (printable ASCII, at most 200 characters) | `Greylisted, please try again in %s seconds` |
//! | `defer_to_score` | do not refuse new or early triplets here: tag them (`greylist:new`, `greylist:early`) and let the `spam-score` plugin defer only the messages scoring at least its `greylist_at` (rspamd's greylist action) | `false` |
//! | `add_header` | prepend `X-Greylist: delayed N seconds by mailgate-greylist; DATE` to a message that passed after a delay | `true` |
//!
//! Tags: `greylist:new` and `greylist:early` (answered 451), `greylist:passed` (the
//! triplet passed), `greylist:delayed` (it passed just now, after a delay),
//! `greylist:auto-allowed`, `greylist:allowed` (an allowlist, a trusted client or an SPF
//! pass), `greylist:unavailable` (kv or clock failed: not greylisted). Every decision has a
//! reason (`with_reason`), which the gateway logs with its decision.

use std::net::IpAddr;

use mailgate_plugin_sdk::auth::{self, AuthError, SpfResult};
use mailgate_plugin_sdk::kv::{self, KvError};
use mailgate_plugin_sdk::net::{Net, within};
use mailgate_plugin_sdk::prelude::*;
use mailgate_plugin_sdk::{clock, log};

/// Longest triplet key stored as text; longer ones are hashed (kv keys are at most 256
/// octets).
const MAX_PLAIN_KEY: usize = 160;
/// Longest `message` in the config (before `%s`/`%r` are filled in).
const MAX_MESSAGE: usize = 200;
/// Longest reply line the host takes.
const MAX_REPLY: usize = 400;
/// Longest reason we hand the host (it takes 1024).
const MAX_REASON: usize = 1000;
/// A client network's passes are counted at most once in this many seconds (postgrey).
const COUNT_INTERVAL: u32 = 3600;

/// The client network of `ip` as text: `192.0.2.0/24`, `2001:db8:1:2::/64`.
fn network(ip: IpAddr, v4: u8, v6: u8) -> String {
    let n = Net::of_client(ip, v4, v6);
    format!("{}/{}", n.addr(), n.prefix())
}

/// postgrey's sender substitutions on a (lowercase) local part: a BATV `prvs=` tag
/// removed, a `+extension` stripped, every word of digits only replaced by `#` (VERP
/// numbers), so one list or bounce sender is one triplet, not one per message.
fn normalize_local(local: &str) -> String {
    let mut user = local;
    if user.starts_with("prvs=") {
        let parts: Vec<&str> = user.split('=').collect();
        if let [_, a, b] = parts[..] {
            // The tag value is 10 characters; the other part is the local part.
            let tag = |s: &str| {
                s.len() >= 10
                    && s.bytes()
                        .take(10)
                        .all(|c| c.is_ascii_digit() || c.is_ascii_lowercase())
            };
            user = if tag(a) && !tag(b) {
                b
            } else if tag(b) && !tag(a) {
                a
            } else {
                b
            };
        }
    }
    let user = user.split('+').next().unwrap_or(user);
    let mut out = String::with_capacity(user.len());
    let mut word = String::new();
    let flush = |out: &mut String, word: &mut String| {
        if !word.is_empty() && word.chars().all(|c| c.is_ascii_digit()) {
            out.push('#');
        } else {
            out.push_str(word);
        }
        word.clear();
    };
    for c in user.chars() {
        if c.is_alphanumeric() || c == '_' {
            word.push(c);
        } else {
            flush(&mut out, &mut word);
            out.push(c);
        }
    }
    flush(&mut out, &mut word);
    out
}

/// The sender part of the triplet: lowercase, normalized if asked; `""` for `<>`.
fn sender_key(sender: Option<&Address>, normalize: bool) -> String {
    let Some(a) = sender else {
        return String::new();
    };
    let local = a.local_part.to_lowercase();
    let local = if normalize {
        normalize_local(&local)
    } else {
        local
    };
    format!("{local}@{}", a.domain.to_lowercase())
}

/// The recipient part of the triplet: the address, lowercase.
fn recipient_key(a: &Address) -> String {
    format!(
        "{}@{}",
        a.local_part.to_lowercase(),
        a.domain.to_lowercase()
    )
}

/// 128-bit FNV-1a: stable across builds and Rust versions (kv outlives a plugin reload).
fn fnv1a128(bytes: &[u8]) -> u128 {
    const OFFSET: u128 = 0x6c62_272e_07bb_0142_62b8_2175_6295_c58d;
    const PRIME: u128 = 0x0000_0000_0100_0000_0000_0000_0000_013b;
    bytes
        .iter()
        .fold(OFFSET, |h, b| (h ^ u128::from(*b)).wrapping_mul(PRIME))
}

/// The kv key of a triplet: readable when short, `t#` and a hash when long. The sender's
/// length makes the text unambiguous (local parts may hold spaces and `@`).
fn triplet_key(net: &str, sender: &str, rcpt: &str) -> String {
    let plain = format!("t:{net} {}:{sender} {rcpt}", sender.len());
    if plain.len() <= MAX_PLAIN_KEY {
        plain
    } else {
        format!("t#{:032x}", fnv1a128(plain.as_bytes()))
    }
}

/// What the kv holds for a triplet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Entry {
    /// Greylisted; first seen at (Unix seconds).
    Waiting(u64),
    /// Passed; first seen at.
    Passed(u64),
}

impl Entry {
    fn parse(v: &[u8]) -> Option<Entry> {
        let s = std::str::from_utf8(v).ok()?;
        let (state, first) = s.split_at_checked(1)?;
        let first = first.parse().ok()?;
        match state {
            "w" => Some(Entry::Waiting(first)),
            "p" => Some(Entry::Passed(first)),
            _ => None,
        }
    }

    fn text(self) -> String {
        match self {
            Entry::Waiting(t) => format!("w{t}"),
            Entry::Passed(t) => format!("p{t}"),
        }
    }
}

/// A recipient allowlist entry.
#[derive(Clone, Debug, PartialEq, Eq)]
enum RcptRule {
    /// `user@domain`.
    Address(String, String),
    /// `user@`: at any domain.
    Local(String),
    /// `domain`, or a subdomain of it.
    Domain(String),
}

impl RcptRule {
    fn parse(s: &str) -> Result<RcptRule, String> {
        let s = s.trim().to_lowercase();
        match s.rsplit_once('@') {
            Some(("", _)) => Err(format!(
                "allow_recipients: {s:?}: write a domain without the @"
            )),
            Some((l, "")) => Ok(RcptRule::Local(l.to_string())),
            Some((l, d)) => Ok(RcptRule::Address(
                l.to_string(),
                d.trim_end_matches('.').to_string(),
            )),
            None if s.trim_matches('.').is_empty() => {
                Err("allow_recipients: an empty entry".to_string())
            }
            None => Ok(RcptRule::Domain(s.trim_matches('.').to_string())),
        }
    }

    fn matches(&self, a: &Address) -> bool {
        let local = a.local_part.to_lowercase();
        let base = local.split('+').next().unwrap_or(&local);
        let domain = a.domain.to_lowercase();
        let user = |l: &str| local == l || base == l;
        match self {
            RcptRule::Address(l, d) => user(l) && domain == *d,
            RcptRule::Local(l) => user(l),
            RcptRule::Domain(d) => within(&domain, d),
        }
    }
}

impl std::fmt::Display for RcptRule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RcptRule::Address(l, d) => write!(f, "{l}@{d}"),
            RcptRule::Local(l) => write!(f, "{l}@"),
            RcptRule::Domain(d) => write!(f, "{d}"),
        }
    }
}

/// What the admin reads for a kv failure.
fn kv_fault(e: KvError) -> String {
    match e {
        KvError::Denied => "the kv capability is not granted".into(),
        KvError::InvalidKey => "kv refused a key".into(),
        KvError::ValueTooLarge => "kv refused a value as too large".into(),
        KvError::QuotaExceeded => {
            "the kv namespace is full (raise limits.kv_entries or limits.kv_mb)".into()
        }
        KvError::NotACounter => "a kv counter holds something else".into(),
        KvError::Unavailable(why) => format!("kv is unavailable: {why}"),
    }
}

trait KvResult<T> {
    fn kv(self) -> Result<T, String>;
}

impl<T> KvResult<T> for Result<T, KvError> {
    fn kv(self) -> Result<T, String> {
        self.map_err(kv_fault)
    }
}

/// `s` cut to at most `max` octets on a character boundary.
fn cut(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut end = max;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
    s
}

/// An RFC 5322 date (UTC) for Unix seconds.
fn rfc5322_date(secs: u64) -> String {
    const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let days = secs / 86_400;
    let rem = secs % 86_400;
    // Days to civil date (H. Hinnant's algorithm), for dates after 1970.
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    format!(
        "{}, {day} {} {year} {:02}:{:02}:{:02} +0000",
        DAYS[(days % 7) as usize],
        MONTHS[(month - 1) as usize],
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[derive(Debug)]
struct Greylist {
    delay: u64,
    retry_window: u32,
    /// `max_age_days` in seconds.
    max_age: u32,
    auto_allow_after: i64,
    ipv4_prefix: u8,
    ipv6_prefix: u8,
    normalize_sender: bool,
    allow_networks: Vec<Net>,
    allow_sender_domains: Vec<String>,
    allow_recipients: Vec<RcptRule>,
    skip_if_authenticated: bool,
    message: String,
    add_header: bool,
    /// Leave new and early triplets to the spam scorer (tagged, not refused here).
    defer_to_score: bool,
    // Per session:
    /// A kv or clock failure was logged.
    warned: bool,
    /// A missing `auth-results` grant was logged.
    warned_auth: bool,
    /// The SPF verdict of a transaction: its id and the domain that passed, if one did.
    spf: Option<(String, Option<String>)>,
    /// A recipient of this transaction passed after a delay: its id, the longest delay
    /// and when (for `X-Greylist`).
    delayed: Option<(String, u64, u64)>,
}

/// Continue, with a tag and a reason.
fn pass(tag: &str, reason: String) -> RcptOutcome {
    RcptOutcome::continue_()
        .with_tag(tag)
        .with_reason(cut(reason, MAX_REASON))
}

impl Greylist {
    /// The 451 for a triplet with `left` seconds to wait.
    fn greylisted(&self, tag: &str, left: u64, rcpt: &Address, reason: String) -> RcptOutcome {
        if self.defer_to_score {
            // The spam scorer decides at the end of DATA (its `greylist_at`).
            return RcptOutcome::continue_().with_tag(tag).with_reason(cut(
                format!("{reason}; left to the spam score (defer_to_score)"),
                MAX_REASON,
            ));
        }
        let text = self
            .message
            .replace("%s", &left.to_string())
            .replace("%r", &rcpt.domain);
        RcptOutcome::tempfail(451, "4.7.1", cut(text, MAX_REPLY))
            .with_tag(tag)
            .with_reason(cut(reason, MAX_REASON))
    }

    /// Lets the recipient through because kv or clock failed; logs it once a session.
    fn fail_open(&mut self, fault: String) -> RcptOutcome {
        if !self.warned {
            self.warned = true;
            log::log(
                log::Level::Warn,
                "greylisting skipped, mail let through",
                &[("cause", &fault)],
            );
        }
        pass(
            "greylist:unavailable",
            format!("not greylisted (failing open): {fault}"),
        )
    }

    /// The domain SPF passed for at MAIL FROM, when `skip_if_authenticated` is on; asked
    /// once per transaction.
    fn spf_pass(&mut self, txn: &Transaction) -> Option<String> {
        if !self.skip_if_authenticated {
            return None;
        }
        if let Some((id, domain)) = &self.spf
            && *id == txn.id
        {
            return domain.clone();
        }
        let domain = match auth::spf() {
            // The MAIL FROM identity; for `<>`, the HELO name (RFC 7208 2.4).
            Ok(c) if c.outcome == SpfResult::Pass => Some(c.domain),
            Ok(_) | Err(AuthError::Unavailable) => None,
            Err(AuthError::Denied) => {
                if !self.warned_auth {
                    self.warned_auth = true;
                    log::warn(
                        "skip_if_authenticated needs the auth-results capability: greylisting everyone",
                    );
                }
                None
            }
        };
        self.spf = Some((txn.id.clone(), domain.clone()));
        domain
    }

    /// Counts a pass of a triplet from `net` towards auto-allowing it (at most once an
    /// hour). Errors are logged, never change the outcome.
    fn count_pass(&mut self, net: &str) {
        if self.auto_allow_after == 0 {
            return;
        }
        let counted = (|| -> Result<Option<i64>, String> {
            if !kv::set_if_absent(&format!("h:{net}"), b"1", Some(COUNT_INTERVAL)).kv()? {
                return Ok(None);
            }
            let key = format!("a:{net}");
            let n = kv::increment(&key, 1, Some(self.max_age)).kv()?;
            // Forgotten max_age after the last pass, not the first.
            kv::set(&key, n.to_string(), Some(self.max_age)).kv()?;
            Ok(Some(n))
        })();
        match counted {
            Ok(Some(n)) if n == self.auto_allow_after => log::log(
                log::Level::Info,
                "client network auto-allowed",
                &[("network", net), ("passes", &n.to_string())],
            ),
            Ok(_) => {}
            Err(fault) if !self.warned => {
                self.warned = true;
                log::log(
                    log::Level::Warn,
                    "could not count a pass for auto-allow",
                    &[("cause", &fault)],
                );
            }
            Err(_) => {}
        }
    }

    /// The greylisting decision for a recipient that no allowlist let through.
    fn decide(
        &mut self,
        txn: &Transaction,
        rcpt: &Address,
        net: &str,
    ) -> Result<RcptOutcome, String> {
        let now = clock::now_ms().map_err(|_| "the clock capability is not granted")? / 1000;
        if self.auto_allow_after > 0 {
            let key = format!("a:{net}");
            let passes = kv::get_string(&key)
                .kv()?
                .and_then(|v| v.parse::<i64>().ok());
            if let Some(n) = passes
                && n >= self.auto_allow_after
            {
                // Seen again: keep it for max_age from now (refreshed at most hourly).
                if kv::set_if_absent(&format!("h:{net}"), b"1", Some(COUNT_INTERVAL)).kv()? {
                    kv::set(&key, n.to_string(), Some(self.max_age)).kv()?;
                }
                return Ok(pass(
                    "greylist:auto-allowed",
                    format!("client network {net} auto-allowed ({n} passes)"),
                ));
            }
        }
        let sender = sender_key(txn.sender.as_ref(), self.normalize_sender);
        let recipient = recipient_key(rcpt);
        let key = triplet_key(net, &sender, &recipient);
        let triplet = format!("{net} <{sender}> <{recipient}>");
        let new = |this: &Self| {
            this.greylisted(
                "greylist:new",
                this.delay,
                rcpt,
                format!(
                    "new triplet {triplet}: greylisted, a retry after {} s passes",
                    this.delay
                ),
            )
        };
        // Twice at most: a triplet that another session creates between our read and our
        // write is read again.
        for _ in 0..2 {
            let entry = kv::get(&key).kv()?;
            match entry.as_deref().map(Entry::parse) {
                Some(Some(Entry::Passed(first))) => {
                    kv::set(&key, Entry::Passed(first).text(), Some(self.max_age)).kv()?;
                    return Ok(pass(
                        "greylist:passed",
                        format!(
                            "known triplet {triplet}, first seen {} s ago",
                            now.saturating_sub(first)
                        ),
                    ));
                }
                Some(Some(Entry::Waiting(first))) => {
                    let waited = now.saturating_sub(first);
                    if waited > u64::from(self.retry_window) {
                        // Expired and not yet swept: a new first attempt.
                        if let Some(d) = self.spf_pass(txn) {
                            return Ok(pass("greylist:allowed", format!("SPF pass for {d}")));
                        }
                        kv::set(&key, Entry::Waiting(now).text(), Some(self.retry_window)).kv()?;
                        return Ok(new(self));
                    }
                    if waited >= self.delay {
                        kv::set(&key, Entry::Passed(first).text(), Some(self.max_age)).kv()?;
                        self.count_pass(net);
                        let longest = match &self.delayed {
                            Some((id, d, _)) if *id == txn.id => waited.max(*d),
                            _ => waited,
                        };
                        self.delayed = Some((txn.id.clone(), longest, now));
                        log::log(
                            log::Level::Info,
                            "greylisted triplet passed",
                            &[
                                ("delay", &waited.to_string()),
                                ("network", net),
                                ("sender", &sender),
                                ("recipient", &recipient),
                            ],
                        );
                        return Ok(pass(
                            "greylist:passed",
                            format!("triplet {triplet} passed after {waited} s"),
                        )
                        .with_tag("greylist:delayed"));
                    }
                    if let Some(d) = self.spf_pass(txn) {
                        return Ok(pass("greylist:allowed", format!("SPF pass for {d}")));
                    }
                    let left = self.delay - waited;
                    return Ok(self.greylisted(
                        "greylist:early",
                        left,
                        rcpt,
                        format!("triplet {triplet} retried early: {left} s to wait"),
                    ));
                }
                Some(None) => {
                    // Not ours (a damaged value): start over.
                    kv::set(&key, Entry::Waiting(now).text(), Some(self.retry_window)).kv()?;
                    return Ok(new(self));
                }
                None => {
                    if let Some(d) = self.spf_pass(txn) {
                        return Ok(pass("greylist:allowed", format!("SPF pass for {d}")));
                    }
                    let text = Entry::Waiting(now).text();
                    if kv::set_if_absent(&key, text, Some(self.retry_window)).kv()? {
                        return Ok(new(self));
                    }
                }
            }
        }
        // Created and gone again between our reads: greylist, as for a new triplet.
        Ok(new(self))
    }
}

/// A number from the config within `range`.
fn number(
    config: &Config,
    key: &str,
    default: i64,
    range: std::ops::RangeInclusive<i64>,
) -> Result<i64, String> {
    let v = config.int_or(key, default)?;
    if range.contains(&v) {
        Ok(v)
    } else {
        Err(format!(
            "{key}: {v} is not within {}..={}",
            range.start(),
            range.end()
        ))
    }
}

/// A list of domain names from the config, lowercase, without leading or trailing dots.
fn domains(config: &Config, key: &str) -> Result<Vec<String>, String> {
    config
        .list(key)?
        .unwrap_or_default()
        .iter()
        .map(|d| {
            let d = d.trim().trim_matches('.').to_lowercase();
            if d.is_empty() || d.contains('@') || d.contains(char::is_whitespace) {
                Err(format!("{key}: {d:?} is not a domain"))
            } else {
                Ok(d)
            }
        })
        .collect()
}

#[plugin]
impl Plugin for Greylist {
    fn init(config: &Config) -> Result<Self, String> {
        config.deny_unknown(&[
            "delay_secs",
            "retry_window_secs",
            "max_age_days",
            "auto_allow_after",
            "ipv4_prefix",
            "ipv6_prefix",
            "normalize_sender",
            "allow_networks",
            "allow_sender_domains",
            "allow_recipients",
            "skip_if_authenticated",
            "message",
            "add_header",
            "defer_to_score",
        ])?;
        let delay = number(config, "delay_secs", 300, 1..=i64::from(u32::MAX - 1))?;
        let retry_window = number(
            config,
            "retry_window_secs",
            2 * 86_400,
            delay + 1..=i64::from(u32::MAX),
        )
        .map_err(|e| format!("{e} (it must be greater than delay_secs)"))?;
        let max_age_days = number(config, "max_age_days", 35, 1..=3650)?;
        let auto_allow_after = number(config, "auto_allow_after", 5, 0..=1_000_000)?;
        let ipv4_prefix = number(config, "ipv4_prefix", 24, 0..=32)?;
        let ipv6_prefix = number(config, "ipv6_prefix", 64, 0..=128)?;
        let allow_networks = config
            .list("allow_networks")?
            .unwrap_or_default()
            .iter()
            .map(|n| Net::parse(n).ok_or(format!("allow_networks: {n:?} is not a network")))
            .collect::<Result<Vec<_>, _>>()?;
        let allow_recipients = match config.list("allow_recipients")? {
            Some(list) => list
                .iter()
                .map(|r| RcptRule::parse(r))
                .collect::<Result<Vec<_>, _>>()?,
            None => vec![
                RcptRule::Local("postmaster".into()),
                RcptRule::Local("abuse".into()),
            ],
        };
        let message = config
            .str_or("message", "Greylisted, please try again in %s seconds")
            .to_string();
        if message.trim().is_empty()
            || message.len() > MAX_MESSAGE
            || !message.bytes().all(|b| (0x20..0x7f).contains(&b))
        {
            return Err(format!(
                "message: must be 1 to {MAX_MESSAGE} printable ASCII characters"
            ));
        }
        Ok(Greylist {
            delay: delay as u64,
            retry_window: retry_window as u32,
            max_age: (max_age_days * 86_400) as u32,
            auto_allow_after,
            ipv4_prefix: ipv4_prefix as u8,
            ipv6_prefix: ipv6_prefix as u8,
            normalize_sender: config.bool_or("normalize_sender", true)?,
            allow_networks,
            allow_sender_domains: domains(config, "allow_sender_domains")?,
            allow_recipients,
            skip_if_authenticated: config.bool_or("skip_if_authenticated", false)?,
            message,
            add_header: config.bool_or("add_header", true)?,
            defer_to_score: config.bool_or("defer_to_score", false)?,
            warned: false,
            warned_auth: false,
            spf: None,
            delayed: None,
        })
    }

    fn on_rcpt_to(&mut self, s: &SessionInfo, txn: &Transaction, rcpt: &Recipient) -> RcptOutcome {
        let ip = s.client_ip();
        if s.client.trusted {
            return pass(
                "greylist:allowed",
                format!("client {ip} in relay.trusted_networks"),
            );
        }
        if s.authenticated.is_some() {
            return pass(
                "greylist:allowed",
                "client authenticated (SMTP AUTH)".into(),
            );
        }
        if let Some(n) = self.allow_networks.iter().find(|n| n.contains(ip)) {
            return pass(
                "greylist:allowed",
                format!("client {ip} in allow_networks ({n})"),
            );
        }
        if let Some(sender) = &txn.sender
            && let Some(d) = self
                .allow_sender_domains
                .iter()
                .find(|d| within(&sender.domain, d))
        {
            return pass(
                "greylist:allowed",
                format!(
                    "sender domain {} in allow_sender_domains ({d})",
                    sender.domain
                ),
            );
        }
        if let Some(r) = self
            .allow_recipients
            .iter()
            .find(|r| r.matches(&rcpt.address))
        {
            return pass(
                "greylist:allowed",
                format!("recipient {} in allow_recipients ({r})", rcpt.address),
            );
        }
        let net = network(ip, self.ipv4_prefix, self.ipv6_prefix);
        match self.decide(txn, &rcpt.address, &net) {
            Ok(out) => out,
            Err(fault) => self.fail_open(fault),
        }
    }

    fn on_data(&mut self, _: &SessionInfo, txn: &Transaction, _: &Message) -> DataOutcome {
        match self.delayed.take() {
            Some((id, secs, at)) if self.add_header && id == txn.id => DataOutcome::continue_()
                .prepend_header(
                    "X-Greylist",
                    format!(
                        "delayed {secs} seconds by mailgate-greylist; {}",
                        rfc5322_date(at)
                    ),
                ),
            _ => DataOutcome::continue_(),
        }
    }
}

export_plugin!(Greylist);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn networks() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(network(ip("192.0.2.77"), 24, 64), "192.0.2.0/24");
        assert_eq!(network(ip("192.0.2.77"), 32, 64), "192.0.2.77/32");
        assert_eq!(network(ip("192.0.2.77"), 8, 64), "192.0.0.0/8");
        assert_eq!(network(ip("192.0.2.77"), 0, 64), "0.0.0.0/0");
        assert_eq!(network(ip("::ffff:192.0.2.77"), 24, 64), "192.0.2.0/24");
        assert_eq!(
            network(ip("2001:db8:1:2:3:4:5:6"), 24, 64),
            "2001:db8:1:2::/64"
        );
        assert_eq!(
            network(ip("2001:db8:1:2:3:4:5:6"), 24, 48),
            "2001:db8:1::/48"
        );
        assert_eq!(
            network(ip("2001:db8:1:2:3:4:5:6"), 24, 128),
            "2001:db8:1:2:3:4:5:6/128"
        );
        // Two addresses of one /24 share a network; of two /24s they do not.
        assert_eq!(
            network(ip("198.51.100.1"), 24, 64),
            network(ip("198.51.100.254"), 24, 64)
        );
        assert_ne!(
            network(ip("198.51.100.1"), 24, 64),
            network(ip("198.51.101.1"), 24, 64)
        );
    }

    #[test]
    fn allow_networks_match() {
        let n = Net::parse("10.0.0.0/8").unwrap();
        assert!(n.contains("10.200.1.1".parse().unwrap()));
        assert!(n.contains("::ffff:10.1.1.1".parse().unwrap()));
        assert!(!n.contains("11.0.0.1".parse().unwrap()));
        assert!(!n.contains("2001:db8::1".parse().unwrap()));
        let one = Net::parse("192.0.2.5").unwrap();
        assert!(one.contains("192.0.2.5".parse().unwrap()));
        assert!(!one.contains("192.0.2.6".parse().unwrap()));
        let v6 = Net::parse("2001:db8::/32").unwrap();
        assert!(v6.contains("2001:db8:ffff::1".parse().unwrap()));
        assert!(Net::parse("10.0.0.0/33").is_none());
        assert!(Net::parse("example.org").is_none());
    }

    #[test]
    fn sender_normalization_as_postgrey() {
        assert_eq!(normalize_local("user+list-owner"), "user");
        assert_eq!(normalize_local("bounce-123-456"), "bounce-#-#");
        assert_eq!(normalize_local("user123"), "user123");
        assert_eq!(normalize_local("42"), "#");
        assert_eq!(normalize_local("a_12.34"), "a_12.#");
        assert_eq!(normalize_local("prvs=0123abcdef=alice"), "alice");
        assert_eq!(normalize_local("prvs=alice=0123abcdef"), "alice");
        assert_eq!(normalize_local("prvs=broken"), "prvs=broken");
        let a = Address::new("Bob+News", "Example.ORG");
        assert_eq!(sender_key(Some(&a), true), "bob@example.org");
        assert_eq!(sender_key(Some(&a), false), "bob+news@example.org");
        assert_eq!(sender_key(None, true), "");
    }

    #[test]
    fn keys_are_bounded_and_distinct() {
        let short = triplet_key("192.0.2.0/24", "a@b.example", "c@d.example");
        assert_eq!(short, "t:192.0.2.0/24 11:a@b.example c@d.example");
        let long_local = "x".repeat(300);
        let long = triplet_key("192.0.2.0/24", &format!("{long_local}@b"), "c@d");
        assert!(long.starts_with("t#") && long.len() == 34, "{long}");
        let other = triplet_key("192.0.2.0/24", &format!("{long_local}@c"), "c@d");
        assert_ne!(long, other);
        // A sender holding a space cannot pass for another split of the same text.
        assert_ne!(
            triplet_key("n", "a b@x", "c@y"),
            triplet_key("n", "a", "b@x c@y")
        );
    }

    #[test]
    fn entries_round_trip() {
        for e in [Entry::Waiting(1_700_000_000), Entry::Passed(0)] {
            assert_eq!(Entry::parse(e.text().as_bytes()), Some(e));
        }
        assert_eq!(Entry::parse(b"x12"), None);
        assert_eq!(Entry::parse(b"w"), None);
        assert_eq!(Entry::parse(b""), None);
    }

    #[test]
    fn recipient_rules() {
        let r = |s: &str| RcptRule::parse(s).unwrap();
        let a = |s: &str| Address::parse(s).unwrap();
        assert!(r("postmaster@").matches(&a("PostMaster@example.test")));
        assert!(r("postmaster@").matches(&Address::new("Postmaster", "")));
        assert!(r("abuse@example.test").matches(&a("abuse+x@example.test")));
        assert!(!r("abuse@example.test").matches(&a("abuse@other.test")));
        assert!(r("example.test").matches(&a("anyone@sub.example.test")));
        assert!(!r("example.test").matches(&a("anyone@notexample.test")));
        assert!(RcptRule::parse("@example.test").is_err());
        assert!(RcptRule::parse("").is_err());
    }

    #[test]
    fn dates() {
        assert_eq!(rfc5322_date(0), "Thu, 1 Jan 1970 00:00:00 +0000");
        assert_eq!(
            rfc5322_date(1_795_946_400),
            "Sun, 29 Nov 2026 10:00:00 +0000"
        );
        assert_eq!(rfc5322_date(951_782_400), "Tue, 29 Feb 2000 00:00:00 +0000");
    }

    #[test]
    fn config_is_checked() {
        let init =
            |pairs: &[(&str, &str)]| Greylist::init(&Config::from_pairs(pairs.iter().copied()));
        assert!(init(&[]).is_ok());
        assert!(
            init(&[("delay", "300")])
                .unwrap_err()
                .contains("unknown key")
        );
        assert!(init(&[("delay_secs", "0")]).is_err());
        assert!(init(&[("delay_secs", "600"), ("retry_window_secs", "600")]).is_err());
        assert!(init(&[("ipv4_prefix", "33")]).is_err());
        assert!(init(&[("allow_networks", "[\"10.0.0.0/8\", \"nope\"]")]).is_err());
        assert!(init(&[("message", "tab\there")]).is_err());
        let g = init(&[("allow_recipients", "[]")]).unwrap();
        assert!(g.allow_recipients.is_empty());
        let g = init(&[]).unwrap();
        assert_eq!(g.allow_recipients.len(), 2);
        assert_eq!(
            (g.delay, g.retry_window, g.max_age),
            (300, 172_800, 35 * 86_400)
        );
    }
}
