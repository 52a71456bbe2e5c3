//! The plugin engine: compiles WebAssembly components once, instantiates them
//! in sandboxed stores and calls their exports with deadlines and memory caps.
//!
//! - [`PluginEngine`] owns the wasmtime `Engine` (pooling allocator, epoch
//!   interruption driven by a ticker thread), the `Linker` with WASI and the
//!   `weir:plugin/host` imports, and an optional on-disk compiled cache.
//! - [`LoadedPlugin`] (`loaded.rs`) is one component file: its
//!   `InstancePre`, its key definitions and a pool of idle instances.
//! - `bindings.rs` holds the only `bindgen!` and the conversions between
//!   the host's types and the WIT records; `state.rs` the store state and
//!   the host imports; `calls.rs` what the engine needs from the host;
//!   `upstream.rs` the upstream services a manifest grants.
//!
//! Calls are synchronous and CPU-bound: async callers run them on blocking
//! threads.

mod bindings;
mod calls;
mod loaded;
pub mod logbudget;
pub use weir_core::manifest;
mod state;
pub mod upstream;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use sha2::{Digest, Sha256};
use wasmtime::component::{Component, HasSelf, Linker};
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

pub use weir_core::key::{FaultKind, Outcome, Params, PluginFault};
pub use weir_core::settings::Limits;

pub use calls::{CallApi, CallError, Caller};
pub use loaded::{Counters, LoadedPlugin, MemoryGauge, as_plugin};
use state::{Running, StoreState};
use upstream::UpstreamClient;

/// Linear memory reserved per pooled instance slot (at least): the most a
/// manifest may grant.
const POOL_SLOT_MEMORY: usize = 256 * 1024 * 1024;

/// How often the epoch advances; deadlines are rounded up to it.
const EPOCH_TICK: Duration = Duration::from_millis(1);

/// What a plugin's manifest grants: host API routes and read-only
/// directories. Nothing by default.
#[derive(Debug, Clone, Default)]
pub struct Grants {
    /// Routes `call-api` may reach.
    pub api: manifest::ApiGrants,
    /// Directories preopened read-only.
    pub dirs: Vec<manifest::Preopen>,
    /// HTTP services reachable at `/upstream/NAME/...`.
    pub upstreams: Vec<upstream::Upstream>,
}

/// Engine-wide settings.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Default limits for every plugin.
    pub limits: Limits,
    /// Use the pooling instance allocator (falls back to on-demand if the
    /// machine refuses the address-space reservation).
    pub pooling: bool,
    /// Directory for compiled components, keyed by content hash; `None`
    /// compiles on every load.
    pub cache_dir: Option<PathBuf>,
    /// Idle instances kept per plugin.
    pub max_idle_instances: usize,
    /// Where a manifest's `${VAR}` secrets come from: the host's process
    /// environment by default.
    pub env: Environment,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            limits: Limits::default(),
            pooling: true,
            cache_dir: None,
            max_idle_instances: 8,
            env: Environment::default(),
        }
    }
}

/// A lookup of environment variables. Injected rather than read from the
/// process, so that a test (or an embedding program) can hand secrets to
/// its own host without touching the process environment, which other
/// threads read.
#[derive(Clone)]
pub struct Environment(Arc<Lookup>);

/// A variable's value, if set.
type Lookup = dyn Fn(&str) -> Option<String> + Send + Sync;

impl Environment {
    /// Variables from `lookup`.
    pub fn from_fn(lookup: impl Fn(&str) -> Option<String> + Send + Sync + 'static) -> Self {
        Self(Arc::new(lookup))
    }

    /// The value of `var`, if set.
    pub fn get(&self, var: &str) -> Option<String> {
        (self.0)(var)
    }
}

impl Default for Environment {
    /// The process environment.
    fn default() -> Self {
        Self::from_fn(|var| std::env::var(var).ok())
    }
}

impl std::fmt::Debug for Environment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Environment")
    }
}

/// Why a plugin file could not be loaded (before any registration rule).
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The file could not be read.
    #[error("{file}: cannot read: {source}")]
    Read {
        /// The file.
        file: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// Not a valid component, or it does not target the `weir:plugin` world.
    #[error("{file}: not a loadable weir:plugin component: {reason}")]
    Compile {
        /// The file.
        file: String,
        /// Compiler or linker message.
        reason: String,
    },
    /// The manifest beside it is not valid.
    #[error("{file}: {reason}")]
    Manifest {
        /// The manifest file.
        file: String,
        /// What is wrong.
        reason: String,
    },
    /// `describe` faulted.
    #[error("{file}: describe failed: {fault}")]
    Describe {
        /// The file.
        file: String,
        /// The fault.
        fault: PluginFault,
    },
}

