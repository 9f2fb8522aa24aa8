//! Checks a loaded [`Config`] and turns it into the typed [`Runtime`] view the server uses.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use ipnet::IpNet;
use serde::Serialize;

use super::{Config, ConfigError, Limits};
use crate::delivery::TlsPolicy;
use crate::queue::route::{Hop, Routing};

/// Where accepted mail goes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub enum DeliveryMode {
    /// Write into Maildirs under this root (the embedded default).
    Maildir(PathBuf),
    /// Relay each transaction in-line to the upstream (before-queue).
    Proxy {
        /// `host:port`.
        upstream: String,
        /// STARTTLS towards the upstream.
        tls: TlsPolicy,
    },
    /// Store durably, then deliver in the background (store-and-forward).
    Queue(Box<crate::queue::Settings>),
}

impl DeliveryMode {
    /// `maildir`, `proxy` or `queue`: the config value, and the name in logs and status.
    pub fn name(&self) -> &'static str {
        match self {
            DeliveryMode::Maildir(_) => "maildir",
            DeliveryMode::Proxy { .. } => "proxy",
            DeliveryMode::Queue(_) => "queue",
        }
    }
}

/// What a plugin failure means for the stage it happened in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnError {
    /// `451 4.7.0`: the client retries later (the default).
    Tempfail,
    /// Skip the plugin for this call, as if it answered `continue`.
    Continue,
    /// `550 5.7.0`.
    Reject,
}

/// A host capability a plugin can be granted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Capability {
    /// `mailgate:plugin/log`
    Log,
    /// `mailgate:plugin/clock`
    Clock,
    /// `mailgate:plugin/dns`
    Dns,
    /// `mailgate:plugin/kv`
    Kv,
    /// `mailgate:plugin/auth-results`
    AuthResults,
    /// `mailgate:plugin/metrics`
    Metrics,
    /// `mailgate:plugin/verify`
    Verify,
}

impl Capability {
    /// All capabilities, in WIT order.
    pub const ALL: [Capability; 7] = [
        Capability::Log,
        Capability::Clock,
        Capability::Dns,
        Capability::Kv,
        Capability::AuthResults,
        Capability::Metrics,
        Capability::Verify,
    ];

    /// The config and WIT interface name.
    pub fn name(self) -> &'static str {
        match self {
            Capability::Log => "log",
            Capability::Clock => "clock",
            Capability::Dns => "dns",
            Capability::Kv => "kv",
            Capability::AuthResults => "auth-results",
            Capability::Metrics => "metrics",
            Capability::Verify => "verify",
        }
    }

    /// Parses a config name.
    pub fn parse(s: &str) -> Option<Capability> {
        Capability::ALL.into_iter().find(|c| c.name() == s)
    }
}

/// A validated `[[plugin]]` entry.
#[derive(Clone, Debug, PartialEq)]
pub struct PluginSpec {
    /// Name in logs and traces.
    pub name: String,
    /// Component file.
    pub path: PathBuf,
    /// Expected SHA-256, lowercase hex.
    pub sha256: Option<String>,
    /// Failure policy.
    pub on_error: OnError,
    /// Granted capabilities.
    pub capabilities: Vec<Capability>,
    /// Per-call deadline.
    pub deadline: Duration,
    /// Linear memory cap in bytes.
    pub memory: usize,
    /// `config` flattened to key/value pairs (nested tables as dotted keys, arrays as JSON).
    pub config: Vec<(String, String)>,
    /// May add or rewrite to address-literal recipients.
    pub literal_recipients: bool,
    /// Log lines and octets per second, over all sessions.
    pub log_rate: (u32, u32),
    /// What its `kv` namespace may hold.
    pub kv_quota: crate::plugin::kv::Quota,
    /// Instances serve later sessions after theirs (`instances = "reused"`).
    pub reuse_instances: bool,
}

fn flatten(prefix: &str, v: &serde_json::Value, out: &mut Vec<(String, String)>) {
    match v {
        serde_json::Value::Object(map) => {
            for (k, v) in map {
                flatten(&format!("{prefix}.{k}"), v, out);
            }
        }
        serde_json::Value::String(s) => out.push((prefix.to_string(), s.clone())),
        other => out.push((prefix.to_string(), other.to_string())),
    }
}

fn plugin_spec(p: &super::Plugin, seen: &mut Vec<String>) -> Result<PluginSpec, ConfigError> {
    let ok_name = !p.name.is_empty()
        && p.name.len() <= 64
        && p.name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
    if !ok_name {
        return Err(invalid(
            "plugin.name",
            format!("{:?}: use 1-64 of a-z 0-9 - _", p.name),
        ));
    }
    if seen.contains(&p.name) {
        return Err(invalid(
            "plugin.name",
            format!("{:?} appears twice", p.name),
        ));
    }
    seen.push(p.name.clone());
    let on_error = match p.on_error.as_str() {
        "tempfail" => OnError::Tempfail,
        "continue" => OnError::Continue,
        "reject" => OnError::Reject,
        o => {
            return Err(invalid(
                "plugin.on_error",
                format!("{o:?}: expected tempfail, continue or reject"),
            ));
        }
    };
    let reuse_instances = match p.instances.as_str() {
        "reused" => true,
        "per-session" => false,
        o => {
            return Err(invalid(
                "plugin.instances",
                format!("{o:?} (plugin {}): expected reused or per-session", p.name),
            ));
        }
    };
    let mut capabilities = Vec::new();
    for c in &p.capabilities {
        let cap = Capability::parse(c).ok_or_else(|| {
            let names: Vec<&str> = Capability::ALL.iter().map(|c| c.name()).collect();
            invalid(
                "plugin.capabilities",
                format!(
                    "{c:?} (plugin {}): expected one of {}",
                    p.name,
                    names.join(", ")
                ),
            )
        })?;
        if !capabilities.contains(&cap) {
            capabilities.push(cap);
        }
    }
    let sha256 = match &p.sha256 {
        Some(h) if h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()) => {
            Some(h.to_ascii_lowercase())
        }
        Some(h) => {
            return Err(invalid(
                "plugin.sha256",
                format!("{h:?} is not 64 hex digits"),
            ));
        }
        None => None,
    };
    if p.limits.deadline_ms == 0 || p.limits.deadline_ms > 60_000 {
        return Err(invalid("plugin.limits.deadline_ms", "must be 1..=60000"));
    }
    if !(2..=4096).contains(&p.limits.memory_mb) {
        return Err(invalid("plugin.limits.memory_mb", "must be 2..=4096"));
    }
    let mut config = Vec::new();
    for (k, v) in &p.config {
        flatten(k, v, &mut config);
    }
    Ok(PluginSpec {
        name: p.name.clone(),
        path: p.path.clone(),
        sha256,
        on_error,
        capabilities,
        deadline: Duration::from_millis(p.limits.deadline_ms),
        memory: (p.limits.memory_mb as usize) << 20,
        config,
        literal_recipients: p.literal_recipients,
        log_rate: (p.limits.log_lines_per_sec, p.limits.log_bytes_per_sec),
        kv_quota: crate::plugin::kv::Quota {
            entries: p.limits.kv_entries,
            bytes: p.limits.kv_mb.saturating_mul(1 << 20),
        },
        reuse_instances,
    })
}

