//! Host capabilities as the WIT imports them. Each checks its grant first: an ungranted
//! capability answers `denied` (`log` and `metrics` do nothing). DNS goes through the
//! gateway's resolver ([`crate::dns`]) within the per-session budget; auth results answer
//! `unavailable` until the SPF/DKIM/DMARC checks land; `verify` asks next hops through
//! the process-wide [`crate::verify::Verifier`] (not within the DNS budget).

use std::time::Instant;

use wasmtime::component::Resource;

use super::bindings::mailgate::plugin::{
    auth_results, clock, dns, kv, log, message, metrics, patterns, routing, types, verify,
};
use super::budget::LogAdmit;
use super::convert;
use super::kv::{Caller, KvFault, OnUnavailable};
use super::message::{MessageHandle, chunk};
use super::state::State;
use crate::config::Capability;
use crate::metrics::PluginKind;

type R<T> = wasmtime::Result<T>;

/// Caps on what one log call may write.
const MAX_LOG_MESSAGE: usize = 4096;
const MAX_LOG_FIELDS: usize = 16;

fn cut(s: &str, max: usize) -> &str {
    let mut n = max.min(s.len());
    while !s.is_char_boundary(n) {
        n -= 1;
    }
    &s[..n]
}

impl types::Host for State {}

impl log::Host for State {
    async fn enabled(&mut self, level: log::Level) -> R<bool> {
        Ok(self.granted(Capability::Log)
            && match level {
                log::Level::Trace => tracing::enabled!(tracing::Level::TRACE),
                log::Level::Debug => tracing::enabled!(tracing::Level::DEBUG),
                log::Level::Info => tracing::enabled!(tracing::Level::INFO),
                log::Level::Warn => tracing::enabled!(tracing::Level::WARN),
                log::Level::Error => tracing::enabled!(tracing::Level::ERROR),
            })
    }

    async fn log(
        &mut self,
        level: log::Level,
        message: String,
        fields: Vec<(String, String)>,
    ) -> R<()> {
        if !self.granted(Capability::Log) || !self.budgets.session.take_log_line() {
            return Ok(());
        }
        let (plugin, session) = (self.spec.name.as_str(), self.session_id.as_str());
        let len = message.len() + fields.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>();
        match self.budgets.log_rate.admit(len, Instant::now()) {
            LogAdmit::Write { dropped: 0 } => {}
            LogAdmit::Write { dropped } => {
                tracing::warn!(
                    plugin,
                    dropped,
                    total_dropped = self.budgets.log_rate.dropped(),
                    "plugin log lines were dropped (log rate limit)"
                );
            }
            LogAdmit::Drop { first } => {
                if first {
                    tracing::warn!(
                        plugin,
                        session,
                        "plugin logs faster than its log rate limit; dropping its lines"
                    );
                }
                return Ok(());
            }
        }
        let msg: String = cut(&message, MAX_LOG_MESSAGE)
            .chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .collect();
        let fields: Vec<String> = fields
            .iter()
            .take(MAX_LOG_FIELDS)
            .map(|(k, v)| format!("{}={:?}", cut(k, 64), cut(v, 512)))
            .collect();
        let fields = fields.join(" ");
        match level {
            log::Level::Trace => tracing::trace!(plugin, session, fields, "{msg}"),
            log::Level::Debug => tracing::debug!(plugin, session, fields, "{msg}"),
            log::Level::Info => tracing::info!(plugin, session, fields, "{msg}"),
            log::Level::Warn => tracing::warn!(plugin, session, fields, "{msg}"),
            log::Level::Error => tracing::error!(plugin, session, fields, "{msg}"),
        }
        Ok(())
    }
}

impl clock::Host for State {
    async fn now(&mut self) -> R<Result<u64, clock::ClockError>> {
        if !self.granted(Capability::Clock) {
            return Ok(Err(clock::ClockError::Denied));
        }
        Ok(Ok(self.services.clock.now_ms()))
    }

    async fn monotonic_now(&mut self) -> R<Result<u64, clock::ClockError>> {
        if !self.granted(Capability::Clock) {
            return Ok(Err(clock::ClockError::Denied));
        }
        Ok(Ok(self.services.clock.monotonic_ns()))
    }
}

impl State {
    /// Grant and budget check before a lookup; counts the lookup.
    fn dns_admit(&mut self) -> Result<std::sync::Arc<crate::dns::Resolver>, dns::DnsError> {
        if !self.granted(Capability::Dns) {
            return Err(dns::DnsError::Denied);
        }
        let dns = &self.services.dns;
        if !self.budgets.session.take_dns(dns.settings().plugin_budget) {
            return Err(dns::DnsError::BudgetExceeded);
        }
        Ok(std::sync::Arc::clone(dns))
    }
}

fn dns_err(e: crate::dns::DnsError) -> dns::DnsError {
    use crate::dns::DnsError as E;
    match e {
        E::Timeout => dns::DnsError::Timeout,
        E::NxDomain => dns::DnsError::Nxdomain,
        E::ServerFailure(_) => dns::DnsError::ServerFailure,
        E::InvalidName => dns::DnsError::InvalidName,
        E::Other(m) => dns::DnsError::Other(m),
    }
}

/// Runs one admitted lookup and converts its answer.
macro_rules! lookup {
    ($self:ident, |$r:ident| $query:expr, $map:expr) => {{
        let $r = match $self.dns_admit() {
            Ok(r) => r,
            Err(e) => return Ok(Err(e)),
        };
        Ok($query
            .await
            .map(|v| v.into_iter().map($map).collect())
            .map_err(dns_err))
    }};
}

