//! mailgate's integration tests. They live in `tests/` of this crate, each a test binary
//! that runs the real `mailgate` binary (or, for `copies.rs`, the gateway in-process)
//! against real peers:
//!
//! - `e2e.rs`: the SMTP edge against smtplib, swaks, aiosmtpd and Postfix (maildir and
//!   proxy modes, TLS, limits, protocol attacks);
//! - `plugins.rs`: fixture plugins built to wasm32-wasip2 and loaded by the gateway;
//! - `queue.rs`: the store-and-forward queue (retries, notices, MX through NSD, Postfix,
//!   `kill -9`);
//! - `reload.rs`: hot reload, under load too;
//! - `dns.rs`: the resolver against NSD;
//! - `copies.rs`: how many copies of a message body the gateway holds (counting
//!   allocator).
//!
//! Shared support is in `tests/support/mod.rs`, the Python peers in `peers/`, the
//! fixture plugins in `fixtures/`. How to run them, sizes and timings: docs/testing.md.
