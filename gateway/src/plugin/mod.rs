//! The plugin platform's host side: WebAssembly components (wasmtime, component model)
//! described by `wit/`, loaded at start ([`registry`]), run per SMTP session in a
//! [`chain::Chain`] with deadlines, memory and stack caps, and a failure policy per plugin.
//!
//! Compile once and `instantiate_pre` per plugin; a fresh `Store` per session and plugin,
//! created lazily when a hook the plugin implements fires, dropped when the session ends
//! or the plugin fails. Plugins get locked-down WASI (no files, environment, network;
//! clocks frozen unless granted) and only the capabilities their config grants.

mod bindings;
pub mod chain;
pub mod convert;
pub mod edits;
pub mod engine;
mod host;
pub mod kv;
pub mod message;
pub mod registry;
mod state;

pub use bindings::exports::mailgate::plugin::hooks::DeliveryInfo;
pub use bindings::mailgate::plugin::types as wit;
pub use chain::{Call, Chain, Failure, Stage, StageOutcome, TraceEntry};
pub use convert::Decision;
pub use registry::{Generation, Inspection, LoadError, LoadedPlugin};
