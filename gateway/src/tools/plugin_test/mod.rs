//! `mailgate plugin test`: runs one plugin, or the chain of a gateway config, over one
//! message offline and prints what happened (docs/plugin-test.md).
//!
//! Nothing here reimplements the chain or the session: the real connection driver
//! ([`crate::server::conn::serve_stream`]) serves one session over an in-memory pipe,
//! with the settings and plugins of the config (or of one plugin on the defaults), and a
//! scripted client ([`client`]) at the other end talks SMTP to it: connect, EHLO, MAIL,
//! each RCPT, DATA. Accepted mail goes to a Maildir in a temporary directory (and a
//! quarantined message to a quarantine there), never to the network; the deliver stage
//! (`on-deliver`) then runs on the message as it was accepted, through the queue's own
//! [`crate::plugin::delivery::routes`]. Chains record every decision in full into the
//! services' decision log, which the report shows stage by stage.
//!
//! - `--dns-zone`: every lookup is answered from the given master files ([`zones`]);
//! - `--time`: the plugins' wall clock (and DKIM `x=` expiry) stands at that time;
//! - `--json`: the same report as one JSON object.
//!
//! Exit status: 0 accepted, 1 rejected, 2 tempfailed, 3 a plugin failed, 64 and up
//! usage and input errors ([`report`]).

mod client;
mod logs;
mod report;
mod zones;

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use figment::Figment;
use figment::providers::{Format, Serialized, Toml};

use crate::config::{Config, DeliveryMode, Runtime};
use crate::current::Current;
use crate::plugin::chain::{DecisionLog, Stage};
use crate::plugin::registry::{Generation, LoadError, Services};
use crate::plugin::{QueuedMessage, Route};
use crate::server::conn::{StreamSession, serve_stream};
use crate::server::outbound::Backend;
use crate::smtp::{Envelope, MailParams, MessageText, TlsInfo};
use report::{
    DecisionJson, DeliverJson, Disposition, EnvelopeJson, Outcome, PluginJson, RefusedJson, Report,
    RouteJson, RunJson, SessionJson, StepJson,
};

/// The client's address without `--client-ip`: 192.0.2.1, in TEST-NET-1 (RFC 5737),
/// which no real host has.
pub const DEFAULT_CLIENT_IP: &str = "192.0.2.1";
/// The EHLO name without `--helo`.
pub const DEFAULT_HELO: &str = "client.example";
/// The envelope sender without `--from`.
pub const DEFAULT_FROM: &str = "sender@example.com";
/// The local part of the default recipient (`recipient@` the first local domain).
pub const DEFAULT_RCPT_LOCAL: &str = "recipient";
/// The domain of the default recipient when there is no local domain (one plugin).
pub const DEFAULT_RCPT_DOMAIN: &str = "example.net";
/// The TLS the session is marked with under `--tls`.
const TLS_VERSION: &str = "TLSv1_3";
const TLS_CIPHER: &str = "TLS13_AES_256_GCM_SHA384";
/// Our address in the session (the client "connected" to it).
const LOCAL_ADDR: &str = "192.0.2.250:25";
/// The client's port.
const CLIENT_PORT: u16 = 49152;

/// The command line of `mailgate plugin test` (boxed: the options are many, and the
/// command enum holding them stays small).
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The options.
    #[command(flatten)]
    pub options: Box<Options>,
}

