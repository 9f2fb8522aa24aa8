//! Configuration: one typed struct tree, loaded at one boundary.
//!
//! Sources, later ones winning: built-in defaults, the TOML file, then `MAILGATE_`
//! environment variables with `__` separating levels (`MAILGATE_DELIVERY__UPSTREAM=host:port`,
//! `MAILGATE_RELAY__LOCAL_DOMAINS=[a.test,b.test]`). Unknown keys are refused with the key's
//! name. [`Config::validate`] then checks values and yields the typed runtime view.

mod validate;

use std::path::{Path, PathBuf};

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};

pub use validate::{Capability, DeliveryMode, Fixed, Live, OnError, PluginSpec, Runtime};

/// Errors while loading or validating configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read or a value did not parse (names the key).
    #[error("{0}")]
    Load(Box<figment::Error>),
    /// A value parsed but is not acceptable.
    #[error("invalid value for `{key}`: {reason}")]
    Invalid {
        /// Dotted key, e.g. `server.listen`.
        key: &'static str,
        /// What is wrong.
        reason: String,
    },
}

impl From<figment::Error> for ConfigError {
    fn from(e: figment::Error) -> Self {
        ConfigError::Load(Box::new(e))
    }
}

/// The whole configuration file.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Listeners, names, connection limits and timeouts.
    pub server: Server,
    /// Certificate for STARTTLS and implicit TLS.
    pub tls: Tls,
    /// Protocol limits.
    pub limits: Limits,
    /// Which recipients are accepted, from whom.
    pub relay: Relay,
    /// Where accepted mail goes.
    pub delivery: Delivery,
    /// The store-and-forward queue (`delivery.mode = "queue"`).
    pub queue: Queue,
    /// The resolver (plugins' `dns` capability, client reverse names, MX routing).
    pub dns: Dns,
    /// Recipient verification probes (plugins' `verify` capability) and their cache.
    pub verify: Verify,
    /// Where plugins' `kv` entries live: in memory, or in Redis shared by several gateways.
    pub kv: Kv,
    /// Settings for the plugin chain as a whole.
    pub chain: Chain,
    /// The local admin socket (`mailgate queue`, `mailgate status`).
    pub admin: Admin,
    /// The plugin chain, in order (`[[plugin]]` tables).
    #[serde(rename = "plugin")]
    pub plugins: Vec<Plugin>,
}

/// `[admin]`
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Admin {
    /// Unix socket path (mode 0600).
    pub socket: PathBuf,
    /// The admin HTTP listener (`/metrics`, `/healthz`, `/readyz`), `ip:port`; empty:
    /// none. Loopback by default: metrics are not for the internet.
    pub http: String,
}

impl Default for Admin {
    fn default() -> Self {
        Admin {
            socket: PathBuf::from("./var/admin.sock"),
            http: "127.0.0.1:9925".into(),
        }
    }
}

/// `[queue]`
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Queue {
    /// Spool directory.
    pub spool: PathBuf,
    /// Delivery attempts at once.
    pub concurrency: usize,
    /// Delivery attempts at once to one next hop.
    pub per_destination: usize,
    /// First retry delay.
    pub retry_initial_secs: u64,
    /// Longest retry delay.
    pub retry_max_secs: u64,
    /// Bounce what is still undelivered after this long.
    pub max_lifetime_secs: u64,
    /// Send one "delayed" notice after this long; 0 = never.
    pub delay_warning_secs: u64,
    /// Keep idle connections to next hops open this long for reuse; 0 = no reuse.
    pub connection_idle_secs: u64,
    /// Port of MX hosts.
    pub mx_port: u16,
    /// Deliver to MX hosts whose addresses are loopback, private, link-local or
    /// unspecified (off by default).
    pub mx_allow_private: bool,
    /// Recipient domain → next hop, instead of MX lookup.
    pub routes: std::collections::BTreeMap<String, Route>,
}

/// A `[queue.routes]` entry.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Route {
    /// `host:port`.
    pub host: String,
    /// `none`, `opportunistic` or `required` STARTTLS.
    #[serde(default = "opportunistic")]
    pub tls: String,
    /// Tell this next hop who the original client was (XCLIENT, or XFORWARD where only
    /// that is offered), as `delivery.xclient` does for `delivery.upstream`.
    #[serde(default)]
    pub xclient: bool,
}

fn opportunistic() -> String {
    "opportunistic".into()
}

