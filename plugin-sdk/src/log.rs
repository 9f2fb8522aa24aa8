//! Log lines in the gateway's log, attributed to the plugin (capability `log`).
//!
//! Without the grant, lines are dropped. The host strips control characters, caps the
//! message and fields (at most 16 fields) and rate-limits each plugin.
//!
//! ```no_run
//! use mailgate_plugin_sdk::log;
//! log::info("greylisted");
//! log::log(log::Level::Warn, "dnsbl timeout", &[("zone", "zen.test")]);
//! ```

use crate::bindings::mailgate::plugin::log as raw;

pub use raw::Level;

/// `true` if a line at `level` would be written (skip expensive formatting otherwise).
pub fn enabled(level: Level) -> bool {
    raw::enabled(level)
}

/// Writes one line at `level` with key/value `fields`.
pub fn log(level: Level, message: impl AsRef<str>, fields: &[(&str, &str)]) {
    let fields: Vec<(String, String)> = fields
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    raw::log(level, message.as_ref(), &fields);
}

/// Writes a line at `trace` level.
pub fn trace(message: impl AsRef<str>) {
    log(Level::Trace, message, &[]);
}

/// Writes a line at `debug` level.
pub fn debug(message: impl AsRef<str>) {
    log(Level::Debug, message, &[]);
}

/// Writes a line at `info` level.
pub fn info(message: impl AsRef<str>) {
    log(Level::Info, message, &[]);
}

/// Writes a line at `warn` level.
pub fn warn(message: impl AsRef<str>) {
    log(Level::Warn, message, &[]);
}

/// Writes a line at `error` level.
pub fn error(message: impl AsRef<str>) {
    log(Level::Error, message, &[]);
}