/// Compiles and runs plugin components.
pub struct PluginEngine {
    engine: Engine,
    linker: Arc<Linker<StoreState>>,
    config: EngineConfig,
    api: Arc<dyn CallApi>,
    /// Shared by every plugin's upstream calls (one connection pool).
    upstream: Arc<UpstreamClient>,
    ticker_stop: Arc<AtomicBool>,
}

impl Drop for PluginEngine {
    fn drop(&mut self) {
        self.ticker_stop.store(true, Ordering::Relaxed);
    }
}

impl PluginEngine {
    /// An engine whose plugins call `api`.
    pub fn new(config: EngineConfig, api: Arc<dyn CallApi>) -> anyhow::Result<Self> {
        let engine = build_engine(&config)?;
        let mut linker = Linker::<StoreState>::new(&engine);
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker)?;
        bindings::Plugin::add_to_linker::<StoreState, HasSelf<StoreState>>(&mut linker, |s| s)?;
        let ticker_stop = Arc::new(AtomicBool::new(false));
        spawn_ticker(engine.clone(), ticker_stop.clone())?;
        Ok(Self {
            engine,
            linker: Arc::new(linker),
            config,
            api,
            upstream: Arc::default(),
            ticker_stop,
        })
    }

    /// The engine's settings.
    pub fn config(&self) -> &EngineConfig {
        &self.config
    }

    /// Loads the component at `path`, with the limits of its manifest
    /// (`NAME.toml` beside it) if there is one.
    pub fn load_file(&self, path: &Path) -> Result<LoadedPlugin, LoadError> {
        let (bytes, manifest) = read_plugin(path)?;
        self.load_read(path, &bytes, manifest.as_deref())
    }

    /// Loads `bytes`, read from `path`, with `manifest` (the text of its
    /// `NAME.toml`, if any).
    pub fn load_read(
        &self,
        path: &Path,
        bytes: &[u8],
        manifest: Option<&str>,
    ) -> Result<LoadedPlugin, LoadError> {
        let name = plugin_name(path);
        let base = path.parent().unwrap_or(Path::new("."));
        let (limits, grants) = match manifest {
            None => (self.config.limits.clone(), Grants::default()),
            Some(text) => manifest::Manifest::parse(text)
                .and_then(|m| {
                    Ok((
                        m.limits(&self.config.limits, self.max_memory_bytes())?,
                        Grants {
                            api: m.grants()?,
                            dirs: m.dirs(base)?,
                            upstreams: m.upstreams(&|var| self.config.env.get(var))?,
                        },
                    ))
                })
                .map_err(|reason| LoadError::Manifest {
                    file: manifest::path_for(path).display().to_string(),
                    reason,
                })?,
        };
        let mut plugin = self.load_granted(&name, bytes, limits, grants)?;
        plugin.path = Some(path.to_path_buf());
        plugin.version = version_of(&plugin.hash, manifest);
        Ok(plugin)
    }

    /// The most linear memory one instance may be given.
    pub fn max_memory_bytes(&self) -> usize {
        if self.config.pooling {
            self.config.limits.memory_bytes.max(POOL_SLOT_MEMORY)
        } else {
            usize::MAX / 2
        }
    }

    /// Compiles `bytes`, instantiates it once and asks it to `describe`
    /// itself. The definitions are not checked against the rules here: that
    /// is the registry's job.
    pub fn load_bytes(
        &self,
        name: &str,
        bytes: &[u8],
        limits: Limits,
    ) -> Result<LoadedPlugin, LoadError> {
        self.load_granted(name, bytes, limits, Grants::default())
    }

    /// [`Self::load_bytes`] with a manifest's grants.
    fn load_granted(
        &self,
        name: &str,
        bytes: &[u8],
        limits: Limits,
        grants: Grants,
    ) -> Result<LoadedPlugin, LoadError> {
        let hash = hex::encode(Sha256::digest(bytes));
        let compile_err = |reason: String| LoadError::Compile {
            file: name.to_string(),
            reason,
        };
        let component = self
            .compile(bytes, &hash)
            .map_err(|e| compile_err(format!("{e:#}")))?;
        let pre = self
            .linker
            .instantiate_pre(&component)
            .map_err(|e| compile_err(format!("{e:#}")))?;
        let pre = bindings::PluginPre::new(pre).map_err(|e| compile_err(format!("{e:#}")))?;
        let mut plugin = LoadedPlugin {
            name: name.to_string(),
            path: None,
            version: hash.clone(),
            hash,
            defs: Vec::new(),
            pre,
            engine: self.engine.clone(),
            limits,
            api: self.api.clone(),
            upstream: self.upstream.clone(),
            grants: Arc::new(grants),
            idle: Mutex::new(Vec::new()),
            max_idle: self.config.max_idle_instances,
            loaded_at: SystemTime::now(),
            counters: Counters::default(),
        };
        let describe = plugin.call(
            "",
            Running::Describe,
            plugin.limits.call_deadline,
            |w, s| {
                bindings::check_borrowed_calls(w, s)?;
                w.weir_plugin_event_key().call_describe(s)
            },
        );
        let defs = describe.map_err(|fault| LoadError::Describe {
            file: name.to_string(),
            fault,
        })?;
        plugin.defs = defs
            .into_iter()
            .map(bindings::definition_from_wit)
            .collect();
        Ok(plugin)
    }

    fn compile(&self, bytes: &[u8], hash: &str) -> anyhow::Result<Component> {
        let Some(dir) = &self.config.cache_dir else {
            return Ok(Component::new(&self.engine, bytes)?);
        };
        // The compatibility hash changes with the wasmtime version and every
        // setting that affects compiled code.
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        self.engine.precompile_compatibility_hash().hash(&mut h);
        let cached = dir.join(format!("{hash}-{:016x}.cwasm", h.finish()));
        if cached.is_file() {
            // SAFETY: the file was written by `Component::serialize` of an
            // engine with the same compatibility hash, into a directory the
            // operator gives this host for that purpose alone.
            match unsafe { Component::deserialize_file(&self.engine, &cached) } {
                Ok(c) => return Ok(c),
                Err(e) => {
                    tracing::warn!(file = %cached.display(), "ignoring unusable compiled cache entry: {e:#}")
                }
            }
        }
        let component = Component::new(&self.engine, bytes)?;
        let write = std::fs::create_dir_all(dir).and_then(|_| {
            let bytes = component.serialize().map_err(std::io::Error::other)?;
            // Write then rename, so that a concurrent reader never sees half.
            let tmp = cached.with_extension(format!("tmp{}", std::process::id()));
            std::fs::write(&tmp, bytes)?;
            std::fs::rename(&tmp, &cached)
        });
        if let Err(e) = write {
            tracing::warn!(dir = %dir.display(), "cannot write the compiled cache: {e}");
        }
        Ok(component)
    }
}

