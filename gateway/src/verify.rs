//! Recipient verification, the plugins' `verify` capability: ask the next hop whether it
//! accepts a recipient, the way Postfix's verify(8) does for `reject_unverified_recipient`.
//!
//! A **probe** is one SMTP session with the next hop: greeting, `EHLO server.hostname`,
//! `STARTTLS` as the hop's TLS policy asks (opportunistic by default, as delivery does),
//! `MAIL FROM:<>`, `RCPT TO:<recipient>`, `QUIT`; never `DATA`. The next hop is the one the
//! queue would deliver to ([`Routing::next_hops`]: a `[queue.routes]` entry,
//! `delivery.upstream`, or the domain's MX hosts through the gateway's resolver, with the
//! private-address and loop checks; in proxy mode `delivery.upstream`), or one the plugin
//! names (`recipient-via`). The connection is opened by the queue's own code
//! ([`deliver::open`]) and the envelope sent by its SMTP client. MX lookups do not count
//! against the plugins' `dns` budget.
//!
//! [`Routing::next_hops`]: crate::queue::route::Routing::next_hops
//!
//! Answers: `2xx` to `RCPT TO` is *accepted*, `5xx` *refused*; anything else (no route, a
//! refused connection, a timeout, a `4xx` or `5xx` before `RCPT`, a `4xx` to `RCPT`) is
//! *unavailable*, and the plugin should answer `451 4.4.x`.
//!
//! The [`Cache`] is shared by the whole process (like the kv store; a reload keeps it):
//! keyed by the lowercased recipient and the next hop, accepted answers kept for
//! `[verify] positive_ttl_secs`, refused ones for `negative_ttl_secs`, unavailable ones
//! never, at most `cache_entries` of them (past it the one expiring first goes). Its time
//! is the plugins' clock (so `mailgate clock advance` expires entries in tests).
//!
//! Every limit: one probe takes at most `[verify] timeout_secs` in all; one call waits at
//! most until shortly before its hook's deadline (then it answers unavailable, and the
//! probe goes on and fills the cache for the next try, like Postfix's "address verification
//! in progress"); concurrent calls for the same key share one probe; at most
//! [`MAX_IN_FLIGHT`] probes run at once (further calls answer unavailable); replies are
//! kept as one line of at most [`MAX_REPLY`] characters.
//!
//! Logs: one `info` line per probe (recipient, next hop, result, reply), `debug` for a
//! cache hit; `mailgate status` shows the counters ([`Stats`]).

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::watch;

use crate::config::DeliveryMode;
use crate::current::{Current, CurrentCell};
use crate::delivery::{Destination, Timeouts, domain_of};
use crate::dns::Resolver;
use crate::plugin::clock::PluginClock;
use crate::queue::deliver::{self, one_line};
use crate::queue::route::{NoRoute, Target};
use crate::smtp::{MailParams, Reply};

/// Probes that may run at once, over all recipients and next hops.
pub const MAX_IN_FLIGHT: usize = 64;
/// Characters of a reply (or a reason) kept and handed to plugins.
pub const MAX_REPLY: usize = 512;

/// `[verify]`, checked.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Settings {
    /// How long an accepted answer is kept (zero: not kept).
    pub positive_ttl: Duration,
    /// How long a refused (5xx) answer is kept (zero: not kept).
    pub negative_ttl: Duration,
    /// Age past which a kept accepted answer is still used but asked again in the
    /// background (zero: never).
    pub positive_refresh: Duration,
    /// The same for a kept refused answer.
    pub negative_refresh: Duration,
    /// Bound on one probe, connecting included.
    pub timeout: Duration,
    /// Answers kept at most.
    pub cache_entries: usize,
}

impl Default for Settings {
    /// Postfix's `address_verify_positive_expire_time` (31 days) and
    /// `address_verify_negative_expire_time` (3 days), its `…_positive_refresh_time`
    /// (7 days) and `…_negative_refresh_time` (3 hours); 15 s per probe; 100 000 answers.
    fn default() -> Self {
        Settings {
            positive_ttl: Duration::from_secs(31 * 86400),
            negative_ttl: Duration::from_secs(3 * 86400),
            positive_refresh: Duration::from_secs(7 * 86400),
            negative_refresh: Duration::from_secs(3 * 3600),
            timeout: Duration::from_secs(15),
            cache_entries: 100_000,
        }
    }
}

/// A next hop's answer to `RCPT TO`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verification {
    /// It answered 2xx.
    pub accepted: bool,
    /// Its reply, one line (`550 5.1.1 <x@example.test>: Recipient address rejected`).
    pub reply: String,
    /// Answered from the cache.
    pub cached: bool,
}

/// What one probe found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Probed {
    /// `RCPT TO` got a 2xx reply (this one).
    Accepted(String),
    /// `RCPT TO` got a 5xx reply (this one).
    Rejected(String),
    /// The next hop could not be asked, or answered 4xx; why.
    Unavailable(String),
}

