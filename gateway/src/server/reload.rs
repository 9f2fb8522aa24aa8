//! Hot reload: a new configuration and plugin generation, built off the hot path and
//! swapped in atomically.
//!
//! What a session uses is one [`Current`]: the runtime settings, the protocol settings
//! and the plugin generation. A connection takes the `Current` of the moment it is
//! accepted and keeps it to the end, so a session is evaluated entirely by one
//! generation; new connections get the new one, and the queue uses the new one from its
//! next attempt. A reload (SIGHUP, `mailgate reload`,
//! or a change of the config file or a plugin file seen by the watcher):
//!
//! 1. reads and validates the config file again (unknown keys, bad values: refused);
//! 2. loads the plugins again if their entries or their files changed: read, sha256 pin,
//!    compile, link, world and capability checks, `init` (a file caught half-written
//!    fails here too);
//! 3. on any error keeps the current generation and reports exactly why (log, admin
//!    answer, failure counter); otherwise swaps in the new `Current`.
//!
//! What applies live and what needs a restart is decided by type: a reload takes the new
//! [`Live`](crate::config::validate::Live) part of the runtime settings (plugins, host
//! name, timeouts, `[limits]`, `[relay]`, `[chain]`, queue routes) and keeps the current
//! [`Fixed`](crate::config::validate::Fixed) part (listeners, TLS, connection limits,
//! delivery mode and queue, admin socket, DNS, compile cache, watch interval); the fixed
//! settings that changed are reported by their config key as needing a restart.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use serde::Serialize;
use tokio::sync::watch;
use tracing::{info, warn};

use super::Shared;
use crate::config::{Config, Runtime};
use crate::current::Current;
use crate::plugin::Generation;
use crate::plugin::registry::{Services, load_all, sha256_hex};

/// Reload bookkeeping.
#[derive(Debug)]
pub struct Reloader {
    /// The config file reloads read (`None`: built-in defaults and environment).
    pub config_path: Option<PathBuf>,
    /// Services plugins reach (kept across generations).
    pub services: Arc<Services>,
    /// One reload at a time.
    lock: tokio::sync::Mutex<()>,
    /// Successful reloads.
    pub succeeded: AtomicU64,
    /// Refused reloads.
    pub failed: AtomicU64,
    /// The last refusal, for `status`.
    pub last_error: std::sync::Mutex<Option<String>>,
}

impl Reloader {
    /// A reloader for `config_path`.
    pub fn new(config_path: Option<PathBuf>, services: Arc<Services>) -> Reloader {
        Reloader {
            config_path,
            services,
            lock: tokio::sync::Mutex::new(()),
            succeeded: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            last_error: std::sync::Mutex::new(None),
        }
    }
}

/// One plugin of a generation, for `status` and reload answers.
#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct PluginStatus {
    /// Config name.
    pub name: String,
    /// What the plugin reports.
    pub version: String,
    /// SHA-256 of its file.
    pub sha256: String,
    /// When it was loaded (unix seconds).
    pub loaded_at: u64,
    /// Entries and octets its `kv` namespace holds now.
    pub kv_entries: usize,
    /// Octets (keys, values, bookkeeping) its `kv` namespace holds now.
    pub kv_bytes: usize,
    /// Log lines dropped by its log rate limit since it was loaded.
    pub log_lines_dropped: u64,
}

/// The answer to a reload.
#[derive(Debug, Serialize)]
pub struct ReloadReport {
    /// Whether a new generation is current.
    pub ok: bool,
    /// The current generation after the reload.
    pub generation: u64,
    /// Why it was refused.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Whether the plugins were loaded again.
    pub plugins_reloaded: bool,
    /// Changed settings that keep their old value until a restart.
    pub restart_needed: Vec<String>,
    /// The plugins now current.
    pub plugins: Vec<PluginStatus>,
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
}

/// The plugins of `g`.
pub fn plugin_status(g: Option<&Arc<Generation>>) -> Vec<PluginStatus> {
    g.map(|g| {
        g.plugins
            .iter()
            .map(|p| {
                let (kv_entries, kv_bytes) = g.services.kv.usage(&p.spec.name);
                PluginStatus {
                    name: p.spec.name.clone(),
                    version: p.version.clone(),
                    sha256: p.sha256.clone(),
                    loaded_at: unix(p.loaded_at),
                    kv_entries,
                    kv_bytes,
                    log_lines_dropped: p.log_rate.dropped(),
                }
            })
            .collect()
    })
    .unwrap_or_default()
}

/// SHA-256 of a file, hex.
fn file_sha256(p: &Path) -> Option<String> {
    std::fs::read(p).ok().map(|b| sha256_hex(&b))
}

