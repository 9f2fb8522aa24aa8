//! DNS resolution for the whole gateway (hickory-resolver): plugin lookups through the
//! `dns` capability, the client's reverse name at connect, and the queue's MX routing.
//!
//! One [`Resolver`] per process. Answers are cached by hickory-resolver, honouring
//! record TTLs (positive and negative), up to `dns.cache_size` entries. Every lookup is
//! bounded by `dns.timeout_ms` over all attempts, so a dead name server costs a caller at
//! most that long. Names are looked up as absolute names (no search list), which is
//! what a mail server wants: `example.com` never becomes `example.com.corp.lan`.
//!
//! Outcomes are mapped onto [`DnsError`]: an existing name without records of the
//! requested type is an empty answer (`Ok(vec![])`), a missing name is
//! [`DnsError::NxDomain`].

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use hickory_resolver::TokioResolver;
use hickory_resolver::config::{NameServerConfig, ResolveHosts, ResolverConfig, ResolverOpts};
use hickory_resolver::lookup::Lookup;
use hickory_resolver::net::NetError;
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::op::ResponseCode;
use hickory_resolver::proto::rr::{Name, RData};

/// Longest domain name accepted for a lookup (RFC 1035: 255 octets on the wire).
const MAX_NAME: usize = 253;
/// Records kept from one answer.
const MAX_RECORDS: usize = 64;

/// Resolver settings (`[dns]`), checked.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Settings {
    /// Name servers; empty means the system's (`/etc/resolv.conf`).
    pub servers: Vec<SocketAddr>,
    /// Bound on one lookup, all attempts included.
    pub timeout: Duration,
    /// Tries per name server.
    pub attempts: usize,
    /// Cached answers.
    pub cache_size: u64,
    /// Lookups each plugin may make per SMTP session.
    pub plugin_budget: u32,
    /// Look up (and forward-confirm) every client's reverse name at connect.
    pub reverse_lookup: bool,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            servers: vec![],
            timeout: Duration::from_secs(5),
            attempts: 2,
            cache_size: 4096,
            plugin_budget: 50,
            reverse_lookup: true,
        }
    }
}

/// Why a lookup gave no answer.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DnsError {
    /// No answer within the timeout.
    #[error("DNS lookup timed out")]
    Timeout,
    /// The name does not exist.
    #[error("no such domain (NXDOMAIN)")]
    NxDomain,
    /// SERVFAIL, REFUSED, or no name server reachable.
    #[error("DNS server failure: {0}")]
    ServerFailure(String),
    /// Not a valid domain name.
    #[error("invalid domain name")]
    InvalidName,
    /// Anything else.
    #[error("DNS error: {0}")]
    Other(String),
}

/// What the reverse lookup of a client found ([`Resolver::reverse_name`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReverseName {
    /// A forward-confirmed name.
    Confirmed(String),
    /// No PTR record, or none that confirms.
    None,
    /// A lookup failed for now (timeout, server failure).
    TempFail,
}

/// An MX record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mx {
    /// Lower is preferred.
    pub preference: u16,
    /// Exchange host, lowercase, without the trailing dot.
    pub exchange: String,
}

/// The gateway's resolver.
#[derive(Clone)]
pub struct Resolver {
    inner: TokioResolver,
    settings: Settings,
}

impl std::fmt::Debug for Resolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Resolver")
            .field("settings", &self.settings)
            .finish()
    }
}

impl Resolver {
    /// The hickory resolver underneath (its cache included), for libraries that take
    /// one (mail-auth).
    pub fn hickory(&self) -> &TokioResolver {
        &self.inner
    }

