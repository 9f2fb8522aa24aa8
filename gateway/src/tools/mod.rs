//! Offline tools behind `mailgate plugin …` subcommands (they may use `anyhow`, like
//! `main.rs`):
//!
//! - [`plugin_test`]: `mailgate plugin test`, one message through one plugin or a
//!   configured chain, offline, with the decision trace printed.
//! - [`plugin_new`]: `mailgate plugin new`, a plugin skeleton in Rust, JavaScript or Python.

pub mod plugin_new;
pub mod plugin_test;