/// The validated configuration: what a reload applies live, and what takes a restart.
/// The split is by type, so a reload is `Runtime { live: new.live, fixed: old.fixed }`
/// and the settings that need a restart are the [`Fixed`] fields that differ.
#[derive(Clone, Debug)]
pub struct Runtime {
    /// Applied by a reload.
    pub live: Live,
    /// Kept until a restart.
    pub fixed: Fixed,
}

/// Settings a reload applies to new sessions (and the queue's next attempts).
#[derive(Clone, Debug)]
pub struct Live {
    /// Our host name (greeting, EHLO, `Received:`, the queue's and proxy's EHLO, notices).
    pub hostname: String,
    /// Pause before the greeting.
    pub greeting_delay: Duration,
    /// Command read timeout.
    pub command_timeout: Duration,
    /// Message data read timeout.
    pub data_timeout: Duration,
    /// Octets per second of message data that extend `data_timeout`.
    pub min_data_rate: u64,
    /// Longest wait for a client to take a reply off its socket.
    pub write_timeout: Duration,
    /// Protocol limits.
    pub limits: Limits,
    /// Local domains, lowercase, without trailing dot.
    pub local_domains: Vec<String>,
    /// Networks allowed to relay.
    pub trusted_networks: Vec<IpNet>,
    /// The plugin chain, in order.
    pub plugins: Vec<PluginSpec>,
    /// Add the decision trace as a header.
    pub trace_header: bool,
    /// How long a session waits for its client before giving its plugin instances back
    /// (`chain.release_idle_instances_ms`; `None`: never).
    pub release_idle_instances: Option<Duration>,
    /// Quarantine Maildir root.
    pub quarantine: PathBuf,
    /// Queue routing (`[queue.routes]`, `delivery.upstream`, `queue.mx_port`); empty
    /// unless in queue mode.
    pub routing: Routing,
    /// Where spill files go (`limits.spill_dir`, or the delivery mode's default).
    pub spill_dir: PathBuf,
    /// Octets of a message held in memory before it is spilled.
    pub spill_threshold: usize,
    /// Recipient verification (`[verify]`): TTLs, probe timeout, cache size.
    pub verify: crate::verify::Settings,
    /// Peers allowed to send PROXY protocol headers
    /// (`server.proxy_protocol.trusted_networks`).
    pub proxy_trusted: Vec<IpNet>,
    /// How long a PROXY protocol header may take (`server.proxy_protocol.timeout_ms`).
    pub proxy_timeout: Duration,
    /// Next hops (`host:port` as configured) told the original client with XCLIENT or
    /// XFORWARD: `delivery.upstream` with `delivery.xclient`, and the `[queue.routes]`
    /// hosts with `xclient = true`.
    pub xclient_hosts: Vec<String>,
}

/// Settings a running gateway cannot change: listeners, sockets, shared state built at
/// start. Serialized under their config key names, which is how a reload names the ones
/// that changed.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Fixed {
    /// Plain SMTP listeners.
    #[serde(rename = "server.listen")]
    pub listen: Vec<SocketAddr>,
    /// Implicit-TLS listeners.
    #[serde(rename = "server.listen_tls")]
    pub listen_tls: Vec<SocketAddr>,
    /// Plain SMTP listeners that expect a PROXY protocol header.
    #[serde(rename = "server.proxy_protocol.listen")]
    pub proxy_listen: Vec<SocketAddr>,
    /// Implicit-TLS listeners that expect a PROXY protocol header.
    #[serde(rename = "server.proxy_protocol.listen_tls")]
    pub proxy_listen_tls: Vec<SocketAddr>,
    /// Total connection limit.
    #[serde(rename = "server.max_connections")]
    pub max_connections: usize,
    /// Per-client connection limit.
    #[serde(rename = "server.max_connections_per_ip")]
    pub max_connections_per_ip: usize,
    /// Octets of message content all sessions together may hold in memory.
    #[serde(rename = "limits.max_message_memory_mb")]
    pub max_message_memory: usize,
    /// IPv4 and IPv6 prefix lengths that make one client.
    #[serde(rename = "server.client_ipv4_prefix / client_ipv6_prefix")]
    pub client_prefixes: (u8, u8),
    /// Grace period on shutdown.
    #[serde(rename = "server.shutdown_grace_secs")]
    pub shutdown_grace: Duration,
    /// File change polling interval; zero = no watching.
    #[serde(rename = "server.watch_interval_ms")]
    pub watch_interval: Duration,
    /// Certificate and key paths, if configured.
    #[serde(rename = "tls.cert / tls.key")]
    pub tls_files: Option<(PathBuf, PathBuf)>,
    /// Generate a self-signed certificate when no files are configured.
    #[serde(rename = "tls.self_signed")]
    pub tls_self_signed: bool,
    /// Delivery mode.
    #[serde(rename = "delivery / queue")]
    pub delivery: DeliveryMode,
    /// Local parts that differ only in case or quoting are one mailbox (at RCPT and in
    /// Maildir names).
    #[serde(rename = "delivery.fold_local_part")]
    pub fold_local_part: bool,
    /// Upstream connect timeout.
    #[serde(rename = "delivery.connect_timeout_secs")]
    pub connect_timeout: Duration,
    /// Resolver settings.
    #[serde(rename = "dns")]
    pub dns: crate::dns::Settings,
    /// Admin socket path.
    #[serde(rename = "admin.socket")]
    pub admin_socket: PathBuf,
    /// The admin HTTP listener's address, if any.
    #[serde(rename = "admin.http")]
    pub admin_http: Option<std::net::SocketAddr>,
    /// Compiled-plugin cache directory, if enabled.
    #[serde(rename = "chain.compile_cache")]
    pub compile_cache: Option<PathBuf>,
    /// Linear memory of all plugin instances together.
    #[serde(rename = "chain.max_total_memory_mb")]
    pub plugin_memory: usize,
    /// The plugins' clock may be moved forward (tests).
    #[serde(rename = "chain.adjustable_clock")]
    pub adjustable_clock: bool,
    /// Sessions that may run plugins at once (connections plus queue attempts): the
    /// instance pool is sized from it.
    #[serde(rename = "server.max_connections / queue.concurrency")]
    pub plugin_sessions: usize,
    /// Where plugins' kv entries live (`[kv]`).
    #[serde(rename = "kv")]
    pub kv: crate::plugin::kv::Settings,
}

