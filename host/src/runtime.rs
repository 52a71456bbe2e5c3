//! The assembled core: registry, plugin engine, host API, keys, datastores,
//! bus and pipeline. Knows nothing of HTTP; `http` and `cli` drive it.

use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock};

use std::collections::BTreeMap;

use crate::auth::Keys;
use crate::bus::{BusConfig, EventBus, MemoryBus};
use crate::datastore::{Datastore, DatastoreConfig};
use crate::engine::{EngineConfig, PluginEngine};
use crate::pipeline::{Pipeline, PipelineConfig};
use crate::plugin_api::PluginApi;
use crate::plugindir::PluginDir;
use crate::registry::{Registry, Runner};
use crate::store::{DataDir, Records, RedbStore};
use crate::wire::{PluginInfo, PluginLimits};

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
    /// The data directory: the event log, dead letters, plugin state,
    /// quarantines and named consumers live there and survive restarts.
    /// `None`: memory only (`--ephemeral`). Not used in a cluster, where
    /// JetStream holds all of it.
    pub data_dir: Option<PathBuf>,
    /// A NATS JetStream cluster: the event bus is shared by every host on
    /// it (`None`: one host).
    pub cluster: Option<crate::cluster::ClusterConfig>,
}

pub use crate::plugindir::{Change as PluginChange, FailedPlugin, PluginLoadError};

/// The host core.
pub struct Host {
    registry: Arc<RwLock<Registry>>,
    engine: PluginEngine,
    api: Arc<PluginApi>,
    keys: Keys,
    plugin_dir: Option<PluginDir>,
    datastores: BTreeMap<String, Arc<Datastore>>,
    pipeline: Arc<Pipeline>,
    store: Option<Arc<RedbStore>>,
    /// The cluster this host is part of, and its announcement there.
    cluster: Option<(Arc<crate::cluster::Cluster>, Arc<crate::cluster::Presence>)>,
}

impl Host {
    /// Builds the engine and loads the plugin directory, if any. A plugin
    /// that fails is reported (log, [`Host::failed_plugins`]) and skipped;
    /// it does not stop the host.
    pub fn new(config: HostConfig) -> anyhow::Result<Self> {
        let registry = Arc::new(RwLock::new(Registry::new()));
        // In a cluster everything durable lives in JetStream: no local store.
        let store = match (&config.data_dir, &config.cluster) {
            (Some(dir), None) => Some(RedbStore::open(DataDir::open(dir)?, config.bus.log)?),
            _ => None,
        };
        let cluster = match &config.cluster {
            Some(c) => Some(crate::cluster::Cluster::connect(c.clone())?),
            None => None,
        };
        let bus: Arc<dyn EventBus> = match (&cluster, &store) {
            (Some(cluster), _) => Arc::new(crate::cluster::JetStreamBus::open(cluster.clone())?),
            (None, Some(s)) => {
                Arc::new(MemoryBus::durable(config.bus, s.clone()).map_err(|e| anyhow::anyhow!(e))?)
            }
            (None, None) => Arc::new(MemoryBus::new(config.bus)),
        };
        let records = store.clone().map(|s| s as Arc<dyn Records>);
        // What the hosts of a cluster share: plugin state and quarantines.
        let shared: Option<Arc<dyn Records>> = match &cluster {
            Some(cluster) => Some(Arc::new(crate::cluster::KvRecords::open(cluster.clone())?)),
            None => None,
        };
        let pipeline = Pipeline::new(
            bus,
            registry.clone(),
            config.pipeline,
            records.clone(),
            shared.clone(),
        )?;
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
        // In a cluster every host serves every datastore from its own
        // replica of the shared ingest log, and subscriptions start and end
        // once across the hosts.
        if let Some(cluster) = &cluster {
            let leases = crate::cluster::KvLeases::open(cluster.clone(), cluster.host_id())?;
            pipeline.share_subscriptions(Arc::new(crate::cluster::SharedLeases(leases)));
            let shared = crate::cluster::SharedDatastores::open(cluster.clone())?;
            for ds in datastores.values() {
                ds.replicate(shared.clone());
                shared.follow(ds.clone());
            }
        }
        let mut api = PluginApi::new(registry.clone(), datastores.clone());
        // Plugin state is shared by the hosts of a cluster (a PreConsume on
        // one host writes what Process on another reads).
        if let Some(records) = shared.or(records) {
            api = api.with_records(records)?;
        }
        let api = Arc::new(api);
        let engine = PluginEngine::new(config.engine, api.clone())?;
        let mut host = Self {
            registry,
            engine,
            api,
            keys: config.keys,
            plugin_dir: config.plugin_dir.as_deref().map(PluginDir::new),
            datastores,
            pipeline,
            store,
            cluster: None,
        };
        if let Some(dir) = &host.plugin_dir {
            dir.load_all(&host.engine, &host.registry)?;
        }
        if let Some(cluster) = cluster {
            let registry = Arc::downgrade(&host.registry);
            let versions: crate::cluster::PluginVersions = Arc::new(move || {
                registry
                    .upgrade()
                    .map(|r| plugin_versions(&r.read().unwrap_or_else(PoisonError::into_inner)))
                    .unwrap_or_default()
            });
            let presence = crate::cluster::Presence::open(cluster.clone(), versions)?;
            host.cluster = Some((cluster, presence));
        }
        Ok(host)
    }