impl dns::Host for State {
    async fn lookup_txt(&mut self, name: String) -> R<Result<Vec<String>, dns::DnsError>> {
        lookup!(self, |r| r.txt(&name), |t| t)
    }
    async fn lookup_a(&mut self, name: String) -> R<Result<Vec<types::IpAddress>, dns::DnsError>> {
        lookup!(self, |r| r.a(&name), convert::ip)
    }
    async fn lookup_aaaa(
        &mut self,
        name: String,
    ) -> R<Result<Vec<types::IpAddress>, dns::DnsError>> {
        lookup!(self, |r| r.aaaa(&name), convert::ip)
    }
    async fn lookup_mx(&mut self, name: String) -> R<Result<Vec<dns::MxRecord>, dns::DnsError>> {
        lookup!(self, |r| r.mx(&name), |m| dns::MxRecord {
            preference: m.preference,
            exchange: m.exchange,
        })
    }
    async fn lookup_ptr(&mut self, ip: types::IpAddress) -> R<Result<Vec<String>, dns::DnsError>> {
        lookup!(self, |r| r.ptr(convert::std_ip(&ip)), |n| n)
    }
    async fn lookup_a_many(
        &mut self,
        names: Vec<String>,
    ) -> R<Vec<Result<Vec<types::IpAddress>, dns::DnsError>>> {
        type Answer = Result<Vec<types::IpAddress>, dns::DnsError>;
        // The lookups run concurrently, polled in place (not spawned): answers already in
        // the resolver's cache come back without waking another thread.
        let mut answers: Vec<Option<Answer>> = Vec::with_capacity(names.len());
        let mut queries = Vec::new();
        for (i, name) in names.into_iter().enumerate() {
            if i >= MAX_NAMES_PER_CALL {
                answers.push(Some(Err(dns::DnsError::Other(format!(
                    "more than {MAX_NAMES_PER_CALL} names in one call"
                )))));
                continue;
            }
            match self.dns_admit() {
                Ok(r) => {
                    answers.push(None);
                    queries.push(async move {
                        let a = r.a(&name).await;
                        (
                            i,
                            a.map(|v| v.into_iter().map(convert::ip).collect())
                                .map_err(dns_err),
                        )
                    });
                }
                Err(e) => answers.push(Some(Err(e))),
            }
        }
        for (i, a) in futures_util::future::join_all(queries).await {
            answers[i] = Some(a);
        }
        Ok(answers
            .into_iter()
            .map(|a| a.unwrap_or_else(|| Err(dns::DnsError::Other("lookup failed".into()))))
            .collect())
    }
}

/// Names one `lookup-a-many` call may ask for.
const MAX_NAMES_PER_CALL: usize = 64;

/// A kv answer as the plugin gets it. An unavailable backend is `kv-error::unavailable`,
/// or, with `[kv] on_unavailable = "on_error"`, a failed call (the hook fails and the
/// plugin's `on_error` policy applies).
fn kv_answer<T>(on: OnUnavailable, r: Result<T, KvFault>) -> R<Result<T, kv::KvError>> {
    Ok(Err(match r {
        Ok(v) => return Ok(Ok(v)),
        Err(KvFault::InvalidKey) => kv::KvError::InvalidKey,
        Err(KvFault::ValueTooLarge) => kv::KvError::ValueTooLarge,
        Err(KvFault::QuotaExceeded) => kv::KvError::QuotaExceeded,
        Err(KvFault::NotACounter) => kv::KvError::NotACounter,
        Err(KvFault::Unavailable(why)) => match on {
            OnUnavailable::Plugin => kv::KvError::Unavailable(why),
            OnUnavailable::OnError => {
                return Err(wasmtime::Error::msg(format!(
                    "kv backend unavailable: {why}"
                )));
            }
        },
    }))
}

impl State {
    /// The calling plugin for the kv store: its namespace, quota and deadline.
    fn kv_caller(&self) -> Caller<'_> {
        Caller {
            plugin: &self.spec.name,
            quota: self.spec.kv_quota,
            deadline: self.deadline,
        }
    }
}

impl kv::Host for State {
    async fn get(&mut self, key: String) -> R<Result<Option<Vec<u8>>, kv::KvError>> {
        if !self.granted(Capability::Kv) {
            return Ok(Err(kv::KvError::Denied));
        }
        let kv = &self.services.kv;
        kv_answer(kv.on_unavailable(), kv.get(&self.kv_caller(), &key).await)
    }
    async fn set(
        &mut self,
        key: String,
        value: Vec<u8>,
        ttl: Option<u32>,
    ) -> R<Result<(), kv::KvError>> {
        if !self.granted(Capability::Kv) {
            return Ok(Err(kv::KvError::Denied));
        }
        let kv = &self.services.kv;
        let r = kv.set(&self.kv_caller(), &key, value, ttl).await;
        kv_answer(kv.on_unavailable(), r)
    }
    async fn set_if_absent(
        &mut self,
        key: String,
        value: Vec<u8>,
        ttl: Option<u32>,
    ) -> R<Result<bool, kv::KvError>> {
        if !self.granted(Capability::Kv) {
            return Ok(Err(kv::KvError::Denied));
        }
        let kv = &self.services.kv;
        let r = kv.set_if_absent(&self.kv_caller(), &key, value, ttl).await;
        kv_answer(kv.on_unavailable(), r)
    }
    async fn delete(&mut self, key: String) -> R<Result<bool, kv::KvError>> {
        if !self.granted(Capability::Kv) {
            return Ok(Err(kv::KvError::Denied));
        }
        let kv = &self.services.kv;
        kv_answer(
            kv.on_unavailable(),
            kv.delete(&self.kv_caller(), &key).await,
        )
    }
    async fn increment(
        &mut self,
        key: String,
        delta: i64,
        ttl: Option<u32>,
    ) -> R<Result<i64, kv::KvError>> {
        if !self.granted(Capability::Kv) {
            return Ok(Err(kv::KvError::Denied));
        }
        let kv = &self.services.kv;
        let r = kv.increment(&self.kv_caller(), &key, delta, ttl).await;
        kv_answer(kv.on_unavailable(), r)
    }
}