impl Default for Queue {
    fn default() -> Self {
        Queue {
            spool: PathBuf::from("./var/spool"),
            concurrency: 20,
            per_destination: 4,
            retry_initial_secs: 300,
            retry_max_secs: 4000,
            max_lifetime_secs: 5 * 86400,
            delay_warning_secs: 0,
            connection_idle_secs: 10,
            mx_port: 25,
            mx_allow_private: false,
            routes: Default::default(),
        }
    }
}

/// `[dns]`
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Dns {
    /// Name servers, `ip` or `ip:port`; empty means the system's (`/etc/resolv.conf`).
    pub servers: Vec<String>,
    /// Bound on one lookup, all attempts included.
    pub timeout_ms: u64,
    /// Tries per name server within that bound.
    pub attempts: usize,
    /// Answers cached (TTLs honoured).
    pub cache_size: u64,
    /// Lookups each plugin may make per SMTP session; more answer `budget-exceeded`.
    pub plugin_queries_per_session: u32,
    /// Look up and forward-confirm each client's reverse name at connect.
    pub reverse_lookup: bool,
}

impl Default for Dns {
    fn default() -> Self {
        let d = crate::dns::Settings::default();
        Dns {
            servers: vec![],
            timeout_ms: d.timeout.as_millis() as u64,
            attempts: d.attempts,
            cache_size: d.cache_size,
            plugin_queries_per_session: d.plugin_budget,
            reverse_lookup: d.reverse_lookup,
        }
    }
}

/// `[verify]`: how the `verify` capability asks next hops about recipients and how long
/// their answers are kept (the defaults are Postfix's `address_verify_*_expire_time`).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Verify {
    /// Keep an "accepted" answer this long; 0 = do not keep it.
    pub positive_ttl_secs: u64,
    /// Keep a "refused" (5xx) answer this long; 0 = do not keep it. A 4xx or no answer is
    /// never kept.
    pub negative_ttl_secs: u64,
    /// A kept accepted answer this old is still used, and asked again in the background
    /// (Postfix's `address_verify_positive_refresh_time`); 0 = never.
    pub positive_refresh_secs: u64,
    /// The same for a kept refused answer (`address_verify_negative_refresh_time`).
    pub negative_refresh_secs: u64,
    /// Bound on one probe, from connecting to the reply to `RCPT TO`.
    pub timeout_secs: u64,
    /// Answers kept at most (over all next hops); past it the one expiring first goes.
    pub cache_entries: usize,
}

impl Default for Verify {
    fn default() -> Self {
        let d = crate::verify::Settings::default();
        Verify {
            positive_ttl_secs: d.positive_ttl.as_secs(),
            negative_ttl_secs: d.negative_ttl.as_secs(),
            positive_refresh_secs: d.positive_refresh.as_secs(),
            negative_refresh_secs: d.negative_refresh.as_secs(),
            timeout_secs: d.timeout.as_secs(),
            cache_entries: d.cache_entries,
        }
    }
}

/// `[kv]`: where plugins' `kv` entries live (docs/kv.md). The `redis_*`, `key_prefix`,
/// timeouts and `on_unavailable` are for `backend = "redis"` only.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Kv {
    /// `memory` (the default: this process only, gone on restart) or `redis` (shared by
    /// every gateway using the same Redis server, database and `key_prefix`).
    pub backend: String,
    /// `redis://[user:password@]host[:port][/db]` or `unix:///path/to/redis.sock`. A
    /// password can come from the environment instead: `MAILGATE_KV__REDIS_URL`.
    pub redis_url: Option<String>,
    /// Prefix of every Redis key the gateway writes (gateways that must not share state
    /// can share one Redis with different prefixes).
    pub key_prefix: String,
    /// Longest wait for one kv call, milliseconds; a call also ends before the calling
    /// hook's deadline.
    pub timeout_ms: u64,
    /// Longest wait for a connection to Redis, milliseconds.
    pub connect_timeout_ms: u64,
    /// When Redis is unavailable: `plugin` (the call answers `unavailable` and the plugin
    /// decides; greylist and rate-limit let mail through) or `on_error` (the hook call
    /// fails and the plugin's `on_error` policy applies).
    pub on_unavailable: String,
}

impl Default for Kv {
    fn default() -> Self {
        Kv {
            backend: "memory".into(),
            redis_url: None,
            key_prefix: "mailgate:".into(),
            timeout_ms: 200,
            connect_timeout_ms: 1000,
            on_unavailable: "plugin".into(),
        }
    }
}