impl Probed {
    fn result(&self) -> &'static str {
        match self {
            Probed::Accepted(_) => "accepted",
            Probed::Rejected(_) => "refused",
            Probed::Unavailable(_) => "unavailable",
        }
    }

    fn text(&self) -> &str {
        match self {
            Probed::Accepted(t) | Probed::Rejected(t) | Probed::Unavailable(t) => t,
        }
    }
}

/// Text as one line of at most [`MAX_REPLY`] characters without control characters.
fn clean(s: &str) -> String {
    one_line(s).chars().take(MAX_REPLY).collect()
}

/// One kept answer.
#[derive(Debug)]
struct Entry {
    accepted: bool,
    reply: String,
    stored: Instant,
    until: Instant,
    seq: u64,
}

/// A kept answer as [`Cache::get`] gives it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Kept {
    /// The next hop accepted the recipient.
    pub accepted: bool,
    /// Its reply.
    pub reply: String,
    /// How long ago it was probed.
    pub age: Duration,
}

/// Verification answers by key, each until its expiry, at most a configured number of
/// them. Pure: the caller passes the time.
#[derive(Debug, Default)]
pub struct Cache {
    entries: HashMap<String, Entry>,
    /// `(expiry, insertion number)` → key: what expires first comes first.
    by_expiry: BTreeMap<(Instant, u64), String>,
    seq: u64,
}

impl Cache {
    /// The answer kept for `key` at `now`, if any.
    pub fn get(&mut self, key: &str, now: Instant) -> Option<Kept> {
        self.expire(now);
        self.entries.get(key).map(|e| Kept {
            accepted: e.accepted,
            reply: e.reply.clone(),
            age: now.saturating_duration_since(e.stored),
        })
    }

    /// Keeps a probe's answer for `key`: accepted ones for `positive_ttl`, refused ones for
    /// `negative_ttl` (a zero TTL keeps nothing); an unavailable answer is never kept and
    /// leaves an earlier one as it was. Past `cache_entries`, the entry expiring first goes.
    pub fn put(&mut self, key: &str, probed: &Probed, now: Instant, settings: &Settings) {
        let (accepted, reply, ttl) = match probed {
            Probed::Accepted(r) => (true, r, settings.positive_ttl),
            Probed::Rejected(r) => (false, r, settings.negative_ttl),
            Probed::Unavailable(_) => return,
        };
        self.remove(key);
        self.expire(now);
        if ttl.is_zero() || settings.cache_entries == 0 {
            return;
        }
        while self.entries.len() >= settings.cache_entries {
            match self.by_expiry.pop_first() {
                Some((_, k)) => {
                    self.entries.remove(&k);
                }
                None => break,
            }
        }
        // TTLs are at most a year (config validation), far from `Instant`'s range.
        let until = now.checked_add(ttl).unwrap_or(now);
        self.seq += 1;
        self.by_expiry.insert((until, self.seq), key.to_string());
        self.entries.insert(
            key.to_string(),
            Entry {
                accepted,
                reply: reply.clone(),
                stored: now,
                until,
                seq: self.seq,
            },
        );
    }

    /// Answers kept at `now`.
    pub fn len(&mut self, now: Instant) -> usize {
        self.expire(now);
        self.entries.len()
    }

    /// Whether nothing is kept at `now`.
    pub fn is_empty(&mut self, now: Instant) -> bool {
        self.len(now) == 0
    }

    fn remove(&mut self, key: &str) {
        if let Some(e) = self.entries.remove(key) {
            self.by_expiry.remove(&(e.until, e.seq));
        }
    }

    /// Drops what has expired at `now`.
    fn expire(&mut self, now: Instant) {
        while let Some(first) = self.by_expiry.first_entry() {
            if first.key().0 > now {
                break;
            }
            let key = first.remove();
            self.entries.remove(&key);
        }
    }
}

/// The counters `mailgate status` shows under `verify`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Stats {
    /// Probes started since the gateway started.
    pub probes: u64,
    /// Calls answered from the cache.
    pub cache_hits: u64,
    /// Background probes started to refresh an answer past its refresh age.
    pub refreshes: u64,
    /// Answers kept now.
    pub cached: usize,
    /// Probes running now.
    pub in_flight: usize,
}

/// The answer of a probe in progress, once there is one.
type Pending = watch::Receiver<Option<Probed>>;

#[derive(Debug, Default)]
struct Inner {
    cache: Cache,
    in_flight: HashMap<String, Pending>,
}

/// What the verifier asks: the settings in force and the gateway's own listeners (the
/// loop check), set when the server starts.
#[derive(Debug)]
struct Attached {
    current: Arc<CurrentCell>,
    own: Arc<[SocketAddr]>,
}