/// The options of `mailgate plugin test`.
#[derive(clap::Args, Debug)]
#[command(group(clap::ArgGroup::new("chain").required(true).args(["config", "plugin"])))]
pub struct Options {
    /// A gateway config whose plugin chain runs, with its settings (relay rules, limits,
    /// host name, DNS, delivery mode for the routes shown).
    #[arg(long, value_name = "GATEWAY.toml", conflicts_with = "plugin")]
    pub config: Option<PathBuf>,
    /// One plugin component to run alone, on the built-in defaults.
    #[arg(value_name = "PLUGIN.wasm")]
    pub plugin: Option<PathBuf>,
    /// An entry of the plugin's config table (repeatable): `KEY=VALUE`, VALUE read as a
    /// TOML value if it is one (`5`, `true`, `["a","b"]`, `"text"`), else as text; dotted
    /// keys make nested tables (`dnsbl.zen.zone=zen.test`).
    #[arg(long = "plugin-config", value_name = "KEY=VALUE", value_parser = key_value, conflicts_with = "config")]
    pub plugin_config: Vec<(String, String)>,
    /// Grant the plugin a capability (repeatable, or comma-separated): log, clock, dns,
    /// kv, auth-results, metrics, verify.
    #[arg(long = "grant", value_name = "CAP", value_parser = capability, value_delimiter = ',', conflicts_with = "config")]
    pub grants: Vec<String>,
    /// The message (RFC 5322; LF line ends are sent as CRLF). Default: a small built-in
    /// message from --from to the first --rcpt.
    #[arg(long, value_name = "FILE.eml")]
    pub message: Option<PathBuf>,
    /// The client's address.
    #[arg(long = "client-ip", value_name = "IP", default_value = DEFAULT_CLIENT_IP)]
    pub client_ip: IpAddr,
    /// The EHLO name.
    #[arg(long, value_name = "NAME", default_value = DEFAULT_HELO, value_parser = helo_name)]
    pub helo: String,
    /// The envelope sender (an empty value is the null sender `<>`).
    #[arg(long, value_name = "ADDR", default_value = DEFAULT_FROM, value_parser = sender)]
    pub from: String,
    /// A recipient (repeatable). Default: `recipient@` the config's first local domain
    /// (`recipient@example.net` for one plugin).
    #[arg(long, value_name = "ADDR", value_parser = recipient)]
    pub rcpt: Vec<String>,
    /// The session counts as TLS (as after an implicit-TLS handshake), without one.
    #[arg(long)]
    pub tls: bool,
    /// An RFC 1035 master file (repeatable): every DNS lookup is answered from these
    /// zones, names outside them are NXDOMAIN. Without it, the config's resolver.
    #[arg(long = "dns-zone", value_name = "ZONEFILE")]
    pub dns_zones: Vec<PathBuf>,
    /// The time plugins see (the `clock` capability) and DKIM expiry is judged at, RFC
    /// 3339 (`2026-01-02T03:04:05Z`); the wall clock stands still there for the run.
    #[arg(long, value_name = "RFC3339", value_parser = rfc3339)]
    pub time: Option<time::OffsetDateTime>,
    /// Print the report as one JSON object.
    #[arg(long)]
    pub json: bool,
}

fn key_value(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_string(), v.to_string())),
        _ => Err(format!("{s:?}: expected KEY=VALUE")),
    }
}

fn capability(s: &str) -> Result<String, String> {
    use crate::config::Capability;
    match Capability::parse(s.trim()) {
        Some(c) => Ok(c.name().to_string()),
        None => Err(format!(
            "{s:?}: expected one of {}",
            Capability::ALL
                .iter()
                .map(|c| c.name())
                .collect::<Vec<_>>()
                .join(", ")
        )),
    }
}

/// Text that goes into a command line as it is: printable, no spaces or angle brackets.
fn command_safe(s: &str) -> bool {
    !s.chars()
        .any(|c| c.is_control() || c.is_whitespace() || c == '<' || c == '>')
}

fn helo_name(s: &str) -> Result<String, String> {
    if s.is_empty() || !command_safe(s) {
        return Err(format!("{s:?}: a host name or address literal"));
    }
    Ok(s.to_string())
}

fn sender(s: &str) -> Result<String, String> {
    if !command_safe(s) || (!s.is_empty() && !s.contains('@')) {
        return Err(format!("{s:?}: an address local@domain, or empty for <>"));
    }
    Ok(s.to_string())
}

fn recipient(s: &str) -> Result<String, String> {
    if !command_safe(s) || !s.contains('@') {
        return Err(format!("{s:?}: an address local@domain"));
    }
    Ok(s.to_string())
}

fn rfc3339(s: &str) -> Result<time::OffsetDateTime, String> {
    time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
        .map_err(|e| format!("{s:?}: not an RFC 3339 time ({e}); e.g. 2026-01-02T03:04:05Z"))
}

/// A failure with its exit status.
struct Fail {
    code: i32,
    error: anyhow::Error,
}

trait OrExit<T> {
    fn or_exit(self, code: i32) -> Result<T, Fail>;
}

impl<T, E: Into<anyhow::Error>> OrExit<T> for Result<T, E> {
    fn or_exit(self, code: i32) -> Result<T, Fail> {
        self.map_err(|e| Fail {
            code,
            error: e.into(),
        })
    }
}

fn fail(code: i32, error: anyhow::Error) -> Fail {
    Fail { code, error }
}

