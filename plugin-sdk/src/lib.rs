//! Write policy plugins for mailgate, the inbound SMTP gateway, in Rust.
//!
//! A mailgate plugin is a WebAssembly component (`wasm32-wasip2`) built against the WIT
//! package `mailgate:plugin@0.1.2` (the `wit/` folder of the mailgate repository). This
//! crate hides the raw bindings: implement [`Plugin`] (only the hooks you need; every hook
//! has a default that answers "continue"), put [`#[plugin]`](plugin) on the impl so the
//! host learns which hooks you implement, and call [`export_plugin!`] once.
//!
//! # Quick start
//!
//! ```toml
//! # Cargo.toml
//! [package]
//! name = "my-plugin"
//! version = "0.1.0"
//! edition = "2024"
//!
//! [lib]
//! crate-type = ["cdylib"]
//!
//! [dependencies]
//! mailgate-plugin-sdk = { path = "../mailgate/plugin-sdk" }
//! ```
//!
//! ```
//! // src/lib.rs
//! use mailgate_plugin_sdk::prelude::*;
//!
//! struct MyPlugin {
//!     reject: String,
//! }
//!
//! #[plugin]
//! impl Plugin for MyPlugin {
//!     fn init(config: &Config) -> Result<Self, String> {
//!         Ok(MyPlugin { reject: config.string_or("reject", "nobody") })
//!     }
//!
//!     fn on_rcpt_to(&mut self, _: &SessionInfo, _: &Transaction, rcpt: &Recipient) -> RcptOutcome {
//!         if rcpt.address.local_part.eq_ignore_ascii_case(&self.reject) {
//!             return RcptOutcome::reject(550, "5.1.1", "No such user here");
//!         }
//!         RcptOutcome::continue_()
//!     }
//! }
//!
//! export_plugin!(MyPlugin);
//! ```
//!
//! Build it with one command (the `wasm32-wasip2` target must be installed:
//! `rustup target add wasm32-wasip2`):
//!
//! ```sh
//! cargo build --release --target wasm32-wasip2
//! ```
//!
//! and point the gateway config at the component, `target/wasm32-wasip2/release/my_plugin.wasm`
//! (the crate name with `-` turned into `_`):
//!
//! ```toml
//! [[plugin]]
//! name = "my-plugin"
//! path = "my-plugin/target/wasm32-wasip2/release/my_plugin.wasm"
//! capabilities = ["log"]            # host capabilities granted (denied unless listed)
//! config = { reject = "nobody" }    # handed to Plugin::init as a Config
//! ```
//!
//! `docs/plugins.md` in the mailgate repository describes the other plugin settings
//! (`on_error`, `limits`, `sha256`). `examples/hello-plugin` is this example as a crate.
//!
//! # Lifecycle and state
//!
//! The gateway creates one instance of a plugin per SMTP session (lazily, at the first hook
//! the plugin implements), calls [`Plugin::init`] once on it with the plugin's `config`
//! table, then calls that session's hooks on the value `init` returned. So `&mut self` is
//! per-session state: counters, lookups cached for the session. Nothing survives the
//! session; use the [`kv`] capability for that. `on_deliver` runs on an instance of its own,
//! outside the session. A panic, trap or timeout drops the instance and runs the plugin's
//! `on-error` policy in the gateway.
//!
//! # Which hooks the host calls
//!
//! The host only instantiates a plugin for the hooks listed in [`Plugin::HOOKS`], which the
//! plugin reports from its `manifest`. [`#[plugin]`](plugin) fills it with exactly the
//! `on_*` methods defined in the impl block. Without the attribute, set it by hand:
//!
//! ```
//! use mailgate_plugin_sdk::prelude::*;
//! struct Quiet;
//! impl Plugin for Quiet {
//!     const HOOKS: HookSet = HookSet::RCPT_TO;
//!     fn init(_: &Config) -> Result<Self, String> { Ok(Quiet) }
//!     fn on_rcpt_to(&mut self, _: &SessionInfo, _: &Transaction, _: &Recipient) -> RcptOutcome {
//!         RcptOutcome::accept()
//!     }
//! }
//! ```
//!
//! # Host capabilities
//!
//! [`log`], [`clock`], [`dns`], [`kv`], [`auth`] (SPF/DKIM/DMARC/ARC/iprev results),
//! [`metrics`] and [`verify`] (ask the next hop whether it accepts a recipient) wrap the
//! host's imports. Each is denied unless the gateway config grants it to the plugin
//! (`capabilities = ["dns", "kv"]`): denied calls answer a `Denied` error (`log` and
//! `metrics` silently do nothing). A plugin has no filesystem, network or environment.
//!
//! # Verdicts and edits
//!
//! Hooks return an outcome: [`Outcome`] (connect, HELO, MAIL FROM), [`RcptOutcome`],
//! [`DataOutcome`] and [`DeliverOutcome`]. Each has constructors named after the verdicts
//! (`continue_`, `accept`, `reject`, `tempfail`, `disconnect`, and at DATA `discard` and
//! `quarantine`) and chainable methods for score, tags, reason, header and recipient edits:
//!
//! ```
//! # use mailgate_plugin_sdk::prelude::*;
//! let out = DataOutcome::continue_()
//!     .with_score("BULK_SENDER", 2.5)
//!     .with_tag("bulk")
//!     .add_header("X-Spam-Level", "**");
//! # let _ = out;
//! ```
//!
//! The host validates everything a plugin hands back (code classes, no CR/LF/NUL in text,
//! header syntax, sizes); an invalid outcome counts as a plugin failure.