    /// Scans the plugin directory once (see [`crate::plugindir`]) and
    /// brings the pipeline along: consumers of replaced keys continue on the
    /// new version (or are ended when it refuses their params), consumers of
    /// removed keys are ended and their cleanups run. Returns what changed.
    pub async fn reload_plugins(self: &Arc<Self>) -> Vec<PluginChange> {
        if self.plugin_dir.is_none() {
            return Vec::new();
        }
        let this = self.clone();
        let changes = tokio::task::spawn_blocking(move || match &this.plugin_dir {
            Some(dir) => dir.scan(&this.engine, &this.registry),
            None => Vec::new(),
        })
        .await
        .unwrap_or_default();
        for change in &changes {
            match change {
                PluginChange::Replaced { file, keys } => {
                    let registry = self.registry();
                    for key in &keys.replaced {
                        if let Some(entry) = registry.lookup(key) {
                            self.pipeline.key_replaced(entry).await;
                        }
                    }
                    for key in &keys.removed {
                        self.pipeline.key_removed(
                            key,
                            &format!(
                                "key `{key}` was removed: the new version of {} no longer defines it",
                                file.display()
                            ),
                        );
                    }
                }
                PluginChange::Removed { file, keys } => {
                    for key in keys {
                        self.pipeline.key_removed(
                            key,
                            &format!(
                                "key `{key}` was removed: its plugin file {} was deleted",
                                file.display()
                            ),
                        );
                    }
                }
                PluginChange::Loaded { .. } | PluginChange::Failed(_) => {}
            }
        }
        changes
    }