impl auth_results::Host for State {
    async fn spf(&mut self) -> R<Result<auth_results::SpfCheck, auth_results::AuthError>> {
        Ok(self.spf_check(auth_results::SpfScope::MailFrom).await)
    }
    async fn spf_helo(&mut self) -> R<Result<auth_results::SpfCheck, auth_results::AuthError>> {
        Ok(self.spf_check(auth_results::SpfScope::Helo).await)
    }
    async fn dkim(&mut self) -> R<Result<Vec<auth_results::DkimCheck>, auth_results::AuthError>> {
        Ok(self.message_checks().await.map(|c| {
            c.dkim
                .into_iter()
                .map(|d| {
                    use crate::plugin::auth::DkimOutcome as O;
                    auth_results::DkimCheck {
                        outcome: match d.outcome {
                            O::None => auth_results::DkimResult::None,
                            O::Pass => auth_results::DkimResult::Pass,
                            O::Fail => auth_results::DkimResult::Fail,
                            O::Policy => auth_results::DkimResult::Policy,
                            O::Neutral => auth_results::DkimResult::Neutral,
                            O::TempError => auth_results::DkimResult::Temperror,
                            O::PermError => auth_results::DkimResult::Permerror,
                        },
                        domain: d.domain,
                        selector: d.selector,
                        detail: d.detail,
                    }
                })
                .collect()
        }))
    }
    async fn dmarc(&mut self) -> R<Result<auth_results::DmarcCheck, auth_results::AuthError>> {
        Ok(self.message_checks().await.map(|c| {
            use crate::plugin::auth::DmarcOutcome as O;
            use mail_auth::dmarc::Policy as P;
            let d = c.dmarc;
            auth_results::DmarcCheck {
                outcome: match d.outcome {
                    O::None => auth_results::DmarcResult::None,
                    O::Pass => auth_results::DmarcResult::Pass,
                    O::Fail => auth_results::DmarcResult::Fail,
                    O::TempError => auth_results::DmarcResult::Temperror,
                    O::PermError => auth_results::DmarcResult::Permerror,
                },
                from_domain: d.from_domain,
                policy: d.policy.map(|p| match p {
                    P::Reject => auth_results::DmarcPolicy::Reject,
                    P::Quarantine => auth_results::DmarcPolicy::Quarantine,
                    P::None | P::Unspecified => auth_results::DmarcPolicy::None,
                }),
                spf_aligned: d.spf_aligned,
                dkim_aligned: d.dkim_aligned,
            }
        }))
    }
    async fn arc(&mut self) -> R<Result<auth_results::ArcResult, auth_results::AuthError>> {
        Ok(self.message_checks().await.map(|c| match c.arc {
            crate::plugin::auth::ArcChain::None => auth_results::ArcResult::None,
            crate::plugin::auth::ArcChain::Pass => auth_results::ArcResult::Pass,
            crate::plugin::auth::ArcChain::Fail => auth_results::ArcResult::Fail,
        }))
    }
    async fn arc_sealers(
        &mut self,
    ) -> R<Result<Vec<auth_results::ArcSealer>, auth_results::AuthError>> {
        Ok(self.message_checks().await.map(|c| {
            c.arc_sealers
                .into_iter()
                .map(|s| auth_results::ArcSealer {
                    instance: s.instance,
                    domain: s.domain,
                    results: s.results,
                })
                .collect()
        }))
    }
    async fn iprev(&mut self) -> R<Result<auth_results::IprevResult, auth_results::AuthError>> {
        Ok(self.auth().map(|a| match a.iprev() {
            crate::plugin::auth::Iprev::Pass => auth_results::IprevResult::Pass,
            crate::plugin::auth::Iprev::Fail => auth_results::IprevResult::Fail,
        }))
    }
    async fn header_value(&mut self) -> R<Result<String, auth_results::AuthError>> {
        Ok(self.message_checks().await.map(|c| c.header_value))
    }
}

fn spf_check(s: crate::plugin::auth::Spf, scope: auth_results::SpfScope) -> auth_results::SpfCheck {
    use mail_auth::SpfResult as S;
    auth_results::SpfCheck {
        outcome: match s.result {
            S::Pass => auth_results::SpfResult::Pass,
            S::Fail => auth_results::SpfResult::Fail,
            S::SoftFail => auth_results::SpfResult::Softfail,
            S::Neutral => auth_results::SpfResult::Neutral,
            S::TempError => auth_results::SpfResult::Temperror,
            S::PermError => auth_results::SpfResult::Permerror,
            S::None => auth_results::SpfResult::None,
        },
        scope,
        domain: s.domain,
        explanation: s.explanation,
    }
}

impl State {
    /// The session's checks, if granted and in a session.
    fn auth(
        &self,
    ) -> Result<std::sync::Arc<crate::plugin::auth::SessionAuth>, auth_results::AuthError> {
        if !self.granted(Capability::AuthResults) {
            return Err(auth_results::AuthError::Denied);
        }
        self.budgets
            .auth
            .clone()
            .ok_or(auth_results::AuthError::Unavailable)
    }

    /// SPF for the identity `scope` names; the future holds no borrow of the state.
    fn spf_check(
        &self,
        scope: auth_results::SpfScope,
    ) -> impl std::future::Future<Output = Result<auth_results::SpfCheck, auth_results::AuthError>>
    + Send
    + use<> {
        let auth = self.auth();
        async move {
            let auth = auth?;
            let spf = match scope {
                auth_results::SpfScope::MailFrom => auth.spf().await,
                auth_results::SpfScope::Helo => auth.spf_helo().await,
            };
            spf.map(|s| spf_check(s, scope))
                .map_err(|_| auth_results::AuthError::Unavailable)
        }
    }

    /// The message checks (from DATA on); the future holds no borrow of the state.
    fn message_checks(
        &self,
    ) -> impl std::future::Future<
        Output = Result<crate::plugin::auth::MessageChecks, auth_results::AuthError>,
    > + Send
    + use<> {
        let auth = self.auth();
        async move {
            auth?
                .message_checks()
                .await
                .map_err(|_| auth_results::AuthError::Unavailable)
        }
    }
}

impl State {
    fn metric(&self, kind: PluginKind, name: &str, labels: &[(String, String)], value: f64) {
        if !self.granted(Capability::Metrics) {
            return;
        }
        let word = |t: &str| {
            !t.is_empty()
                && t.len() <= 64
                && t.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
                && !t.as_bytes()[0].is_ascii_digit()
        };
        let labels_ok = labels.len() <= 8
            && labels
                .iter()
                .all(|(k, v)| word(k) && k != "plugin" && !k.starts_with("__") && v.len() <= 128);
        let refused = if !word(name) || !labels_ok {
            Some("invalid name or labels".to_string())
        } else if !value.is_finite() {
            Some("value is not a finite number".to_string())
        } else {
            crate::metrics::get()
                .plugins
                .update(&self.spec.name, kind, name, labels, value)
                .err()
                .map(|e| e.to_string())
        };
        if let Some(why) = refused
            && crate::metrics::get()
                .plugins
                .first_refusal(&self.spec.name, cut(name, 64))
        {
            tracing::warn!(plugin = %self.spec.name, metric = ?cut(name, 64), reason = %why, "plugin metric ignored (logged once per name)");
        }
    }
}

