//! mailgate: an inbound SMTP filtering gateway.
//!
//! - [`smtp`]: the sans-I/O protocol core (bytes in, steps out), the session's facts and
//!   the message as one shared buffer.
//! - [`server`]: the tokio driver, listeners, TLS, connection limits, hot reload, the
//!   delivery mode a connection hands messages to, shutdown.
//! - [`plugin`]: the WebAssembly plugin host (wasmtime), the chain, and the adapters the
//!   server and the queue use; the only place that sees WIT types.
//! - [`delivery`]: where accepted mail goes (Maildir, in-line proxy), the SMTP client,
//!   destinations, the `Received:` header.
//! - [`queue`]: the store-and-forward queue (spool, scheduler, routing, notices).
//! - [`config`]: the typed configuration, loaded with figment, split into what reloads
//!   live and what needs a restart.
//! - [`current`]: the settings and plugins in force, swapped by a reload.
//! - [`dns`]: the resolver (hickory) for plugins, reverse names and MX routing.
//! - [`admin`]: the admin socket behind `mailgate status`, `reload` and `queue`.
//! - [`admin_http`]: the admin HTTP listener: `/metrics`, `/healthz`, `/readyz`.
//! - [`verify`]: recipient verification probes to next hops and their cache (the plugins'
//!   `verify` capability).
//! - [`tools`]: `mailgate plugin test` and `mailgate plugin new`.
//! - [`metrics`]: Prometheus metrics (`GET /metrics` on the admin HTTP listener).
//! - [`log_escape`]: log lines with control and bidi characters escaped.
//! - [`private_fs`]: files `0600` and directories `0700` for everything holding mail.

pub mod admin;
pub mod admin_http;
pub mod config;
pub mod current;
pub mod delivery;
pub mod dns;
pub mod log_escape;
pub mod memory_budget;
pub mod metrics;
pub mod plugin;
pub mod private_fs;
pub mod queue;
pub mod server;
pub mod smtp;
pub mod spf;
pub mod tools;
pub mod verify;