    /// Scans the plugin directory every `every` until the host is dropped.
    pub fn watch_plugins(
        self: &Arc<Self>,
        every: std::time::Duration,
    ) -> tokio::task::JoinHandle<()> {
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(host) = weak.upgrade() else { return };
                // One scan's panic is contained: the watcher goes on with
                // the next scan rather than silently stopping hot reload.
                let scan = std::panic::AssertUnwindSafe(host.reload_plugins());
                if let Err(panic) = futures_util::FutureExt::catch_unwind(scan).await {
                    crate::supervise::panicked(
                        crate::supervise::Worker::PluginWatcher,
                        "a plugin-directory scan",
                        &*panic,
                    );
                }
            }
        })
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
    pub fn host_api(&self) -> &PluginApi {
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
        if let Some(store) = &self.store {
            store.close();
        }
        drained && ended
    }

    /// The durable store, unless the host is ephemeral.
    pub fn store(&self) -> Option<&Arc<RedbStore>> {
        self.store.as_ref()
    }

    /// The API keys.
    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    /// Plugin files that failed to load (a failed replacement leaves the
    /// previous version running: see `running_hash`).
    pub fn failed_plugins(&self) -> Vec<FailedPlugin> {
        self.plugin_dir
            .as_ref()
            .map(PluginDir::failed)
            .unwrap_or_default()
    }

    /// The cluster as this host sees it: every live host with its plugin
    /// versions, and the skew between them (`None`: not in a cluster).
    /// Blocks on NATS (bounded).
    pub fn cluster_plugins(&self) -> Option<crate::wire::ClusterPlugins> {
        let (cluster, presence) = self.cluster.as_ref()?;
        let (hosts, error) = match presence.hosts() {
            Ok(hosts) => (hosts, None),
            Err(e) => (Vec::new(), Some(e.to_string())),
        };
        Some(crate::wire::ClusterPlugins {
            name: cluster.config().name.clone(),
            host_id: cluster.host_id().to_string(),
            skew: crate::wire::plugin_skew(&hosts),
            hosts,
            error,
        })
    }

    /// The cluster's name, this host's id in it and whether NATS is within
    /// reach now (`None`: not in a cluster).
    pub fn cluster_state(&self) -> Option<(String, String, bool)> {
        let (cluster, _) = self.cluster.as_ref()?;
        Some((
            cluster.config().name.clone(),
            cluster.host_id().to_string(),
            cluster.connected(),
        ))
    }

    /// Every loaded plugin with its keys, for `/v1/plugins`.
    pub fn plugins(&self) -> Vec<PluginInfo> {
        use std::sync::atomic::Ordering::Relaxed;
        let registry = self.registry();
        let mut plugins = BTreeMap::new();
        for k in registry.list() {
            let Some(p) = crate::engine::as_plugin(&*k.plugin) else {
                continue;
            };
            plugins.entry(p.name().to_string()).or_insert_with(|| {
                let counters = p.counters();
                PluginInfo {
                    name: p.name().to_string(),
                    file: p.path().map(|f| f.display().to_string()),
                    hash: p.hash().to_string(),
                    version: p.version().to_string(),
                    limits: PluginLimits::of(p.limits()),
                    keys: p.definitions().iter().map(|d| d.key.clone()).collect(),
                    loaded_at_ms: crate::time::ms_since_epoch(p.loaded_at()),
                    calls: counters.calls.load(Relaxed),
                    faults: counters.faults.load(Relaxed),
                    instances_created: counters.instances.load(Relaxed),
                    memory_bytes: counters.memory.current.load(Relaxed),
                    memory_peak_bytes: counters.memory.peak.load(Relaxed),
                    state: "loaded",
                    quarantined_keys: p
                        .definitions()
                        .iter()
                        .filter(|d| self.pipeline.quarantine(&d.key).is_some())
                        .map(|d| d.key.clone())
                        .collect(),
                }
            });
        }
        plugins.into_values().collect()
    }
}

impl PluginLimits {
    fn of(l: &crate::engine::Limits) -> Self {
        Self {
            memory_mib: l.memory_bytes / (1024 * 1024),
            matches_deadline_ms: l.matches_deadline.as_millis() as u64,
            call_deadline_ms: l.call_deadline.as_millis() as u64,
            max_output_kib: l.max_output_bytes / 1024,
        }
    }
}

/// Plugin name -> version of every plugin `registry` runs.
fn plugin_versions(registry: &Registry) -> BTreeMap<String, String> {
    registry
        .list()
        .filter_map(|k| crate::engine::as_plugin(&*k.plugin))
        .map(|p| (p.name().to_string(), p.version().to_string()))
        .collect()
}
