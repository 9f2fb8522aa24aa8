//! What is in force now: the runtime settings, the protocol settings derived from them and
//! the plugin generation, as one [`Current`] that a reload replaces atomically. A
//! connection takes the `Current` of the moment it is accepted and keeps it to its end;
//! the queue takes the one in force at each delivery attempt (host name, routes,
//! `on-deliver`).

use std::sync::{Arc, RwLock};

use crate::config::Runtime;
use crate::plugin::Generation;
use crate::smtp::SessionConfig;

/// One generation of settings and plugins.
#[derive(Debug)]
pub struct Current {
    /// Runtime settings.
    pub runtime: Arc<Runtime>,
    /// Protocol settings.
    pub session: Arc<SessionConfig>,
    /// The plugin generation, if plugins are configured.
    pub plugins: Option<Arc<Generation>>,
    /// Generation number: 1 at start, +1 per successful reload.
    pub generation: u64,
    /// When it became current (unix seconds).
    pub since: u64,
}

impl Current {
    /// The host name in force (greeting, EHLO towards next hops, notices).
    pub fn hostname(&self) -> &str {
        &self.runtime.live.hostname
    }
}

/// The [`Current`] in force, replaced whole by a reload.
#[derive(Debug)]
pub struct CurrentCell(RwLock<Arc<Current>>);

impl CurrentCell {
    /// A cell holding `first`.
    pub fn new(first: Current) -> Arc<CurrentCell> {
        Arc::new(CurrentCell(RwLock::new(Arc::new(first))))
    }

    /// What is in force now.
    pub fn get(&self) -> Arc<Current> {
        Arc::clone(&self.0.read().unwrap_or_else(|e| e.into_inner()))
    }

    /// Puts `next` in force.
    pub fn set(&self, next: Arc<Current>) {
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = next;
    }
}