/// Runs the command; the process exit status is the `Ok` value (errors are reported on
/// stderr and come back as their exit status too).
pub fn run(args: Args) -> anyhow::Result<i32> {
    let args = *args.options;
    let captured = logs::install();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let json = args.json;
    match runtime.block_on(test(args, captured)) {
        Ok(report) => {
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{}", report.text());
            }
            Ok(report.exit_code)
        }
        Err(f) => {
            eprintln!("mailgate plugin test: {:#}", f.error);
            Ok(f.code)
        }
    }
}

/// The settings of the run: the config's, or the defaults with one plugin.
fn settings(args: &Options) -> Result<Config, Fail> {
    if let Some(path) = &args.config {
        if !path.is_file() {
            return Err(fail(
                report::EXIT_NO_INPUT,
                anyhow::anyhow!("no config file {}", path.display()),
            ));
        }
        return Config::load(Some(path))
            .with_context(|| format!("loading {}", path.display()))
            .or_exit(report::EXIT_CONFIG);
    }
    let Some(path) = &args.plugin else {
        return Err(fail(
            report::EXIT_USAGE,
            anyhow::anyhow!("give a plugin or --config"),
        ));
    };
    if !path.is_file() {
        return Err(fail(
            report::EXIT_NO_INPUT,
            anyhow::anyhow!("no plugin file {}", path.display()),
        ));
    }
    let mut base = Config::default();
    // No compile cache unless asked for (MAILGATE_CHAIN__COMPILE_CACHE): a test run
    // leaves nothing behind in the working directory.
    base.chain.compile_cache = PathBuf::new();
    // One plugin has no relay policy to be faithful to: the recipients' domains are local.
    let mut domains: Vec<String> = args
        .rcpt
        .iter()
        .filter_map(|r| r.rsplit_once('@').map(|(_, d)| d.to_ascii_lowercase()))
        .filter(|d| !d.starts_with('['))
        .collect();
    if domains.is_empty() {
        domains.push(DEFAULT_RCPT_DOMAIN.into());
    }
    domains.dedup();
    base.relay.local_domains = domains;
    let mut config = std::collections::BTreeMap::new();
    for (k, v) in &args.plugin_config {
        config.insert(k.clone(), toml_value(v));
    }
    base.plugins = vec![crate::config::Plugin {
        name: plugin_name(path),
        path: path.clone(),
        sha256: None,
        on_error: "tempfail".into(),
        capabilities: args.grants.clone(),
        limits: Default::default(),
        literal_recipients: false,
        config,
        instances: "reused".into(),
    }];
    // MAILGATE_* variables apply as they do to a config file.
    Config::from_figment(
        Figment::from(Serialized::defaults(base)).merge(crate::config::env_overrides()),
    )
    .context("the environment's MAILGATE_* settings")
    .or_exit(report::EXIT_CONFIG)
}

/// VALUE as a TOML value if it is one, else as text.
fn toml_value(v: &str) -> serde_json::Value {
    Figment::from(Toml::string(&format!("v = {v}")))
        .extract_inner::<serde_json::Value>("v")
        .unwrap_or_else(|_| serde_json::Value::String(v.to_string()))
}

/// The plugin's name in the chain: its file name without `.wasm`, as `a-z 0-9 - _`.
fn plugin_name(path: &Path) -> String {
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().to_ascii_lowercase())
        .unwrap_or_default();
    let name: String = stem
        .chars()
        .map(|c| match c {
            'a'..='z' | '0'..='9' | '-' | '_' => c,
            _ => '-',
        })
        .take(64)
        .collect();
    if name.is_empty() {
        "plugin".into()
    } else {
        name
    }
}

/// The message as sent: the file with every line ending made CRLF, or the built-in one.
fn message(args: &Options, rcpt: &str, now: SystemTime) -> Result<Vec<u8>, Fail> {
    let raw = match &args.message {
        Some(p) => std::fs::read(p)
            .with_context(|| format!("reading the message {}", p.display()))
            .or_exit(report::EXIT_NO_INPUT)?,
        None => {
            let date = time::OffsetDateTime::from(now)
                .format(&time::format_description::well_known::Rfc2822)
                .unwrap_or_default();
            let from = if args.from.is_empty() {
                "MAILER-DAEMON".to_string()
            } else {
                args.from.clone()
            };
            format!(
                "From: <{from}>\nTo: <{rcpt}>\nSubject: mailgate plugin test\nDate: {date}\n\
                 Message-ID: <plugin-test@{}>\nMIME-Version: 1.0\n\
                 Content-Type: text/plain; charset=us-ascii\n\n\
                 This is a test message from mailgate plugin test.\n",
                args.helo
            )
            .into_bytes()
        }
    };
    let mut out = Vec::with_capacity(raw.len() + raw.len() / 20);
    let mut i = 0;
    while i < raw.len() {
        match raw[i] {
            b'\r' if raw.get(i + 1) == Some(&b'\n') => {
                out.extend_from_slice(b"\r\n");
                i += 1;
            }
            b'\r' | b'\n' => out.extend_from_slice(b"\r\n"),
            b => out.push(b),
        }
        i += 1;
    }
    if !out.is_empty() && !out.ends_with(b"\r\n") {
        out.extend_from_slice(b"\r\n");
    }
    Ok(out)
}

