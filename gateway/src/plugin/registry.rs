//! Loading plugins: read the file, check the optional SHA-256 pin, compile, check the
//! world version, link, and instantiate once to read the manifest and run `init`, so a
//! broken plugin or a bad plugin config is refused before it takes traffic. Also
//! [`inspect`] for `mailgate plugin inspect`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use wasmtime::component::{Component, HasSelf, Linker, types::ComponentItem};
use wasmtime::{Engine, Store};

use super::bindings::exports::mailgate::plugin::hooks::HookSet;
use super::bindings::{HookIndices, Plugin, PluginPre};
use super::kv::Kv;
use super::state::State;
use crate::config::{Capability, PluginSpec};
use crate::dns::Resolver;

/// The world major.minor this host implements.
pub const WORLD: &str = "0.1";
const HOOKS_EXPORT: &str = "mailgate:plugin/hooks@";
/// Most call stacks the engine reserves (see `load_all`).
const STACK_CAP: usize = 16_384;
/// Time allowed for `manifest` and `init` at load.
const LOAD_DEADLINE: Duration = Duration::from_secs(5);

/// Why a plugin could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The file could not be read.
    #[error("plugin {name}: cannot read {path}: {source}")]
    Read {
        /// Plugin name.
        name: String,
        /// File path.
        path: String,
        /// OS error.
        source: std::io::Error,
    },
    /// The SHA-256 pin does not match.
    #[error("plugin {name}: sha256 mismatch: file has {actual}, config pins {expected}")]
    Digest {
        /// Plugin name.
        name: String,
        /// Digest of the file.
        actual: String,
        /// Configured digest.
        expected: String,
    },
    /// Not a valid component, or not built for this world.
    #[error("plugin {name}: {reason}")]
    Invalid {
        /// Plugin name.
        name: String,
        /// What is wrong.
        reason: String,
    },
    /// `init` refused the plugin's config.
    #[error("plugin {name}: init failed: {reason}")]
    Init {
        /// Plugin name.
        name: String,
        /// The plugin's message.
        reason: String,
    },
}

/// A plugin ready to instantiate per session.
pub struct LoadedPlugin {
    /// Its config entry.
    pub spec: Arc<PluginSpec>,
    /// Linked and ready.
    pub pre: PluginPre<State>,
    /// Where its hook functions are (sessions instantiate `pre.instance_pre()` and look
    /// them up without bindgen's per-instance type check).
    pub exports: HookIndices,
    /// Its idle instances, kept for later sessions.
    pub pool: super::pool::Pool,
    /// Hooks it implements.
    pub hooks: HookSet,
    /// Name and version it reports.
    pub version: String,
    /// The world version it was built for (from its exports).
    pub world: String,
    /// SHA-256 of the file.
    pub sha256: String,
    /// Capabilities it imports but is not granted.
    pub ungranted: Vec<String>,
    /// When it was loaded.
    pub loaded_at: std::time::SystemTime,
    /// Its log rate over all sessions.
    pub log_rate: Arc<super::budget::LogRate>,
}

impl std::fmt::Debug for LoadedPlugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedPlugin")
            .field("name", &self.spec.name)
            .field("hooks", &self.hooks)
            .field("world", &self.world)
            .field("sha256", &self.sha256)
            .finish()
    }
}

/// A set of loaded plugins sharing one engine (a "generation").
#[derive(Debug)]
pub struct Generation {
    /// The engine that compiled them.
    pub engine: Engine,
    /// In chain order.
    pub plugins: Vec<Arc<LoadedPlugin>>,
    /// Gateway services behind the capabilities.
    pub services: Arc<Services>,
}

