//! What a plugin's `Store` carries for one SMTP session: the locked-down WASI context,
//! the resource table, the memory limiter, the granted capabilities and the deadline of
//! the call in progress.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use wasmtime::component::ResourceTable;
use wasmtime::{ResourceLimiter, StoreLimits, StoreLimitsBuilder};
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::{
    HostMonotonicClock, HostWallClock, WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView,
};

use super::budget::Budgets;
use super::registry::Services;
use crate::config::{Capability, PluginSpec};

/// Bytes of plugin stdout/stderr kept per session (for the log after a failure).
const PIPE_CAPACITY: usize = 16 * 1024;
/// Resources a plugin may hold at once.
const MAX_RESOURCES: usize = 1000;

/// Memory limiter that remembers when it refused to grow, so a failed call can be
/// classified as "memory cap" whatever trap the guest's allocator turns it into.
#[derive(Debug)]
pub struct Limiter {
    inner: StoreLimits,
    /// The cap refused a growth.
    pub hit: bool,
    /// The memory of all instances together (`chain.max_total_memory_mb`).
    total: Arc<crate::memory_budget::MemoryBudget>,
    /// What this instance's memories took from `total`.
    held: usize,
}

impl Limiter {
    /// Linear memory this instance's memories hold, octets.
    pub fn held(&self) -> usize {
        self.held
    }
}

impl Drop for Limiter {
    fn drop(&mut self) {
        self.total.release(self.held);
    }
}

impl ResourceLimiter for Limiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let mut ok = self.inner.memory_growing(current, desired, maximum)?;
        if ok && desired > current {
            // Every instance's growth comes out of the shared budget, the initial
            // memory included; past it the growth fails like the plugin's own cap.
            ok = self.total.grow(desired - current);
            if ok {
                self.held += desired - current;
            } else {
                tracing::warn!(
                    in_use = self.total.used(),
                    cap = self.total.cap(),
                    want = desired - current,
                    "plugin memory of all instances at chain.max_total_memory_mb; growth refused"
                );
            }
        }
        if !ok {
            self.hit = true;
        }
        Ok(ok)
    }

    fn table_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let ok = self.inner.table_growing(current, desired, maximum)?;
        if !ok {
            self.hit = true;
        }
        Ok(ok)
    }

    fn instances(&self) -> usize {
        self.inner.instances()
    }

    fn tables(&self) -> usize {
        self.inner.tables()
    }

    fn memories(&self) -> usize {
        self.inner.memories()
    }
}

/// A clock frozen at one instant (WASI clocks of plugins without the `clock` grant).
struct Frozen(Duration);

impl HostWallClock for Frozen {
    fn resolution(&self) -> Duration {
        Duration::from_secs(1)
    }
    fn now(&self) -> Duration {
        self.0
    }
}

impl HostMonotonicClock for Frozen {
    fn resolution(&self) -> u64 {
        1_000_000_000
    }
    fn now(&self) -> u64 {
        0
    }
}

/// Store data of one plugin instance.
pub struct State {
    wasi: WasiCtx,
    table: ResourceTable,
    /// Memory cap.
    pub limiter: Limiter,
    /// The plugin's config entry.
    pub spec: Arc<PluginSpec>,
    /// Gateway services (kv, DNS).
    pub services: Arc<Services>,
    /// What the plugin may still use in this session and per second.
    pub budgets: Budgets,
    /// When the call in progress must end.
    pub deadline: Instant,
    /// Plugin stdout and stderr.
    pub output: MemoryOutputPipe,
    /// The SMTP session (for log lines).
    pub session_id: String,
    /// When the instance was created.
    pub started: Instant,
    /// Routes the plugin set (`routing.set-route`) during the `on-rcpt-to` call in
    /// progress; `None` outside one (the call then does nothing).
    pub rcpt_routes: Option<Vec<super::wit::RecipientRoute>>,
}

impl std::fmt::Debug for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("State")
            .field("plugin", &self.spec.name)
            .field("session", &self.session_id)
            .finish()
    }
}

impl State {
    /// Fresh state: no files, no environment, no network, clocks frozen unless granted.
    pub fn new(
        spec: Arc<PluginSpec>,
        services: Arc<Services>,
        session_id: String,
        budgets: Budgets,
    ) -> State {
        let output = MemoryOutputPipe::new(PIPE_CAPACITY);
        let mut b = WasiCtxBuilder::new();
        b.stdout(output.clone()).stderr(output.clone());
        if !spec.capabilities.contains(&Capability::Clock) {
            let now = SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap_or_default();
            b.wall_clock(Frozen(Duration::from_secs(now.as_secs())))
                .monotonic_clock(Frozen(Duration::ZERO));
        }
        let mut table = ResourceTable::new();
        table.set_max_capacity(MAX_RESOURCES);
        State {
            wasi: b.build(),
            table,
            limiter: Limiter {
                inner: StoreLimitsBuilder::new()
                    .memory_size(spec.memory)
                    .instances(16)
                    .tables(16)
                    .memories(4)
                    .build(),
                hit: false,
                total: Arc::clone(&services.memory),
                held: 0,
            },
            services,
            budgets,
            deadline: Instant::now(),
            output,
            session_id,
            started: Instant::now(),
            rcpt_routes: None,
            spec,
        }
    }

    /// Whether the plugin holds `cap`.
    pub fn granted(&self, cap: Capability) -> bool {
        self.spec.capabilities.contains(&cap)
    }

    /// The resource table.
    pub fn table(&mut self) -> &mut ResourceTable {
        &mut self.table
    }

    /// What the plugin wrote to stdout/stderr (lossy UTF-8, capped).
    pub fn output_text(&self) -> String {
        String::from_utf8_lossy(&self.output.contents())
            .trim()
            .to_string()
    }
}

impl WasiView for State {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}
