//! mailgate's integration tests. They live in `tests/` of this crate: `e2e.rs` (the real
//! binary against smtplib, swaks, aiosmtpd and Postfix), `plugins.rs` (fixture plugins
//! built to wasm32-wasip2 and loaded by the real gateway), with shared support in
//! `tests/support/mod.rs` and the Python peers in `peers/`.
