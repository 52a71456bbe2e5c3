//! The assembled core: registry, plugin engine, host API, keys, datastores,
//! bus and pipeline. Knows nothing of HTTP; `api` and `cli` drive it.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::SystemTime;

use serde::Serialize;

use std::collections::BTreeMap;

use crate::auth::Keys;
use crate::bus::{BusConfig, EventBus, MemoryBus};
use crate::datastore::{Datastore, DatastoreConfig};
use crate::hostapi::BuiltinApi;
use crate::pipeline::{Pipeline, PipelineConfig};
use crate::plugin::{EngineConfig, LoadError, PluginEngine};
use crate::registry::{RegistrationError, Registry, Runner};

/// Everything needed to build a [`Host`].
#[derive(Debug, Clone, Default)]
pub struct HostConfig {
    /// Directory whose `*.wasm` files are loaded at start.
    pub plugin_dir: Option<PathBuf>,
    /// Engine settings and default limits.
    pub engine: EngineConfig,
    /// API keys.
    pub keys: Keys,
    /// Datastores; when empty, one called `default` with default settings.
    pub datastores: Vec<DatastoreConfig>,
    /// Dedup and history of the event bus.
    pub bus: BusConfig,
    /// Quarantine, dead letters, batching.
    pub pipeline: PipelineConfig,
}

/// Why one plugin file was not registered.
#[derive(Debug, thiserror::Error)]
pub enum PluginLoadError {
    /// It could not be compiled, linked or described.
    #[error(transparent)]
    Load(#[from] LoadError),
    /// Its definitions break registration rules; none of its keys is registered.
    #[error("{} registration rule(s) broken: {}", .0.len(), .0.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("; "))]
    Rejected(Vec<RegistrationError>),
}

/// A plugin file that failed to load, for `/v1/plugins` and the log.
#[derive(Debug, Clone, Serialize)]
pub struct FailedPlugin {
    /// The file.
    pub file: String,
    /// Every reason.
    pub errors: Vec<String>,
}

/// The host core.
pub struct Host {
    registry: Arc<RwLock<Registry>>,
    engine: PluginEngine,
    api: Arc<BuiltinApi>,
    keys: Keys,
    failed: Mutex<Vec<FailedPlugin>>,
    datastores: BTreeMap<String, Arc<Datastore>>,
    pipeline: Arc<Pipeline>,
}

impl Host {
    /// Builds the engine and loads the plugin directory, if any. A plugin
    /// that fails is reported (log, [`Host::failed_plugins`]) and skipped;
    /// it does not stop the host.
    pub fn new(config: HostConfig) -> anyhow::Result<Self> {
        let registry = Arc::new(RwLock::new(Registry::new()));
        let api = Arc::new(BuiltinApi::new(registry.clone()));
        let engine = PluginEngine::new(config.engine, api.clone())?;
        let bus: Arc<dyn EventBus> = Arc::new(MemoryBus::new(config.bus));
        let pipeline = Pipeline::new(bus, registry.clone(), config.pipeline);
        let mut configs = config.datastores;
        if configs.is_empty() {
            configs.push(DatastoreConfig::named("default"));
        }
        let mut datastores = BTreeMap::new();
        for c in configs {
            let name = c.name.clone();
            let ds = Datastore::start(c)?;
            let p = pipeline.clone();
            ds.on_changes(Arc::new(move |changes| p.publish_changes(changes)));
            if datastores.insert(name.clone(), ds).is_some() {
                anyhow::bail!("datastore `{name}` is declared twice");
            }
        }
        let host = Self {
            registry,
            engine,
            api,
            keys: config.keys,
            failed: Mutex::default(),
            datastores,
            pipeline,
        };
        if let Some(dir) = &config.plugin_dir {
            host.load_dir(dir)?;
        }
        Ok(host)
    }