impl Fixed {
    /// The config keys whose values differ between `self` and `other`.
    pub fn changed(&self, other: &Fixed) -> Vec<String> {
        let (serde_json::Value::Object(a), serde_json::Value::Object(b)) = (
            serde_json::to_value(self).unwrap_or_default(),
            serde_json::to_value(other).unwrap_or_default(),
        ) else {
            return vec!["(settings)".into()];
        };
        a.iter()
            .filter(|(k, v)| b.get(*k) != Some(*v))
            .map(|(k, _)| k.clone())
            .collect()
    }
}

impl Live {
    /// Whether `ip` may relay to any domain.
    pub fn relay_allowed(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.trusted_networks.iter().any(|n| n.contains(&ip))
    }
}

fn invalid(key: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key,
        reason: reason.into(),
    }
}

fn addrs(key: &'static str, list: &[String]) -> Result<Vec<SocketAddr>, ConfigError> {
    list.iter()
        .map(|s| s.parse().map_err(|e| invalid(key, format!("{s:?}: {e}"))))
        .collect()
}

fn positive(key: &'static str, v: u64) -> Result<Duration, ConfigError> {
    if v == 0 {
        return Err(invalid(key, "must be greater than 0"));
    }
    Ok(Duration::from_secs(v))
}

fn is_domain(d: &str) -> bool {
    !d.is_empty()
        && d.len() <= 253
        && d.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

fn host_port(key: &'static str, v: &str) -> Result<(), ConfigError> {
    match v.rsplit_once(':') {
        Some((h, p)) if !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p > 0) => Ok(()),
        _ => Err(invalid(key, format!("{v:?} is not host:port"))),
    }
}

fn tls_policy(key: &'static str, v: &str) -> Result<TlsPolicy, ConfigError> {
    match v {
        "none" => Ok(TlsPolicy::None),
        "opportunistic" => Ok(TlsPolicy::Opportunistic),
        "required" => Ok(TlsPolicy::Required),
        other => Err(invalid(
            key,
            format!("{other:?}: expected none, opportunistic or required"),
        )),
    }
}

impl Config {
    /// Queue routing: `[queue.routes]`, then `delivery.upstream`, then MX.
    fn routing(&self, upstream_tls: TlsPolicy) -> Result<Routing, ConfigError> {
        let q = &self.queue;
        let mut routes = std::collections::BTreeMap::new();
        for (domain, r) in &q.routes {
            let d = domain.trim_end_matches('.').to_ascii_lowercase();
            if !is_domain(&d) {
                return Err(invalid(
                    "queue.routes",
                    format!("{domain:?} is not a domain name"),
                ));
            }
            host_port("queue.routes", &r.host)?;
            routes.insert(
                d,
                Hop {
                    addr: r.host.clone(),
                    tls: tls_policy("queue.routes", &r.tls)?,
                },
            );
        }
        let default = match &self.delivery.upstream {
            Some(up) if !up.is_empty() => {
                host_port("delivery.upstream", up)?;
                Some(Hop {
                    addr: up.clone(),
                    tls: upstream_tls,
                })
            }
            _ => None,
        };
        positive("queue.mx_port", q.mx_port as u64)?;
        Ok(Routing {
            routes,
            default,
            mx_port: q.mx_port,
            mx_allow_private: q.mx_allow_private,
        })
    }

    fn queue_settings(&self) -> Result<crate::queue::Settings, ConfigError> {
        let q = &self.queue;
        for (key, v) in [
            ("queue.concurrency", q.concurrency as u64),
            ("queue.per_destination", q.per_destination as u64),
            ("queue.retry_initial_secs", q.retry_initial_secs),
            ("queue.retry_max_secs", q.retry_max_secs),
            ("queue.max_lifetime_secs", q.max_lifetime_secs),
        ] {
            positive(key, v)?;
        }
        Ok(crate::queue::Settings {
            spool: q.spool.clone(),
            concurrency: q.concurrency,
            per_destination: q.per_destination,
            retry_initial: Duration::from_secs(q.retry_initial_secs),
            retry_max: Duration::from_secs(q.retry_max_secs.max(q.retry_initial_secs)),
            max_lifetime: Duration::from_secs(q.max_lifetime_secs),
            delay_warning: Duration::from_secs(q.delay_warning_secs),
            connection_idle: Duration::from_secs(q.connection_idle_secs),
            connect_timeout: Duration::from_secs(self.delivery.connect_timeout_secs.max(1)),
            maildir: self.delivery.maildir.clone(),
            fold_local_part: self.delivery.fold_local_part,
        })
    }
}

/// `[server.proxy_protocol]`, validated.
struct ProxyListeners {
    listen: Vec<SocketAddr>,
    listen_tls: Vec<SocketAddr>,
    trusted: Vec<IpNet>,
    timeout: Duration,
}

/// Checks `[server.proxy_protocol]`: addresses of their own (not also plain listeners),
/// at least one trusted network when a listener is set, a timeout of 1 ms to 60 s.
fn proxy_protocol(
    p: &super::ProxyProtocol,
    listen: &[SocketAddr],
    listen_tls: &[SocketAddr],
) -> Result<ProxyListeners, ConfigError> {
    let plain = addrs("server.proxy_protocol.listen", &p.listen)?;
    let tls = addrs("server.proxy_protocol.listen_tls", &p.listen_tls)?;
    for (key, list) in [
        ("server.proxy_protocol.listen", &plain),
        ("server.proxy_protocol.listen_tls", &tls),
    ] {
        // Port 0 (an ephemeral port, tests) is never the same listener twice.
        if let Some(a) = list
            .iter()
            .find(|a| a.port() != 0 && (listen.contains(a) || listen_tls.contains(a)))
        {
            return Err(invalid(
                key,
                format!("{a} is also in server.listen or server.listen_tls"),
            ));
        }
    }
    if let Some(a) = plain.iter().find(|a| a.port() != 0 && tls.contains(a)) {
        return Err(invalid(
            "server.proxy_protocol.listen_tls",
            format!("{a} is also in server.proxy_protocol.listen"),
        ));
    }
    let trusted = p
        .trusted_networks
        .iter()
        .map(|n| {
            n.parse::<IpNet>()
                .or_else(|_| n.parse::<IpAddr>().map(IpNet::from))
                .map_err(|e| {
                    invalid(
                        "server.proxy_protocol.trusted_networks",
                        format!("{n:?}: {e}"),
                    )
                })
        })
        .collect::<Result<Vec<_>, _>>()?;
    if trusted.is_empty() && !(plain.is_empty() && tls.is_empty()) {
        return Err(invalid(
            "server.proxy_protocol.trusted_networks",
            "PROXY listeners need the balancers' networks (every connection would be closed)",
        ));
    }
    if !(1..=60_000).contains(&p.timeout_ms) {
        return Err(invalid(
            "server.proxy_protocol.timeout_ms",
            "must be 1..=60000",
        ));
    }
    Ok(ProxyListeners {
        listen: plain,
        listen_tls: tls,
        trusted,
        timeout: Duration::from_millis(p.timeout_ms),
    })
}