/// The gateway services host capabilities reach, shared by every generation (a reload
/// keeps the kv contents and the DNS cache).
#[derive(Debug)]
pub struct Services {
    /// Shared key/value store.
    pub kv: Arc<Kv>,
    /// The gateway's resolver.
    pub dns: Arc<Resolver>,
    /// Where compiled plugins are cached, if anywhere.
    pub compile_cache: Option<PathBuf>,
    /// Linear memory all plugin instances together may hold (`chain.max_total_memory_mb`).
    pub memory: Arc<crate::memory_budget::MemoryBudget>,
    /// Sessions that may run plugins at once: each generation's instance pool holds one
    /// instance per plugin for each of them.
    pub sessions: usize,
    /// SPF/DKIM/DMARC/ARC checks over `dns`.
    pub auth: Arc<super::auth::Authenticator>,
    /// The time plugins see (the `clock` capability, kv expiry).
    pub clock: Arc<super::clock::PluginClock>,
    /// Recipient verification probes and their cache (the `verify` capability), on the
    /// plugins' clock; the server attaches its settings at start.
    pub verify: Arc<crate::verify::Verifier>,
    /// Where chains record every decision in full, for offline tools
    /// (`mailgate plugin test`); `None` in the server.
    pub decisions: Option<Arc<super::chain::DecisionLog>>,
}

impl Services {
    /// Services with an empty kv store and `dns`, without a compile cache.
    pub fn new(dns: Arc<Resolver>) -> Arc<Services> {
        Self::with_cache(dns, None)
    }

    /// Services with an empty kv store, `dns`, and compiled plugins cached in `cache`;
    /// room for 128 sessions and 1 GiB of plugin memory.
    pub fn with_cache(dns: Arc<Resolver>, cache: Option<PathBuf>) -> Arc<Services> {
        Self::configured(dns, cache, 128, 1 << 30)
    }

    /// Services for `sessions` sessions at once whose plugins hold at most `memory`
    /// octets of linear memory together.
    pub fn configured(
        dns: Arc<Resolver>,
        cache: Option<PathBuf>,
        sessions: usize,
        memory: usize,
    ) -> Arc<Services> {
        Self::with_clock(dns, cache, sessions, memory, false)
    }

    /// As [`Services::configured`], with a clock a test may move forward
    /// (`chain.adjustable_clock`) if `adjustable_clock`.
    pub fn with_clock(
        dns: Arc<Resolver>,
        cache: Option<PathBuf>,
        sessions: usize,
        memory: usize,
        adjustable_clock: bool,
    ) -> Arc<Services> {
        let clock = Arc::new(super::clock::PluginClock::new(adjustable_clock));
        let kv = Kv::with_clock(Arc::clone(&clock));
        Self::build(dns, cache, sessions, memory, clock, kv)
    }

    /// As [`Services::with_clock`], with the kv store `[kv]` describes (in memory, or
    /// in Redis: not contacted until a plugin calls). Must run inside a tokio runtime.
    pub fn with_kv(
        dns: Arc<Resolver>,
        cache: Option<PathBuf>,
        sessions: usize,
        memory: usize,
        adjustable_clock: bool,
        kv: &super::kv::Settings,
    ) -> Result<Arc<Services>, super::kv::KvSetupError> {
        let clock = Arc::new(super::clock::PluginClock::new(adjustable_clock));
        let kv = Kv::from_settings(kv, Arc::clone(&clock))?;
        Ok(Self::build(dns, cache, sessions, memory, clock, kv))
    }

    fn build(
        dns: Arc<Resolver>,
        cache: Option<PathBuf>,
        sessions: usize,
        memory: usize,
        clock: Arc<super::clock::PluginClock>,
        kv: Kv,
    ) -> Arc<Services> {
        Arc::new(Services {
            kv: Arc::new(kv),
            verify: Arc::new(crate::verify::Verifier::new(
                Arc::clone(&dns),
                Arc::clone(&clock),
            )),
            clock,
            auth: Arc::new(super::auth::Authenticator::new(&dns)),
            dns,
            compile_cache: cache,
            memory: crate::memory_budget::MemoryBudget::new(memory),
            sessions,
            decisions: None,
        })
    }
}