/// `[chain]`
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Chain {
    /// Add an `X-Mailgate-Trace` header with the plugin decision trace to delivered mail.
    pub trace_header: bool,
    /// Maildir root for messages a plugin quarantines.
    pub quarantine: PathBuf,
    /// Directory for compiled plugins (reused by restarts and reloads of unchanged
    /// files); empty = no cache.
    pub compile_cache: PathBuf,
    /// Linear memory all plugin instances together may hold, MiB; a growth past it
    /// fails that call under the plugin's `on_error` policy.
    pub max_total_memory_mb: u64,
    /// For tests only: lets `mailgate clock advance SECS` move the time plugins see (the
    /// `clock` capability and kv expiry) forward. Off in production.
    pub adjustable_clock: bool,
    /// A session that has waited this long for its client gives its plugin instances
    /// back to their pools (an idle connection then holds no plugin memory; the next
    /// hook takes an instance and runs `init` again). 0 = keep them for the session.
    pub release_idle_instances_ms: u64,
}

impl Default for Chain {
    fn default() -> Self {
        Chain {
            max_total_memory_mb: 1024,
            adjustable_clock: false,
            release_idle_instances_ms: 1000,
            trace_header: false,
            quarantine: PathBuf::from("./var/quarantine"),
            compile_cache: PathBuf::from("./var/cache/plugins"),
        }
    }
}

/// One `[[plugin]]`: a WebAssembly component in the chain.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Plugin {
    /// Name in logs, traces and metrics (`a-z 0-9 - _`).
    pub name: String,
    /// The component file (`.wasm`, built for `wasm32-wasip2`).
    pub path: PathBuf,
    /// Refuse the file unless its SHA-256 (hex) matches.
    #[serde(default)]
    pub sha256: Option<String>,
    /// What a failure of this plugin (trap, deadline, memory, invalid verdict) means:
    /// `tempfail` (451 4.7.0, the default), `continue` (skip the plugin) or `reject`
    /// (550 5.7.0).
    #[serde(default = "default_on_error")]
    pub on_error: String,
    /// Host capabilities granted: `log`, `clock`, `dns`, `kv`, `auth-results`, `metrics`,
    /// `verify`.
    #[serde(default)]
    pub capabilities: Vec<String>,
    /// Per-call limits.
    #[serde(default)]
    pub limits: PluginLimits,
    /// Recipients this plugin adds or rewrites to may be address literals
    /// (`user@[192.0.2.1]`); refused as invalid output otherwise.
    #[serde(default)]
    pub literal_recipients: bool,
    /// The plugin's own settings, handed to its `init` as key/value pairs.
    #[serde(default)]
    pub config: std::collections::BTreeMap<String, serde_json::Value>,
    /// `reused` (the default): an instance serves one session at a time and then the
    /// next ones (`init` runs at the start of each); `per-session`: a new instance for
    /// every session, so no memory is shared between sessions (slower).
    #[serde(default = "default_instances")]
    pub instances: String,
}

fn default_instances() -> String {
    "reused".into()
}

fn default_on_error() -> String {
    "tempfail".into()
}

/// `[plugin.limits]`
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct PluginLimits {
    /// Wall-clock budget of one hook call, host calls included.
    pub deadline_ms: u64,
    /// Linear memory cap.
    pub memory_mb: u64,
    /// Log lines per second the plugin may write, over all sessions (a token bucket
    /// holding one second's worth); the rest are dropped and counted.
    pub log_lines_per_sec: u32,
    /// Log octets per second, likewise.
    pub log_bytes_per_sec: u32,
    /// Entries the plugin's `kv` namespace may hold.
    pub kv_entries: usize,
    /// Octets (keys, values, bookkeeping) the plugin's `kv` namespace may hold, MiB.
    pub kv_mb: usize,
}

impl Default for PluginLimits {
    fn default() -> Self {
        PluginLimits {
            deadline_ms: 1000,
            memory_mb: 32,
            log_lines_per_sec: 100,
            log_bytes_per_sec: 64 * 1024,
            kv_entries: 100_000,
            kv_mb: 32,
        }
    }
}