    /// Builds the resolver. With no configured servers, reads the system configuration;
    /// if that fails, every lookup answers [`DnsError::ServerFailure`] (and a warning says
    /// why) rather than refusing to start.
    pub fn new(settings: Settings) -> Resolver {
        let (config, mut opts) = if settings.servers.is_empty() {
            match hickory_resolver::system_conf::read_system_conf() {
                Ok((config, opts)) => {
                    let (_, _, servers) = config.into_parts();
                    (ResolverConfig::from_name_servers(servers), opts)
                }
                Err(e) => {
                    tracing::warn!(
                        "cannot read the system DNS configuration ({e}); set dns.servers: DNS lookups will fail"
                    );
                    (
                        ResolverConfig::from_name_servers(vec![]),
                        ResolverOpts::default(),
                    )
                }
            }
        } else {
            let servers = settings
                .servers
                .iter()
                .map(|s| {
                    let mut ns = NameServerConfig::udp_and_tcp(s.ip());
                    for c in &mut ns.connections {
                        c.port = s.port();
                    }
                    ns
                })
                .collect();
            (
                ResolverConfig::from_name_servers(servers),
                ResolverOpts::default(),
            )
        };
        let attempts = settings.attempts.max(1);
        opts.attempts = attempts;
        opts.timeout = settings.timeout / attempts as u32;
        opts.cache_size = settings.cache_size;
        opts.ndots = 0;
        opts.use_hosts_file = ResolveHosts::Never;
        opts.edns0 = true;
        let inner = TokioResolver::builder_with_config(config, TokioRuntimeProvider::default())
            .with_options(opts)
            .build()
            .unwrap_or_else(|e| {
                tracing::warn!("DNS resolver: {e}; DNS lookups will fail");
                TokioResolver::builder_with_config(
                    ResolverConfig::from_name_servers(vec![]),
                    TokioRuntimeProvider::default(),
                )
                .build()
                .expect("a resolver without servers builds")
            });
        Resolver { inner, settings }
    }

    /// The settings it was built with.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// TXT records of `name`, each record's strings concatenated (lossy UTF-8).
    pub async fn txt(&self, name: &str) -> Result<Vec<String>, DnsError> {
        self.txt_at(absolute(name)?).await
    }

    /// As [`Resolver::txt`], for a name already made.
    pub(crate) async fn txt_at(&self, name: Name) -> Result<Vec<String>, DnsError> {
        let lookup = self.bounded("TXT", self.inner.txt_lookup(name)).await?;
        Ok(records(&lookup, |d| match d {
            RData::TXT(t) => Some(
                t.txt_data
                    .iter()
                    .map(|s| String::from_utf8_lossy(s))
                    .collect::<String>(),
            ),
            _ => None,
        }))
    }

    /// A records of `name`.
    pub async fn a(&self, name: &str) -> Result<Vec<IpAddr>, DnsError> {
        self.a_at(absolute(name)?).await
    }

    /// As [`Resolver::a`], for a name already made.
    pub(crate) async fn a_at(&self, name: Name) -> Result<Vec<IpAddr>, DnsError> {
        let lookup = self.bounded("A", self.inner.ipv4_lookup(name)).await?;
        Ok(records(&lookup, |d| match d {
            RData::A(a) => Some(IpAddr::V4(a.0)),
            _ => None,
        }))
    }

    /// AAAA records of `name`.
    pub async fn aaaa(&self, name: &str) -> Result<Vec<IpAddr>, DnsError> {
        self.aaaa_at(absolute(name)?).await
    }

    /// As [`Resolver::aaaa`], for a name already made.
    pub(crate) async fn aaaa_at(&self, name: Name) -> Result<Vec<IpAddr>, DnsError> {
        let lookup = self.bounded("AAAA", self.inner.ipv6_lookup(name)).await?;
        Ok(records(&lookup, |d| match d {
            RData::AAAA(a) => Some(IpAddr::V6(a.0)),
            _ => None,
        }))
    }

    /// MX records of `name`, by preference (then name, for a stable order).
    pub async fn mx(&self, name: &str) -> Result<Vec<Mx>, DnsError> {
        self.mx_at(absolute(name)?).await
    }

    /// As [`Resolver::mx`], for a name already made.
    pub(crate) async fn mx_at(&self, name: Name) -> Result<Vec<Mx>, DnsError> {
        let lookup = self.bounded("MX", self.inner.mx_lookup(name)).await?;
        let mut mx = records(&lookup, |d| match d {
            RData::MX(m) => Some(Mx {
                preference: m.preference,
                exchange: host(&m.exchange),
            }),
            _ => None,
        });
        mx.sort_by(|a, b| (a.preference, &a.exchange).cmp(&(b.preference, &b.exchange)));
        Ok(mx)
    }