/// One delivered (or quarantined) copy: its envelope lines taken off.
struct Kept {
    sender: String,
    rcpt: String,
    /// The message as it left the gateway (`Received:` on top), or as quarantined.
    text: Vec<u8>,
}

/// The copies in a Maildir tree, in delivery order.
fn copies(root: &Path) -> Vec<Kept> {
    let mut files: Vec<(u64, PathBuf)> = Vec::new();
    let dirs = |p: &Path| -> Vec<PathBuf> {
        std::fs::read_dir(p)
            .map(|rd| rd.filter_map(|e| e.ok().map(|e| e.path())).collect())
            .unwrap_or_default()
    };
    for domain in dirs(root) {
        for mailbox in dirs(&domain) {
            for f in dirs(&mailbox.join("new")) {
                // `<secs>.M<micros>P<pid>Q<counter>.<host>`: the counter orders them.
                let q = f
                    .file_name()
                    .and_then(|n| n.to_str())
                    .and_then(|n| n.split_once('Q'))
                    .and_then(|(_, rest)| rest.split('.').next())
                    .and_then(|n| n.parse().ok())
                    .unwrap_or(u64::MAX);
                files.push((q, f));
            }
        }
    }
    files.sort();
    files
        .into_iter()
        .filter_map(|(_, f)| {
            let text = std::fs::read(&f).ok()?;
            let mut rest = text.as_slice();
            let mut line = |prefix: &str| -> Option<String> {
                let end = rest.windows(2).position(|w| w == b"\r\n")?;
                let l = std::str::from_utf8(&rest[..end]).ok()?;
                let v = l
                    .strip_prefix(prefix)?
                    .trim_start_matches('<')
                    .trim_end_matches('>');
                let v = v.to_string();
                rest = &rest[end + 2..];
                Some(v)
            };
            let sender = line("Return-Path: ")?;
            let rcpt = line("Delivered-To: ")?;
            Some(Kept {
                sender,
                rcpt,
                text: rest.to_vec(),
            })
        })
        .collect()
}

/// The header block of `text` (without the blank line) and the message size.
fn head(text: &[u8]) -> String {
    let end = text
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map_or(text.len(), |p| p + 2);
    String::from_utf8_lossy(&text[..end]).into_owned()
}

fn plugins_json(g: Option<&Arc<Generation>>) -> Vec<PluginJson> {
    let stages = [
        Stage::Connect,
        Stage::Helo,
        Stage::MailFrom,
        Stage::RcptTo,
        Stage::Data,
        Stage::Deliver,
    ];
    g.map(|g| {
        g.plugins
            .iter()
            .map(|p| PluginJson {
                name: p.spec.name.clone(),
                path: p.spec.path.display().to_string(),
                version: p.version.clone(),
                world: p.world.clone(),
                hooks: stages
                    .iter()
                    .filter(|s| p.hooks.contains(s.flag()))
                    .map(|s| s.name())
                    .collect(),
                capabilities: p.spec.capabilities.iter().map(|c| c.name()).collect(),
                on_error: format!("{:?}", p.spec.on_error).to_ascii_lowercase(),
            })
            .collect()
    })
    .unwrap_or_default()
}