/// `[server]`
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Server {
    /// Our name in the greeting, EHLO reply and `Received:` headers.
    pub hostname: String,
    /// Plain SMTP listeners (STARTTLS offered when a certificate is available).
    pub listen: Vec<String>,
    /// Implicit-TLS listeners (RFC 8314, like port 465).
    pub listen_tls: Vec<String>,
    /// Connections open at once, over all listeners.
    pub max_connections: usize,
    /// Connections open at once from one client network (see the two prefixes).
    pub max_connections_per_ip: usize,
    /// Leading bits of an IPv4 client address that make one client for the per-client
    /// limits (32: each address).
    pub client_ipv4_prefix: u8,
    /// Leading bits of an IPv6 client address that make one client (64: a site's /64).
    pub client_ipv6_prefix: u8,
    /// Pause before the greeting; a client that talks during it is refused.
    pub greeting_delay_ms: u64,
    /// Wait for the next command (RFC 5321 4.5.3.2: at least 5 minutes).
    pub command_timeout_secs: u64,
    /// Time for the message data (RFC 5321 4.5.3.2: 3 minutes), extended by one second
    /// per `min_data_rate` octets received.
    pub data_timeout_secs: u64,
    /// Octets per second a client must keep up while sending message data.
    pub min_data_rate: u64,
    /// Longest wait for a client to read a reply (a client that never reads is dropped).
    pub write_timeout_secs: u64,
    /// On SIGTERM, how long running sessions may take to finish.
    pub shutdown_grace_secs: u64,
    /// How often the config file and plugin files are checked for changes (a change
    /// reloads them); 0 = only on SIGHUP or `mailgate reload`.
    pub watch_interval_ms: u64,
    /// Listeners behind a load balancer that speaks the PROXY protocol.
    pub proxy_protocol: ProxyProtocol,
}

/// `[server.proxy_protocol]`: listeners whose connections start with a PROXY protocol
/// header (v1 or v2, as HAProxy's `send-proxy` / `send-proxy-v2` and cloud balancers
/// send it) naming the real client, which plugins, limits, relay trust, the reverse
/// lookup and `Received:` then see. Like Postfix's `smtpd_upstream_proxy_protocol` on a
/// service of its own: these addresses are not also in `listen` / `listen_tls`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ProxyProtocol {
    /// Plain SMTP listeners (STARTTLS offered as on `listen`) that expect the header.
    pub listen: Vec<String>,
    /// Implicit-TLS listeners that expect the header before the TLS handshake.
    pub listen_tls: Vec<String>,
    /// Peers (CIDR or address: the balancers) allowed to send the header; a connection
    /// from anyone else to these listeners is closed.
    pub trusted_networks: Vec<String>,
    /// How long a connection may take to send its whole header before it is closed
    /// (Postfix's `smtpd_upstream_proxy_timeout`).
    pub timeout_ms: u64,
}

impl Default for ProxyProtocol {
    fn default() -> Self {
        ProxyProtocol {
            listen: vec![],
            listen_tls: vec![],
            trusted_networks: vec![],
            timeout_ms: 5000,
        }
    }
}

impl Default for Server {
    fn default() -> Self {
        Server {
            hostname: "mx.example.test".into(),
            listen: vec!["127.0.0.1:2525".into()],
            listen_tls: vec![],
            max_connections: 1000,
            max_connections_per_ip: 20,
            client_ipv4_prefix: 32,
            client_ipv6_prefix: 64,
            greeting_delay_ms: 0,
            command_timeout_secs: 300,
            data_timeout_secs: 180,
            min_data_rate: 500,
            write_timeout_secs: 300,
            shutdown_grace_secs: 30,
            watch_interval_ms: 1000,
            proxy_protocol: ProxyProtocol::default(),
        }
    }
}

/// `[tls]`
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Tls {
    /// PEM certificate chain.
    pub cert: Option<PathBuf>,
    /// PEM private key.
    pub key: Option<PathBuf>,
    /// Without `cert`/`key`, generate a self-signed certificate at start.
    pub self_signed: bool,
}

impl Default for Tls {
    fn default() -> Self {
        Tls {
            cert: None,
            key: None,
            self_signed: true,
        }
    }
}