/// Whether the plugins must be loaded again: entries changed, or a file's content.
async fn plugins_changed(old: Option<&Arc<Generation>>, new: &Runtime) -> bool {
    let old_specs: Vec<&crate::config::PluginSpec> = old
        .map(|g| g.plugins.iter().map(|p| &*p.spec).collect())
        .unwrap_or_default();
    let new_specs = &new.live.plugins;
    if old_specs.len() != new_specs.len() || old_specs.iter().zip(new_specs).any(|(a, b)| **a != *b)
    {
        return true;
    }
    let Some(g) = old else {
        return false;
    };
    let files: Vec<(PathBuf, String)> = g
        .plugins
        .iter()
        .map(|p| (p.spec.path.clone(), p.sha256.clone()))
        .collect();
    tokio::task::spawn_blocking(move || {
        files
            .iter()
            .any(|(path, sha)| file_sha256(path).as_deref() != Some(sha.as_str()))
    })
    .await
    .unwrap_or(true)
}

/// Reloads configuration and plugins; `why` names the trigger for the log.
pub async fn reload(shared: &Shared, why: &str) -> ReloadReport {
    let r = &shared.reloader;
    let _one = r.lock.lock().await;
    let cur = shared.current();
    let counted = |result: &str| {
        crate::metrics::get()
            .reloads
            .get_or_create(&crate::metrics::Kind {
                kind: result.to_string(),
            })
            .inc();
    };
    let fail = |error: String| {
        r.failed.fetch_add(1, Ordering::Relaxed);
        counted("failed");
        warn!(trigger = why, %error, generation = cur.generation, "reload refused; the current generation keeps serving");
        *r.last_error.lock().unwrap_or_else(|e| e.into_inner()) = Some(error.clone());
        ReloadReport {
            ok: false,
            generation: cur.generation,
            error: Some(error),
            plugins_reloaded: false,
            restart_needed: vec![],
            plugins: plugin_status(cur.plugins.as_ref()),
        }
    };
    let path = r.config_path.clone();
    let loaded = tokio::task::spawn_blocking(move || {
        let cfg = Config::load(path.as_deref()).map_err(|e| e.to_string())?;
        cfg.validate().map_err(|e| e.to_string())
    })
    .await;
    let new_rt = match loaded {
        Ok(Ok(rt)) => rt,
        Ok(Err(e)) => return fail(format!("configuration: {e}")),
        Err(e) => return fail(format!("configuration: {e}")),
    };
    let restart = cur.runtime.fixed.changed(&new_rt.fixed);
    let new_rt = Runtime {
        live: new_rt.live,
        fixed: cur.runtime.fixed.clone(),
    };
    let reload_plugins = plugins_changed(cur.plugins.as_ref(), &new_rt).await;
    let plugins = if reload_plugins {
        match load_all(&new_rt.live.plugins, &r.services).await {
            Ok(g) => g,
            Err(e) => return fail(format!("plugins: {e}")),
        }
    } else {
        cur.plugins.clone()
    };
    let next = Arc::new(Current {
        session: Arc::new(super::session_config(&new_rt, shared.tls.is_some())),
        runtime: Arc::new(new_rt),
        plugins,
        generation: cur.generation + 1,
        since: unix(SystemTime::now()),
    });
    shared.current.set(Arc::clone(&next));
    r.succeeded.fetch_add(1, Ordering::Relaxed);
    counted("ok");
    *r.last_error.lock().unwrap_or_else(|e| e.into_inner()) = None;
    let plugins = plugin_status(next.plugins.as_ref());
    info!(
        trigger = why,
        generation = next.generation,
        plugins_reloaded = reload_plugins,
        plugins = %plugins.iter().map(|p| format!("{}@{}", p.name, &p.sha256[..12.min(p.sha256.len())])).collect::<Vec<_>>().join(","),
        restart_needed = %restart.join(","),
        "reloaded"
    );
    if !restart.is_empty() {
        warn!(settings = %restart.join(", "), "changed settings need a restart to take effect");
    }
    ReloadReport {
        ok: true,
        generation: next.generation,
        error: None,
        plugins_reloaded: reload_plugins,
        restart_needed: restart,
        plugins,
    }
}

impl crate::admin::Gateway for Shared {
    fn advance_clock(&self, secs: u64) -> serde_json::Value {
        match self.reloader.services.clock.advance(secs) {
            Ok(total) => serde_json::json!({"ok": true, "offset_secs": total}),
            Err(e) => serde_json::json!({"ok": false, "error": e.to_string()}),
        }
    }

    fn status(&self) -> serde_json::Value {
        let cur = self.current();
        let r = &self.reloader;
        serde_json::json!({
            "ok": true,
            "version": env!("CARGO_PKG_VERSION"),
            "started": self.started,
            "delivery": cur.runtime.fixed.delivery.name(),
            "admin_http": *self.admin_http.lock().unwrap_or_else(|e| e.into_inner()),
            "queue": self.queue.as_ref().map(|q| q.stats()),
            "verify": self.reloader.services.verify.stats(),
            "kv": self.reloader.services.kv.stats(),
            "generation": {
                "number": cur.generation,
                "since": cur.since,
                "plugins": plugin_status(cur.plugins.as_ref()),
            },
            "reloads": {
                "succeeded": r.succeeded.load(Ordering::Relaxed),
                "failed": r.failed.load(Ordering::Relaxed),
                "last_error": *r.last_error.lock().unwrap_or_else(|e| e.into_inner()),
            },
        })
    }