/// Who asked, for the probe's log line.
#[derive(Clone, Copy, Debug)]
pub struct Requester<'a> {
    /// The plugin's name.
    pub plugin: &'a str,
    /// The SMTP session.
    pub session: &'a str,
}

/// The process-wide verifier: the cache, the probes in progress and the counters.
#[derive(Debug)]
pub struct Verifier {
    dns: Arc<Resolver>,
    clock: Arc<PluginClock>,
    attached: RwLock<Option<Arc<Attached>>>,
    inner: Mutex<Inner>,
    probes: AtomicU64,
    cache_hits: AtomicU64,
    refreshes: AtomicU64,
}

/// Removes a probe from the in-flight map if its task ends without doing so itself (a
/// panic), so the key is not blocked for good.
struct InFlight {
    verifier: Arc<Verifier>,
    key: String,
    armed: bool,
}

impl InFlight {
    /// The task took the probe out of the map itself.
    fn disarm(&mut self) {
        self.armed = false;
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if self.armed {
            self.verifier.lock().in_flight.remove(&self.key);
        }
    }
}

impl Verifier {
    /// A verifier with an empty cache that looks MX records up through `dns` and keeps
    /// time by `clock`. It answers unavailable until [`Verifier::attach`].
    pub fn new(dns: Arc<Resolver>, clock: Arc<PluginClock>) -> Verifier {
        Verifier {
            dns,
            clock,
            attached: RwLock::new(None),
            inner: Mutex::new(Inner::default()),
            probes: AtomicU64::new(0),
            cache_hits: AtomicU64::new(0),
            refreshes: AtomicU64::new(0),
        }
    }

