//! The run's log: what plugins write through the `log` capability (and their metrics)
//! is kept for the report, in order; the gateway's own lines go to stderr, filtered by
//! `MAILGATE_LOG` (default: warnings, except the plugin lines and plugin failures the
//! report shows).

use std::fmt::Write as _;
use std::sync::{Arc, Mutex};

use serde::Serialize;
use tracing::field::{Field, Visit};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer, filter};

/// Where the host's `log` capability (and `metrics`) writes its events.
const HOST_TARGET: &str = "mailgate::plugin::host";

/// One line a plugin logged.
#[derive(Clone, Debug, Serialize)]
pub struct LogLine {
    /// The plugin's name.
    pub plugin: String,
    /// `trace` … `error`.
    pub level: String,
    /// The message.
    pub message: String,
    /// The line's other fields (`key=value`, space-separated), if any.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub fields: String,
}

/// The plugin log lines of the run so far.
#[derive(Debug, Default)]
pub struct Captured(Mutex<Vec<LogLine>>);

impl Captured {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<LogLine>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Lines logged so far.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// The lines from the `from`th on.
    pub fn since(&self, from: usize) -> Vec<LogLine> {
        self.lock()
            .get(from..)
            .map(<[LogLine]>::to_vec)
            .unwrap_or_default()
    }
}

/// Collects the fields of one event.
#[derive(Default)]
struct Fields {
    plugin: Option<String>,
    message: String,
    rest: String,
}

impl Fields {
    /// Adds the plugin's own `key=value` text.
    fn push_text(&mut self, text: &str) {
        if text.is_empty() {
            return;
        }
        if !self.rest.is_empty() {
            self.rest.push(' ');
        }
        self.rest.push_str(text);
    }
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        match field.name() {
            "plugin" => self.plugin = Some(value.to_string()),
            "message" => self.message = value.to_string(),
            "session" => {}
            "fields" => self.push_text(value),
            name => {
                if !self.rest.is_empty() {
                    self.rest.push(' ');
                }
                let _ = write!(self.rest, "{name}={value}");
            }
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        match field.name() {
            "plugin" => self.plugin = Some(format!("{value:?}")),
            "message" => self.message = format!("{value:?}"),
            "session" => {}
            "fields" => self.push_text(&format!("{value:?}")),
            name => {
                if !self.rest.is_empty() {
                    self.rest.push(' ');
                }
                let _ = write!(self.rest, "{name}={value:?}");
            }
        }
    }
}

/// Keeps the host's plugin lines.
struct Capture(Arc<Captured>);

impl<S: tracing::Subscriber> Layer<S> for Capture {
    fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        let mut f = Fields::default();
        event.record(&mut f);
        if let Some(plugin) = f.plugin {
            self.0.lock().push(LogLine {
                plugin,
                level: event.metadata().level().as_str().to_ascii_lowercase(),
                message: f.message,
                fields: f.rest,
            });
        }
    }
}

/// Installs the process's subscriber: plugin lines kept (every level), the rest to
/// stderr under `MAILGATE_LOG` (default `warn`; the plugin lines are not repeated there
/// unless the filter names them).
pub fn install() -> Arc<Captured> {
    let captured = Arc::new(Captured::default());
    let stderr_filter = EnvFilter::try_from_env("MAILGATE_LOG").unwrap_or_else(|_| {
        // Plugin lines and plugin failures are in the report already.
        EnvFilter::new(format!(
            "warn,{HOST_TARGET}=off,mailgate::plugin::chain=error"
        ))
    });
    let stderr = tracing_subscriber::fmt::layer()
        .with_ansi(false)
        .with_writer(|| crate::log_escape::Escaping::new(std::io::stderr(), false))
        .with_filter(stderr_filter);
    let capture = Capture(Arc::clone(&captured))
        .with_filter(filter::Targets::new().with_target(HOST_TARGET, tracing::Level::TRACE));
    // A subscriber already set (a second run in one process) keeps its own.
    let _ = tracing_subscriber::registry()
        .with(stderr)
        .with(capture)
        .try_init();
    captured
}