    fn reload(
        &self,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = serde_json::Value> + Send + '_>> {
        Box::pin(async move {
            serde_json::to_value(reload(self, "admin").await)
                .unwrap_or_else(|e| serde_json::json!({"ok": false, "error": e.to_string()}))
        })
    }

    fn queue(&self) -> Option<&Arc<crate::queue::Queue>> {
        self.queue.as_ref()
    }
}

/// A file's identity for change detection.
fn stamp(p: &Path) -> Option<(SystemTime, u64)> {
    let m = std::fs::metadata(p).ok()?;
    Some((m.modified().ok()?, m.len()))
}

/// The files the watcher looks at and their state.
#[derive(Debug)]
pub struct Baseline {
    paths: Vec<PathBuf>,
    seen: Vec<Option<(SystemTime, u64)>>,
}

type Stamps = Vec<Option<(SystemTime, u64)>>;

fn snapshot(paths: &[PathBuf]) -> Stamps {
    paths.iter().map(|p| stamp(p)).collect()
}

/// The config file and the current plugin files, as they are now (taken before the
/// gateway reports ready, so no change after that is missed).
pub fn baseline(shared: &Shared) -> Baseline {
    let mut paths: Vec<PathBuf> = shared.reloader.config_path.iter().cloned().collect();
    paths.extend(
        shared
            .current()
            .runtime
            .live
            .plugins
            .iter()
            .map(|p| p.path.clone()),
    );
    let seen = snapshot(&paths);
    Baseline { paths, seen }
}

/// Watches the files of `base` (polling every `every`); a change that has settled (same
/// size and time on two polls in a row) triggers a reload.
pub async fn watch_files(
    shared: Arc<Shared>,
    every: Duration,
    base: Baseline,
    mut shutdown: watch::Receiver<bool>,
) {
    let Baseline {
        mut paths,
        mut seen,
    } = base;
    let mut pending: Option<Stamps> = None;
    loop {
        tokio::select! {
            _ = shutdown.changed() => return,
            _ = tokio::time::sleep(every) => {}
        }
        let now = snapshot(&paths);
        if now == seen {
            pending = None;
            continue;
        }
        // Changed: wait until it stops changing before reloading.
        if pending.as_ref() != Some(&now) {
            pending = Some(now);
            continue;
        }
        pending = None;
        reload(&shared, "file change").await;
        let b = baseline(&shared);
        paths = b.paths;
        seen = b.seen;
    }
}

/// Reloads on SIGHUP until shutdown.
pub async fn on_sighup(shared: Arc<Shared>, mut shutdown: watch::Receiver<bool>) {
    let Ok(mut hup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) else {
        warn!("cannot listen for SIGHUP; reload with `mailgate reload` instead");
        return;
    };
    loop {
        tokio::select! {
            _ = shutdown.changed() => return,
            got = hup.recv() => {
                if got.is_none() {
                    return;
                }
                reload(&shared, "SIGHUP").await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rt(toml: &str) -> Runtime {
        Config::from_toml(toml).unwrap().validate().unwrap()
    }

    fn restart_needed(old: &Runtime, new: &Runtime) -> Vec<String> {
        let mut v = old.fixed.changed(&new.fixed);
        v.sort();
        v
    }

    #[test]
    fn live_settings_apply_and_the_rest_waits_for_a_restart() {
        let old = rt("");
        let new = rt(
            "[server]\nlisten = [\"127.0.0.1:2626\"]\nhostname = \"mx2.example.test\"\n\
                      [limits]\nmax_recipients = 7\n[dns]\ntimeout_ms = 100\n\
                      [chain]\ncompile_cache = \"/elsewhere\"\n",
        );
        assert_eq!(
            restart_needed(&old, &new),
            vec!["chain.compile_cache", "dns", "server.listen"]
        );
        assert_eq!(new.live.hostname, "mx2.example.test", "hostname is live");
        assert_eq!(new.live.limits.max_recipients, 7, "limits are live");
        assert!(restart_needed(&old, &rt("")).is_empty());
    }

    #[test]
    fn queue_routes_apply_live() {
        let q = "[delivery]\nmode = \"queue\"\n[queue.routes]\n";
        let old = rt(&format!("{q}\"a.test\" = {{ host = \"10.0.0.1:25\" }}\n"));
        let new = rt(&format!("{q}\"a.test\" = {{ host = \"10.0.0.2:25\" }}\n"));
        assert!(restart_needed(&old, &new).is_empty());
        assert_eq!(new.live.routing.routes["a.test"].addr, "10.0.0.2:25");
        let spool = rt(&format!("{q}[queue]\nspool = \"/elsewhere\"\n")
            .replace("[queue.routes]\n[queue]", "[queue]"));
        assert_eq!(restart_needed(&old, &spool), vec!["delivery / queue"]);
    }
}
