//! The mailgate plugin SDK.
//!
//! Plugins are WebAssembly components built against the WIT package in `wit/`. This crate
//! will hold the one `wit_bindgen::generate!`, the `Plugin` trait with a default for every
//! hook, the export macro and typed wrappers for host capabilities. It is empty until the
//! plugin platform lands (see `docs/roadmap.md`); the gateway already stops at every hook
//! point (connect, HELO/EHLO, MAIL, RCPT, DATA, delivery) through the seam in
//! `gateway/src/server/conn.rs` that the plugin chain plugs into.