    /// PTR names of `ip` (lowercase, without the trailing dot), not confirmed.
    pub async fn ptr(&self, ip: IpAddr) -> Result<Vec<String>, DnsError> {
        let lookup = self
            .bounded("PTR", self.inner.reverse_lookup(Name::from(ip)))
            .await?;
        Ok(records(&lookup, |d| match d {
            RData::PTR(p) => Some(host(&p.0)),
            _ => None,
        }))
    }

    /// Addresses of `name` of `ip`'s family.
    async fn same_family(&self, name: &str, ip: IpAddr) -> Result<Vec<IpAddr>, DnsError> {
        match ip {
            IpAddr::V4(_) => self.a(name).await,
            IpAddr::V6(_) => self.aaaa(name).await,
        }
    }

    /// The forward-confirmed reverse name of `ip` (FCrDNS, as Postfix's
    /// `reverse_client_name` check): the first PTR name (of at most 10) whose addresses
    /// include `ip`. `None` when there is none or a lookup failed.
    pub async fn confirmed_name(&self, ip: IpAddr) -> Option<String> {
        match self.reverse_name(ip).await {
            ReverseName::Confirmed(name) => Some(name),
            ReverseName::None | ReverseName::TempFail => None,
        }
    }

    /// [`Resolver::confirmed_name`], telling "no name" from "no answer now": a PTR
    /// lookup that timed out or failed at the server, or forward lookups of its names
    /// that did so with none confirming, is [`ReverseName::TempFail`] (Postfix's
    /// `[TEMPUNAVAIL]`, told to the upstream by XCLIENT).
    pub async fn reverse_name(&self, ip: IpAddr) -> ReverseName {
        let temporary = |e: &DnsError| !matches!(e, DnsError::NxDomain | DnsError::InvalidName);
        let names = match self.ptr(ip).await {
            Ok(n) => n,
            Err(e) if temporary(&e) => return ReverseName::TempFail,
            Err(_) => return ReverseName::None,
        };
        let mut tempfail = false;
        for name in names.into_iter().take(10) {
            match self.same_family(&name, ip).await {
                Ok(addrs) if addrs.contains(&ip) => return ReverseName::Confirmed(name),
                Ok(_) => {}
                Err(e) => tempfail |= temporary(&e),
            }
        }
        if tempfail {
            ReverseName::TempFail
        } else {
            ReverseName::None
        }
    }

    /// Runs `fut` (an `rtype` query) under the overall timeout, maps hickory's errors,
    /// and counts it in the `dns_queries` metric.
    async fn bounded(
        &self,
        rtype: &'static str,
        fut: impl Future<Output = Result<Lookup, NetError>>,
    ) -> Result<Lookup, DnsError> {
        let started = std::time::Instant::now();
        let result = match tokio::time::timeout(self.settings.timeout, fut).await {
            Err(_) => Err(DnsError::Timeout),
            Ok(Ok(l)) => Ok(l),
            Ok(Err(e)) => match classify(&e) {
                Ok(()) => Ok(Lookup::new_with_max_ttl(
                    hickory_resolver::proto::op::Query::default(),
                    [],
                )),
                Err(e) => Err(e),
            },
        };
        let outcome = match &result {
            Ok(l) if l.answers().is_empty() => "empty",
            Ok(_) => "answer",
            Err(DnsError::NxDomain) => "nxdomain",
            Err(DnsError::Timeout) => "timeout",
            Err(DnsError::ServerFailure(_)) => "servfail",
            Err(_) => "error",
        };
        let m = crate::metrics::get();
        m.dns_queries
            .get_or_create(&crate::metrics::DnsLabels {
                rtype: rtype.to_string(),
                outcome: outcome.to_string(),
            })
            .inc();
        m.dns_seconds.observe(started.elapsed().as_secs_f64());
        result
    }
}

/// `Ok(())` for "the name exists but has no such records".
fn classify(e: &NetError) -> Result<(), DnsError> {
    if e.is_nx_domain() {
        return Err(DnsError::NxDomain);
    }
    if e.is_no_records_found() {
        return Ok(());
    }
    match e {
        NetError::Timeout => Err(DnsError::Timeout),
        NetError::Dns(hickory_resolver::net::DnsError::ResponseCode(code)) => {
            Err(DnsError::ServerFailure(match code {
                ResponseCode::ServFail => "SERVFAIL".into(),
                ResponseCode::Refused => "REFUSED".into(),
                other => other.to_string(),
            }))
        }
        NetError::NoConnections | NetError::Io(_) | NetError::Busy => {
            Err(DnsError::ServerFailure(e.to_string()))
        }
        other => Err(DnsError::Other(other.to_string())),
    }
}