impl Config {
    /// The next hops told the original client: `delivery.upstream` with
    /// `delivery.xclient` (which needs one), and `[queue.routes]` with `xclient = true`
    /// (queue mode).
    fn xclient_hosts(&self, delivery: &DeliveryMode) -> Result<Vec<String>, ConfigError> {
        let mut hosts = Vec::new();
        if self.delivery.xclient {
            match (&self.delivery.upstream, delivery) {
                (_, DeliveryMode::Maildir(_)) => {
                    return Err(invalid(
                        "delivery.xclient",
                        "maildir mode has no upstream to tell",
                    ));
                }
                (Some(up), _) if !up.is_empty() => hosts.push(up.clone()),
                _ => {
                    return Err(invalid(
                        "delivery.xclient",
                        "needs delivery.upstream (MX hosts are never told)",
                    ));
                }
            }
        }
        if matches!(delivery, DeliveryMode::Queue(_)) {
            for r in self.queue.routes.values() {
                if r.xclient && !hosts.contains(&r.host) {
                    hosts.push(r.host.clone());
                }
            }
        }
        Ok(hosts)
    }
}

/// Longest TTL `[verify]` accepts (a year).
const MAX_VERIFY_TTL: u64 = 366 * 86400;
/// Most entries the verification cache may be given.
const MAX_VERIFY_ENTRIES: usize = 10_000_000;

fn verify(v: &super::Verify) -> Result<crate::verify::Settings, ConfigError> {
    for (key, ttl) in [
        ("verify.positive_ttl_secs", v.positive_ttl_secs),
        ("verify.negative_ttl_secs", v.negative_ttl_secs),
        ("verify.positive_refresh_secs", v.positive_refresh_secs),
        ("verify.negative_refresh_secs", v.negative_refresh_secs),
    ] {
        if ttl > MAX_VERIFY_TTL {
            return Err(invalid(key, format!("must be 0..={MAX_VERIFY_TTL}")));
        }
    }
    if !(1..=300).contains(&v.timeout_secs) {
        return Err(invalid("verify.timeout_secs", "must be 1..=300"));
    }
    if v.cache_entries > MAX_VERIFY_ENTRIES {
        return Err(invalid(
            "verify.cache_entries",
            format!("must be 0..={MAX_VERIFY_ENTRIES}"),
        ));
    }
    Ok(crate::verify::Settings {
        positive_ttl: Duration::from_secs(v.positive_ttl_secs),
        negative_ttl: Duration::from_secs(v.negative_ttl_secs),
        positive_refresh: Duration::from_secs(v.positive_refresh_secs),
        negative_refresh: Duration::from_secs(v.negative_refresh_secs),
        timeout: Duration::from_secs(v.timeout_secs),
        cache_entries: v.cache_entries,
    })
}