    /// Gives the verifier the settings in force (routing, host name, `[verify]`; a reload
    /// replaces them in `current`) and the gateway's listening addresses.
    pub fn attach(&self, current: Arc<CurrentCell>, own: Vec<SocketAddr>) {
        let a = Arc::new(Attached {
            current,
            own: own.into(),
        });
        *self.attached.write().unwrap_or_else(|e| e.into_inner()) = Some(a);
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The counters and the cache size now.
    pub fn stats(&self) -> Stats {
        let now = self.clock.instant();
        let mut inner = self.lock();
        Stats {
            probes: self.probes.load(Ordering::Relaxed),
            cache_hits: self.cache_hits.load(Ordering::Relaxed),
            refreshes: self.refreshes.load(Ordering::Relaxed),
            cached: inner.cache.len(now),
            in_flight: inner.in_flight.len(),
        }
    }

    /// Asks the next hop of `rcpt` (`local@domain`), or `via`, whether it accepts `rcpt`;
    /// waits at most `wait`. `Err` is the reason it could not be asked.
    pub async fn recipient(
        self: &Arc<Self>,
        rcpt: &str,
        via: Option<Destination>,
        wait: Duration,
        who: Requester<'_>,
    ) -> Result<Verification, String> {
        let attached = self
            .attached
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let Some(attached) = attached else {
            return Err("recipient verification is not set up in this process".into());
        };
        let cur = attached.current.get();
        let dest = match via {
            Some(d) => d,
            None => next_hop(&cur, rcpt)?,
        };
        let settings = cur.runtime.live.verify.clone();
        let wait = wait.min(settings.timeout + Duration::from_secs(1));
        let probe = {
            let (dns, own, rcpt, dest) = (
                Arc::clone(&self.dns),
                Arc::clone(&attached.own),
                rcpt.to_string(),
                dest.clone(),
            );
            let timeout = settings.timeout;
            move || async move { probe(&cur, &dns, &own, &dest, &rcpt, timeout).await }
        };
        self.answer(rcpt, &dest.to_string(), &settings, wait, who, probe)
            .await
    }

    /// The cached answer for (`rcpt`, `hop`), else the answer of the probe in progress for
    /// it, else of a new one `start` makes (run on a task of its own, bounded by
    /// `settings.timeout`, its answer cached); waits at most `wait` for it.
    async fn answer<F, Fut>(
        self: &Arc<Self>,
        rcpt: &str,
        hop: &str,
        settings: &Settings,
        wait: Duration,
        who: Requester<'_>,
        start: F,
    ) -> Result<Verification, String>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Probed> + Send + 'static,
    {
        let key = format!("{}|{hop}", rcpt.to_lowercase());
        let mut pending = {
            let mut inner = self.lock();
            if let Some(kept) = inner.cache.get(&key, self.clock.instant()) {
                self.cache_hits.fetch_add(1, Ordering::Relaxed);
                let refresh = if kept.accepted {
                    settings.positive_refresh
                } else {
                    settings.negative_refresh
                };
                // Old enough to ask again (Postfix's `address_verify_*_refresh_time`): the
                // kept answer serves this call, a probe in the background replaces it (an
                // `unavailable` outcome leaves it as it is).
                let stale = !refresh.is_zero() && kept.age >= refresh;
                let refreshing = stale
                    && !inner.in_flight.contains_key(&key)
                    && inner.in_flight.len() < MAX_IN_FLIGHT;
                if refreshing {
                    self.refreshes.fetch_add(1, Ordering::Relaxed);
                    self.start(&mut inner, key, rcpt, hop, settings, who, start());
                }
                tracing::debug!(
                    plugin = who.plugin,
                    session = who.session,
                    rcpt,
                    next_hop = hop,
                    accepted = kept.accepted,
                    reply = %kept.reply,
                    age_secs = kept.age.as_secs(),
                    refreshing,
                    "recipient verification answered from the cache"
                );
                return Ok(Verification {
                    accepted: kept.accepted,
                    reply: kept.reply,
                    cached: true,
                });
            }
            if let Some(p) = inner.in_flight.get(&key) {
                p.clone()
            } else {
                if inner.in_flight.len() >= MAX_IN_FLIGHT {
                    return Err(format!(
                        "{MAX_IN_FLIGHT} recipient verifications are in progress already"
                    ));
                }
                self.start(&mut inner, key, rcpt, hop, settings, who, start())
            }
        };
        let got = tokio::time::timeout(wait, pending.wait_for(Option::is_some)).await;
        let probed = match got {
            Ok(Ok(answer)) => answer.clone(),
            Ok(Err(_)) => None,
            Err(_) => {
                return Err(format!(
                    "no answer from {hop} within {} ms; the probe goes on, and a definite answer will be cached",
                    wait.as_millis()
                ));
            }
        };
        match probed {
            Some(Probed::Accepted(reply)) => Ok(Verification {
                accepted: true,
                reply,
                cached: false,
            }),
            Some(Probed::Rejected(reply)) => Ok(Verification {
                accepted: false,
                reply,
                cached: false,
            }),
            Some(Probed::Unavailable(why)) => Err(why),
            None => Err("the verification probe ended without an answer".into()),
        }
    }

    /// Starts probe `fut` for `key` on a task of its own (bounded by `settings.timeout`),
    /// registered in flight until its answer is cached; the receiver gets the answer.
    #[allow(clippy::too_many_arguments)]
    fn start<Fut>(
        self: &Arc<Self>,
        inner: &mut Inner,
        key: String,
        rcpt: &str,
        hop: &str,
        settings: &Settings,
        who: Requester<'_>,
        fut: Fut,
    ) -> Pending
    where
        Fut: Future<Output = Probed> + Send + 'static,
    {
        let (tx, rx) = watch::channel(None);
        inner.in_flight.insert(key.clone(), rx.clone());
        self.probes.fetch_add(1, Ordering::Relaxed);
        let mut guard = InFlight {
            verifier: Arc::clone(self),
            key,
            armed: true,
        };
        let (settings, rcpt, hop) = (settings.clone(), rcpt.to_string(), hop.to_string());
        let (plugin, session) = (who.plugin.to_string(), who.session.to_string());
        tokio::spawn(async move {
            let probed = match tokio::time::timeout(settings.timeout, fut).await {
                Ok(p) => p,
                Err(_) => Probed::Unavailable(format!(
                    "no answer from {hop} within {:?}",
                    settings.timeout
                )),
            };
            tracing::info!(
                plugin,
                session,
                rcpt,
                next_hop = hop,
                result = probed.result(),
                reply = probed.text(),
                "recipient verification probe"
            );
            {
                // Cached before it leaves the in-flight map: a caller sees one or
                // the other, so the same key is never probed twice at once.
                let v = &guard.verifier;
                let mut inner = v.lock();
                inner
                    .cache
                    .put(&guard.key, &probed, v.clock.instant(), &settings);
                inner.in_flight.remove(&guard.key);
            }
            guard.disarm();
            let _ = tx.send(Some(probed));
        });
        rx
    }
}

/// The next hop the queue would deliver `rcpt` to; in proxy mode the upstream.
fn next_hop(cur: &Current, rcpt: &str) -> Result<Destination, String> {
    match &cur.runtime.fixed.delivery {
        DeliveryMode::Queue(_) => Ok(cur.runtime.live.routing.destination(rcpt)),
        DeliveryMode::Proxy { upstream, tls } => Ok(Destination::Relay(upstream.clone(), *tls)),
        DeliveryMode::Maildir(_) => {
            Err("delivery mode maildir has no next hop to ask (recipient-via names one)".into())
        }
    }
}

/// One probe of `rcpt` at `dest`: its addresses as the queue picks them, then
/// [`probe_targets`].
async fn probe(
    cur: &Current,
    dns: &Resolver,
    own: &[SocketAddr],
    dest: &Destination,
    rcpt: &str,
    timeout: Duration,
) -> Probed {
    let routing = &cur.runtime.live.routing;
    let targets = match routing.next_hops(dest, dns, own, &domain_of(rcpt)).await {
        Ok(t) => t,
        Err(NoRoute::Permanent(why, _) | NoRoute::Temporary(why, _)) => {
            return Probed::Unavailable(clean(&why));
        }
    };
    let timeouts = Timeouts {
        connect: cur.runtime.fixed.connect_timeout.min(timeout),
        greeting: timeout,
        command: timeout,
        mail: timeout,
        rcpt: timeout,
        data_init: timeout,
        data_block: timeout,
        data_final: timeout,
    };
    probe_targets(&targets, cur.hostname(), timeouts, rcpt).await
}

/// Asks the first of `targets` that takes a session: `MAIL FROM:<>`, `RCPT TO:<rcpt>`,
/// `QUIT`. A target that cannot be reached, refuses the session or breaks off before
/// answering `RCPT` makes way for the next one.
pub async fn probe_targets(
    targets: &[Target],
    helo: &str,
    timeouts: Timeouts,
    rcpt: &str,
) -> Probed {
    let params = MailParams {
        smtputf8: !rcpt.is_ascii(),
        ..MailParams::default()
    };
    let mut last = String::from("no address to try");
    for t in targets {
        let mut client = match deliver::open(t, helo, timeouts).await {
            Ok(c) => c,
            Err(r) => {
                last = r.to_string();
                continue;
            }
        };
        let answer = client.envelope("", &params, &[rcpt]).await;
        if client.is_usable() {
            let _ = client.quit().await;
        }
        match answer {
            Ok((mail, _)) if mail.code() >= 300 => {
                return Probed::Unavailable(clean(&format!(
                    "{} did not take MAIL FROM:<>: {mail}",
                    t.host
                )));
            }
            Ok((_, replies)) => {
                return match replies.first() {
                    Some(r) => classify(r, &t.host),
                    None => Probed::Unavailable("no reply to RCPT TO".into()),
                };
            }
            Err(e) => last = format!("{}: {e}", t.addr),
        }
    }
    Probed::Unavailable(clean(&last))
}

/// A reply to `RCPT TO` from `host`: 2xx accepted, 5xx refused, anything else unavailable.
fn classify(r: &Reply, host: &str) -> Probed {
    let text = clean(&r.to_string());
    match r.code() {
        200..=299 => Probed::Accepted(text),
        500..=599 => Probed::Rejected(text),
        _ => Probed::Unavailable(clean(&format!("{host} answered RCPT TO with {text}"))),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use super::*;
    use crate::delivery::TlsPolicy;
    use crate::delivery::testutil::{FakeServer, Step, self_signed_server_config};

    fn settings() -> Settings {
        Settings {
            positive_ttl: Duration::from_secs(100),
            negative_ttl: Duration::from_secs(10),
            positive_refresh: Duration::ZERO,
            negative_refresh: Duration::ZERO,
            timeout: Duration::from_secs(5),
            cache_entries: 1000,
        }
    }

    /// A kept answer as (accepted, reply).
    fn get(c: &mut Cache, key: &str, now: Instant) -> Option<(bool, String)> {
        c.get(key, now).map(|k| (k.accepted, k.reply))
    }

    fn ok(r: &str) -> Probed {
        Probed::Accepted(r.into())
    }

    fn no(r: &str) -> Probed {
        Probed::Rejected(r.into())
    }

    #[test]
    fn positive_and_negative_answers_expire_after_their_own_ttl() {
        let (s, t0) = (settings(), Instant::now());
        let mut c = Cache::default();
        c.put("good|h", &ok("250 2.1.5 Ok"), t0, &s);
        c.put("bad|h", &no("550 5.1.1 unknown"), t0, &s);
        assert_eq!(
            get(&mut c, "good|h", t0),
            Some((true, "250 2.1.5 Ok".into()))
        );
        assert_eq!(
            get(&mut c, "bad|h", t0),
            Some((false, "550 5.1.1 unknown".into()))
        );
        let t = t0 + Duration::from_secs(9);
        assert!(get(&mut c, "bad|h", t).is_some(), "within the negative TTL");
        let t = t0 + Duration::from_secs(10);
        assert_eq!(get(&mut c, "bad|h", t), None, "negative TTL over");
        assert!(get(&mut c, "good|h", t).is_some(), "positive TTL goes on");
        assert_eq!(c.len(t), 1);
        let t = t0 + Duration::from_secs(100);
        assert_eq!(get(&mut c, "good|h", t), None, "positive TTL over");
        assert!(c.is_empty(t));
    }

    #[test]
    fn a_tempfail_is_never_cached_and_leaves_an_earlier_answer() {
        let (s, t0) = (settings(), Instant::now());
        let mut c = Cache::default();
        c.put("k", &Probed::Unavailable("451 4.3.0 later".into()), t0, &s);
        assert_eq!(get(&mut c, "k", t0), None);
        assert_eq!(c.len(t0), 0);
        c.put("k", &no("550 no"), t0, &s);
        c.put("k", &Probed::Unavailable("timed out".into()), t0, &s);
        assert_eq!(get(&mut c, "k", t0), Some((false, "550 no".into())));
        // A new definitive answer replaces the old one, with its own TTL.
        c.put("k", &ok("250 ok"), t0, &s);
        assert_eq!(c.len(t0), 1);
        assert_eq!(
            get(&mut c, "k", t0 + Duration::from_secs(50)),
            Some((true, "250 ok".into()))
        );
    }

    #[test]
    fn zero_ttls_and_zero_entries_keep_nothing() {
        let t0 = Instant::now();
        let mut c = Cache::default();
        let s = Settings {
            negative_ttl: Duration::ZERO,
            ..settings()
        };
        c.put("bad", &no("550"), t0, &s);
        c.put("good", &ok("250"), t0, &s);
        assert_eq!(get(&mut c, "bad", t0), None);
        assert!(get(&mut c, "good", t0).is_some());
        let s = Settings {
            cache_entries: 0,
            ..settings()
        };
        let mut c = Cache::default();
        c.put("good", &ok("250"), t0, &s);
        assert!(c.is_empty(t0));
    }

    #[test]
    fn the_size_cap_holds_and_evicts_what_expires_first() {
        let t0 = Instant::now();
        let s = Settings {
            cache_entries: 3,
            ..settings()
        };
        let mut c = Cache::default();
        c.put("p1", &ok("250"), t0, &s); // expires at +100
        c.put("n1", &no("550"), t0, &s); // +10
        c.put("p2", &ok("250"), t0 + Duration::from_secs(1), &s); // +101
        c.put("p3", &ok("250"), t0 + Duration::from_secs(2), &s); // +102: n1 goes
        assert_eq!(c.len(t0 + Duration::from_secs(2)), 3);
        assert_eq!(get(&mut c, "n1", t0 + Duration::from_secs(2)), None);
        c.put("p4", &ok("250"), t0 + Duration::from_secs(3), &s); // p1 goes
        assert_eq!(get(&mut c, "p1", t0 + Duration::from_secs(3)), None);
        for k in ["p2", "p3", "p4"] {
            assert!(get(&mut c, k, t0 + Duration::from_secs(3)).is_some(), "{k}");
        }
        for i in 0..1000 {
            c.put(
                &format!("x{i}"),
                &no("550"),
                t0 + Duration::from_secs(4),
                &s,
            );
        }
        assert_eq!(c.len(t0 + Duration::from_secs(4)), 3);
        assert_eq!(c.entries.len(), c.by_expiry.len(), "both indexes agree");
    }

    fn verifier() -> Arc<Verifier> {
        let dns = Arc::new(Resolver::new(crate::dns::Settings {
            servers: vec!["127.0.0.1:9".parse().unwrap()],
            timeout: Duration::from_millis(300),
            ..Default::default()
        }));
        Arc::new(Verifier::new(dns, Arc::new(PluginClock::new(true))))
    }

    const WHO: Requester<'static> = Requester {
        plugin: "p",
        session: "S1",
    };

    #[tokio::test]
    async fn concurrent_calls_share_one_probe_and_then_the_cache_answers() {
        let v = verifier();
        let runs = Arc::new(AtomicUsize::new(0));
        let (go_tx, go_rx) = watch::channel(false);
        let s = settings();
        let call = |rcpt: &'static str| {
            let (v, runs, mut go, s) =
                (Arc::clone(&v), Arc::clone(&runs), go_rx.clone(), s.clone());
            async move {
                v.answer(
                    rcpt,
                    "hop:25",
                    &s,
                    Duration::from_secs(5),
                    WHO,
                    move || async move {
                        runs.fetch_add(1, Ordering::SeqCst);
                        let _ = go.wait_for(|g| *g).await;
                        no("550 5.1.1 unknown")
                    },
                )
                .await
            }
        };
        // `join!` polls the calls in order: the first starts the probe, the second finds it
        // in flight; only then, on the next poll, may the probe answer.
        let release = async {
            tokio::task::yield_now().await;
            let _ = go_tx.send(true);
        };
        let (a, b, ()) = tokio::join!(call("Nobody@x.test"), call("nobody@x.test"), release);
        for r in [a, b] {
            let r = r.unwrap();
            assert!(!r.accepted && !r.cached, "{r:?}");
            assert_eq!(r.reply, "550 5.1.1 unknown");
        }
        assert_eq!(runs.load(Ordering::SeqCst), 1, "one probe for both");
        let third = call("NOBODY@x.test").await.unwrap();
        assert!(third.cached && !third.accepted, "{third:?}");
        assert_eq!(runs.load(Ordering::SeqCst), 1);
        assert_eq!(
            v.stats(),
            Stats {
                probes: 1,
                cache_hits: 1,
                refreshes: 0,
                cached: 1,
                in_flight: 0
            }
        );
    }

