//! Routes decided at `RCPT TO` ([`set_route`]): how a plugin chooses the next hop in
//! proxy mode.
//!
//! In proxy mode (before-queue relaying) the gateway relays each transaction, as it
//! happens, to one upstream: the route of the transaction's first relayed recipient. Call
//! [`set_route`] from `on_rcpt_to` for the recipient being decided (or for the addresses
//! your outcome rewrites or expands it into). A later recipient routed to another next hop
//! is answered `451 4.3.0` and the client sends it again in a transaction of its own.
//! Recipients nobody routes go to `delivery.upstream`. `Route::Discard` accepts the
//! recipient without relaying it; `Route::bounce`/`Route::defer` answer with their reply;
//! `Route::Mx` and `Route::Local` cannot be served in proxy mode (`451 4.3.5`).
//!
//! In queue and maildir modes the call has no effect: there, routes come from
//! `on_deliver`, per delivery attempt. A routing plugin that works in every mode sets the
//! route at RCPT and returns it again from `on_deliver`. Not a capability: no grant is
//! needed. Since WIT 0.1.2: a plugin that calls it does not load on an older host.
//!
//! ```no_run
//! use mailgate_plugin_sdk::prelude::*;
//! use mailgate_plugin_sdk::{TlsPolicy, routing};
//!
//! fn on_rcpt(rcpt: &Recipient) -> RcptOutcome {
//!     if rcpt.address.domain == "exchange.example" {
//!         routing::set_route(
//!             &rcpt.address,
//!             &Route::relay("10.0.0.5", 25, TlsPolicy::Opportunistic),
//!         );
//!     }
//!     RcptOutcome::continue_()
//! }
//! # let _ = on_rcpt;
//! ```

use crate::bindings::mailgate::plugin::routing as raw;
use crate::{Address, Route};

/// Sets the route `recipient` takes if it is accepted (see the module docs). The first
/// plugin of the chain to route a recipient wins; routing one recipient twice in one call
/// makes the outcome invalid. Outside `on_rcpt_to` it does nothing.
pub fn set_route(recipient: &Address, route: &Route) {
    raw::set_route(recipient, route)
}