/// What `inspect` learns from a component file without running it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inspection {
    /// World version from the hooks export, if it has one.
    pub world: Option<String>,
    /// Import names.
    pub imports: Vec<String>,
    /// Export names.
    pub exports: Vec<String>,
    /// `mailgate:plugin` capabilities imported.
    pub capabilities: Vec<String>,
}

/// Reads a component's type.
pub fn inspect(engine: &Engine, component: &Component) -> Inspection {
    let ty = component.component_type();
    let imports: Vec<String> = ty.imports(engine).map(|(n, _)| n.to_string()).collect();
    let exports: Vec<String> = ty
        .exports(engine)
        .filter(|(_, e)| {
            matches!(
                e.ty,
                ComponentItem::ComponentInstance(_) | ComponentItem::ComponentFunc(_)
            )
        })
        .map(|(n, _)| n.to_string())
        .collect();
    let world = exports
        .iter()
        .find_map(|e| e.strip_prefix(HOOKS_EXPORT))
        .map(str::to_string);
    let capabilities = imports
        .iter()
        .filter_map(|i| i.strip_prefix("mailgate:plugin/"))
        .filter_map(|i| i.split('@').next())
        .filter(|i| Capability::parse(i).is_some())
        .map(str::to_string)
        .collect();
    Inspection {
        world,
        imports,
        exports,
        capabilities,
    }
}

/// The linker every plugin is instantiated through: locked-down WASI plus our imports.
pub fn linker(engine: &Engine) -> wasmtime::Result<Linker<State>> {
    let mut l = Linker::new(engine);
    wasmtime_wasi::p2::add_to_linker_async(&mut l)?;
    Plugin::add_to_linker::<State, HasSelf<State>>(&mut l, |s| s)?;
    Ok(l)
}

/// A store for one instance of `spec`, with limits and the deadline callback set.
pub fn store(
    engine: &Engine,
    spec: Arc<PluginSpec>,
    services: Arc<Services>,
    session_id: String,
    budgets: super::budget::Budgets,
) -> Store<State> {
    let mut store = Store::new(engine, State::new(spec, services, session_id, budgets));
    store.limiter(|s| &mut s.limiter);
    store.set_epoch_deadline(1);
    store.epoch_deadline_callback(|ctx| {
        if Instant::now() < ctx.data().deadline {
            Ok(wasmtime::UpdateDeadline::Yield(1))
        } else {
            Ok(wasmtime::UpdateDeadline::Interrupt)
        }
    });
    store
}

/// Compiles a component from bytes (CPU-heavy: call from a blocking thread).
pub fn compile(engine: &Engine, name: &str, bytes: &[u8]) -> Result<Component, LoadError> {
    Component::new(engine, bytes).map_err(|e| LoadError::Invalid {
        name: name.into(),
        reason: format!("not a valid WebAssembly component: {e:#}"),
    })
}

/// The compiled form of a component in `cache`: `<sha256>-<engine settings hash>.cwasm`.
fn cache_path(engine: &Engine, cache: &Path, sha256: &str) -> PathBuf {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    engine.precompile_compatibility_hash().hash(&mut h);
    env!("CARGO_PKG_VERSION").hash(&mut h);
    cache.join(format!("{sha256}-{:016x}.cwasm", h.finish()))
}

/// Marks the end of a cache entry: `<compiled>` `<source sha256>` `<sha256 of compiled>`
/// `MAGIC`, so an entry is bound to the plugin file it was compiled from.
const MAGIC: &[u8; 8] = b"mgcache1";

/// Whether `dir` may hold compiled code the gateway will run: a directory (not a symlink)
/// owned by the gateway's user; one writable by group or others is made `0700`. A
/// missing one is fine (it is created `0700`).
fn trust_cache_dir(dir: &Path) -> Result<(), String> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let meta = match std::fs::symlink_metadata(dir) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e.to_string()),
    };
    if !meta.is_dir() {
        return Err("not a directory (or a symlink)".into());
    }
    let me = rustix::process::geteuid().as_raw();
    if meta.uid() != me {
        return Err(format!(
            "owned by uid {}, not the gateway's {me}",
            meta.uid()
        ));
    }
    if meta.mode() & 0o022 != 0 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| format!("writable by others and cannot be made 0700: {e}"))?;
        tracing::warn!(cache = %dir.display(), "compile cache was writable by others; made 0700");
    }
    Ok(())
}