/// Checks and makes `name` absolute.
fn absolute(name: &str) -> Result<Name, DnsError> {
    let trimmed = name.strip_suffix('.').unwrap_or(name);
    if trimmed.is_empty()
        || trimmed.len() > MAX_NAME
        || trimmed.split('.').any(|l| l.is_empty() || l.len() > 63)
        || !trimmed
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
    {
        return Err(DnsError::InvalidName);
    }
    let mut n = Name::from_ascii(trimmed).map_err(|_| DnsError::InvalidName)?;
    n.set_fqdn(true);
    Ok(n)
}

/// `name` as SPF may ask for it (RFC 7208 7.1: a domain-spec may hold any visible
/// character, and macro expansion can produce spaces): labels of any printable ASCII.
pub(crate) fn any_name(name: &str) -> Result<Name, DnsError> {
    let trimmed = name.strip_suffix('.').unwrap_or(name);
    if trimmed.is_empty()
        || trimmed.len() > MAX_NAME
        || !trimmed.bytes().all(|b| (0x20..0x7f).contains(&b))
    {
        return Err(DnsError::InvalidName);
    }
    let labels: Vec<&[u8]> = trimmed.split('.').map(str::as_bytes).collect();
    if labels.iter().any(|l| l.is_empty() || l.len() > 63) {
        return Err(DnsError::InvalidName);
    }
    let mut n = Name::from_labels(labels).map_err(|_| DnsError::InvalidName)?;
    n.set_fqdn(true);
    Ok(n)
}

/// A host name as plugins and routing see it: lowercase, no trailing dot.
/// Labels are joined as they are (not escaped: `foo:bar/baz.test` stays that, which SPF
/// needs to look it up again).
fn host(n: &Name) -> String {
    let labels: Vec<String> = n
        .iter()
        .map(|l| String::from_utf8_lossy(l).to_ascii_lowercase())
        .collect();
    labels.join(".")
}

fn records<T>(lookup: &Lookup, f: impl Fn(&RData) -> Option<T>) -> Vec<T> {
    lookup
        .answers()
        .iter()
        .filter_map(|r| f(&r.data))
        .take(MAX_RECORDS)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked() {
        assert!(absolute("example.test").is_ok());
        assert!(absolute("example.test.").unwrap().is_fqdn());
        assert!(absolute("_dmarc.example.test").is_ok());
        assert!(absolute("1.2.0.192.zen.test").is_ok());
        for bad in ["", ".", "a..b", "a b.test", "a\0.test", "ex\r\nample.test"] {
            assert_eq!(absolute(bad), Err(DnsError::InvalidName), "{bad:?}");
        }
        assert_eq!(
            absolute(&format!("{}.test", "a".repeat(64))),
            Err(DnsError::InvalidName)
        );
        assert_eq!(
            absolute(&"a.".repeat(130)),
            Err(DnsError::InvalidName),
            "longer than 253"
        );
    }

    #[test]
    fn host_names_are_lowercase_without_dot() {
        let n = Name::from_ascii("MX1.Example.TEST.").unwrap();
        assert_eq!(host(&n), "mx1.example.test");
    }

    #[tokio::test]
    async fn a_dead_server_times_out_within_the_bound() {
        // A bound UDP socket that never answers.
        let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let r = Resolver::new(Settings {
            servers: vec![sock.local_addr().unwrap()],
            timeout: Duration::from_millis(300),
            ..Settings::default()
        });
        let t = std::time::Instant::now();
        assert_eq!(r.a("example.test").await, Err(DnsError::Timeout));
        assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    }

    #[tokio::test]
    async fn invalid_names_send_no_query() {
        let r = Resolver::new(Settings {
            servers: vec!["127.0.0.1:9".parse().unwrap()],
            ..Settings::default()
        });
        assert_eq!(r.txt("bad name").await, Err(DnsError::InvalidName));
    }
}
