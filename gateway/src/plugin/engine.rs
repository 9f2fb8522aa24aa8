//! The one wasmtime `Engine`: component model, epoch interruption for deadlines, a
//! bounded wasm stack, and the pooling allocator sized for the configured plugins. A
//! dedicated OS thread ticks the epoch.

use std::time::Duration;

use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

/// How often the epoch advances; deadlines are checked at this granularity.
pub const EPOCH_TICK: Duration = Duration::from_millis(5);
/// Stack available to wasm code (deep recursion traps with a stack overflow).
pub const MAX_WASM_STACK: usize = 512 * 1024;
/// The stack a call runs on: the wasm stack and the host's frames below it.
pub const ASYNC_STACK: usize = 2 << 20;

/// Builds the engine. `max_memory` is the largest per-plugin memory cap; `instances` the
/// component instances that may be alive at once (the pool's slots; at least 16);
/// `calls` the calls that may run at once (each needs a stack while it runs; at least 16).
pub fn build(max_memory: usize, instances: usize, calls: usize) -> wasmtime::Result<Engine> {
    let instances = u32::try_from(instances.max(16)).unwrap_or(u32::MAX);
    let calls = u32::try_from(calls.max(16)).unwrap_or(u32::MAX);
    let mut c = Config::new();
    c.epoch_interruption(true);
    // Profiling (docs/benchmarks.md): `perf record` sees plugin code by name.
    if std::env::var_os("MAILGATE_PERFMAP").is_some() {
        c.profiler(wasmtime::ProfilingStrategy::PerfMap);
    }
    c.max_wasm_stack(MAX_WASM_STACK);
    c.async_stack_size(ASYNC_STACK);
    // A stack going back to the pool is zeroed by decommitting it: no data of one
    // session's calls is left for another's, and a burst of sessions does not leave every
    // stack it touched resident (10,000 idle connections with three plugins, after a
    // burst of them: 51 KiB RSS per connection with stacks kept, docs/benchmarks.md).
    c.async_stack_zeroing(true);
    let slot = max_memory.max(16 << 20).next_power_of_two() as u64;
    c.memory_reservation(slot);
    c.memory_guard_size(64 << 10);
    c.memory_reservation_for_growth(0);
    let mut pool = PoolingAllocationConfig::default();
    // A component instance of ours holds up to 4 core instances (the plugin and WASI
    // adapter modules), one memory and two tables in practice.
    pool.total_component_instances(instances)
        .total_core_instances(instances.saturating_mul(4))
        .total_memories(instances)
        .total_tables(instances.saturating_mul(2))
        .total_stacks(calls)
        .max_memory_size(slot as usize)
        .max_component_instance_size(4 << 20)
        .max_core_instance_size(4 << 20)
        .max_tables_per_module(4)
        .max_memories_per_module(1)
        .table_elements(20_000);
    // Slots are reset with madvise when their instance ends (wasmtime's default),
    // not kept resident (`linear_memory_keep_resident` with PAGEMAP_SCAN): that made a
    // new instance 2.5x faster (no page faults, no TLB shootdowns) but kept every slot a
    // burst of sessions had touched resident for good (10,000 held sessions with three
    // plugins: 125 KiB RSS per connection against 56). Instances are reused across
    // sessions (`pool`), so few are created once a gateway is warm.
    c.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    Engine::new(&c)
}

/// Ticks the engine's epoch until the engine is dropped. A dedicated OS thread, not a
/// tokio task: a task could sit in the run queue of the very worker a spinning plugin
/// occupies, and then the epoch would never advance to interrupt it.
pub fn spawn_ticker(engine: &Engine) {
    let weak = engine.weak();
    let spawned = std::thread::Builder::new()
        .name("mailgate-epoch".into())
        .spawn(move || {
            // Bounded by the engine's life: the loop ends when the engine is dropped.
            loop {
                std::thread::sleep(EPOCH_TICK);
                match weak.upgrade() {
                    Some(e) => e.increment_epoch(),
                    None => break,
                }
            }
        });
    if let Err(e) = spawned {
        tracing::error!(error = %e, "cannot start the epoch thread; plugin deadlines will not be enforced");
    }
}