/// Loads a compiled component written by [`compile_cached`] for the plugin file whose
/// SHA-256 is `sha256`; `Err` for an entry of another file, altered, or not the
/// gateway's own.
#[allow(unsafe_code)]
fn load_compiled(engine: &Engine, path: &Path, sha256: &str) -> wasmtime::Result<Component> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::symlink_metadata(path)?;
    if !meta.is_file()
        || meta.uid() != rustix::process::geteuid().as_raw()
        || meta.mode() & 0o022 != 0
    {
        wasmtime::bail!("not a private file of the gateway's user");
    }
    let bytes = std::fs::read(path)?;
    let trailer = 32 + 32 + MAGIC.len();
    if bytes.len() < trailer || !bytes.ends_with(MAGIC) {
        wasmtime::bail!("no binding to a plugin file");
    }
    let (compiled, rest) = bytes.split_at(bytes.len() - trailer);
    let source = hex::encode(&rest[..32]);
    if source != sha256 {
        wasmtime::bail!("compiled from another plugin file ({source})");
    }
    if Sha256::digest(compiled)[..] != rest[32..64] {
        wasmtime::bail!("altered after it was written");
    }
    // SAFETY: wasmtime requires that the bytes are a trusted result of its own
    // `precompile_component`. They are: the cache directory and the file are the
    // gateway user's own and not writable by others (checked above and at start), the
    // file was written by `compile_cached` from the engine's own output, and its trailer
    // binds it to the SHA-256 of this very plugin file and of the compiled bytes, so an
    // entry swapped from another plugin or altered is refused before this point; wasmtime
    // also checks the engine version and settings recorded in the bytes.
    unsafe { Component::deserialize(engine, compiled) }
}

/// Compiles `bytes`, or loads the result of an earlier compilation of the same bytes
/// with the same engine settings from `cache`, writing it there after a compilation.
/// A cache that cannot be read, written or trusted only costs a compilation (with a
/// warning).
pub fn compile_cached(
    engine: &Engine,
    name: &str,
    bytes: &[u8],
    sha256: &str,
    cache: Option<&Path>,
) -> Result<Component, LoadError> {
    let Some(dir) = cache else {
        return compile(engine, name, bytes);
    };
    if let Err(why) = trust_cache_dir(dir) {
        tracing::warn!(plugin = name, cache = %dir.display(), why, "compile cache not trusted; compiling without it");
        return compile(engine, name, bytes);
    }
    let path = cache_path(engine, dir, sha256);
    if path.exists() {
        match load_compiled(engine, &path, sha256) {
            Ok(c) => {
                tracing::info!(plugin = name, cache = %path.display(), "compiled plugin loaded from the cache");
                // Mark it used, so pruning keeps it.
                if let Ok(f) = std::fs::File::options().append(true).open(&path) {
                    let _ = f.set_modified(std::time::SystemTime::now());
                }
                return Ok(c);
            }
            Err(e) => {
                tracing::warn!(plugin = name, cache = %path.display(), error = %e, "unusable compile cache entry; compiling again");
                let _ = std::fs::remove_file(&path);
            }
        }
    }
    let component = compile(engine, name, bytes)?;
    let store = || -> std::io::Result<()> {
        use std::io::Write;
        crate::private_fs::create_dir_all(dir)?;
        let compiled = component.serialize().map_err(std::io::Error::other)?;
        let source = hex::decode(sha256).map_err(std::io::Error::other)?;
        let tmp = dir.join(format!(".{sha256}.{:x}.tmp", rand::random::<u32>()));
        let mut f = crate::private_fs::create_new(&tmp)?;
        f.write_all(&compiled)?;
        f.write_all(&source)?;
        f.write_all(&Sha256::digest(&compiled))?;
        f.write_all(MAGIC)?;
        std::fs::rename(&tmp, &path)
    };
    if let Err(e) = store() {
        tracing::warn!(plugin = name, cache = %dir.display(), error = %e, "cannot write the compile cache");
    }
    Ok(component)
}