/// `[limits]`
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Largest message accepted, announced with `SIZE`.
    pub max_message_size: usize,
    /// Recipients per message.
    pub max_recipients: usize,
    /// Recipients refused past `max_recipients` before each further one counts as an
    /// error.
    pub max_recipient_overshoot: usize,
    /// Longest command line, CRLF included (RFC 5321: 512).
    pub max_command_line: usize,
    /// Longest message text line, CRLF included (RFC 5321: 1000).
    pub max_text_line: usize,
    /// Error replies in one session before it is closed with 421.
    pub max_errors: usize,
    /// Memory all sessions together may hold for message content, MiB; a message that
    /// would go past it is moved to a spill file (and gets `452 4.3.1`, so the client
    /// retries later, only if that fails).
    pub max_message_memory_mb: u64,
    /// A message whose content grows past this many KiB while it arrives is moved to a
    /// spill file and read from there by plugins and delivery (0: every message).
    pub spill_threshold_kb: usize,
    /// Directory of spill files (unnamed, so nothing is left behind); empty: the
    /// spool's `tmp/` in queue mode, the Maildir root in maildir mode, the system's
    /// temporary directory in proxy mode.
    pub spill_dir: PathBuf,
    /// `Received:` headers a message may already carry (Postfix's `hopcount_limit`);
    /// more get `554 5.4.6`, so a mail loop ends.
    pub max_hops: usize,
    /// EHLO, HELO, RSET, NOOP, VRFY and HELP a session may send (since its last accepted
    /// message) before each further one counts as an error (Postfix's
    /// `smtpd_junk_command_limit`), so a flood of them ends at `max_errors`.
    pub max_junk_commands: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_message_size: 25 * 1024 * 1024,
            max_recipients: 100,
            max_recipient_overshoot: 1000,
            max_command_line: 512,
            max_text_line: 1000,
            max_errors: 20,
            max_hops: 50,
            max_junk_commands: 100,
            max_message_memory_mb: 128,
            spill_threshold_kb: 1024,
            spill_dir: PathBuf::new(),
        }
    }
}

/// `[relay]`
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Relay {
    /// Domains we accept mail for.
    pub local_domains: Vec<String>,
    /// Client networks (CIDR) allowed to send to any domain.
    pub trusted_networks: Vec<String>,
}

impl Default for Relay {
    fn default() -> Self {
        Relay {
            local_domains: vec!["example.test".into()],
            trusted_networks: vec![],
        }
    }
}

/// `[delivery]`
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Delivery {
    /// `maildir`, `proxy` or `queue`; unset means `proxy` when `upstream` is set, else
    /// `maildir`.
    pub mode: Option<String>,
    /// Maildir root for `maildir` mode.
    pub maildir: PathBuf,
    /// Local parts that differ only in case or quoting are one mailbox.
    pub fold_local_part: bool,
    /// Next hop `host:port` for `proxy` mode; in `queue` mode, the next hop of every
    /// recipient without a `[queue.routes]` entry (unset: MX lookup).
    pub upstream: Option<String>,
    /// `none`, `opportunistic` or `required` STARTTLS towards the upstream.
    pub upstream_tls: String,
    /// Connecting to the upstream.
    pub connect_timeout_secs: u64,
    /// Tell `upstream` who the original client was, in proxy and queue mode: Postfix's
    /// XCLIENT when the upstream offers it (it then logs and evaluates the real client;
    /// it needs `smtpd_authorized_xclient_hosts`), else XFORWARD (logging only,
    /// `smtpd_authorized_xforward_hosts`), else nothing. Off by default.
    pub xclient: bool,
}

impl Default for Delivery {
    fn default() -> Self {
        Delivery {
            mode: None,
            maildir: PathBuf::from("./var/mail"),
            fold_local_part: true,
            upstream: None,
            upstream_tls: "opportunistic".into(),
            connect_timeout_secs: 30,
            xclient: false,
        }
    }
}

/// `MAILGATE_*` environment variables that are not config keys: `MAILGATE_LOG` (the log
/// filter) and `MAILGATE_PERFMAP` (plugin code named for `perf`, docs/benchmarks.md).
const ENV_NOT_CONFIG: &[&str] = &["log", "perfmap"];

/// The `MAILGATE_*` environment variables as config overrides (`__` separates keys).
pub fn env_overrides() -> Env {
    Env::prefixed("MAILGATE_")
        .ignore(ENV_NOT_CONFIG)
        .split("__")
}

impl Config {
    /// Loads defaults, then `file` (if given), then `MAILGATE_` environment variables.
    pub fn load(file: Option<&Path>) -> Result<Config, ConfigError> {
        Self::from_figment(Self::figment(file))
    }

    /// The figment behind [`Config::load`], for callers that add providers (tests).
    pub fn figment(file: Option<&Path>) -> Figment {
        let mut f = Figment::from(Serialized::defaults(Config::default()));
        if let Some(path) = file {
            f = f.merge(Toml::file_exact(path));
        }
        f.merge(env_overrides())
    }

    /// Extracts a config from a prepared figment.
    pub fn from_figment(f: Figment) -> Result<Config, ConfigError> {
        Ok(f.extract()?)
    }

    /// Parses a TOML string over the defaults (no environment), for tests and tools.
    pub fn from_toml(text: &str) -> Result<Config, ConfigError> {
        Self::from_figment(
            Figment::from(Serialized::defaults(Config::default())).merge(Toml::string(text)),
        )
    }
}