#![warn(missing_docs)]

// Lets `#[plugin]` (which names `::mailgate_plugin_sdk`) work inside this crate's own tests.
extern crate self as mailgate_plugin_sdk;

/// The raw bindings generated by `wit_bindgen::generate!` from `wit/` (world `plugin`).
///
/// Plugins do not need this module: the crate root re-exports the types, and the
/// capability modules wrap the imported functions. It is public because the export macro
/// expands to paths inside it.
#[allow(unsafe_code, missing_docs, missing_debug_implementations, clippy::all)]
pub mod bindings {
    wit_bindgen::generate!({
        path: "../wit",
        world: "plugin",
        pub_export_macro: true,
        default_bindings_module: "mailgate_plugin_sdk::bindings",
        additional_derives: [PartialEq],
    });
}

pub mod auth;
pub mod clock;
mod config;
pub mod dns;
pub mod kv;
pub mod log;
pub mod metrics;
pub mod net;
mod outcome;
pub mod patterns;
mod plugin;
pub mod routing;
pub mod verify;

pub use config::{Config, ConfigError, PerConfig};
pub use mailgate_plugin_sdk_macros::plugin;
pub use plugin::Plugin;

pub use bindings::exports::mailgate::plugin::hooks::{
    DataOutcome, DeliverOutcome, DeliveryInfo, HookSet, Outcome, PluginInfo, RcptOutcome,
};
pub use bindings::mailgate::plugin::message::{Message, Part};
pub use bindings::mailgate::plugin::types::{
    Address, AddressRewrite, BodyType, ClientInfo, DataVerdict, EnhancedStatus, EsmtpParam, Header,
    HeaderEdit, HeaderRef, HeaderReplace, HeloInfo, IpAddress, MailParams, Marks, Recipient,
    RecipientEdit, RecipientRoute, RelayHost, Reply, ReversePath, Route, ScoreEntry, SessionInfo,
    SocketAddress, TimestampMs, TlsInfo, TlsPolicy, Transaction, Verdict,
};

/// The SDK's name and version, reported as `sdk` in every plugin's manifest.
pub const SDK: &str = concat!("mailgate-plugin-sdk ", env!("CARGO_PKG_VERSION"));

/// Everything a typical plugin uses: `use mailgate_plugin_sdk::prelude::*;`.
pub mod prelude {
    pub use crate::{
        Address, Config, ConfigError, DataOutcome, DataVerdict, DeliverOutcome, DeliveryInfo,
        HeaderEdit, HeloInfo, HookSet, MailParams, Message, Outcome, Plugin, RcptOutcome,
        Recipient, RecipientEdit, Reply, ReversePath, Route, SessionInfo, Transaction, Verdict,
        export_plugin, plugin,
    };
}

/// Exports a [`Plugin`] implementation as the component's `mailgate:plugin/hooks`
/// interface. Call it once per plugin crate (a `cdylib`), at the crate root or in any
/// module:
///
/// ```ignore
/// mailgate_plugin_sdk::export_plugin!(MyPlugin);
/// ```
///
/// The manifest reports the crate's package name and version (`CARGO_PKG_NAME`,
/// `CARGO_PKG_VERSION`); override them with
/// `export_plugin!(MyPlugin, name = "greylist", version = "1.2.0")`.
#[macro_export]
macro_rules! export_plugin {
    ($ty:ty) => {
        $crate::export_plugin!(
            $ty,
            name = env!("CARGO_PKG_NAME"),
            version = env!("CARGO_PKG_VERSION")
        );
    };
    ($ty:ty, name = $name:expr, version = $version:expr $(,)?) => {
        const _: () = {
            #[doc(hidden)]
            struct __MailgatePluginMeta;
            impl $crate::__private::Meta for __MailgatePluginMeta {
                const NAME: &'static str = $name;
                const VERSION: &'static str = $version;
            }
            #[doc(hidden)]
            type __MailgatePluginExport = $crate::__private::Adapter<$ty, __MailgatePluginMeta>;
    $crate::bindings::export!(__MailgatePluginExport with_types_in $crate::bindings);
        };
    };
}

#[doc(hidden)]
pub mod __private {
    pub use crate::plugin::{Adapter, Meta};
}
