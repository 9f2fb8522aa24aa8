//! mailgate: an inbound SMTP filtering gateway.
//!
//! - [`smtp`]: the sans-I/O protocol core (bytes in, steps out).
//! - [`server`]: the tokio driver, listeners, TLS, connection limits, shutdown.
//! - [`delivery`]: where accepted mail goes (Maildir, in-line proxy) and the SMTP client.
//! - [`config`]: the typed configuration, loaded with figment.

pub mod admin;
pub mod config;
pub mod delivery;
pub mod dns;
pub mod plugin;
pub mod queue;
pub mod server;
pub mod smtp;