impl metrics::Host for State {
    async fn counter_add(
        &mut self,
        name: String,
        labels: Vec<(String, String)>,
        delta: u64,
    ) -> R<()> {
        self.metric(PluginKind::Counter, &name, &labels, delta as f64);
        Ok(())
    }
    async fn gauge_set(
        &mut self,
        name: String,
        labels: Vec<(String, String)>,
        value: f64,
    ) -> R<()> {
        self.metric(PluginKind::Gauge, &name, &labels, value);
        Ok(())
    }
    async fn histogram_observe(
        &mut self,
        name: String,
        labels: Vec<(String, String)>,
        value: f64,
    ) -> R<()> {
        self.metric(PluginKind::Histogram, &name, &labels, value);
        Ok(())
    }
}

/// Time a `verify` call leaves the plugin before its hook's deadline (a tenth of what is
/// left, at most this), so it can still answer when the next hop is slow.
const VERIFY_SPARE: std::time::Duration = std::time::Duration::from_millis(100);

impl State {
    /// Grant check, arguments checked as the host checks a plugin's routes, then the
    /// process-wide verifier ([`crate::verify`]); waits until shortly before the deadline.
    /// The future holds no borrow of the state.
    fn verify(
        &self,
        recipient: types::Address,
        via: Option<types::RelayHost>,
    ) -> impl std::future::Future<Output = Result<verify::Verification, verify::VerifyError>>
    + Send
    + use<> {
        let granted = self.granted(Capability::Verify);
        let verifier = std::sync::Arc::clone(&self.services.verify);
        let (plugin, session) = (self.spec.name.clone(), self.session_id.clone());
        let deadline = self.deadline;
        async move {
            if !granted {
                return Err(verify::VerifyError::Denied);
            }
            let unavailable = |e: convert::Invalid| verify::VerifyError::Unavailable(e.0);
            let rcpt = convert::mailbox(&recipient).map_err(unavailable)?;
            let via = via
                .as_ref()
                .map(convert::relay_host)
                .transpose()
                .map_err(unavailable)?;
            let left = deadline.saturating_duration_since(Instant::now());
            let wait = left.saturating_sub((left / 10).min(VERIFY_SPARE));
            let who = crate::verify::Requester {
                plugin: &plugin,
                session: &session,
            };
            let v = verifier
                .recipient(&rcpt, via, wait, who)
                .await
                .map_err(verify::VerifyError::Unavailable)?;
            Ok(verify::Verification {
                accepted: v.accepted,
                reply: v.reply,
                cached: v.cached,
            })
        }
    }
}

impl verify::Host for State {
    async fn recipient(
        &mut self,
        recipient: types::Address,
    ) -> R<Result<verify::Verification, verify::VerifyError>> {
        Ok(self.verify(recipient, None).await)
    }

    async fn recipient_via(
        &mut self,
        recipient: types::Address,
        via: types::RelayHost,
    ) -> R<Result<verify::Verification, verify::VerifyError>> {
        Ok(self.verify(recipient, Some(via)).await)
    }
}

impl message::Host for State {}

impl routing::Host for State {
    async fn set_route(&mut self, recipient: types::Address, route: types::Route) -> R<()> {
        // Kept as given; the outcome's validation judges them with the outcome (too
        // many, twice the same recipient, an invalid address or relay host).
        if let Some(routes) = self.rcpt_routes.as_mut()
            && routes.len() <= convert::MAX_ROUTES
        {
            routes.push(types::RecipientRoute { recipient, route });
        }
        Ok(())
    }
}

impl patterns::Host for State {
    async fn compile(
        &mut self,
        list: Vec<String>,
    ) -> R<Result<Resource<super::patterns::PatternSetHandle>, patterns::PatternError>> {
        use super::patterns::PatternError as E;
        let set = match super::patterns::compile(list) {
            Ok(set) => set,
            Err(E::Invalid { index, reason }) => {
                return Ok(Err(patterns::PatternError::Invalid((index, reason))));
            }
            Err(E::TooBig(why)) => return Ok(Err(patterns::PatternError::TooBig(why))),
        };
        match self.table().push(set) {
            Ok(r) => Ok(Ok(r)),
            Err(_) => Ok(Err(patterns::PatternError::TooBig(
                "the plugin holds too many resources".into(),
            ))),
        }
    }
}

impl patterns::HostPatternSet for State {
    async fn len(&mut self, s: Resource<super::patterns::PatternSetHandle>) -> R<u32> {
        Ok(self.table().get(&s)?.0.len() as u32)
    }
    async fn matches(
        &mut self,
        s: Resource<super::patterns::PatternSetHandle>,
        text: String,
    ) -> R<Vec<u32>> {
        Ok(self.table().get(&s)?.matches(&text))
    }
    async fn matches_any(
        &mut self,
        s: Resource<super::patterns::PatternSetHandle>,
        texts: Vec<String>,
    ) -> R<Vec<u32>> {
        Ok(self.table().get(&s)?.matches_any(&texts))
    }
    async fn drop(&mut self, s: Resource<super::patterns::PatternSetHandle>) -> R<()> {
        self.table().delete(s)?;
        Ok(())
    }
}

impl State {
    fn msg(&mut self, r: &Resource<MessageHandle>) -> R<MessageHandle> {
        Ok(self.table().get(r)?.clone())
    }
}