/// SHA-256 of a plugin file, lowercase hex (what `sha256` pins and caches use).
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Entries of the compile cache not used for this long are removed.
pub const CACHE_MAX_AGE: Duration = Duration::from_secs(30 * 86400);

/// Removes compile cache entries unused (not written or loaded) for `max_age`, and
/// temporary files left by an interrupted write. Returns how many files were removed.
pub fn prune_cache(dir: &Path, max_age: Duration) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    let now = std::time::SystemTime::now();
    let mut removed = 0;
    for e in entries.flatten() {
        let path = e.path();
        let name = e.file_name().to_string_lossy().into_owned();
        let limit = if name.ends_with(".cwasm") {
            max_age
        } else if name.starts_with('.') && name.ends_with(".tmp") {
            Duration::from_secs(3600)
        } else {
            continue;
        };
        let age = e
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| now.duration_since(t).ok())
            .unwrap_or_default();
        if age > limit && std::fs::remove_file(&path).is_ok() {
            removed += 1;
        }
    }
    if removed > 0 {
        tracing::info!(cache = %dir.display(), removed, "pruned the compile cache");
    }
    removed
}

/// Loads one plugin.
pub async fn load(
    engine: &Engine,
    linker: &Linker<State>,
    spec: PluginSpec,
    services: Arc<Services>,
) -> Result<LoadedPlugin, LoadError> {
    let name = spec.name.clone();
    let bytes = tokio::fs::read(&spec.path)
        .await
        .map_err(|source| LoadError::Read {
            name: name.clone(),
            path: spec.path.display().to_string(),
            source,
        })?;
    let sha256 = sha256_hex(&bytes);
    if let Some(expected) = spec.sha256.as_ref().filter(|e| **e != sha256) {
        return Err(LoadError::Digest {
            name,
            actual: sha256,
            expected: expected.clone(),
        });
    }
    let component = {
        let engine = engine.clone();
        let name = name.clone();
        let cache = services.compile_cache.clone();
        let sha = sha256.clone();
        tokio::task::spawn_blocking(move || {
            compile_cached(&engine, &name, &bytes, &sha, cache.as_deref())
        })
        .await
        .map_err(|e| LoadError::Invalid {
            name: spec.name.clone(),
            reason: e.to_string(),
        })??
    };
    let info = inspect(engine, &component);
    let invalid = |reason: String| LoadError::Invalid {
        name: name.clone(),
        reason,
    };
    let world = info.world.clone().ok_or_else(|| {
        invalid(format!(
            "not a mailgate plugin: it does not export {HOOKS_EXPORT}{WORLD}.x (exports: {})",
            info.exports.join(", ")
        ))
    })?;
    if !(world.starts_with(&format!("{WORLD}.")) || world == WORLD) {
        return Err(invalid(format!(
            "built for world {world}, this gateway implements {WORLD}.x"
        )));
    }
    let pre = linker
        .instantiate_pre(&component)
        .and_then(PluginPre::new)
        .map_err(|e| invalid(format!("cannot link: {e:#}")))?;
    let spec = Arc::new(spec);
    let log_rate = Arc::new(super::budget::LogRate::new(
        spec.log_rate.0,
        spec.log_rate.1,
    ));
    let mut st = store(
        engine,
        Arc::clone(&spec),
        services,
        "load".into(),
        super::budget::Budgets {
            session: Default::default(),
            log_rate: Arc::clone(&log_rate),
            auth: None,
        },
    );
    st.data_mut().deadline = Instant::now() + LOAD_DEADLINE;
    let run = async {
        let inst = pre.instantiate_async(&mut st).await?;
        let hooks = inst.mailgate_plugin_hooks();
        let manifest = hooks.call_manifest(&mut st).await?;
        let init = hooks.call_init(&mut st, &spec.config).await?;
        let exports =
            HookIndices::new(pre.instance_pre(), &format!("{HOOKS_EXPORT}{world}"), &inst)?;
        Ok::<_, wasmtime::Error>((manifest, init, exports))
    };
    let (manifest, init, exports) = match tokio::time::timeout(LOAD_DEADLINE, run).await {
        Ok(Ok(x)) => x,
        Ok(Err(e)) => return Err(invalid(format!("failed at load: {e:#}"))),
        Err(_) => return Err(invalid("manifest/init did not finish within 5 s".into())),
    };
    if let Err(reason) = init {
        let reason: String = reason
            .chars()
            .filter(|c| !c.is_control())
            .take(400)
            .collect();
        return Err(LoadError::Init { name, reason });
    }
    let ungranted = info
        .capabilities
        .iter()
        .filter(|c| Capability::parse(c).is_some_and(|c| !spec.capabilities.contains(&c)))
        .cloned()
        .collect::<Vec<_>>();
    if !ungranted.is_empty() {
        tracing::warn!(plugin = %name, capabilities = ?ungranted, "plugin imports capabilities it is not granted; they will answer denied");
    }
    tracing::info!(
        plugin = %name,
        version = %manifest.version,
        world = %world,
        sha256 = %sha256,
        hooks = ?manifest.hooks,
        "plugin loaded"
    );
    Ok(LoadedPlugin {
        spec,
        pre,
        exports,
        pool: Default::default(),
        hooks: manifest.hooks,
        version: format!("{} {}", manifest.name, manifest.version),
        world,
        sha256,
        ungranted,
        loaded_at: std::time::SystemTime::now(),
        log_rate,
    })
}