    /// Loads every `*.wasm` in `dir`, in name order. Errors only when the
    /// directory cannot be read.
    pub fn load_dir(&self, dir: &Path) -> anyhow::Result<()> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(|e| anyhow::anyhow!("cannot read plugin directory {}: {e}", dir.display()))?
            .filter_map(|entry| entry.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "wasm") && p.is_file())
            .collect();
        files.sort();
        for file in files {
            match self.load_file(&file) {
                Ok(keys) => tracing::info!(file = %file.display(), ?keys, "plugin loaded"),
                Err(e) => {
                    tracing::error!(file = %file.display(), "plugin not loaded: {e}");
                    let errors = match &e {
                        PluginLoadError::Rejected(errs) => {
                            errs.iter().map(|e| e.to_string()).collect()
                        }
                        other => vec![other.to_string()],
                    };
                    self.failed
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .push(FailedPlugin {
                            file: file.display().to_string(),
                            errors,
                        });
                }
            }
        }
        Ok(())
    }

    /// Loads one plugin file and registers all its keys, or none.
    pub fn load_file(&self, path: &Path) -> Result<Vec<String>, PluginLoadError> {
        let plugin = Arc::new(self.engine.load_file(path)?);
        self.register(plugin)
    }

    /// Registers a loaded plugin: all its keys, or none.
    pub fn register(&self, plugin: Arc<dyn Runner>) -> Result<Vec<String>, PluginLoadError> {
        let keys = plugin.definitions().iter().map(|d| d.key.clone()).collect();
        self.registry
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .register(plugin)
            .map_err(PluginLoadError::Rejected)?;
        Ok(keys)
    }

    /// A snapshot of the registry (cheap: definitions and plugins are shared).
    pub fn registry(&self) -> Registry {
        self.registry
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The plugin engine.
    pub fn engine(&self) -> &PluginEngine {
        &self.engine
    }

    /// The host API plugins call.
    pub fn host_api(&self) -> &BuiltinApi {
        &self.api
    }

    /// The datastore called `name`.
    pub fn datastore(&self, name: &str) -> Option<&Arc<Datastore>> {
        self.datastores.get(name)
    }

    /// Every datastore, by name.
    pub fn datastores(&self) -> impl Iterator<Item = &Arc<Datastore>> {
        self.datastores.values()
    }

    /// The event pipeline (and through it, the bus).
    pub fn pipeline(&self) -> &Arc<Pipeline> {
        &self.pipeline
    }

    /// Winds down: applies what the ingestion queues hold (so its changes
    /// still reach consumers), then ends every subscription with a reason
    /// and runs the cleanups. Each step waits at most `limit`; returns
    /// `false` if one of them did not finish in time.
    pub async fn shutdown(self: &Arc<Self>, limit: std::time::Duration) -> bool {
        let this = self.clone();
        let drained =
            tokio::task::spawn_blocking(move || this.datastores().all(|ds| ds.drain(limit)))
                .await
                .unwrap_or(false);
        if !drained {
            tracing::warn!("some ingestion queues were not drained in time");
        }
        let ended = self.pipeline.shutdown(limit).await;
        if !ended {
            tracing::warn!("some subscription cleanups did not finish in time");
        }
        drained && ended
    }

    /// The API keys.
    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    /// Plugin files that failed to load.
    pub fn failed_plugins(&self) -> Vec<FailedPlugin> {
        self.failed
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Every loaded plugin with its keys, for `/v1/plugins`.
    pub fn plugins(&self) -> Vec<PluginInfo> {
        use std::sync::atomic::Ordering::Relaxed;
        let registry = self.registry();
        let mut plugins = BTreeMap::new();
        for k in registry.list() {
            let Some(p) = k.plugin.wasm() else { continue };
            plugins.entry(p.name().to_string()).or_insert_with(|| {
                let counters = p.counters();
                PluginInfo {
                    name: p.name().to_string(),
                    file: p.path().map(|f| f.display().to_string()),
                    hash: p.hash().to_string(),
                    keys: p.definitions().iter().map(|d| d.key.clone()).collect(),
                    loaded_at_ms: p
                        .loaded_at()
                        .duration_since(SystemTime::UNIX_EPOCH)
                        .map(|d| d.as_millis() as u64)
                        .unwrap_or(0),
                    calls: counters.calls.load(Relaxed),
                    faults: counters.faults.load(Relaxed),
                    instances_created: counters.instances.load(Relaxed),
                }
            });
        }
        plugins.into_values().collect()
    }
}

/// One loaded plugin, as `/v1/plugins` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct PluginInfo {
    /// Name (file stem).
    pub name: String,
    /// File path.
    pub file: Option<String>,
    /// SHA-256 of the component.
    pub hash: String,
    /// Its keys.
    pub keys: Vec<String>,
    /// Load time, ms since the Unix epoch.
    pub loaded_at_ms: u64,
    /// Calls made.
    pub calls: u64,
    /// Calls that faulted.
    pub faults: u64,
    /// Instances created.
    pub instances_created: u64,
}