/// The whole run.
async fn test(args: Options, captured: Arc<logs::Captured>) -> Result<Report, Fail> {
    let cfg = settings(&args)?;
    let mut rt: Runtime =
        cfg.validate()
            .context("validating the settings")
            .or_exit(if args.config.is_some() {
                report::EXIT_CONFIG
            } else {
                report::EXIT_USAGE
            })?;
    let scratch = tempfile::tempdir()
        .context("creating a temporary directory")
        .or_exit(report::EXIT_SOFTWARE)?;
    let mail_root = scratch.path().join("mail");
    let quarantine_root = scratch.path().join("quarantine");
    let spill = scratch.path().join("spill");
    std::fs::create_dir_all(&spill)
        .context("creating the spill directory")
        .or_exit(report::EXIT_SOFTWARE)?;
    // Offline: nothing is written where the config points, and no greeting delay.
    rt.live.quarantine = quarantine_root.clone();
    rt.live.spill_dir = spill;
    rt.live.greeting_delay = Duration::ZERO;

    // The clock and the resolver.
    let now = args.time.map(SystemTime::from);
    let clock = Arc::new(match now {
        Some(t) => crate::plugin::clock::PluginClock::fixed_at(t),
        None => crate::plugin::clock::PluginClock::new(false),
    });
    let zones = if args.dns_zones.is_empty() {
        None
    } else {
        let z = zones::serve(&args.dns_zones).await.map_err(|e| {
            let code = match e {
                zones::ZoneError::Read { .. } => report::EXIT_NO_INPUT,
                zones::ZoneError::Invalid { .. } => report::EXIT_DATA,
                zones::ZoneError::Bind(_) => report::EXIT_SOFTWARE,
            };
            fail(code, e.into())
        })?;
        Some(z)
    };
    let mut dns_settings = rt.fixed.dns.clone();
    if let Some(z) = &zones {
        dns_settings.servers = vec![z.addr];
    }
    let dns = Arc::new(crate::dns::Resolver::new(dns_settings));

    // The plugins, with a decision log.
    let decisions = Arc::new(DecisionLog::default());
    let services = Arc::new(Services {
        kv: Arc::new(crate::plugin::kv::Kv::with_clock(Arc::clone(&clock))),
        dns: Arc::clone(&dns),
        compile_cache: rt.fixed.compile_cache.clone(),
        memory: crate::memory_budget::MemoryBudget::new(rt.fixed.plugin_memory),
        // The session's chain and the deliver stage's.
        sessions: 2,
        auth: Arc::new(crate::plugin::auth::Authenticator::with_clock(
            &dns,
            Arc::clone(&clock),
        )),
        verify: Arc::new(crate::verify::Verifier::new(
            Arc::clone(&dns),
            Arc::clone(&clock),
        )),
        clock: Arc::clone(&clock),
        decisions: Some(Arc::clone(&decisions)),
    });
    let generation = crate::plugin::registry::load_all(&rt.live.plugins, &services)
        .await
        .map_err(|e| {
            let code = match e {
                LoadError::Read { .. } => report::EXIT_NO_INPUT,
                _ => report::EXIT_PLUGIN_FAILED,
            };
            fail(code, anyhow::Error::new(e).context("loading the plugins"))
        })?;

    // The script.
    let rcpts = if args.rcpt.is_empty() {
        let domain = rt
            .live
            .local_domains
            .first()
            .cloned()
            .unwrap_or_else(|| DEFAULT_RCPT_DOMAIN.into());
        vec![format!("{DEFAULT_RCPT_LOCAL}@{domain}")]
    } else {
        args.rcpt.clone()
    };
    let script = client::Script {
        helo: args.helo.clone(),
        from: args.from.clone(),
        message: message(&args, &rcpts[0], now.unwrap_or_else(SystemTime::now))?,
        rcpts,
    };

    // The session, over a pipe, with a Maildir in the scratch directory as delivery.
    let rt = Arc::new(rt);
    let current = Arc::new(Current {
        session: Arc::new(crate::server::session_config(&rt, false)),
        runtime: Arc::clone(&rt),
        plugins: generation.clone(),
        generation: 1,
        since: clock.now_ms() / 1000,
    });
    let backend = Backend::Maildir(Arc::new(
        crate::delivery::Maildir::new(&mail_root).fold_local_part(rt.fixed.fold_local_part),
    ));
    let (_stop, shutdown) = tokio::sync::watch::channel(false);
    let (server_end, client_end) = tokio::io::duplex(64 * 1024);
    let client_addr = SocketAddr::new(args.client_ip, CLIENT_PORT);
    let session = tokio::spawn(serve_stream(
        server_end,
        StreamSession {
            current: Arc::clone(&current),
            backend,
            dns: Arc::clone(&dns),
            memory: crate::memory_budget::MemoryBudget::new(rt.fixed.max_message_memory),
            shutdown,
            client: client_addr,
            local: LOCAL_ADDR.parse().expect("a socket address"),
            tls: args.tls.then(|| TlsInfo {
                version: TLS_VERSION.into(),
                cipher: TLS_CIPHER.into(),
            }),
        },
    ));
    let dialogue = client::run(
        client_end,
        &script,
        client::Recorders {
            decisions: &decisions,
            logs: &captured,
        },
    )
    .await
    .or_exit(report::EXIT_SOFTWARE)?;
    let end = session
        .await
        .context("the session task")
        .or_exit(report::EXIT_SOFTWARE)?;
    if let Some(e) = &end.error {
        return Err(fail(
            report::EXIT_SOFTWARE,
            anyhow::anyhow!("the session failed: {e}"),
        ));
    }

    // What became of the message.
    let (result, final_reply) = report::outcome(&dialogue);
    let delivered = copies(&mail_root);
    let quarantined = copies(&quarantine_root);
    let data_decisions: Vec<&crate::plugin::chain::Decided> = dialogue
        .steps
        .iter()
        .flat_map(|s| s.decisions.iter())
        .filter(|d| d.stage == Stage::Data)
        .collect();
    let disposition = (result == Outcome::Accepted).then(|| {
        if !delivered.is_empty() {
            Disposition::Delivered
        } else if !quarantined.is_empty() {
            Disposition::Quarantined
        } else if data_decisions
            .iter()
            .any(|d| matches!(d.decision, crate::plugin::convert::Decision::Discard(_)))
        {
            Disposition::Discarded
        } else {
            Disposition::NoRecipients
        }
    });
    let kept = if delivered.is_empty() {
        &quarantined
    } else {
        &delivered
    };
    let (quarantine_reason, kept_text) = match (disposition, kept.first()) {
        (Some(Disposition::Quarantined), Some(c)) => {
            // The quarantine's copy starts with the reason, in place of Received.
            let h = head(&c.text);
            let reason = report::fields(&h)
                .into_iter()
                .find(|f| f.name.eq_ignore_ascii_case("X-Mailgate-Quarantine"))
                .map(|f| f.value);
            (reason, Some(c.text.clone()))
        }
        (Some(_), Some(c)) => (None, Some(c.text.clone())),
        _ => (None, None),
    };
    let envelope = kept.first().map(|c| EnvelopeJson {
        mail_from: c.sender.clone(),
        rcpt_to: kept.iter().map(|c| c.rcpt.clone()).collect(),
    });
    let headers = kept_text.as_deref().map(head);

    // The deliver stage, as the queue runs it before the first attempt.
    let queue_id = final_reply
        .as_ref()
        .and_then(|a| {
            a.first()
                .rsplit_once("queued as ")
                .map(|(_, id)| id.trim().to_string())
        })
        .unwrap_or_default();
    // Shown when it does something: a plugin routes, or the config queues.
    let routes_matter = generation
        .as_ref()
        .is_some_and(|g| crate::plugin::delivery::has_deliver_hooks(g))
        || matches!(rt.fixed.delivery, DeliveryMode::Queue(_));
    let deliver = match (disposition, &kept_text, &envelope) {
        (Some(Disposition::Delivered), Some(text), Some(env)) if routes_matter => Some(
            deliver_stage(DeliverInput {
                rt: &rt,
                generation: generation.as_ref(),
                dns: &dns,
                decisions: &decisions,
                captured: &captured,
                clock: &clock,
                queue_id: &queue_id,
                end: &end,
                envelope: Envelope {
                    mail_from: env.mail_from.clone(),
                    params: MailParams {
                        smtputf8: dialogue.smtputf8,
                        body: if dialogue.eight_bit {
                            crate::smtp::BodyType::EightBitMime
                        } else {
                            crate::smtp::BodyType::SevenBit
                        },
                        size: None,
                    },
                    rcpt_to: env.rcpt_to.clone(),
                },
                text: text.clone(),
                plugin_mode: args.config.is_none(),
            })
            .await,
        ),
        _ => None,
    };

    let plugin_failed = dialogue
        .steps
        .iter()
        .flat_map(|s| s.decisions.iter())
        .any(|d| d.failure.is_some())
        || deliver
            .as_ref()
            .is_some_and(|d| d.decisions.iter().any(|x| x.failure.is_some()));
    let refused_recipients = dialogue
        .steps
        .iter()
        .filter(|s| s.stage == "rcpt")
        .filter_map(|s| {
            let reply = s.reply.clone().filter(|r| !r.ok())?;
            let cmd = s.command.as_deref()?;
            let rcpt = cmd.strip_prefix("RCPT TO:<")?.strip_suffix('>')?;
            Some(RefusedJson {
                recipient: rcpt.to_string(),
                reply,
            })
        })
        .collect();
    let delivery_mode = rt.fixed.delivery.name();
    Ok(Report {
        result,
        disposition,
        plugin_failed,
        exit_code: report::exit_code(result, plugin_failed),
        final_reply,
        quarantine_reason,
        run: RunJson {
            config: args.config.as_ref().map(|p| p.display().to_string()),
            hostname: rt.live.hostname.clone(),
            local_domains: rt.live.local_domains.clone(),
            delivery_mode,
            plugins: plugins_json(generation.as_ref()),
            client: client_addr.ip().to_string(),
            tls: args.tls,
            time: args.time.and_then(|t| {
                t.format(&time::format_description::well_known::Rfc3339)
                    .ok()
            }),
            dns_zones: zones.as_ref().map(|z| z.zones.clone()),
            message_file: args.message.as_ref().map(|p| p.display().to_string()),
        },
        session: SessionJson {
            id: end.facts.id.clone(),
            reverse_name: end.facts.ptr_name.clone(),
            trusted: end.facts.trusted,
        },
        steps: dialogue.steps.iter().map(StepJson::from).collect(),
        deliver,
        score: end.score,
        tags: end.tags.clone(),
        refused_recipients,
        envelope,
        header_fields: headers.as_deref().map(report::fields).unwrap_or_default(),
        headers,
        size: kept_text.as_ref().map(Vec::len),
    })
}

