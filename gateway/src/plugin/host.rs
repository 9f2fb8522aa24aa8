//! Host capabilities as the WIT imports them. Each checks its grant first: an ungranted
//! capability answers `denied` (`log` and `metrics` do nothing). DNS goes through the
//! gateway's resolver ([`crate::dns`]) within the per-session budget; auth results answer
//! `unavailable` until the SPF/DKIM/DMARC checks land.

use std::time::SystemTime;

use wasmtime::component::Resource;

use super::bindings::mailgate::plugin::{
    auth_results, clock, dns, kv, log, message, metrics, types,
};
use super::convert;
use super::kv::KvFault;
use super::message::{MessageHandle, chunk};
use super::state::{MAX_LOG_LINES, State};
use crate::config::Capability;

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
        if !self.granted(Capability::Log) || self.log_lines >= MAX_LOG_LINES {
            return Ok(());
        }
        self.log_lines += 1;
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
        let (plugin, session) = (self.spec.name.as_str(), self.session_id.as_str());
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
        let ms = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis();
        Ok(Ok(ms as u64))
    }

    async fn monotonic_now(&mut self) -> R<Result<u64, clock::ClockError>> {
        if !self.granted(Capability::Clock) {
            return Ok(Err(clock::ClockError::Denied));
        }
        Ok(Ok(self.started.elapsed().as_nanos() as u64))
    }
}

impl State {
    /// Grant and budget check before a lookup; counts the lookup.
    fn dns_admit(&mut self) -> Result<std::sync::Arc<crate::dns::Resolver>, dns::DnsError> {
        if !self.granted(Capability::Dns) {
            return Err(dns::DnsError::Denied);
        }
        let dns = &self.services.dns;
        if self.dns_queries >= dns.settings().plugin_budget {
            return Err(dns::DnsError::BudgetExceeded);
        }
        self.dns_queries += 1;
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
}

fn kv_err(f: KvFault) -> kv::KvError {
    match f {
        KvFault::InvalidKey => kv::KvError::InvalidKey,
        KvFault::ValueTooLarge => kv::KvError::ValueTooLarge,
        KvFault::QuotaExceeded => kv::KvError::QuotaExceeded,
        KvFault::NotACounter => kv::KvError::NotACounter,
    }
}

impl kv::Host for State {
    async fn get(&mut self, key: String) -> R<Result<Option<Vec<u8>>, kv::KvError>> {
        if !self.granted(Capability::Kv) {
            return Ok(Err(kv::KvError::Denied));
        }
        Ok(self.services.kv.get(&self.spec.name, &key).map_err(kv_err))
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
        Ok(self
            .services
            .kv
            .set(&self.spec.name, &key, value, ttl)
            .map_err(kv_err))
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
        Ok(self
            .services
            .kv
            .set_if_absent(&self.spec.name, &key, value, ttl)
            .map_err(kv_err))
    }
    async fn delete(&mut self, key: String) -> R<Result<bool, kv::KvError>> {
        if !self.granted(Capability::Kv) {
            return Ok(Err(kv::KvError::Denied));
        }
        Ok(self
            .services
            .kv
            .delete(&self.spec.name, &key)
            .map_err(kv_err))
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
        Ok(self
            .services
            .kv
            .increment(&self.spec.name, &key, delta, ttl)
            .map_err(kv_err))
    }
}

impl auth_results::Host for State {
    async fn spf(&mut self) -> R<Result<auth_results::SpfCheck, auth_results::AuthError>> {
        Ok(Err(self.auth_gate()))
    }
    async fn spf_helo(&mut self) -> R<Result<auth_results::SpfCheck, auth_results::AuthError>> {
        Ok(Err(self.auth_gate()))
    }
    async fn dkim(&mut self) -> R<Result<Vec<auth_results::DkimCheck>, auth_results::AuthError>> {
        Ok(Err(self.auth_gate()))
    }
    async fn dmarc(&mut self) -> R<Result<auth_results::DmarcCheck, auth_results::AuthError>> {
        Ok(Err(self.auth_gate()))
    }
    async fn arc(&mut self) -> R<Result<auth_results::ArcResult, auth_results::AuthError>> {
        Ok(Err(self.auth_gate()))
    }
    async fn iprev(&mut self) -> R<Result<auth_results::IprevResult, auth_results::AuthError>> {
        Ok(Err(self.auth_gate()))
    }
    async fn header_value(&mut self) -> R<Result<String, auth_results::AuthError>> {
        Ok(Err(self.auth_gate()))
    }
}

impl State {
    fn auth_gate(&self) -> auth_results::AuthError {
        if self.granted(Capability::AuthResults) {
            auth_results::AuthError::Unavailable
        } else {
            auth_results::AuthError::Denied
        }
    }

    fn metric(&self, kind: &str, name: &str, labels: &[(String, String)], value: f64) {
        if !self.granted(Capability::Metrics) {
            return;
        }
        let ok = !name.is_empty()
            && name.len() <= 64
            && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
        if ok && labels.len() <= 8 {
            tracing::debug!(plugin = %self.spec.name, kind, metric = name, value, labels = ?labels, "plugin metric");
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
        self.metric("counter", &name, &labels, delta as f64);
        Ok(())
    }
    async fn gauge_set(
        &mut self,
        name: String,
        labels: Vec<(String, String)>,
        value: f64,
    ) -> R<()> {
        self.metric("gauge", &name, &labels, value);
        Ok(())
    }
    async fn histogram_observe(
        &mut self,
        name: String,
        labels: Vec<(String, String)>,
        value: f64,
    ) -> R<()> {
        self.metric("histogram", &name, &labels, value);
        Ok(())
    }
}

impl message::Host for State {}

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
        Ok(self.msg(&m)?.0.raw.len() as u64)
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
        Ok(self.msg(&m)?.0.header_decoded(&name))
    }
    async fn body_size(&mut self, m: Resource<MessageHandle>) -> R<u64> {
        Ok(self.msg(&m)?.0.body().len() as u64)
    }
    async fn read_body(&mut self, m: Resource<MessageHandle>, offset: u64, len: u32) -> R<Vec<u8>> {
        Ok(chunk(self.msg(&m)?.0.body(), offset, len))
    }
    async fn read_raw(&mut self, m: Resource<MessageHandle>, offset: u64, len: u32) -> R<Vec<u8>> {
        Ok(chunk(&self.msg(&m)?.0.raw, offset, len))
    }
    async fn parts(&mut self, m: Resource<MessageHandle>) -> R<Vec<message::Part>> {
        let h = self.msg(&m)?;
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
                decoded_size: p.decoded.len() as u64,
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
        Ok(h.0
            .parts()
            .get(index as usize)
            .map(|p| chunk(&p.decoded, offset, len))
            .unwrap_or_default())
    }
    async fn text(&mut self, m: Resource<MessageHandle>, max_len: u32) -> R<String> {
        Ok(self.msg(&m)?.0.text(max_len as usize))
    }
    async fn drop(&mut self, m: Resource<MessageHandle>) -> R<()> {
        // The host owns lent messages; a guest drop of its borrow is a no-op, and the
        // host deletes the entry after the call.
        let _ = m;
        Ok(())
    }
}
