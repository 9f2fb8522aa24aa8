//! The plugin platform's host side: WebAssembly components (wasmtime, component model)
//! described by `wit/`, loaded at start ([`registry`]), run per SMTP session in a
//! [`chain::Chain`] with deadlines, memory and stack caps, and a failure policy per plugin.
//!
//! Compile once and `instantiate_pre` per plugin; a fresh `Store` per session and plugin,
//! created lazily when a hook the plugin implements fires, dropped when the session ends
//! or the plugin fails. Plugins get locked-down WASI (no files, environment, network;
//! clocks frozen unless granted) and only the capabilities their config grants.
//!
//! The rest of the gateway talks to plugins through two adapters and sees only its own
//! types: [`SessionPlugins`] for an SMTP session (hooks in, [`Resolution`](crate::smtp::Resolution)
//! out, edits applied to the [`Message`](crate::smtp::Message)) and [`delivery::routes`] for
//! the queue (`on-deliver` routes as [`Route`]s). The generated WIT types stay in this
//! module; [`convert`] is the one place that turns them into ours, validated.

pub mod auth;
mod bindings;
pub mod body_hash;
pub mod budget;
pub mod chain;
pub mod clock;
pub mod convert;
pub mod delivery;
pub mod edits;
pub mod engine;
mod host;
pub mod kv;
pub mod kv_redis;
pub mod message;
pub mod patterns;
pub mod pool;
pub mod registry;
pub mod session;
mod state;

use bindings::mailgate::plugin::types as wit;
pub use chain::{Failure, Stage, TraceEntry};
pub use convert::Route;
pub use delivery::QueuedMessage;
pub use registry::{Generation, Inspection, LoadError, LoadedPlugin};
pub use session::{Disposition, SessionPlugins};