/// What the deliver stage needs.
struct DeliverInput<'a> {
    rt: &'a Runtime,
    generation: Option<&'a Arc<Generation>>,
    dns: &'a crate::dns::Resolver,
    decisions: &'a DecisionLog,
    captured: &'a logs::Captured,
    clock: &'a crate::plugin::clock::PluginClock,
    queue_id: &'a str,
    end: &'a crate::server::conn::StreamEnd,
    envelope: Envelope,
    text: Vec<u8>,
    plugin_mode: bool,
}

/// `on-deliver` over the message as accepted (as the queue's first attempt runs it), and
/// each recipient's route: a plugin's, else the config's.
async fn deliver_stage(i: DeliverInput<'_>) -> DeliverJson {
    let (from_decision, from_log) = (i.decisions.len(), i.captured.len());
    let plugin_routes = match i.generation {
        Some(g) => {
            let m = QueuedMessage {
                id: i.queue_id,
                session: &i.end.facts,
                score: i.end.score,
                tags: &i.end.tags,
                attempt: 1,
                envelope: &i.envelope,
                text: MessageText::new(i.text.clone()),
                received_at_ms: i.clock.now_ms(),
            };
            crate::plugin::delivery::routes(g, &m).await
        }
        None => Ok(Default::default()),
    };
    let decisions: Vec<DecisionJson> = i
        .decisions
        .since(from_decision)
        .iter()
        .map(DecisionJson::from)
        .collect();
    let (map, attempt_reply) = match plugin_routes {
        Ok(m) => (m, None),
        Err(reply) => (Default::default(), Some(report::ReplyJson::from(&reply))),
    };
    let mut routes = Vec::new();
    for rcpt in &i.envelope.rcpt_to {
        let by_plugin = map.get(&rcpt.to_ascii_lowercase());
        let by = decisions
            .iter()
            .find(|d| {
                d.routes
                    .iter()
                    .any(|r| r.recipient.eq_ignore_ascii_case(rcpt))
            })
            .map(|d| d.plugin.clone());
        let route = match (by_plugin, by) {
            (Some(r), by) => RouteJson {
                recipient: rcpt.clone(),
                route: report::route_text(r),
                by: by.unwrap_or_else(|| "plugin".into()),
                next_hops: match r {
                    Route::To(d) => next_hops(i.rt, d, i.dns).await,
                    _ => vec![],
                },
            },
            (None, _) => config_route(&i, rcpt).await,
        };
        routes.push(route);
    }
    DeliverJson {
        queue_id: i.queue_id.to_string(),
        runs_in_server: matches!(i.rt.fixed.delivery, DeliveryMode::Queue(_)),
        decisions,
        logs: i.captured.since(from_log),
        attempt_reply,
        routes,
    }
}