/// Loads every configured plugin, in order; the first failure refuses the generation.
pub async fn load_all(
    specs: &[PluginSpec],
    services: &Arc<Services>,
) -> Result<Option<Arc<Generation>>, LoadError> {
    if specs.is_empty() {
        return Ok(None);
    }
    let max_memory = specs.iter().map(|s| s.memory).max().unwrap_or(0);
    // One instance per plugin for every session that may run at once, and one more per
    // plugin for loading: a busy gateway never runs out of slots (they reserve address
    // space, not memory; memory is `chain.max_total_memory_mb`).
    let instances = (services.sessions + 1).saturating_mul(specs.len());
    // Every live store keeps the stack of its last call (wasmtime reuses it for the
    // next): stacks for every instance and for the calls beyond, within STACK_CAP (each
    // stack is two memory mappings, and the kernel allows a process 65530 by default).
    // Sessions waiting for their client give their instances back
    // (`chain.release_idle_instances_ms`), so busy sessions and the pools' idle instances
    // are what hold stacks.
    let calls = instances
        .saturating_add(services.sessions + 1)
        .min(STACK_CAP.max(services.sessions + 1 + specs.len() * super::pool::MAX_IDLE));
    let engine =
        super::engine::build(max_memory, instances, calls).map_err(|e| LoadError::Invalid {
            name: "(engine)".into(),
            reason: format!("{e:#}"),
        })?;
    let linker = linker(&engine).map_err(|e| LoadError::Invalid {
        name: "(linker)".into(),
        reason: format!("{e:#}"),
    })?;
    let mut plugins = Vec::new();
    super::engine::spawn_ticker(&engine);
    for spec in specs {
        plugins.push(Arc::new(
            load(&engine, &linker, spec.clone(), Arc::clone(services)).await?,
        ));
    }
    if let Some(dir) = services.compile_cache.clone() {
        let _ = tokio::task::spawn_blocking(move || prune_cache(&dir, CACHE_MAX_AGE)).await;
    }
    Ok(Some(Arc::new(Generation {
        engine,
        plugins,
        services: Arc::clone(services),
    })))
}