    #[tokio::test]
    async fn an_answer_past_its_refresh_age_serves_and_is_probed_again_in_the_background() {
        let v = verifier();
        let s = Settings {
            positive_refresh: Duration::from_secs(10),
            ..settings()
        };
        let answers = Arc::new(Mutex::new(vec![
            ok("250 2.1.5 Ok"),
            no("550 5.1.1 gone now"),
        ]));
        let call = || {
            let (v, s, answers) = (Arc::clone(&v), s.clone(), Arc::clone(&answers));
            async move {
                v.answer(
                    "u@x.test",
                    "hop:25",
                    &s,
                    Duration::from_secs(5),
                    WHO,
                    move || async move { answers.lock().unwrap().remove(0) },
                )
                .await
                .unwrap()
            }
        };
        let first = call().await;
        assert!(first.accepted && !first.cached);
        // Within the refresh age: the cache answers, nothing is probed.
        v.clock.advance(9).unwrap();
        assert!(call().await.cached);
        assert_eq!(v.stats().probes, 1);
        // Past it: the kept answer still serves this call, and a probe replaces it.
        v.clock.advance(2).unwrap();
        let stale = call().await;
        assert!(stale.accepted && stale.cached, "{stale:?}");
        assert_eq!(v.stats().refreshes, 1);
        // The refresh probe's answer is cached before it leaves the in-flight map.
        let pending = v.lock().in_flight.get("u@x.test|hop:25").cloned();
        if let Some(mut p) = pending {
            p.wait_for(Option::is_some).await.unwrap();
        }
        let after = call().await;
        assert!(!after.accepted && after.cached, "{after:?}");
        assert_eq!(after.reply, "550 5.1.1 gone now");
        assert_eq!(v.stats().probes, 2);
    }