/// The route the config gives a recipient no plugin routed.
async fn config_route(i: &DeliverInput<'_>, rcpt: &str) -> RouteJson {
    let (route, next) = match &i.rt.fixed.delivery {
        _ if i.plugin_mode => (
            "no plugin route: the delivery mode of the gateway decides".to_string(),
            vec![],
        ),
        DeliveryMode::Queue(_) => {
            let dest = i.rt.live.routing.destination(rcpt);
            let hops = next_hops(i.rt, &dest, i.dns).await;
            (report::route_text(&Route::To(dest)), hops)
        }
        DeliveryMode::Maildir(root) => (format!("maildir {}", root.display()), vec![]),
        DeliveryMode::Proxy { upstream, .. } => (
            format!("proxy {upstream} (relayed in-line, before the 250)"),
            vec![],
        ),
    };
    RouteJson {
        recipient: rcpt.to_string(),
        route,
        by: "config".into(),
        next_hops: next,
    }
}

/// The addresses the queue would try for `dest` (MX lookups through the run's resolver).
async fn next_hops(
    rt: &Runtime,
    dest: &crate::delivery::Destination,
    dns: &crate::dns::Resolver,
) -> Vec<String> {
    use crate::queue::route::NoRoute;
    if !matches!(dest, crate::delivery::Destination::Mx(_)) {
        return vec![];
    }
    match rt.live.routing.targets(dest, dns).await {
        Ok(t) => t
            .into_iter()
            .map(|t| format!("{} ({})", t.addr, t.host))
            .collect(),
        Err(NoRoute::Permanent(why, code) | NoRoute::Temporary(why, code)) => {
            vec![format!("none: {code} {why}")]
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_toml_when_they_parse_and_text_otherwise() {
        assert_eq!(toml_value("5"), serde_json::json!(5));
        assert_eq!(toml_value("true"), serde_json::json!(true));
        assert_eq!(toml_value("[\"a\", \"b\"]"), serde_json::json!(["a", "b"]));
        assert_eq!(toml_value("\"5\""), serde_json::json!("5"));
        assert_eq!(toml_value("hello world"), serde_json::json!("hello world"));
        assert_eq!(toml_value(""), serde_json::json!(""));
    }

    #[test]
    fn plugin_names_come_from_the_file_name() {
        assert_eq!(
            plugin_name(Path::new("/x/mailgate_spam_score.wasm")),
            "mailgate_spam_score"
        );
        assert_eq!(plugin_name(Path::new("My Plugin.wasm")), "my-plugin");
        assert_eq!(plugin_name(Path::new(".wasm")), "-wasm");
    }

    #[test]
    fn command_line_values_cannot_inject_commands() {
        assert!(recipient("a@b.test").is_ok());
        assert!(recipient("a@b.test>\r\nRCPT TO:<x@y").is_err());
        assert!(recipient("nobody").is_err());
        assert!(sender("").is_ok());
        assert!(sender("a b@c").is_err());
        assert!(helo_name("mail.example").is_ok());
        assert!(helo_name("").is_err());
        assert!(key_value("a.b=c=d").unwrap() == ("a.b".into(), "c=d".into()));
        assert!(key_value("=x").is_err());
        assert!(capability("auth-results").is_ok());
        assert!(capability("network").is_err());
        assert!(rfc3339("2026-01-02T03:04:05+01:00").is_ok());
        assert!(rfc3339("yesterday").is_err());
    }

    fn args(message: Option<PathBuf>) -> Options {
        Options {
            config: None,
            plugin: Some("p.wasm".into()),
            plugin_config: vec![],
            grants: vec![],
            message,
            client_ip: DEFAULT_CLIENT_IP.parse().unwrap(),
            helo: DEFAULT_HELO.into(),
            from: DEFAULT_FROM.into(),
            rcpt: vec![],
            tls: false,
            dns_zones: vec![],
            time: None,
            json: false,
        }
    }

    #[test]
    fn line_ends_become_crlf_and_the_built_in_message_is_dated() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("m.eml");
        std::fs::write(&p, b"Subject: x\n\nbody\r\nmore\rlast").unwrap();
        let m = message(&args(Some(p)), "r@example.net", SystemTime::now())
            .ok()
            .unwrap();
        assert_eq!(m, b"Subject: x\r\n\r\nbody\r\nmore\r\nlast\r\n");
        let at = SystemTime::UNIX_EPOCH + Duration::from_secs(1_767_225_600);
        let m = message(&args(None), "r@example.net", at).ok().unwrap();
        let m = String::from_utf8(m).unwrap();
        assert!(
            m.contains("Date: Thu, 01 Jan 2026 00:00:00 +0000\r\n"),
            "{m}"
        );
        assert!(m.contains("To: <r@example.net>\r\n"), "{m}");
    }
}
