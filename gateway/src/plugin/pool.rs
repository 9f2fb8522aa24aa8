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
        trim::instance_dropped();
    }
}

/// Gives the heap's free memory back to the system after many instances were dropped.
///
/// An instance's host side (its store, tables, buffers) is a few dozen small and large
/// allocations. A burst of sessions (a connection flood, 10,000 idle clients arriving)
/// makes many live at once; when they are dropped, the allocator keeps their memory in
/// holes between the sessions' own long-lived allocations and the resident size stays at
/// the burst's peak. `malloc_trim` returns the free pages inside the heap. It walks the
/// heap, so it runs on a thread of its own, at most once a second and only after
/// [`TRIM_AFTER`] drops.
mod trim {
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::{Duration, Instant};

    /// Instances dropped between two trims.
    pub const TRIM_AFTER: usize = 256;
    const MIN_INTERVAL: Duration = Duration::from_secs(1);

    static DROPPED: AtomicUsize = AtomicUsize::new(0);
    static LAST: Mutex<Option<Instant>> = Mutex::new(None);

    pub fn instance_dropped() {
        let dropped = DROPPED.fetch_add(1, Ordering::Relaxed) + 1;
        if dropped < TRIM_AFTER {
            return;
        }
        let mut last = LAST.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        if !due(dropped, *last, now) {
            return;
        }
        *last = Some(now);
        DROPPED.store(0, Ordering::Relaxed);
        let _ = std::thread::Builder::new()
            .name("mailgate-trim".into())
            .spawn(trim_heap);
    }

    /// Whether a trim is due after `dropped` drops, the last trim at `last`.
    pub fn due(dropped: usize, last: Option<Instant>, now: Instant) -> bool {
        dropped >= TRIM_AFTER && last.is_none_or(|t| now.duration_since(t) >= MIN_INTERVAL)
    }

    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[allow(unsafe_code)]
    fn trim_heap() {
        // SAFETY: malloc_trim takes no pointer and may be called from any thread at any
        // time; glibc locks each arena while it trims it.
        unsafe {
            libc::malloc_trim(0);
        }
    }

    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    fn trim_heap() {}

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn a_trim_is_due_after_enough_drops_at_most_once_a_second() {
            let t0 = Instant::now();
            assert!(!due(TRIM_AFTER - 1, None, t0));
            assert!(due(TRIM_AFTER, None, t0));
            let soon = t0 + Duration::from_millis(999);
            assert!(!due(TRIM_AFTER * 10, Some(t0), soon));
            assert!(due(TRIM_AFTER, Some(t0), t0 + MIN_INTERVAL));
        }
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
