//! The `mailgate` command: run the gateway, check a configuration.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use mailgate::config::{Config, DeliveryMode};
use mailgate::server::{self, Listeners};

#[derive(Parser, Debug)]
#[command(name = "mailgate", version, about = "Inbound SMTP filtering gateway")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the gateway (built-in defaults when no --config is given).
    Run {
        /// TOML configuration file; MAILGATE_* environment variables override it.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Log line format on stderr.
        #[arg(long, value_enum, default_value_t = LogFormat::Text)]
        log_format: LogFormat,
    },
    /// Load and validate a configuration and every configured plugin, print the
    /// effective settings, and exit.
    CheckConfig {
        /// TOML configuration file; MAILGATE_* environment variables override it.
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Plugin tools.
    Plugin {
        #[command(subcommand)]
        command: PluginCommand,
    },
    /// Inspect and manage the queue: through the running gateway's admin socket, or on
    /// the spool itself when no gateway is running.
    Queue {
        /// The gateway's configuration (for the admin socket and spool paths).
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Print the gateway's JSON answer instead of text.
        #[arg(long)]
        json: bool,
        #[command(subcommand)]
        command: QueueCommand,
    },
    /// Reload the running gateway's configuration and plugins (like SIGHUP) and show
    /// the result: the new generation, or why the current one keeps serving.
    Reload {
        /// The gateway's configuration (for the admin socket path).
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Show the running gateway's status (delivery mode, plugin generation, queue figures).
    Status {
        /// The gateway's configuration (for the admin socket path).
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// The time plugins see (tests): `advance SECS` moves it forward, when the running
    /// gateway's config sets `chain.adjustable_clock`.
    Clock {
        /// The gateway's configuration (for the admin socket path).
        #[arg(long, short, global = true)]
        config: Option<PathBuf>,
        #[command(subcommand)]
        command: ClockCommand,
    },
}

#[derive(Subcommand, Debug)]
enum ClockCommand {
    /// Moves the plugins' clock (the `clock` capability, kv expiry) forward.
    Advance {
        /// Seconds.
        secs: u64,
    },
}

#[derive(Subcommand, Debug)]
enum QueueCommand {
    /// List queued messages, oldest first, with each recipient's state.
    List,
    /// Show one message's state and headers.
    Show {
        /// Queue id.
        id: String,
    },
    /// Attempt every queued message now (not held ones).
    Flush,
    /// Attempt one message now.
    Retry {
        /// Queue id.
        id: String,
    },
    /// Delete a message without notifying anyone.
    Delete {
        /// Queue id.
        id: String,
    },
    /// Keep a message in the queue without attempting it.
    Hold {
        /// Queue id.
        id: String,
    },
    /// Release a held message (attempted at once).
    Release {
        /// Queue id.
        id: String,
    },
}

impl QueueCommand {
    fn line(&self) -> String {
        match self {
            QueueCommand::List => "queue list".into(),
            QueueCommand::Show { id } => format!("queue show {id}"),
            QueueCommand::Flush => "queue flush".into(),
            QueueCommand::Retry { id } => format!("queue retry {id}"),
            QueueCommand::Delete { id } => format!("queue delete {id}"),
            QueueCommand::Hold { id } => format!("queue hold {id}"),
            QueueCommand::Release { id } => format!("queue release {id}"),
        }
    }
}

/// Sends one command to the running gateway and prints its JSON answer; fails when the
/// answer says so or nothing answers.
fn admin_command(config: Option<&std::path::Path>, command: &str) -> anyhow::Result<()> {
    let (socket, _) = admin_paths(config);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    match runtime.block_on(mailgate::admin::request(&socket, command))? {
        Some(v) => {
            println!("{}", serde_json::to_string_pretty(&v)?);
            if v["ok"].as_bool() == Some(true) {
                Ok(())
            } else {
                anyhow::bail!("{}", v["error"].as_str().unwrap_or("refused"))
            }
        }
        None => anyhow::bail!("no gateway answers on {}", socket.display()),
    }
}

/// The admin socket and spool paths of a configuration, read without validating the
/// rest of it: an admin can still ask a running gateway why it refused a broken file.
fn admin_paths(config: Option<&std::path::Path>) -> (PathBuf, PathBuf) {
    let f = Config::figment(config);
    let d = Config::default();
    (
        f.extract_inner("admin.socket").unwrap_or(d.admin.socket),
        f.extract_inner("queue.spool").unwrap_or(d.queue.spool),
    )
}

/// Prints an admin answer as text.
fn print_answer(v: &serde_json::Value) {
    if let Some(entries) = v["entries"].as_array() {
        for e in entries {
            println!(
                "{} {} octets, {} attempt(s){}, from <{}>",
                e["id"].as_str().unwrap_or("?"),
                e["size"],
                e["attempts"],
                if e["held"].as_bool() == Some(true) {
                    ", held"
                } else {
                    ""
                },
                e["sender"].as_str().unwrap_or(""),
            );
            for r in e["recipients"].as_array().into_iter().flatten() {
                println!(
                    "    {} {} {}",
                    r["address"].as_str().unwrap_or("?"),
                    r["status"].as_str().unwrap_or("?"),
                    r["last_reply"].as_str().unwrap_or(""),
                );
            }
        }
        println!("{} message(s)", entries.len());
    } else if let Some(h) = v["headers"].as_str() {
        println!(
            "{}",
            serde_json::to_string_pretty(&v["entry"]).unwrap_or_default()
        );
        print!("{h}");
    } else {
        println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
    }
}

#[derive(Subcommand, Debug)]
enum PluginCommand {
    /// Show a plugin's world version, the hooks it implements and the capabilities it imports.
    Inspect {
        /// The component file (.wasm).
        file: PathBuf,
    },
    /// Run one plugin, or a config's chain, over one message offline and print the trace.
    Test(mailgate::tools::plugin_test::Args),
    /// Write a new plugin skeleton (Rust, JavaScript or Python).
    New(mailgate::tools::plugin_new::Args),
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

fn load(config: Option<&std::path::Path>) -> anyhow::Result<(Config, mailgate::config::Runtime)> {
    let what = config
        .map(|p| p.display().to_string())
        .unwrap_or_else(|| "built-in defaults".into());
    let cfg = Config::load(config).with_context(|| format!("loading configuration from {what}"))?;
    let rt = cfg
        .validate()
        .with_context(|| format!("validating configuration from {what}"))?;
    Ok((cfg, rt))
}

fn init_logs(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("MAILGATE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let json = matches!(format, LogFormat::Json);
    // What clients send reaches the log escaped (mailgate::log_escape).
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(move || mailgate::log_escape::Escaping::new(std::io::stderr(), json));
    match format {
        LogFormat::Text => builder.with_ansi(false).init(),
        LogFormat::Json => builder.json().init(),
    }
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
    tracing::info!("shutdown signal received");
}

/// Exit status of a command line clap refuses (sysexits' `EX_USAGE`); clap's own is 2,
/// which `mailgate plugin test` gives a tempfailed message.
const EX_USAGE: i32 = 64;

fn main() -> anyhow::Result<()> {
    let cli = Cli::try_parse().unwrap_or_else(|e| {
        // Help and version go to stdout and succeed; usage errors exit EX_USAGE.
        let _ = e.print();
        std::process::exit(if e.use_stderr() { EX_USAGE } else { 0 })
    });
    match cli.command {
        Command::CheckConfig { config } => {
            let (_cfg, rt) = load(config.as_deref())?;
            // Also prove the TLS material loads.
            server::tls::acceptor(&rt).context("checking TLS configuration")?;
            println!("configuration ok");
            println!("hostname: {}", rt.live.hostname);
            for a in &rt.fixed.listen {
                println!("listen smtp: {a}");
            }
            for a in &rt.fixed.listen_tls {
                println!("listen smtps: {a}");
            }
            println!("local domains: {}", rt.live.local_domains.join(", "));
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            let generation = runtime.block_on(async {
                let dns = Arc::new(mailgate::dns::Resolver::new(rt.fixed.dns.clone()));
                let services = mailgate::plugin::registry::Services::with_kv(
                    dns,
                    rt.fixed.compile_cache.clone(),
                    rt.fixed.plugin_sessions,
                    rt.fixed.plugin_memory,
                    rt.fixed.adjustable_clock,
                    &rt.fixed.kv,
                )?;
                anyhow::Ok(mailgate::plugin::registry::load_all(&rt.live.plugins, &services).await?)
            })?;
            for p in generation.iter().flat_map(|g| g.plugins.iter()) {
                println!(
                    "plugin {}: {} (world {}, sha256 {}, hooks {:?}, on_error {:?})",
                    p.spec.name, p.version, p.world, p.sha256, p.hooks, p.spec.on_error
                );
            }
            match &rt.fixed.delivery {
                DeliveryMode::Maildir(p) => println!("delivery: maildir {}", p.display()),
                DeliveryMode::Proxy { upstream, tls } => {
                    println!("delivery: proxy {upstream} (tls {tls:?})")
                }
                DeliveryMode::Queue(q) => println!("delivery: queue {}", q.spool.display()),
            }
            match &rt.fixed.kv {
                mailgate::plugin::kv::Settings::Memory => println!("kv: memory"),
                mailgate::plugin::kv::Settings::Redis(r) => println!(
                    "kv: redis {} (key prefix {:?}; not contacted by this check)",
                    mailgate::plugin::kv_redis::redacted(&r.url),
                    r.key_prefix
                ),
            }
            Ok(())
        }
        Command::Plugin {
            command: PluginCommand::Inspect { file },
        } => {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            let d = runtime.block_on(mailgate::plugin::registry::describe(&file))?;
            println!("file: {}", file.display());
            println!("sha256: {}", d.sha256);
            match &d.inspection.world {
                Some(w) => println!("world: mailgate:plugin@{w}"),
                None => {
                    println!("world: none (not a mailgate plugin: no mailgate:plugin/hooks export)")
                }
            }
            if let Some((name, sdk, hooks)) = &d.manifest {
                println!("plugin: {name}");
                println!("sdk: {sdk}");
                println!("hooks: {hooks:?}");
            }
            println!(
                "capabilities imported: {}",
                d.inspection.capabilities.join(", ")
            );
            println!("imports:");
            for i in &d.inspection.imports {
                println!("  {i}");
            }
            println!("exports:");
            for e in &d.inspection.exports {
                println!("  {e}");
            }
            Ok(())
        }
        Command::Queue {
            config,
            json,
            command,
        } => {
            let (socket, spool) = admin_paths(config.as_deref());
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let line = command.line();
            let answer = runtime.block_on(async {
                match mailgate::admin::request(&socket, &line).await? {
                    Some(v) => Ok::<_, anyhow::Error>(v),
                    None => Ok(mailgate::admin::offline(&spool, &line).await),
                }
            })?;
            if json {
                println!("{answer}");
            } else if answer["ok"].as_bool() == Some(true) {
                print_answer(&answer);
            }
            if answer["ok"].as_bool() != Some(true) {
                anyhow::bail!("{}", answer["error"].as_str().unwrap_or("failed"));
            }
            Ok(())
        }
        Command::Plugin {
            command: PluginCommand::Test(args),
        } => std::process::exit(mailgate::tools::plugin_test::run(args)?),
        Command::Plugin {
            command: PluginCommand::New(args),
        } => std::process::exit(mailgate::tools::plugin_new::run(args)?),
        Command::Status { config } => admin_command(config.as_deref(), "status"),
        Command::Clock {
            config,
            command: ClockCommand::Advance { secs },
        } => admin_command(config.as_deref(), &format!("clock advance {secs}")),
        Command::Reload { config } => admin_command(config.as_deref(), "reload"),
        Command::Run { config, log_format } => {
            init_logs(log_format);
            let (_cfg, rt) = load(config.as_deref())?;
            let rt = Arc::new(rt);
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            runtime.block_on(async move {
                let dns = Arc::new(mailgate::dns::Resolver::new(rt.fixed.dns.clone()));
                let services = mailgate::plugin::registry::Services::with_kv(
                    dns,
                    rt.fixed.compile_cache.clone(),
                    rt.fixed.plugin_sessions,
                    rt.fixed.plugin_memory,
                    rt.fixed.adjustable_clock,
                    &rt.fixed.kv,
                )?;
                let plugins =
                    mailgate::plugin::registry::load_all(&rt.live.plugins, &services).await?;
                let listeners = Listeners::bind(&rt).await?;
                let mut out = std::io::stdout().lock();
                for (kind, addr) in listeners.addresses() {
                    writeln!(out, "listening {kind} {addr}")?;
                    tracing::info!(%addr, kind, "listening");
                }
                out.flush()?;
                drop(out);
                match &rt.fixed.delivery {
                    DeliveryMode::Maildir(p) => {
                        tracing::info!(maildir = %p.display(), "delivery mode maildir")
                    }
                    DeliveryMode::Proxy { upstream, tls } => {
                        tracing::info!(%upstream, tls = ?tls, "delivery mode proxy")
                    }
                    DeliveryMode::Queue(q) => {
                        tracing::info!(spool = %q.spool.display(), "delivery mode queue")
                    }
                }
                server::run(
                    Arc::clone(&rt),
                    listeners,
                    plugins,
                    services,
                    config.clone(),
                    || {
                        // Listeners bound, queue recovered, admin socket and watcher set up.
                        let mut out = std::io::stdout().lock();
                        let _ = writeln!(out, "ready");
                        let _ = out.flush();
                    },
                    shutdown_signal(),
                )
                .await?;
                tracing::info!("stopped");
                Ok(())
            })
        }
    }
}