fn dns(d: &super::Dns) -> Result<crate::dns::Settings, ConfigError> {
    let servers = d
        .servers
        .iter()
        .map(|s| {
            s.parse::<SocketAddr>()
                .or_else(|_| s.parse::<IpAddr>().map(|ip| SocketAddr::new(ip, 53)))
                .map_err(|_| invalid("dns.servers", format!("{s:?} is not an ip or ip:port")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    if d.timeout_ms == 0 {
        return Err(invalid("dns.timeout_ms", "must be greater than 0"));
    }
    if d.attempts == 0 {
        return Err(invalid("dns.attempts", "must be greater than 0"));
    }
    Ok(crate::dns::Settings {
        servers,
        timeout: Duration::from_millis(d.timeout_ms),
        attempts: d.attempts,
        cache_size: d.cache_size,
        plugin_budget: d.plugin_queries_per_session,
        reverse_lookup: d.reverse_lookup,
    })
}

impl Config {
    /// Checks every value and builds the runtime view.
    pub fn validate(&self) -> Result<Runtime, ConfigError> {
        let s = &self.server;
        if !is_domain(&s.hostname) {
            return Err(invalid(
                "server.hostname",
                format!("{:?} is not a domain name", s.hostname),
            ));
        }
        let listen = addrs("server.listen", &s.listen)?;
        let listen_tls = addrs("server.listen_tls", &s.listen_tls)?;
        let pp = proxy_protocol(&s.proxy_protocol, &listen, &listen_tls)?;
        if listen.is_empty()
            && listen_tls.is_empty()
            && pp.listen.is_empty()
            && pp.listen_tls.is_empty()
        {
            return Err(invalid("server.listen", "no listener configured"));
        }
        if s.max_connections == 0 {
            return Err(invalid("server.max_connections", "must be greater than 0"));
        }
        if !(8..=32).contains(&s.client_ipv4_prefix) {
            return Err(invalid("server.client_ipv4_prefix", "must be 8..=32"));
        }
        if !(16..=128).contains(&s.client_ipv6_prefix) {
            return Err(invalid("server.client_ipv6_prefix", "must be 16..=128"));
        }
        if s.max_connections_per_ip == 0 {
            return Err(invalid(
                "server.max_connections_per_ip",
                "must be greater than 0",
            ));
        }
        let tls_files = match (&self.tls.cert, &self.tls.key) {
            (Some(c), Some(k)) => Some((c.clone(), k.clone())),
            (None, None) => None,
            (Some(_), None) => {
                return Err(invalid("tls.key", "tls.cert is set but tls.key is not"));
            }
            (None, Some(_)) => {
                return Err(invalid("tls.cert", "tls.key is set but tls.cert is not"));
            }
        };
        if !listen_tls.is_empty() && tls_files.is_none() && !self.tls.self_signed {
            return Err(invalid(
                "server.listen_tls",
                "needs tls.cert/tls.key or tls.self_signed",
            ));
        }
        if !pp.listen_tls.is_empty() && tls_files.is_none() && !self.tls.self_signed {
            return Err(invalid(
                "server.proxy_protocol.listen_tls",
                "needs tls.cert/tls.key or tls.self_signed",
            ));
        }
        let l = &self.limits;
        if l.max_command_line < 512 {
            return Err(invalid(
                "limits.max_command_line",
                "RFC 5321 requires at least 512",
            ));
        }
        if l.max_text_line < 1000 {
            return Err(invalid(
                "limits.max_text_line",
                "RFC 5321 requires at least 1000",
            ));
        }
        if l.max_message_size == 0 {
            return Err(invalid("limits.max_message_size", "must be greater than 0"));
        }
        if l.max_recipients == 0 {
            return Err(invalid("limits.max_recipients", "must be greater than 0"));
        }
        if l.max_message_memory_mb == 0 {
            return Err(invalid(
                "limits.max_message_memory_mb",
                "must be greater than 0",
            ));
        }
        if l.max_errors == 0 {
            return Err(invalid("limits.max_errors", "must be greater than 0"));
        }
        let mut local_domains = Vec::new();
        for d in &self.relay.local_domains {
            let d = d.trim_end_matches('.').to_ascii_lowercase();
            if !is_domain(&d) {
                return Err(invalid(
                    "relay.local_domains",
                    format!("{d:?} is not a domain name"),
                ));
            }
            local_domains.push(d);
        }
        let trusted_networks = self
            .relay
            .trusted_networks
            .iter()
            .map(|n| {
                n.parse::<IpNet>()
                    .or_else(|_| n.parse::<IpAddr>().map(IpNet::from))
                    .map_err(|e| invalid("relay.trusted_networks", format!("{n:?}: {e}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let d = &self.delivery;
        let upstream_tls = tls_policy("delivery.upstream_tls", &d.upstream_tls)?;
        let mode = d.mode.as_deref().unwrap_or(if d.upstream.is_some() {
            "proxy"
        } else {
            "maildir"
        });
        let delivery = match mode {
            "maildir" => DeliveryMode::Maildir(d.maildir.clone()),
            "queue" => DeliveryMode::Queue(Box::new(self.queue_settings()?)),
            "proxy" => {
                let Some(up) = d.upstream.clone().filter(|u| !u.is_empty()) else {
                    return Err(invalid(
                        "delivery.upstream",
                        "proxy mode needs an upstream host:port",
                    ));
                };
                host_port("delivery.upstream", &up)?;
                DeliveryMode::Proxy {
                    upstream: up,
                    tls: upstream_tls,
                }
            }
            other => {
                return Err(invalid(
                    "delivery.mode",
                    format!("{other:?}: expected maildir, proxy or queue"),
                ));
            }
        };
        let mut seen = Vec::new();
        let plugins = self
            .plugins
            .iter()
            .map(|p| plugin_spec(p, &mut seen))
            .collect::<Result<Vec<_>, _>>()?;
        let routing = match delivery {
            DeliveryMode::Queue(_) => self.routing(upstream_tls)?,
            _ => Routing::default(),
        };
        let xclient_hosts = self.xclient_hosts(&delivery)?;
        Ok(Runtime {
            live: Live {
                hostname: s.hostname.to_ascii_lowercase(),
                greeting_delay: Duration::from_millis(s.greeting_delay_ms),
                command_timeout: positive("server.command_timeout_secs", s.command_timeout_secs)?,
                data_timeout: positive("server.data_timeout_secs", s.data_timeout_secs)?,
                min_data_rate: s.min_data_rate.max(1),
                write_timeout: positive("server.write_timeout_secs", s.write_timeout_secs)?,
                limits: l.clone(),
                local_domains,
                trusted_networks,
                plugins,
                trace_header: self.chain.trace_header,
                release_idle_instances: (self.chain.release_idle_instances_ms > 0)
                    .then(|| Duration::from_millis(self.chain.release_idle_instances_ms)),
                quarantine: self.chain.quarantine.clone(),
                routing,
                spill_dir: if !l.spill_dir.as_os_str().is_empty() {
                    l.spill_dir.clone()
                } else {
                    match &delivery {
                        DeliveryMode::Queue(q) => q.spool.join("tmp"),
                        DeliveryMode::Maildir(root) => root.clone(),
                        DeliveryMode::Proxy { .. } => std::env::temp_dir(),
                    }
                },
                spill_threshold: l.spill_threshold_kb.saturating_mul(1024),
                verify: verify(&self.verify)?,
                proxy_trusted: pp.trusted,
                proxy_timeout: pp.timeout,
                xclient_hosts,
            },
            fixed: Fixed {
                listen,
                listen_tls,
                proxy_listen: pp.listen,
                proxy_listen_tls: pp.listen_tls,
                max_connections: s.max_connections,
                max_connections_per_ip: s.max_connections_per_ip,
                client_prefixes: (s.client_ipv4_prefix, s.client_ipv6_prefix),
                plugin_memory: (self.chain.max_total_memory_mb as usize) << 20,
                adjustable_clock: self.chain.adjustable_clock,
                plugin_sessions: s.max_connections
                    + match &delivery {
                        DeliveryMode::Queue(q) => q.concurrency,
                        _ => 0,
                    },
                max_message_memory: (l.max_message_memory_mb as usize) << 20,
                shutdown_grace: Duration::from_secs(s.shutdown_grace_secs),
                watch_interval: Duration::from_millis(s.watch_interval_ms),
                tls_files,
                tls_self_signed: self.tls.self_signed,
                delivery,
                fold_local_part: d.fold_local_part,
                connect_timeout: positive("delivery.connect_timeout_secs", d.connect_timeout_secs)?,
                dns: dns(&self.dns)?,
                admin_socket: self.admin.socket.clone(),
                admin_http: match self.admin.http.trim() {
                    "" => None,
                    a => Some(a.parse().map_err(|_| {
                        invalid(
                            "admin.http",
                            format!("{a:?} is not ip:port (or empty for none)"),
                        )
                    })?),
                },
                compile_cache: Some(self.chain.compile_cache.clone())
                    .filter(|p| !p.as_os_str().is_empty()),
                kv: kv(&self.kv)?,
            },
        })
    }
}

/// Checks `[kv]` (the URL without connecting).
fn kv(k: &super::Kv) -> Result<crate::plugin::kv::Settings, ConfigError> {
    use crate::plugin::kv::{OnUnavailable, Settings};
    use crate::plugin::kv_redis::{RedisSettings, check_url, redacted};
    let on_unavailable = match k.on_unavailable.as_str() {
        "plugin" => OnUnavailable::Plugin,
        "on_error" => OnUnavailable::OnError,
        o => {
            return Err(invalid(
                "kv.on_unavailable",
                format!("{o:?}: expected plugin or on_error"),
            ));
        }
    };
    match k.backend.as_str() {
        "memory" => {
            // Redis settings without Redis are a mistake: nothing would be shared.
            let d = super::Kv::default();
            for (key, set) in [
                ("kv.redis_url", k.redis_url.is_some()),
                ("kv.key_prefix", k.key_prefix != d.key_prefix),
                ("kv.timeout_ms", k.timeout_ms != d.timeout_ms),
                (
                    "kv.connect_timeout_ms",
                    k.connect_timeout_ms != d.connect_timeout_ms,
                ),
                ("kv.on_unavailable", k.on_unavailable != d.on_unavailable),
            ] {
                if set {
                    return Err(invalid(
                        key,
                        "is for backend = \"redis\" (kv.backend is \"memory\")",
                    ));
                }
            }
            Ok(Settings::Memory)
        }
        "redis" => {
            let url = k.redis_url.as_deref().unwrap_or_default();
            if url.is_empty() {
                return Err(invalid(
                    "kv.redis_url",
                    "backend = \"redis\" needs one, e.g. \"redis://127.0.0.1:6379/0\"",
                ));
            }
            if let Some(e) = check_url(url) {
                return Err(invalid("kv.redis_url", format!("{}: {e}", redacted(url))));
            }
            let p = &k.key_prefix;
            if p.len() > 64 || p.chars().any(|c| c.is_control() || c == '{' || c == '}') {
                return Err(invalid(
                    "kv.key_prefix",
                    format!("{p:?}: at most 64 characters, no control characters or braces"),
                ));
            }
            for (key, v) in [
                ("kv.timeout_ms", k.timeout_ms),
                ("kv.connect_timeout_ms", k.connect_timeout_ms),
            ] {
                if !(1..=60_000).contains(&v) {
                    return Err(invalid(key, "must be 1..=60000"));
                }
            }
            Ok(Settings::Redis(RedisSettings {
                url: url.to_string(),
                key_prefix: p.clone(),
                timeout: Duration::from_millis(k.timeout_ms),
                connect_timeout: Duration::from_millis(k.connect_timeout_ms),
                on_unavailable,
            }))
        }
        other => Err(invalid(
            "kv.backend",
            format!("{other:?}: expected memory or redis"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::super::Config;
    use super::*;

    #[test]
    fn defaults_validate_to_maildir() {
        let rt = Config::default().validate().unwrap();
        assert_eq!(rt.fixed.listen, vec!["127.0.0.1:2525".parse().unwrap()]);
        assert_eq!(
            rt.fixed.delivery,
            DeliveryMode::Maildir("./var/mail".into())
        );
        assert_eq!(rt.live.local_domains, vec!["example.test"]);
        assert!(!rt.live.relay_allowed("127.0.0.1".parse().unwrap()));
    }

    #[test]
    fn unknown_key_is_named() {
        let err = Config::from_toml("[server]\nbogus_key = 1\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("bogus_key"), "{err}");
        let err = Config::from_toml("[nosuchsection]\nx = 1\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("nosuchsection"), "{err}");
    }

    #[test]
    fn upstream_alone_selects_proxy() {
        let c = Config::from_toml("[delivery]\nupstream = \"127.0.0.1:2626\"\n").unwrap();
        let rt = c.validate().unwrap();
        assert_eq!(
            rt.fixed.delivery,
            DeliveryMode::Proxy {
                upstream: "127.0.0.1:2626".into(),
                tls: TlsPolicy::Opportunistic
            }
        );
        let c = Config::from_toml("[delivery]\nmode = \"proxy\"\n").unwrap();
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .contains("delivery.upstream")
        );
    }

    #[test]
    #[allow(clippy::result_large_err)] // figment's Jail API
    fn env_overrides_nested_keys() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("g.toml", "[server]\nhostname = \"mx.file.test\"\n")?;
            jail.set_env("MAILGATE_SERVER__HOSTNAME", "mx.env.test");
            jail.set_env("MAILGATE_DELIVERY__UPSTREAM", "127.0.0.1:2626");
            jail.set_env("MAILGATE_RELAY__LOCAL_DOMAINS", "[a.test,b.test]");
            jail.set_env("MAILGATE_LOG", "debug");
            let rt = Config::load(Some(std::path::Path::new("g.toml")))
                .unwrap()
                .validate()
                .unwrap();
            assert_eq!(rt.live.hostname, "mx.env.test");
            assert!(matches!(rt.fixed.delivery, DeliveryMode::Proxy { .. }));
            assert_eq!(rt.live.local_domains, vec!["a.test", "b.test"]);
            Ok(())
        });
    }

    #[test]
    fn bad_values_name_their_key() {
        for (toml, key) in [
            ("[server]\nlisten = [\"nope\"]", "server.listen"),
            (
                "[relay]\ntrusted_networks = [\"10.0.0.0/99\"]",
                "relay.trusted_networks",
            ),
            (
                "[limits]\nmax_command_line = 100",
                "limits.max_command_line",
            ),
            (
                "[delivery]\nupstream_tls = \"maybe\"",
                "delivery.upstream_tls",
            ),
            ("[tls]\ncert = \"/x.pem\"", "tls.key"),
            (
                "[relay]\nlocal_domains = [\"bad domain\"]",
                "relay.local_domains",
            ),
            ("[verify]\ntimeout_secs = 0", "verify.timeout_secs"),
            ("[verify]\ntimeout_secs = 301", "verify.timeout_secs"),
            (
                "[verify]\nnegative_ttl_secs = 99999999",
                "verify.negative_ttl_secs",
            ),
            (
                "[verify]\npositive_ttl_secs = 99999999",
                "verify.positive_ttl_secs",
            ),
            ("[verify]\ncache_entries = 99999999", "verify.cache_entries"),
        ] {
            let err = Config::from_toml(toml)
                .unwrap()
                .validate()
                .unwrap_err()
                .to_string();
            assert!(err.contains(key), "{toml}: {err}");
        }
    }

    #[test]
    fn plugins_validate() {
        let c = Config::from_toml(
            r#"
[[plugin]]
name = "hello"
path = "hello.wasm"
capabilities = ["log", "kv", "log"]
on_error = "continue"
limits = { deadline_ms = 50, memory_mb = 8 }
config = { reject = "nobody", n = 3, nested = { a = true }, list = [1, 2] }
"#,
        )
        .unwrap();
        let rt = c.validate().unwrap();
        let p = &rt.live.plugins[0];
        assert_eq!(p.capabilities, vec![Capability::Log, Capability::Kv]);
        assert_eq!(p.on_error, OnError::Continue);
        assert_eq!(p.memory, 8 << 20);
        assert_eq!(
            p.config,
            vec![
                ("list".into(), "[1,2]".into()),
                ("n".into(), "3".into()),
                ("nested.a".into(), "true".into()),
                ("reject".into(), "nobody".into()),
            ]
        );
        for (toml, key) in [
            (
                "[[plugin]]\nname = \"Bad Name\"\npath = \"x\"",
                "plugin.name",
            ),
            (
                "[[plugin]]\nname = \"a\"\npath = \"x\"\non_error = \"explode\"",
                "plugin.on_error",
            ),
            (
                "[[plugin]]\nname = \"a\"\npath = \"x\"\ncapabilities = [\"fs\"]",
                "plugin.capabilities",
            ),
            (
                "[[plugin]]\nname = \"a\"\npath = \"x\"\nsha256 = \"abc\"",
                "plugin.sha256",
            ),
            (
                "[[plugin]]\nname = \"a\"\npath = \"x\"\n[[plugin]]\nname = \"a\"\npath = \"y\"",
                "plugin.name",
            ),
        ] {
            let err = Config::from_toml(toml)
                .unwrap()
                .validate()
                .unwrap_err()
                .to_string();
            assert!(err.contains(key), "{toml}: {err}");
        }
        let err = Config::from_toml("[[plugin]]\nname = \"a\"\npath = \"x\"\nbogus = 1")
            .unwrap_err()
            .to_string();
        assert!(err.contains("bogus"), "{err}");
    }

    #[test]
    fn queue_mode_routes_and_errors() {
        let c = Config::from_toml(
            "[delivery]\nmode = \"queue\"\nupstream = \"10.0.0.1:25\"\n\
             [queue.routes]\n\"A.test\" = { host = \"10.0.0.2:2525\", tls = \"required\" }\n",
        )
        .unwrap();
        let rt = c.validate().unwrap();
        assert!(matches!(rt.fixed.delivery, DeliveryMode::Queue(_)));
        let routing = &rt.live.routing;
        assert_eq!(routing.routes["a.test"].addr, "10.0.0.2:2525");
        assert_eq!(routing.routes["a.test"].tls, TlsPolicy::Required);
        assert_eq!(routing.default.as_ref().unwrap().addr, "10.0.0.1:25");
        for (toml, key) in [
            (
                "[delivery]\nmode = \"queue\"\n[queue.routes]\n\"a.test\" = { host = \"nohost\" }",
                "queue.routes",
            ),
            (
                "[delivery]\nmode = \"queue\"\n[queue.routes]\n\"a.test\" = { host = \"h:25\", tls = \"maybe\" }",
                "queue.routes",
            ),
            (
                "[delivery]\nmode = \"queue\"\n[queue]\nconcurrency = 0",
                "queue.concurrency",
            ),
        ] {
            let err = Config::from_toml(toml).unwrap().validate().unwrap_err();
            assert!(err.to_string().contains(key), "{toml}: {err}");
        }
        let err = Config::from_toml("[queue.routes]\n\"a.test\" = { host = \"h:25\", bogus = 1 }")
            .unwrap_err();
        assert!(err.to_string().contains("bogus"), "{err}");
    }

    #[test]
    fn verify_defaults_are_postfix_expire_times_and_keys_parse() {
        let rt = Config::default().validate().unwrap();
        let v = &rt.live.verify;
        // postconf -d (Postfix 3.7): address_verify_positive_expire_time = 31d,
        // address_verify_negative_expire_time = 3d.
        assert_eq!(v.positive_ttl, Duration::from_secs(31 * 86400));
        assert_eq!(v.negative_ttl, Duration::from_secs(3 * 86400));
        assert_eq!(v.timeout, Duration::from_secs(15));
        assert_eq!(v.cache_entries, 100_000);
        let c = Config::from_toml(
            "[verify]\npositive_ttl_secs = 60\nnegative_ttl_secs = 0\ntimeout_secs = 2\n\
             cache_entries = 10\n\
             [[plugin]]\nname = \"v\"\npath = \"v.wasm\"\ncapabilities = [\"verify\"]\n",
        )
        .unwrap();
        let rt = c.validate().unwrap();
        assert_eq!(
            rt.live.verify,
            crate::verify::Settings {
                positive_ttl: Duration::from_secs(60),
                negative_ttl: Duration::ZERO,
                positive_refresh: Duration::from_secs(7 * 86400),
                negative_refresh: Duration::from_secs(3 * 3600),
                timeout: Duration::from_secs(2),
                cache_entries: 10,
            }
        );
        assert_eq!(rt.live.plugins[0].capabilities, vec![Capability::Verify]);
        let err = Config::from_toml("[verify]\nbogus = 1").unwrap_err();
        assert!(err.to_string().contains("bogus"), "{err}");
        let err =
            Config::from_toml("[[plugin]]\nname = \"v\"\npath = \"v\"\ncapabilities = [\"fs\"]")
                .unwrap()
                .validate()
                .unwrap_err()
                .to_string();
        assert!(err.contains("metrics, verify"), "{err}");
    }

    #[test]
    fn proxy_protocol_listeners_need_trusted_networks_and_addresses_of_their_own() {
        let rt = Config::default().validate().unwrap();
        assert!(rt.fixed.proxy_listen.is_empty() && rt.fixed.proxy_listen_tls.is_empty());
        assert_eq!(rt.live.proxy_timeout, Duration::from_secs(5));
        let c = Config::from_toml(
            "[server]\nlisten = []\n[server.proxy_protocol]\nlisten = [\"127.0.0.1:2526\"]\n\
             listen_tls = [\"127.0.0.1:4466\"]\ntrusted_networks = [\"10.0.0.0/8\", \"::1\"]\n\
             timeout_ms = 250\n",
        )
        .unwrap();
        let rt = c.validate().unwrap();
        assert_eq!(
            rt.fixed.proxy_listen,
            vec!["127.0.0.1:2526".parse().unwrap()]
        );
        assert_eq!(
            rt.fixed.proxy_listen_tls,
            vec!["127.0.0.1:4466".parse().unwrap()]
        );
        assert_eq!(rt.live.proxy_trusted.len(), 2);
        assert_eq!(rt.live.proxy_timeout, Duration::from_millis(250));
        for (toml, key) in [
            (
                "[server.proxy_protocol]\nlisten = [\"127.0.0.1:2526\"]",
                "server.proxy_protocol.trusted_networks",
            ),
            (
                "[server.proxy_protocol]\nlisten = [\"127.0.0.1:2525\"]\ntrusted_networks = [\"::1\"]",
                "server.proxy_protocol.listen",
            ),
            (
                "[server.proxy_protocol]\nlisten = [\"x\"]\ntrusted_networks = [\"::1\"]",
                "server.proxy_protocol.listen",
            ),
            (
                "[server.proxy_protocol]\nlisten = [\"127.0.0.1:1\"]\nlisten_tls = [\"127.0.0.1:1\"]\n\
                 trusted_networks = [\"::1\"]",
                "server.proxy_protocol.listen_tls",
            ),
            (
                "[server.proxy_protocol]\ntrusted_networks = [\"10.0.0.0/33\"]",
                "server.proxy_protocol.trusted_networks",
            ),
            (
                "[server.proxy_protocol]\ntimeout_ms = 0",
                "server.proxy_protocol.timeout_ms",
            ),
            (
                "[tls]\nself_signed = false\n[server.proxy_protocol]\nlisten_tls = [\"127.0.0.1:1\"]\n\
                 trusted_networks = [\"::1\"]",
                "server.proxy_protocol.listen_tls",
            ),
        ] {
            let err = Config::from_toml(toml)
                .unwrap()
                .validate()
                .unwrap_err()
                .to_string();
            assert!(err.contains(key), "{toml}: {err}");
        }
        let err = Config::from_toml("[server.proxy_protocol]\nsend_proxy = true")
            .unwrap_err()
            .to_string();
        assert!(err.contains("send_proxy"), "{err}");
    }

    #[test]
    fn xclient_hosts_are_the_upstream_and_routes_that_ask_for_it() {
        let rt = Config::default().validate().unwrap();
        assert!(rt.live.xclient_hosts.is_empty(), "off by default");
        let c = Config::from_toml("[delivery]\nupstream = \"127.0.0.1:10025\"\nxclient = true\n")
            .unwrap();
        assert_eq!(
            c.validate().unwrap().live.xclient_hosts,
            vec!["127.0.0.1:10025"]
        );
        let c = Config::from_toml(
            "[delivery]\nmode = \"queue\"\n[queue.routes]\n\
             \"a.test\" = { host = \"10.0.0.2:25\", xclient = true }\n\
             \"b.test\" = { host = \"10.0.0.3:25\" }\n",
        )
        .unwrap();
        assert_eq!(
            c.validate().unwrap().live.xclient_hosts,
            vec!["10.0.0.2:25"]
        );
        for toml in [
            "[delivery]\nxclient = true",
            "[delivery]\nmode = \"queue\"\nxclient = true",
            "[delivery]\nmode = \"maildir\"\nupstream = \"127.0.0.1:1\"\nxclient = true",
        ] {
            let err = Config::from_toml(toml)
                .unwrap()
                .validate()
                .unwrap_err()
                .to_string();
            assert!(err.contains("delivery.xclient"), "{toml}: {err}");
        }
        let err =
            Config::from_toml("[queue.routes]\n\"a.test\" = { host = \"h:25\", xforward = true }")
                .unwrap_err()
                .to_string();
        assert!(err.contains("xforward"), "{err}");
    }

    #[test]
    fn trusted_networks_match_v4_mapped() {
        let c =
            Config::from_toml("[relay]\ntrusted_networks = [\"192.0.2.0/24\", \"::1\"]").unwrap();
        let rt = c.validate().unwrap();
        assert!(rt.live.relay_allowed("192.0.2.7".parse().unwrap()));
        assert!(rt.live.relay_allowed("::ffff:192.0.2.7".parse().unwrap()));
        assert!(rt.live.relay_allowed("::1".parse().unwrap()));
        assert!(!rt.live.relay_allowed("198.51.100.1".parse().unwrap()));
    }
}

#[cfg(test)]
mod example_tests {
    use super::super::Config;

    /// `examples/gateway.toml` documents the built-in defaults: both must agree.
    #[test]
    fn example_config_equals_defaults() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/gateway.toml");
        let text = std::fs::read_to_string(path).unwrap();
        assert_eq!(Config::from_toml(&text).unwrap(), Config::default());
        let defaults = serde_json::to_value(Config::default()).unwrap();
        let mut sections: Vec<&str> = defaults
            .as_object()
            .unwrap()
            .iter()
            .filter(|(_, v)| v.is_object())
            .map(|(k, _)| k.as_str())
            .collect();
        // Top-level sections only (`[queue.routes]` belongs to `[queue]`).
        let mut listed: Vec<&str> = toml_keys(&text)
            .into_iter()
            .filter(|k| !k.contains('.'))
            .collect();
        sections.sort_unstable();
        listed.sort_unstable();
        assert_eq!(listed, sections, "example lists every section");
    }

    fn toml_keys(text: &str) -> Vec<&str> {
        text.lines()
            .filter_map(|l| l.strip_prefix('[').and_then(|l| l.strip_suffix(']')))
            .collect()
    }
}

#[cfg(test)]
mod kv_tests {
    use super::super::Config;
    use crate::plugin::kv::{OnUnavailable, Settings};

    fn kv(text: &str) -> Result<Settings, String> {
        Config::from_toml(&format!("[kv]\n{text}"))
            .map_err(|e| e.to_string())?
            .validate()
            .map(|rt| rt.fixed.kv)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn memory_is_the_default_and_redis_takes_its_settings() {
        assert_eq!(kv(""), Ok(Settings::Memory));
        let Ok(Settings::Redis(r)) = kv("backend = \"redis\"\n\
             redis_url = \"redis://:pw@127.0.0.1:6380/2\"\n\
             key_prefix = \"mx1:\"\ntimeout_ms = 150\nconnect_timeout_ms = 500\n\
             on_unavailable = \"on_error\"")
        else {
            panic!("not redis")
        };
        assert_eq!(r.url, "redis://:pw@127.0.0.1:6380/2");
        assert_eq!(r.key_prefix, "mx1:");
        assert_eq!(r.timeout.as_millis(), 150);
        assert_eq!(r.connect_timeout.as_millis(), 500);
        assert_eq!(r.on_unavailable, OnUnavailable::OnError);
        // The password never shows, in the restart-needed comparison or in Debug.
        let shown = serde_json::to_string(&Settings::Redis(r.clone())).unwrap();
        assert!(
            !shown.contains(":pw@") && !format!("{r:?}").contains(":pw@"),
            "{shown}"
        );
    }

    #[test]
    fn bad_kv_settings_are_named() {
        for (text, key) in [
            ("backend = \"memcached\"", "kv.backend"),
            ("bogus = 1", "bogus"),
            ("backend = \"redis\"", "kv.redis_url"),
            (
                "backend = \"redis\"\nredis_url = \"rediss://h\"",
                "kv.redis_url",
            ),
            (
                "backend = \"redis\"\nredis_url = \"http://h\"",
                "kv.redis_url",
            ),
            ("redis_url = \"redis://h\"", "kv.redis_url"),
            ("on_unavailable = \"on_error\"", "kv.on_unavailable"),
            (
                "backend = \"redis\"\nredis_url = \"redis://h\"\non_unavailable = \"drop\"",
                "kv.on_unavailable",
            ),
            (
                "backend = \"redis\"\nredis_url = \"redis://h\"\nkey_prefix = \"{x}\"",
                "kv.key_prefix",
            ),
            (
                "backend = \"redis\"\nredis_url = \"redis://h\"\ntimeout_ms = 0",
                "kv.timeout_ms",
            ),
            (
                "backend = \"redis\"\nredis_url = \"redis://h\"\nconnect_timeout_ms = 60001",
                "kv.connect_timeout_ms",
            ),
        ] {
            let e = kv(text).unwrap_err();
            assert!(e.contains(key), "{text:?}: {e}");
        }
        // A password in a refused URL is not repeated.
        let e = kv("backend = \"redis\"\nredis_url = \"rediss://u:secret@h\"").unwrap_err();
        assert!(!e.contains("secret"), "{e}");
    }
}
