//! Live plugin instances, and the idle ones a plugin keeps for its next sessions.
//!
//! Creating an instance (a `Store`, the component's core instances, WASI) costs more than
//! most hook calls; a session's instances therefore go back to their plugin's [`Pool`]
//! when the session ends, healthy, and the next session takes one instead of
//! instantiating (`[[plugin]] instances = "reused"`, the default). `init` runs again at
//! the start of every session an instance serves, so the SDKs' plugin value is always a
//! fresh one; what a plugin keeps in module-level statics persists (a cache may live
//! there). An instance that failed is never returned; one that served
//! [`MAX_SESSIONS`] sessions, is older than [`MAX_AGE`], or wrote much to stdout is
//! dropped instead, so memory the guest fragmented or leaked does not accumulate.
//! `instances = "per-session"` turns reuse off for plugins that must not share memory
//! between sessions.

use std::sync::Mutex;
use std::time::Duration;

use wasmtime::Store;

use super::bindings::Hooks;
use super::state::State;

/// Sessions one instance may serve.
pub const MAX_SESSIONS: u32 = 1000;
/// Age past which an instance is not reused (its frozen clock, for plugins without the
/// `clock` capability, stays within this of the time).
pub const MAX_AGE: Duration = Duration::from_secs(60);
/// Idle instances a plugin keeps.
pub const MAX_IDLE: usize = 32;
/// Stdout/stderr octets past which an instance is not reused (its pipe is bounded).
const MAX_OUTPUT: usize = 4096;

/// An instance serving a session: its store and its hook functions.
pub struct Live {
    /// The instance's store.
    pub store: Store<State>,
    /// Its hooks.
    pub hooks: Hooks,
    /// Sessions it served before this one.
    pub sessions: u32,
}

impl Live {
    /// A newly created instance.
    pub fn new(store: Store<State>, hooks: Hooks) -> Live {
        crate::metrics::get().plugin_instances.inc();
        Live {
            store,
            hooks,
            sessions: 0,
        }
    }

    fn reusable(&self) -> bool {
        let st = self.store.data();
        self.sessions + 1 < MAX_SESSIONS
            && st.started.elapsed() < MAX_AGE
            && !st.limiter.hit
            && st.output.contents().len() < MAX_OUTPUT
    }
}

impl std::fmt::Debug for Live {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Live")
            .field("plugin", &self.store.data().spec.name)
            .field("sessions", &self.sessions)
            .finish()
    }
}

impl Drop for Live {
    fn drop(&mut self) {
        crate::metrics::get().plugin_instances.dec();
    }
}

/// A plugin's idle instances.
#[derive(Default)]
pub struct Pool {
    idle: Mutex<Vec<Live>>,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool").field("idle", &self.len()).finish()
    }
}

impl Pool {
    /// An idle instance still fit for another session, if there is one.
    pub fn take(&self) -> Option<Live> {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        while let Some(mut live) = idle.pop() {
            crate::metrics::get().plugin_instances_idle.dec();
            if live.store.data().started.elapsed() < MAX_AGE {
                live.sessions += 1;
                return Some(live);
            }
        }
        None
    }

    /// Keeps `live`, whose session ended without its failing, for a later session (or
    /// drops it: see the module docs).
    pub fn put(&self, mut live: Live) {
        if !live.reusable() {
            return;
        }
        let st = live.store.data_mut();
        st.rcpt_routes = None;
        st.session_id.clear();
        st.budgets.auth = None;
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        if idle.len() < MAX_IDLE {
            idle.push(live);
            crate::metrics::get().plugin_instances_idle.inc();
        }
    }

    /// Idle instances.
    pub fn len(&self) -> usize {
        self.idle.lock().map(|i| i.len()).unwrap_or(0)
    }

    /// Whether no instance is idle.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Drops every idle instance.
    pub fn clear(&self) {
        let drained: Vec<Live> = self
            .idle
            .lock()
            .map(|mut i| i.drain(..).collect())
            .unwrap_or_default();
        crate::metrics::get()
            .plugin_instances_idle
            .dec_by(drained.len() as i64);
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.clear();
    }
}