    #[tokio::test]
    async fn unavailable_answers_are_not_cached_and_the_next_call_probes_again() {
        let v = verifier();
        let s = settings();
        for n in 1..=2 {
            let r = v
                .answer(
                    "u@x.test",
                    "hop:25",
                    &s,
                    Duration::from_secs(5),
                    WHO,
                    || async { Probed::Unavailable("451 4.3.0 try later".into()) },
                )
                .await;
            assert_eq!(r, Err("451 4.3.0 try later".into()));
            assert_eq!(v.stats().probes, n);
        }
        assert_eq!(v.stats().cached, 0);
        assert_eq!(v.stats().cache_hits, 0);
    }

    #[tokio::test]
    async fn a_caller_stops_waiting_at_its_bound_and_the_probe_still_fills_the_cache() {
        let v = verifier();
        let s = settings();
        let (go_tx, go_rx) = watch::channel(false);
        let mut go = go_rx.clone();
        let r = v
            .answer(
                "u@x.test",
                "hop:25",
                &s,
                Duration::from_millis(50),
                WHO,
                move || async move {
                    let _ = go.wait_for(|g| *g).await;
                    ok("250 2.1.5 Ok")
                },
            )
            .await;
        let why = r.unwrap_err();
        assert!(why.contains("the probe goes on"), "{why}");
        let _ = go_tx.send(true);
        let mut cached = false;
        for _ in 0..500 {
            if v.stats().cached == 1 {
                cached = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        assert!(cached, "{:?}", v.stats());
        let r = v
            .answer(
                "u@x.test",
                "hop:25",
                &s,
                Duration::from_millis(50),
                WHO,
                || async { unreachable!("answered from the cache") },
            )
            .await
            .unwrap();
        assert!(r.accepted && r.cached);
    }

    #[tokio::test]
    async fn a_probe_past_the_timeout_is_unavailable_and_in_flight_is_bounded() {
        let v = verifier();
        let s = Settings {
            timeout: Duration::from_millis(50),
            ..settings()
        };
        let r = v
            .answer(
                "slow@x.test",
                "hop:25",
                &s,
                Duration::from_secs(5),
                WHO,
                std::future::pending::<Probed>,
            )
            .await;
        let why = r.unwrap_err();
        assert!(why.contains("within 50ms"), "{why}");
        assert_eq!(v.stats().in_flight, 0, "a finished probe leaves the map");
        // Fill the in-flight map with probes that never end (until their timeout).
        let long = Settings {
            timeout: Duration::from_secs(30),
            ..settings()
        };
        for i in 0..MAX_IN_FLIGHT {
            let r = v
                .answer(
                    &format!("u{i}@x.test"),
                    "hop:25",
                    &long,
                    Duration::ZERO,
                    WHO,
                    std::future::pending::<Probed>,
                )
                .await;
            assert!(r.is_err());
        }
        assert_eq!(v.stats().in_flight, MAX_IN_FLIGHT);
        let r = v
            .answer(
                "one-more@x.test",
                "hop:25",
                &long,
                Duration::ZERO,
                WHO,
                || async { unreachable!("no probe past the bound") },
            )
            .await;
        assert!(r.unwrap_err().contains("in progress already"));
        assert_eq!(v.stats().probes, 1 + MAX_IN_FLIGHT as u64);
    }

    #[tokio::test]
    async fn without_attach_a_call_is_unavailable() {
        let v = verifier();
        let r = v
            .recipient("u@x.test", None, Duration::from_secs(1), WHO)
            .await;
        assert!(r.unwrap_err().contains("not set up"));
        assert_eq!(v.stats().probes, 0);
    }

    fn fast() -> Timeouts {
        crate::delivery::testutil::fast_timeouts()
    }

    fn target(addr: &str, tls: TlsPolicy) -> Target {
        Target {
            addr: addr.into(),
            host: "fake".into(),
            tls,
        }
    }

    /// A server that answers the probe's commands with these replies.
    fn script(rcpt_reply: &'static str) -> Vec<Step> {
        vec![
            Step::Send("220 fake ESMTP\r\n"),
            Step::Line,
            Step::Send("250-fake\r\n250 PIPELINING\r\n"),
            Step::Line,
            Step::Line,
            Step::Send("250 2.1.0 Ok\r\n"),
            Step::Send(rcpt_reply),
            Step::Line,
            Step::Send("221 2.0.0 Bye\r\n"),
        ]
    }

    #[tokio::test]
    async fn a_probe_says_ehlo_mail_from_null_rcpt_quit_and_never_data() {
        let srv = FakeServer::start(vec![
            script("550 5.1.1 <nobody@x.test>: Recipient address rejected\r\n"),
            script("250 2.1.5 Ok\r\n"),
            script("450 4.2.0 <busy@x.test>: greylisted\r\n"),
        ])
        .await;
        let t = [target(&srv.addr, TlsPolicy::Opportunistic)];
        let p = probe_targets(&t, "mx.gw.test", fast(), "nobody@x.test").await;
        assert_eq!(
            p,
            no("550 5.1.1 <nobody@x.test>: Recipient address rejected")
        );
        let p = probe_targets(&t, "mx.gw.test", fast(), "pat@x.test").await;
        assert_eq!(p, ok("250 2.1.5 Ok"));
        let p = probe_targets(&t, "mx.gw.test", fast(), "busy@x.test").await;
        let Probed::Unavailable(why) = p else {
            panic!("a 4xx is unavailable: {p:?}")
        };
        assert!(why.contains("450 4.2.0"), "{why}");
        let sent = srv.received().await;
        assert_eq!(
            sent[0],
            "EHLO mx.gw.test\r\nMAIL FROM:<>\r\nRCPT TO:<nobody@x.test>\r\nQUIT\r\n"
        );
        assert!(sent.iter().all(|s| !s.contains("DATA")), "{sent:?}");
    }

    #[tokio::test]
    async fn a_probe_honours_the_tls_policy_and_tries_the_next_address() {
        // Required TLS towards a hop without STARTTLS: not asked.
        let plain = FakeServer::start(vec![vec![
            Step::Send("220 fake ESMTP\r\n"),
            Step::Line,
            Step::Send("250 fake\r\n"),
        ]])
        .await;
        let p = probe_targets(
            &[target(&plain.addr, TlsPolicy::Required)],
            "mx.gw.test",
            fast(),
            "u@x.test",
        )
        .await;
        assert!(
            matches!(&p, Probed::Unavailable(w) if w.contains("4.7.10")),
            "{p:?}"
        );
        // Opportunistic STARTTLS when offered; a dead first address makes way for the next.
        let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let dead_addr = dead.local_addr().unwrap().to_string();
        drop(dead);
        let tls = FakeServer::start(vec![vec![
            Step::Send("220 fake ESMTP\r\n"),
            Step::Line,
            Step::Send("250-fake\r\n250 STARTTLS\r\n"),
            Step::Line,
            Step::Send("220 2.0.0 go ahead\r\n"),
            Step::StartTls(self_signed_server_config()),
            Step::Line,
            Step::Send("250 fake\r\n"),
            Step::Line,
            Step::Send("250 2.1.0 Ok\r\n"),
            Step::Line,
            Step::Send("250 2.1.5 Ok\r\n"),
            Step::Line,
            Step::Send("221 2.0.0 Bye\r\n"),
        ]])
        .await;
        let p = probe_targets(
            &[
                target(&dead_addr, TlsPolicy::Opportunistic),
                target(&tls.addr, TlsPolicy::Opportunistic),
            ],
            "mx.gw.test",
            fast(),
            "u@x.test",
        )
        .await;
        assert_eq!(p, ok("250 2.1.5 Ok"));
        let sent = tls.received().await;
        assert_eq!(
            sent[0],
            "EHLO mx.gw.test\r\nSTARTTLS\r\n<TLS>EHLO mx.gw.test\r\nMAIL FROM:<>\r\nRCPT TO:<u@x.test>\r\nQUIT\r\n"
        );
        drop(plain);
    }
}