/// What `mailgate plugin inspect` prints about a component file.
#[derive(Debug)]
pub struct Description {
    /// SHA-256 of the file.
    pub sha256: String,
    /// The component's type.
    pub inspection: Inspection,
    /// `name version`, SDK and hooks from `manifest` (the plugin is instantiated with
    /// every capability denied; `init` is not called).
    pub manifest: Option<(String, String, HookSet)>,
}

/// Describes a component file without running its `init`.
pub async fn describe(path: &std::path::Path) -> Result<Description, LoadError> {
    let name = path.display().to_string();
    let bytes = tokio::fs::read(path)
        .await
        .map_err(|source| LoadError::Read {
            name: name.clone(),
            path: name.clone(),
            source,
        })?;
    let sha256 = sha256_hex(&bytes);
    let engine = super::engine::build(64 << 20, 1, 1).map_err(|e| LoadError::Invalid {
        name: name.clone(),
        reason: format!("{e:#}"),
    })?;
    super::engine::spawn_ticker(&engine);
    let component = {
        let (engine, n) = (engine.clone(), name.clone());
        tokio::task::spawn_blocking(move || compile(&engine, &n, &bytes))
            .await
            .map_err(|e| LoadError::Invalid {
                name: name.clone(),
                reason: e.to_string(),
            })??
    };
    let inspection = inspect(&engine, &component);
    let mut manifest = None;
    if inspection.world.is_some() {
        let l = linker(&engine).map_err(|e| LoadError::Invalid {
            name: name.clone(),
            reason: format!("{e:#}"),
        })?;
        let spec = PluginSpec {
            name: "inspect".into(),
            path: path.to_path_buf(),
            sha256: None,
            on_error: crate::config::OnError::Tempfail,
            capabilities: vec![],
            deadline: LOAD_DEADLINE,
            memory: 64 << 20,
            config: vec![],
            literal_recipients: false,
            log_rate: (100, 65536),
            kv_quota: Default::default(),
            reuse_instances: true,
        };
        let mut st = store(
            &engine,
            Arc::new(spec),
            Services::new(Arc::new(Resolver::new(Default::default()))),
            "inspect".into(),
            Default::default(),
        );
        st.data_mut().deadline = Instant::now() + LOAD_DEADLINE;
        let run = async {
            let pre = PluginPre::new(l.instantiate_pre(&component)?)?;
            let inst = pre.instantiate_async(&mut st).await?;
            inst.mailgate_plugin_hooks().call_manifest(&mut st).await
        };
        match tokio::time::timeout(LOAD_DEADLINE, run).await {
            Ok(Ok(m)) => manifest = Some((format!("{} {}", m.name, m.version), m.sdk, m.hooks)),
            Ok(Err(e)) => {
                return Err(LoadError::Invalid {
                    name,
                    reason: format!("cannot instantiate: {e:#}"),
                });
            }
            Err(_) => {
                return Err(LoadError::Invalid {
                    name,
                    reason: "manifest did not return within 5 s".into(),
                });
            }
        }
    }
    Ok(Description {
        sha256,
        inspection,
        manifest,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pruning_removes_unused_entries_and_stale_temp_files() {
        let dir = tempfile::tempdir().unwrap();
        let old = std::time::SystemTime::now() - Duration::from_secs(40 * 86400);
        let put = |name: &str, age: Option<std::time::SystemTime>| {
            let p = dir.path().join(name);
            std::fs::write(&p, b"x").unwrap();
            if let Some(t) = age {
                std::fs::File::options()
                    .append(true)
                    .open(&p)
                    .unwrap()
                    .set_modified(t)
                    .unwrap();
            }
        };
        put("aaa-1.cwasm", Some(old));
        put("bbb-1.cwasm", None);
        put(".aaa.1.tmp", Some(old));
        put("README", Some(old));
        assert_eq!(prune_cache(dir.path(), CACHE_MAX_AGE), 2);
        let mut left: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(left, ["README", "bbb-1.cwasm"]);
        assert_eq!(prune_cache(&dir.path().join("missing"), CACHE_MAX_AGE), 0);
    }
}
