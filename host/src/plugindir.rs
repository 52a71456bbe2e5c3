//! The plugin directory: loaded at start, then polled for changes.
//!
//! A file is considered once its size and modification time are the same in
//! two scans in a row, so a copy in progress is not loaded half-written (the
//! atomic way, write then rename, is picked up on the next scan). A file is
//! identified by its content hash: a rewrite with the same bytes does
//! nothing; new bytes are compiled and checked beside the running version
//! and swapped in only if they pass; a file that disappears unregisters its
//! keys. A manifest (`NAME.toml`, see [`crate::engine::manifest`]) is part of
//! its plugin: changing it reloads the plugin with the new limits. What
//! happened is returned as [`Change`]s for the pipeline to act on.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};
use std::time::SystemTime;

use sha2::{Digest, Sha256};

use crate::engine::{LoadError, PluginEngine, manifest, plugin_name, read_plugin, version_of};
use crate::registry::{KeyChanges, RegistrationError, Registry};
pub use crate::wire::FailedPlugin;

/// Why one plugin file was not (re)registered.
#[derive(Debug, thiserror::Error)]
pub enum PluginLoadError {
    /// It could not be compiled, linked or described.
    #[error(transparent)]
    Load(#[from] LoadError),
    /// Its definitions break registration rules; none of its keys is registered.
    #[error("{} registration rule(s) broken: {}", .0.len(), .0.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("; "))]
    Rejected(Vec<RegistrationError>),
}

impl PluginLoadError {
    /// Every reason, one per line of `/v1/plugins`.
    pub fn reasons(&self) -> Vec<String> {
        match self {
            Self::Rejected(errs) => errs.iter().map(|e| e.to_string()).collect(),
            other => vec![other.to_string()],
        }
    }
}

/// What a scan changed.
#[derive(Debug, Clone)]
pub enum Change {
    /// A new plugin registered these keys.
    Loaded {
        /// The file.
        file: PathBuf,
        /// Its keys.
        keys: Vec<String>,
    },
    /// A new version replaced the running one.
    Replaced {
        /// The file.
        file: PathBuf,
        /// Keys added, replaced and removed.
        keys: KeyChanges,
    },
    /// The file was removed; its keys are gone.
    Removed {
        /// The file.
        file: PathBuf,
        /// The keys it had.
        keys: Vec<String>,
    },
    /// The file could not be (re)loaded; what ran before still runs.
    Failed(FailedPlugin),
}

/// Size and modification time of the component and of its manifest: what
/// tells a scan something changed.
type Stamp = (u64, Option<SystemTime>, Option<(u64, Option<SystemTime>)>);

#[derive(Debug, Default)]
struct Seen {
    /// At the last scan.
    stamp: Option<Stamp>,
    /// When its content was last looked at (loaded, or found unchanged).
    handled: Option<Stamp>,
}

/// The watched directory.
pub struct PluginDir {
    dir: PathBuf,
    files: Mutex<BTreeMap<PathBuf, Seen>>,
    failed: Mutex<BTreeMap<PathBuf, FailedPlugin>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl PluginDir {
    /// A directory not scanned yet.
    pub fn new(dir: &Path) -> Self {
        Self {
            dir: dir.to_path_buf(),
            files: Mutex::default(),
            failed: Mutex::default(),
        }
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// Files that failed, with their reasons.
    pub fn failed(&self) -> Vec<FailedPlugin> {
        lock(&self.failed).values().cloned().collect()
    }

    fn listing(&self) -> std::io::Result<BTreeMap<PathBuf, Stamp>> {
        let mut out = BTreeMap::new();
        for entry in std::fs::read_dir(&self.dir)? {
            let Ok(entry) = entry else { continue };
            let path = entry.path();
            if path.extension().is_none_or(|e| e != "wasm") {
                continue;
            }
            let Ok(meta) = entry.metadata() else { continue };
            if meta.is_file() {
                let manifest = std::fs::metadata(manifest::path_for(&path))
                    .ok()
                    .map(|m| (m.len(), m.modified().ok()));
                out.insert(path, (meta.len(), meta.modified().ok(), manifest));
            }
        }
        Ok(out)
    }

    /// Loads every `*.wasm` now, in name order (the start of the host).
    /// Errors only when the directory cannot be read.
    pub fn load_all(
        &self,
        engine: &PluginEngine,
        registry: &RwLock<Registry>,
    ) -> anyhow::Result<Vec<Change>> {
        let listing = self.listing().map_err(|e| {
            anyhow::anyhow!("cannot read plugin directory {}: {e}", self.dir.display())
        })?;
        let mut changes = Vec::new();
        for (path, stamp) in listing {
            lock(&self.files).insert(
                path.clone(),
                Seen {
                    stamp: Some(stamp),
                    handled: Some(stamp),
                },
            );
            if let Some(c) = self.load(&path, engine, registry) {
                changes.push(c);
            }
        }
        Ok(changes)
    }

    /// One scan: loads files that settled since they changed, unregisters
    /// removed ones. Compiles on the calling thread.
    pub fn scan(&self, engine: &PluginEngine, registry: &RwLock<Registry>) -> Vec<Change> {
        let listing = match self.listing() {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(dir = %self.dir.display(), "cannot read plugin directory: {e}");
                return Vec::new();
            }
        };
        let mut due = Vec::new();
        let mut gone = Vec::new();
        {
            let mut files = lock(&self.files);
            files.retain(|path, _| {
                let keep = listing.contains_key(path);
                if !keep {
                    gone.push(path.clone());
                }
                keep
            });
            for (path, stamp) in &listing {
                let seen = files.entry(path.clone()).or_default();
                let settled = seen.stamp == Some(*stamp);
                seen.stamp = Some(*stamp);
                if settled && seen.handled != Some(*stamp) {
                    seen.handled = Some(*stamp);
                    due.push(path.clone());
                }
            }
        }
        let mut changes = Vec::new();
        for path in gone {
            lock(&self.failed).remove(&path);
            let name = plugin_name(&path);
            let mut reg = registry.write().unwrap_or_else(PoisonError::into_inner);
            let ours = reg.list().any(|k| {
                k.plugin.name() == name
                    && crate::engine::as_plugin(&*k.plugin).and_then(|p| p.path())
                        == Some(path.as_path())
            });
            if ours {
                let keys = reg.unregister_plugin(&name);
                tracing::info!(file = %path.display(), ?keys, "plugin removed");
                changes.push(Change::Removed { file: path, keys });
            }
        }
        for path in due {
            if let Some(c) = self.load(&path, engine, registry) {
                changes.push(c);
            }
        }
        changes
    }

    /// Loads (or replaces) the plugin in `path`; `None` when its content is
    /// what already runs.
    fn load(
        &self,
        path: &Path,
        engine: &PluginEngine,
        registry: &RwLock<Registry>,
    ) -> Option<Change> {
        let name = plugin_name(path);
        let running = registry
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .list()
            .find(|k| k.plugin.name() == name)
            .and_then(|k| crate::engine::as_plugin(&*k.plugin).map(|p| p.version().to_string()));
        let fail = |hash: Option<String>, e: PluginLoadError| {
            tracing::error!(file = %path.display(), running = ?running, "plugin not loaded: {e}");
            let failed = FailedPlugin {
                file: path.display().to_string(),
                errors: e.reasons(),
                hash,
                failed_at_ms: crate::time::now_ms(),
                running_hash: running.clone(),
            };
            lock(&self.failed).insert(path.to_path_buf(), failed.clone());
            Some(Change::Failed(failed))
        };
        let (bytes, manifest) = match read_plugin(path) {
            Ok(read) => read,
            Err(e) => return fail(None, e.into()),
        };
        let hash = version_of(&hex::encode(Sha256::digest(&bytes)), manifest.as_deref());
        if running.as_deref() == Some(hash.as_str()) {
            lock(&self.failed).remove(path);
            return None;
        }
        if lock(&self.failed)
            .get(path)
            .is_some_and(|f| f.hash.as_deref() == Some(hash.as_str()))
        {
            // Already failed with these bytes; the reasons stand.
            return None;
        }
        let plugin = match engine.load_read(path, &bytes, manifest.as_deref()) {
            Ok(p) => Arc::new(p),
            Err(e) => return fail(Some(hash), e.into()),
        };
        let mut reg = registry.write().unwrap_or_else(PoisonError::into_inner);
        let change = if running.is_some() {
            reg.replace(plugin).map(|keys| Change::Replaced {
                file: path.to_path_buf(),
                keys,
            })
        } else {
            let keys = plugin.definitions().iter().map(|d| d.key.clone()).collect();
            reg.register(plugin).map(|()| Change::Loaded {
                file: path.to_path_buf(),
                keys,
            })
        };
        drop(reg);
        match change {
            Ok(c) => {
                lock(&self.failed).remove(path);
                tracing::info!(file = %path.display(), hash, change = ?c, "plugin loaded");
                Some(c)
            }
            Err(errors) => fail(Some(hash), PluginLoadError::Rejected(errors)),
        }
    }
}
