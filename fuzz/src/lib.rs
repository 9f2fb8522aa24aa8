//! The gateway's sans-I/O code, compiled from its own sources for the fuzz targets.
//!
//! The modules below are the files of `gateway/src`, included by `#[path]` under the
//! same module paths they have in the `mailgate` crate, so that their `crate::...` imports
//! resolve unchanged: `smtp` (the whole protocol core), `delivery::received` (the
//! `Received:` header) and `queue::dsn` (delivery status notifications). Nothing else of
//! the gateway is compiled here. [`check`] holds the invariants the targets share,
//! [`input`] helpers to read structured input.

// The gateway's modules as they are: crate-private items that only the gateway's other
// modules use would count as unused here.
#![allow(dead_code)]

#[path = "../../gateway/src/smtp/mod.rs"]
pub mod smtp;

pub mod delivery;
pub mod queue;

pub mod check;
pub mod input;