fn build_engine(config: &EngineConfig) -> anyhow::Result<Engine> {
    let mut wasm = Config::new();
    wasm.epoch_interruption(true);
    wasm.wasm_component_model(true);
    // For developers profiling plugins with `perf`: names for the compiled
    // guest code in /tmp/perf-PID.map (see the README's "Benchmarks").
    if std::env::var_os("WEIR_PERF_MAP").is_some_and(|v| v == "1") {
        wasm.profiler(wasmtime::ProfilingStrategy::PerfMap);
    }
    if config.pooling {
        let mut pool = PoolingAllocationConfig::default();
        pool.total_component_instances(512);
        pool.total_core_instances(2048);
        pool.total_memories(1024);
        pool.total_tables(1024);
        pool.max_memory_size(config.limits.memory_bytes.max(POOL_SLOT_MEMORY));
        let mut pooled = wasm.clone();
        pooled.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        match Engine::new(&pooled) {
            Ok(engine) => return Ok(engine),
            Err(e) => tracing::warn!("pooling allocator unavailable, allocating on demand: {e:#}"),
        }
    }
    Ok(Engine::new(&wasm)?)
}

fn spawn_ticker(engine: Engine, stop: Arc<AtomicBool>) -> anyhow::Result<()> {
    std::thread::Builder::new()
        .name("weir-epoch".into())
        .spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                std::thread::sleep(EPOCH_TICK);
                engine.increment_epoch();
            }
        })?;
    Ok(())
}

/// Reads the component at `path` and the text of its manifest, if it has
/// one.
pub fn read_plugin(path: &Path) -> Result<(Vec<u8>, Option<String>), LoadError> {
    let bytes = std::fs::read(path).map_err(|source| LoadError::Read {
        file: path.display().to_string(),
        source,
    })?;
    let manifest_path = manifest::path_for(path);
    let manifest = match std::fs::read_to_string(&manifest_path) {
        Ok(text) => Some(text),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(source) => {
            return Err(LoadError::Read {
                file: manifest_path.display().to_string(),
                source,
            });
        }
    };
    Ok((bytes, manifest))
}

/// A plugin's identity for reloads: the component's SHA-256 (`hash`), with
/// `+` and the manifest's short hash when it has one.
pub fn version_of(hash: &str, manifest: Option<&str>) -> String {
    match manifest {
        Some(text) => format!("{hash}+{}", &hex::encode(Sha256::digest(text))[..16]),
        None => hash.to_string(),
    }
}

/// `dir/fs_large_files.wasm` -> `fs_large_files`.
pub fn plugin_name(path: &Path) -> String {
    path.file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.display().to_string())
}