impl message::HostMessage for State {
    async fn id(&mut self, m: Resource<MessageHandle>) -> R<String> {
        Ok(self.msg(&m)?.0.id.clone())
    }
    async fn received_at(&mut self, m: Resource<MessageHandle>) -> R<u64> {
        Ok(self.msg(&m)?.0.received_at_ms)
    }
    async fn size(&mut self, m: Resource<MessageHandle>) -> R<u64> {
        Ok(self.msg(&m)?.0.size() as u64)
    }
    async fn headers(&mut self, m: Resource<MessageHandle>) -> R<Vec<types::Header>> {
        let h = self.msg(&m)?;
        Ok(h.0
            .headers
            .iter()
            .map(|(n, v)| types::Header {
                name: n.clone(),
                value: v.clone(),
            })
            .collect())
    }
    async fn header(&mut self, m: Resource<MessageHandle>, name: String) -> R<Vec<String>> {
        Ok(self.msg(&m)?.0.header(&name))
    }
    async fn header_decoded(&mut self, m: Resource<MessageHandle>, name: String) -> R<Vec<String>> {
        let h = self.msg(&m)?;
        h.0.parse_mime().await;
        Ok(h.0.header_decoded(&name))
    }
    async fn body_size(&mut self, m: Resource<MessageHandle>) -> R<u64> {
        Ok(self.msg(&m)?.0.body_size() as u64)
    }
    async fn read_body(&mut self, m: Resource<MessageHandle>, offset: u64, len: u32) -> R<Vec<u8>> {
        Ok(self.msg(&m)?.0.read_body(offset, len)?)
    }
    async fn read_raw(&mut self, m: Resource<MessageHandle>, offset: u64, len: u32) -> R<Vec<u8>> {
        Ok(self.msg(&m)?.0.read_raw(offset, len)?)
    }
    async fn parts(&mut self, m: Resource<MessageHandle>) -> R<Vec<message::Part>> {
        let h = self.msg(&m)?;
        h.0.parse_mime().await;
        Ok(h.0
            .parts()
            .iter()
            .enumerate()
            .map(|(i, p)| message::Part {
                index: i as u32,
                content_type: p.content_type.clone(),
                charset: p.charset.clone(),
                filename: p.filename.clone(),
                attachment: p.attachment,
                decoded_size: p.size,
            })
            .collect())
    }
    async fn read_part(
        &mut self,
        m: Resource<MessageHandle>,
        index: u32,
        offset: u64,
        len: u32,
    ) -> R<Vec<u8>> {
        let h = self.msg(&m)?;
        h.0.parse_mime().await;
        Ok(h.0
            .parts()
            .get(index as usize)
            .map(|p| chunk(&p.decoded, offset, len))
            .unwrap_or_default())
    }
    async fn text(&mut self, m: Resource<MessageHandle>, max_len: u32) -> R<String> {
        let h = self.msg(&m)?;
        h.0.parse_mime().await;
        Ok(h.0.text(max_len as usize))
    }
    async fn drop(&mut self, m: Resource<MessageHandle>) -> R<()> {
        // The host owns lent messages; a guest drop of its borrow is a no-op, and the
        // host deletes the entry after the call.
        let _ = m;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use super::*;
    use crate::config::{OnError, PluginSpec};
    use crate::plugin::message::ParsedMessage;
    use crate::plugin::registry::Services;

    /// Services whose resolver sends any query to a dead loopback port, with `budget`
    /// lookups per plugin and session.
    fn services(budget: u32) -> Arc<Services> {
        Services::new(Arc::new(crate::dns::Resolver::new(crate::dns::Settings {
            servers: vec!["127.0.0.1:9".parse().unwrap()],
            timeout: Duration::from_millis(300),
            plugin_budget: budget,
            ..Default::default()
        })))
    }

    fn state_with(name: &str, caps: &[Capability], services: Arc<Services>) -> State {
        let spec = PluginSpec {
            name: name.into(),
            path: "/nonexistent/p.wasm".into(),
            sha256: None,
            on_error: OnError::Tempfail,
            capabilities: caps.to_vec(),
            deadline: Duration::from_millis(100),
            memory: 16 << 20,
            config: vec![],
            literal_recipients: false,
            log_rate: (100, 65536),
            kv_quota: Default::default(),
            reuse_instances: true,
        };
        State::new(Arc::new(spec), services, "S1".into(), Default::default())
    }

    fn state(caps: &[Capability]) -> State {
        state_with("p", caps, services(50))
    }

    /// Every capability but `cap`.
    fn all_but(cap: Capability) -> Vec<Capability> {
        Capability::ALL.into_iter().filter(|c| *c != cap).collect()
    }

    /// Log output written while a [`Capture`] guard is alive, on this thread.
    #[derive(Clone, Debug, Default)]
    struct Capture(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Capture {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl Capture {
        /// Captures events up to `level` on this thread until the guard drops.
        fn start(level: tracing::Level) -> (Capture, tracing::subscriber::DefaultGuard) {
            let c = Capture::default();
            let writer = c.clone();
            let subscriber = tracing_subscriber::fmt()
                .with_writer(move || writer.clone())
                .with_max_level(level)
                .with_ansi(false)
                .finish();
            (c, tracing::subscriber::set_default(subscriber))
        }

        fn text(&self) -> String {
            String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
        }

        fn count(&self, needle: &str) -> usize {
            self.text().lines().filter(|l| l.contains(needle)).count()
        }
    }

    #[tokio::test]
    async fn kv_without_the_grant_is_denied_and_stores_nothing() {
        let services = services(50);
        let mut st = state_with("p", &all_but(Capability::Kv), Arc::clone(&services));
        fn denied<T>(r: Result<T, kv::KvError>) -> bool {
            matches!(r, Err(kv::KvError::Denied))
        }
        assert!(denied(
            kv::Host::set(&mut st, "k".into(), b"v".to_vec(), None)
                .await
                .unwrap()
        ));
        assert!(denied(
            kv::Host::set_if_absent(&mut st, "k".into(), b"v".to_vec(), None)
                .await
                .unwrap()
        ));
        assert!(denied(kv::Host::get(&mut st, "k".into()).await.unwrap()));
        assert!(denied(
            kv::Host::increment(&mut st, "n".into(), 1, None)
                .await
                .unwrap()
        ));
        assert!(denied(kv::Host::delete(&mut st, "k".into()).await.unwrap()));
        let c = Caller {
            plugin: "p",
            quota: Default::default(),
            deadline: Instant::now(),
        };
        assert_eq!(services.kv.get(&c, "k").await.unwrap(), None);
        assert_eq!(services.kv.get(&c, "n").await.unwrap(), None);
    }

    #[tokio::test]
    async fn kv_set_get_increment_delete_round_trip_when_granted() {
        let mut st = state(&[Capability::Kv]);
        kv::Host::set(&mut st, "k".into(), b"v1".to_vec(), None)
            .await
            .unwrap()
            .unwrap();
        let got = kv::Host::get(&mut st, "k".into()).await.unwrap().unwrap();
        assert_eq!(got, Some(b"v1".to_vec()));
        let set = kv::Host::set_if_absent(&mut st, "k".into(), b"v2".to_vec(), None)
            .await
            .unwrap()
            .unwrap();
        assert!(!set, "present: not replaced");
        assert_eq!(
            kv::Host::increment(&mut st, "n".into(), 5, Some(60))
                .await
                .unwrap()
                .unwrap(),
            5
        );
        assert_eq!(
            kv::Host::increment(&mut st, "n".into(), -2, None)
                .await
                .unwrap()
                .unwrap(),
            3
        );
        assert!(matches!(
            kv::Host::increment(&mut st, "k".into(), 1, None)
                .await
                .unwrap(),
            Err(kv::KvError::NotACounter)
        ));
        assert!(
            kv::Host::delete(&mut st, "k".into())
                .await
                .unwrap()
                .unwrap()
        );
        assert!(
            !kv::Host::delete(&mut st, "k".into())
                .await
                .unwrap()
                .unwrap()
        );
        assert_eq!(
            kv::Host::get(&mut st, "k".into()).await.unwrap().unwrap(),
            None
        );
        assert!(matches!(
            kv::Host::get(&mut st, String::new()).await.unwrap(),
            Err(kv::KvError::InvalidKey)
        ));
    }

    #[test]
    fn an_unavailable_kv_is_told_to_the_plugin_or_fails_its_call_as_configured() {
        let down = || Err::<(), _>(KvFault::Unavailable("Redis: refused".into()));
        match kv_answer(OnUnavailable::Plugin, down()) {
            Ok(Err(kv::KvError::Unavailable(why))) => assert_eq!(why, "Redis: refused"),
            other => panic!("{other:?}"),
        }
        match kv_answer(OnUnavailable::OnError, down()) {
            Err(e) => assert!(e.to_string().contains("kv backend unavailable"), "{e}"),
            other => panic!("{other:?}"),
        }
        // Other faults are the plugin's to handle either way.
        assert!(matches!(
            kv_answer::<()>(OnUnavailable::OnError, Err(KvFault::QuotaExceeded)),
            Ok(Err(kv::KvError::QuotaExceeded))
        ));
        assert!(matches!(
            kv_answer(OnUnavailable::OnError, Ok(7)),
            Ok(Ok(7))
        ));
    }

    #[tokio::test]
    async fn kv_keys_are_namespaced_by_plugin_name() {
        let services = services(50);
        let mut a = state_with("a", &[Capability::Kv], Arc::clone(&services));
        let mut b = state_with("b", &[Capability::Kv], Arc::clone(&services));
        kv::Host::set(&mut a, "shared".into(), b"from a".to_vec(), None)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            kv::Host::get(&mut b, "shared".into())
                .await
                .unwrap()
                .unwrap(),
            None
        );
        let first = kv::Host::set_if_absent(&mut b, "shared".into(), b"from b".to_vec(), None)
            .await
            .unwrap()
            .unwrap();
        assert!(first, "b's key is its own");
        assert_eq!(
            kv::Host::get(&mut a, "shared".into())
                .await
                .unwrap()
                .unwrap(),
            Some(b"from a".to_vec())
        );
    }

    #[tokio::test]
    async fn clock_without_the_grant_is_denied() {
        let mut st = state(&all_but(Capability::Clock));
        assert!(matches!(
            clock::Host::now(&mut st).await.unwrap(),
            Err(clock::ClockError::Denied)
        ));
        assert!(matches!(
            clock::Host::monotonic_now(&mut st).await.unwrap(),
            Err(clock::ClockError::Denied)
        ));
    }

    #[tokio::test]
    async fn clock_now_when_granted_is_the_wall_clock() {
        let mut st = state(&[Capability::Clock]);
        let before = crate::queue::entry::now_ms();
        let now = clock::Host::now(&mut st).await.unwrap().unwrap();
        let after = crate::queue::entry::now_ms();
        assert!(
            now + 5_000 >= before && now <= after + 5_000,
            "{before} <= {now} <= {after} (within 5 s)"
        );
        let m1 = clock::Host::monotonic_now(&mut st).await.unwrap().unwrap();
        let m2 = clock::Host::monotonic_now(&mut st).await.unwrap().unwrap();
        assert!(m2 >= m1, "{m1} then {m2}");
    }

    #[tokio::test]
    async fn dns_without_the_grant_is_denied_and_uses_no_budget() {
        let mut st = state(&all_but(Capability::Dns));
        fn denied<T>(r: Result<T, dns::DnsError>) -> bool {
            matches!(r, Err(dns::DnsError::Denied))
        }
        assert!(denied(
            dns::Host::lookup_txt(&mut st, "example.test".into())
                .await
                .unwrap()
        ));
        assert!(denied(
            dns::Host::lookup_a(&mut st, "example.test".into())
                .await
                .unwrap()
        ));
        assert!(denied(
            dns::Host::lookup_aaaa(&mut st, "example.test".into())
                .await
                .unwrap()
        ));
        assert!(denied(
            dns::Host::lookup_mx(&mut st, "example.test".into())
                .await
                .unwrap()
        ));
        assert!(denied(
            dns::Host::lookup_ptr(&mut st, types::IpAddress::Ipv4((192, 0, 2, 1)))
                .await
                .unwrap()
        ));
        assert_eq!(
            st.budgets
                .session
                .dns_queries
                .load(std::sync::atomic::Ordering::Relaxed),
            0
        );
    }

    #[tokio::test]
    async fn dns_budget_refuses_the_lookup_after_the_last_one_allowed() {
        let mut st = state_with("p", &[Capability::Dns], services(2));
        // Names the resolver refuses before sending anything still count.
        assert!(matches!(
            dns::Host::lookup_txt(&mut st, "bad name".into())
                .await
                .unwrap(),
            Err(dns::DnsError::InvalidName)
        ));
        assert!(matches!(
            dns::Host::lookup_a(&mut st, "bad name".into())
                .await
                .unwrap(),
            Err(dns::DnsError::InvalidName)
        ));
        assert_eq!(
            st.budgets
                .session
                .dns_queries
                .load(std::sync::atomic::Ordering::Relaxed),
            2
        );
        // A valid name now: a query sent to the dead server would time out instead.
        assert!(matches!(
            dns::Host::lookup_mx(&mut st, "example.test".into())
                .await
                .unwrap(),
            Err(dns::DnsError::BudgetExceeded)
        ));
        assert!(matches!(st.dns_admit(), Err(dns::DnsError::BudgetExceeded)));
        assert_eq!(
            st.budgets
                .session
                .dns_queries
                .load(std::sync::atomic::Ordering::Relaxed),
            2,
            "refused lookups are not counted"
        );
    }

    #[tokio::test]
    async fn lookup_a_many_answers_in_order_each_name_within_the_budget() {
        let mut st = state_with("p", &[Capability::Dns], services(2));
        let names = vec!["bad name".into(), "also bad".into(), "third.test".into()];
        let answers = dns::Host::lookup_a_many(&mut st, names).await.unwrap();
        assert_eq!(answers.len(), 3);
        assert!(matches!(answers[0], Err(dns::DnsError::InvalidName)));
        assert!(matches!(answers[1], Err(dns::DnsError::InvalidName)));
        // The budget (2) is spent: the third is refused without a query.
        assert!(matches!(answers[2], Err(dns::DnsError::BudgetExceeded)));
        let mut st = state_with("p", &[Capability::Dns], services(100));
        let many: Vec<String> = (0..70).map(|i| format!("bad name {i}")).collect();
        let answers = dns::Host::lookup_a_many(&mut st, many).await.unwrap();
        assert_eq!(answers.len(), 70);
        assert!(matches!(answers[63], Err(dns::DnsError::InvalidName)));
        assert!(matches!(&answers[64], Err(dns::DnsError::Other(m)) if m.contains("64")));
    }

    #[tokio::test]
    async fn dns_admit_counts_each_admitted_lookup_up_to_the_budget() {
        let mut st = state_with("p", &[Capability::Dns], services(3));
        for n in 1..=3 {
            assert!(st.dns_admit().is_ok(), "lookup {n}");
            assert_eq!(
                st.budgets
                    .session
                    .dns_queries
                    .load(std::sync::atomic::Ordering::Relaxed),
                n
            );
        }
        assert!(matches!(st.dns_admit(), Err(dns::DnsError::BudgetExceeded)));
        let mut fresh = state_with("p", &[], services(3));
        assert!(matches!(fresh.dns_admit(), Err(dns::DnsError::Denied)));
    }

    #[tokio::test]
    async fn verify_without_the_grant_is_denied_and_probes_nothing() {
        let services = services(50);
        let mut st = state_with("p", &all_but(Capability::Verify), Arc::clone(&services));
        let rcpt = || types::Address {
            local_part: "u".into(),
            domain: "example.test".into(),
        };
        assert!(matches!(
            verify::Host::recipient(&mut st, rcpt()).await.unwrap(),
            Err(verify::VerifyError::Denied)
        ));
        let via = types::RelayHost {
            host: "127.0.0.1".into(),
            port: 25,
            tls: types::TlsPolicy::Disabled,
        };
        assert!(matches!(
            verify::Host::recipient_via(&mut st, rcpt(), via.clone())
                .await
                .unwrap(),
            Err(verify::VerifyError::Denied)
        ));
        assert_eq!(services.verify.stats().probes, 0);
        assert_eq!(
            st.budgets
                .session
                .dns_queries
                .load(std::sync::atomic::Ordering::Relaxed),
            0
        );
        // Granted: bad arguments are refused before anything is asked; without a server
        // (nothing attached) the answer is unavailable.
        let mut st = state_with("p", &[Capability::Verify], Arc::clone(&services));
        st.deadline = std::time::Instant::now() + Duration::from_secs(2);
        let bad_hop = types::RelayHost {
            host: "bad host".into(),
            ..via.clone()
        };
        let r = verify::Host::recipient_via(&mut st, rcpt(), bad_hop)
            .await
            .unwrap();
        assert!(
            matches!(&r, Err(verify::VerifyError::Unavailable(m)) if m.contains("bad relay host")),
            "{r:?}"
        );
        let bad_rcpt = types::Address {
            local_part: "a%b".into(),
            domain: "example.test".into(),
        };
        let r = verify::Host::recipient(&mut st, bad_rcpt).await.unwrap();
        assert!(
            matches!(&r, Err(verify::VerifyError::Unavailable(m)) if m.contains("bad recipient")),
            "{r:?}"
        );
        let r = verify::Host::recipient(&mut st, rcpt()).await.unwrap();
        assert!(
            matches!(&r, Err(verify::VerifyError::Unavailable(m)) if m.contains("not set up")),
            "{r:?}"
        );
        assert_eq!(services.verify.stats().probes, 0);
    }

    #[tokio::test]
    async fn auth_results_are_denied_without_the_grant_and_unavailable_with_it() {
        let mut st = state(&all_but(Capability::AuthResults));
        assert!(matches!(
            auth_results::Host::spf(&mut st).await.unwrap(),
            Err(auth_results::AuthError::Denied)
        ));
        assert!(matches!(
            auth_results::Host::dmarc(&mut st).await.unwrap(),
            Err(auth_results::AuthError::Denied)
        ));
        let mut st = state(&[Capability::AuthResults]);
        assert!(matches!(
            auth_results::Host::spf(&mut st).await.unwrap(),
            Err(auth_results::AuthError::Unavailable)
        ));
        assert!(matches!(
            auth_results::Host::header_value(&mut st).await.unwrap(),
            Err(auth_results::AuthError::Unavailable)
        ));
    }

    #[tokio::test]
    async fn log_without_the_grant_writes_nothing() {
        let (captured, _guard) = Capture::start(tracing::Level::TRACE);
        let mut st = state(&all_but(Capability::Log));
        assert!(
            !log::Host::enabled(&mut st, log::Level::Error)
                .await
                .unwrap()
        );
        log::Host::log(&mut st, log::Level::Error, "ungranted-line".into(), vec![])
            .await
            .unwrap();
        assert_eq!(captured.count("ungranted-line"), 0);
        assert_eq!(
            st.budgets
                .session
                .log_lines
                .load(std::sync::atomic::Ordering::Relaxed),
            0
        );
    }

    #[tokio::test]
    async fn log_enabled_follows_the_subscriber_level_when_granted() {
        let (_captured, _guard) = Capture::start(tracing::Level::INFO);
        let mut st = state(&[Capability::Log]);
        assert!(log::Host::enabled(&mut st, log::Level::Warn).await.unwrap());
        assert!(log::Host::enabled(&mut st, log::Level::Info).await.unwrap());
        assert!(
            !log::Host::enabled(&mut st, log::Level::Debug)
                .await
                .unwrap()
        );
    }

    #[tokio::test]
    async fn log_lines_over_the_per_session_budget_are_dropped() {
        use crate::plugin::budget::{LogRate, MAX_LOG_LINES};
        let (captured, _guard) = Capture::start(tracing::Level::TRACE);
        let mut st = state(&[Capability::Log]);
        // A rate that never runs dry: the session budget is what stops it.
        st.budgets.log_rate = Arc::new(LogRate::new(u32::MAX, u32::MAX));
        let extra = 5;
        for _ in 0..MAX_LOG_LINES + extra {
            log::Host::log(&mut st, log::Level::Info, "budget-line".into(), vec![])
                .await
                .unwrap();
        }
        assert_eq!(
            st.budgets
                .session
                .log_lines
                .load(std::sync::atomic::Ordering::Relaxed),
            MAX_LOG_LINES
        );
        assert_eq!(captured.count("budget-line"), MAX_LOG_LINES as usize);
    }

    #[tokio::test]
    async fn log_lines_past_the_plugin_rate_are_dropped_and_said_once() {
        use crate::plugin::budget::LogRate;
        let (captured, _guard) = Capture::start(tracing::Level::TRACE);
        let mut st = state(&[Capability::Log]);
        let rate = Arc::new(LogRate::new(3, 1 << 20));
        st.budgets.log_rate = Arc::clone(&rate);
        for _ in 0..10 {
            log::Host::log(&mut st, log::Level::Info, "rated-line".into(), vec![])
                .await
                .unwrap();
        }
        assert_eq!(captured.count("rated-line"), 3);
        assert_eq!(rate.dropped(), 7);
        assert_eq!(captured.count("dropping its lines"), 1, "said once");
    }

    #[tokio::test]
    async fn log_strips_control_characters_and_caps_fields() {
        let (captured, _guard) = Capture::start(tracing::Level::TRACE);
        let mut st = state(&[Capability::Log]);
        let fields = (0..20)
            .map(|i| (format!("f{i:02}"), format!("v{i}")))
            .collect();
        log::Host::log(
            &mut st,
            log::Level::Warn,
            "evil\r\nFAKE log line".into(),
            fields,
        )
        .await
        .unwrap();
        let text = captured.text();
        assert_eq!(captured.count("FAKE log line"), 1, "{text}");
        assert!(text.contains("evil  FAKE log line"), "{text}");
        assert!(text.contains("plugin=\"p\""), "{text}");
        assert!(text.contains("session=\"S1\""), "{text}");
        assert!(text.contains("f15="), "{text}");
        assert!(!text.contains("f16="), "at most 16 fields: {text}");
    }

    #[tokio::test]
    async fn metrics_are_recorded_only_when_granted_and_well_formed() {
        let (captured, _guard) = Capture::start(tracing::Level::DEBUG);
        let mut st = state(&all_but(Capability::Metrics));
        metrics::Host::counter_add(&mut st, "host_test_ungranted".into(), vec![], 1)
            .await
            .unwrap();

        let mut st = state(&[Capability::Metrics]);
        metrics::Host::counter_add(&mut st, "host_test_hits".into(), vec![], 2)
            .await
            .unwrap();
        for _ in 0..2 {
            metrics::Host::gauge_set(&mut st, "bad name!".into(), vec![], 1.0)
                .await
                .unwrap();
        }
        let labels = (0..9).map(|i| (format!("l{i}"), "v".into())).collect();
        metrics::Host::histogram_observe(&mut st, "host_test_labels".into(), labels, 0.5)
            .await
            .unwrap();
        let text = crate::metrics::encode();
        assert!(
            text.contains(&format!(
                "mailgate_plugin_host_test_hits_total{{plugin=\"{}\"}} 2",
                st.spec.name
            )),
            "{text}"
        );
        assert!(!text.contains("host_test_ungranted"), "{text}");
        assert!(!text.contains("host_test_labels"), "{text}");
        let log = captured.text();
        assert_eq!(
            captured.count("plugin metric ignored"),
            2,
            "once per name: {log}"
        );
    }

    #[tokio::test]
    async fn a_lent_message_is_read_through_its_resource_and_a_deleted_one_traps() {
        let mut st = state(&[]);
        let raw = bytes::Bytes::from_static(b"Subject: hello\r\nX-A: 1\r\n\r\nthe body\r\n");
        let parsed = ParsedMessage::new(
            "S1.1".into(),
            42,
            crate::smtp::MessageText::new(raw.clone()),
        );
        let own = st.table().push(MessageHandle(Arc::new(parsed))).unwrap();
        let lent = || Resource::<MessageHandle>::new_borrow(own.rep());
        assert_eq!(
            message::HostMessage::id(&mut st, lent()).await.unwrap(),
            "S1.1"
        );
        assert_eq!(
            message::HostMessage::received_at(&mut st, lent())
                .await
                .unwrap(),
            42
        );
        assert_eq!(
            message::HostMessage::size(&mut st, lent()).await.unwrap(),
            raw.len() as u64
        );
        assert_eq!(
            message::HostMessage::header(&mut st, lent(), "subject".into())
                .await
                .unwrap(),
            vec!["hello".to_string()]
        );
        assert_eq!(
            message::HostMessage::read_body(&mut st, lent(), 4, 100)
                .await
                .unwrap(),
            b"body\r\n"
        );
        assert_eq!(
            message::HostMessage::read_raw(&mut st, lent(), 0, 7)
                .await
                .unwrap(),
            b"Subject"
        );
        assert!(
            message::HostMessage::read_part(&mut st, lent(), 99, 0, 10)
                .await
                .unwrap()
                .is_empty()
        );
        let rep = own.rep();
        st.table().delete(own).unwrap();
        let gone = Resource::<MessageHandle>::new_borrow(rep);
        assert!(message::HostMessage::id(&mut st, gone).await.is_err());
    }
}
