//! The plugin engine: compiles WebAssembly components once, instantiates them
//! in sandboxed stores and calls their exports with deadlines and memory caps.
//!
//! - [`PluginEngine`] owns the wasmtime `Engine` (pooling allocator, epoch
//!   interruption driven by a ticker thread), the `Linker` with WASI and the
//!   `weir:plugin/host` imports, and an optional on-disk compiled cache.
//! - [`LoadedPlugin`] is one component file: its `InstancePre`, the key
//!   definitions `describe` returned, and a pool of idle instances. Every call
//!   checks out an instance, resets its epoch deadline, runs, and returns the
//!   instance to the pool, unless the call faulted: then that instance alone
//!   is dropped and the next call gets a fresh one.
//!
//! Calls are synchronous and CPU-bound: async callers run them on blocking
//! threads.

mod bindings;
mod calls;
pub mod logbudget;
pub use weir_core::manifest;
mod state;
pub mod upstream;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use sha2::{Digest, Sha256};
use wasmtime::component::{Component, HasSelf, Linker};
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Store, Trap};

use bindings::EventRef;

use weir_core::event::Event;
pub use weir_core::key::{FaultKind, Outcome, Params, PluginFault};
use weir_core::key::{
    Function, KeyDefinition, OutputSchema, ParamDef, ParamType, ParamValue, Runner,
};
pub use weir_core::settings::Limits;

pub use calls::{CallApi, CallError, Caller};
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
        plugin.defs = defs.into_iter().map(definition_from_wit).collect();
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

/// Call counters of one plugin.
#[derive(Debug, Default)]
pub struct Counters {
    /// Calls made.
    pub calls: AtomicU64,
    /// Calls that faulted.
    pub faults: AtomicU64,
    /// Instances created (the first plus one per recycle).
    pub instances: AtomicU64,
    /// Linear memory of its instances.
    pub memory: Arc<MemoryGauge>,
}

/// Linear memory of a plugin's instances, kept by their memory limiters.
#[derive(Debug, Default)]
pub struct MemoryGauge {
    /// Bytes held by the instances alive now (pooled or running).
    pub current: AtomicU64,
    /// The most any one instance has held.
    pub peak: AtomicU64,
}

/// One idle instance with its store.
struct Slot {
    store: Store<StoreState>,
    world: bindings::Plugin,
}

/// A compiled, described plugin component.
pub struct LoadedPlugin {
    name: String,
    path: Option<PathBuf>,
    hash: String,
    /// The component hash, plus the manifest's when there is one: what
    /// tells a reload whether anything changed.
    version: String,
    defs: Vec<KeyDefinition>,
    pre: bindings::PluginPre<StoreState>,
    engine: Engine,
    limits: Limits,
    api: Arc<dyn CallApi>,
    upstream: Arc<UpstreamClient>,
    /// What its manifest grants.
    grants: Arc<Grants>,
    idle: Mutex<Vec<Slot>>,
    max_idle: usize,
    loaded_at: SystemTime,
    counters: Counters,
}

impl std::fmt::Debug for LoadedPlugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedPlugin")
            .field("name", &self.name)
            .field("hash", &self.hash)
            .field(
                "keys",
                &self.defs.iter().map(|d| &d.key).collect::<Vec<_>>(),
            )
            .finish()
    }
}

/// Result of a guest call before the host's checks: a wasmtime error is
/// classified by [`LoadedPlugin::call`], a fault is passed through.
type Checked<T> = Result<T, PluginFault>;

impl LoadedPlugin {
    /// Name (the file stem).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The file it was loaded from, if any.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// The file name (`fs_large_files.wasm`) for messages; the plugin name
    /// when it was not loaded from a file.
    pub fn file_label(&self) -> String {
        self.path
            .as_deref()
            .and_then(Path::file_name)
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_else(|| self.name.clone())
    }

    /// SHA-256 of the component bytes, hex.
    pub fn hash(&self) -> &str {
        &self.hash
    }

    /// The component hash, with `+` and the manifest's short hash when a
    /// manifest set its limits.
    pub fn version(&self) -> &str {
        &self.version
    }

    /// When it was loaded.
    pub fn loaded_at(&self) -> SystemTime {
        self.loaded_at
    }

    /// Its limits.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Call counters.
    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// Every key definition `describe` returned, unchecked.
    pub fn definitions(&self) -> &[KeyDefinition] {
        &self.defs
    }

    /// The definition of `key`.
    pub fn definition(&self, key: &str) -> Option<&KeyDefinition> {
        self.defs.iter().find(|d| d.key == key)
    }

    fn require(&self, key: &str, f: Function) -> Result<(), PluginFault> {
        match self.definition(key) {
            Some(def) if def.implements(f) => Ok(()),
            _ => Err(PluginFault::NotImplemented {
                key: key.to_string(),
                function: f.as_str(),
            }),
        }
    }

    fn instantiate(&self, deadline: Duration) -> Result<Slot, PluginFault> {
        let state = StoreState::new(
            self.name.as_str().into(),
            self.limits.memory_bytes,
            self.counters.memory.clone(),
            self.api.clone(),
            self.upstream.clone(),
            self.grants.clone(),
        )
        .map_err(PluginFault::Instantiate)?;
        let mut store = Store::new(&self.engine, state);
        store.limiter(|s| &mut s.limiter);
        store.set_epoch_deadline(ticks(deadline));
        store.epoch_deadline_trap();
        self.counters.instances.fetch_add(1, Ordering::Relaxed);
        match self.pre.instantiate(&mut store) {
            Ok(world) => Ok(Slot { store, world }),
            Err(e) => {
                let flags = store.data_mut().end();
                Err(
                    match classify(e, &flags, deadline, &self.limits, String::new()) {
                        PluginFault::Trap(m) | PluginFault::Malformed(m) => {
                            PluginFault::Instantiate(m)
                        }
                        other => other,
                    },
                )
            }
        }
    }

    /// Runs `f` on an idle (or fresh) instance with a fresh deadline. A fault
    /// drops the instance; success returns it to the pool.
    fn call<T>(
        &self,
        key: &str,
        running: Running,
        deadline: Duration,
        f: impl FnOnce(&bindings::Plugin, &mut Store<StoreState>) -> wasmtime::Result<T>,
    ) -> Checked<T> {
        self.call_checked(key, running, deadline, |w, s| f(w, s).map(Ok))
    }

    /// Like [`Self::call`], but `f` may itself reject the guest's result
    /// (malformed, too large), which also recycles the instance.
    fn call_checked<T>(
        &self,
        key: &str,
        running: Running,
        deadline: Duration,
        f: impl FnOnce(&bindings::Plugin, &mut Store<StoreState>) -> wasmtime::Result<Checked<T>>,
    ) -> Checked<T> {
        self.counters.calls.fetch_add(1, Ordering::Relaxed);
        let pooled = self
            .idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop();
        let mut slot = match pooled {
            Some(slot) => slot,
            None => self.instantiate(deadline).inspect_err(|_| {
                self.counters.faults.fetch_add(1, Ordering::Relaxed);
            })?,
        };
        slot.store.data_mut().begin(running, key, deadline);
        slot.store.set_epoch_deadline(ticks(deadline));
        let result = f(&slot.world, &mut slot.store);
        let flags = slot.store.data_mut().end();
        let outcome = match result {
            Ok(Ok(_)) if flags.api_in_matches => Err(PluginFault::ApiInMatches),
            Ok(checked) => checked,
            Err(e) => {
                let stderr = slot.store.data().call_stderr();
                Err(classify(e, &flags, deadline, &self.limits, stderr))
            }
        };
        match &outcome {
            Err(fault) if fault.recycles_instance() => {
                self.counters.faults.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(plugin = %self.name, key, kind = %fault.kind(), "plugin fault, instance recycled: {fault}");
                // `slot` is dropped here: the instance is gone, others are untouched.
            }
            _ => {
                let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
                if idle.len() < self.max_idle {
                    idle.push(slot);
                }
            }
        }
        outcome
    }
}

/// The pipeline runs wasm keys through [`Runner`]: these are the calls.
/// A batch's answers; or, when the batch as a whole faulted, each event's
/// own answer from a call of its own (each on a fresh instance after a
/// trap), so that only the events that fault get a fault.
fn one_by_one_on_fault<T>(
    batch: Result<Vec<Result<T, PluginFault>>, PluginFault>,
    events: &[&Event],
    one: impl Fn(&Event) -> Result<T, PluginFault>,
) -> Vec<Result<T, PluginFault>> {
    match batch {
        Ok(results) => results,
        Err(_) if events.len() > 1 => events.iter().map(|e| one(e)).collect(),
        Err(fault) => vec![Err(fault)],
    }
}

/// The WebAssembly plugin behind `runner`, if it is one.
pub fn as_plugin(runner: &dyn Runner) -> Option<&LoadedPlugin> {
    runner.as_any().downcast_ref()
}

impl Runner for LoadedPlugin {
    fn name(&self) -> &str {
        LoadedPlugin::name(self)
    }

    fn file_label(&self) -> String {
        LoadedPlugin::file_label(self)
    }

    fn definitions(&self) -> &[KeyDefinition] {
        LoadedPlugin::definitions(self)
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }

    /// Runs `normalize-params` (if the key implements it) and returns the
    /// normalized parameters; otherwise returns `params` unchanged.
    fn normalize_params(&self, key: &str, params: &Params) -> Result<Params, PluginFault> {
        if self.require(key, Function::NormalizeParams).is_err() {
            return Ok(params.clone());
        }
        self.call(
            key,
            Running::NormalizeParams,
            self.limits.call_deadline,
            |w, s| {
                w.weir_plugin_event_key()
                    .call_normalize_params(s, key, params)
            },
        )?
        .map_err(PluginFault::Failed)
    }

    /// Runs `matches` on one event; `true` for keys that do not implement it.
    fn matches(&self, key: &str, params: &Params, event: &Event) -> Result<bool, PluginFault> {
        if self.require(key, Function::Matches).is_err() {
            return Ok(true);
        }
        self.call(
            key,
            Running::Matches,
            self.limits.matches_deadline,
            |w, s| bindings::matches(w, s, key, params, event.into()),
        )
    }

    /// Runs `matches-batch`: one answer per event. When the batch as a whole
    /// faults, the events are retried one by one on fresh instances so that
    /// only the events that fault get a fault.
    fn matches_batch(
        &self,
        key: &str,
        params: &Params,
        events: &[&Event],
    ) -> Vec<Result<bool, PluginFault>> {
        if self.require(key, Function::Matches).is_err() {
            return vec![Ok(true); events.len()];
        }
        let refs: Vec<EventRef<'_>> = events.iter().map(|e| EventRef::from(*e)).collect();
        let batch = self.call_checked(
            key,
            Running::Matches,
            self.limits.matches_deadline,
            |w, s| {
                let answers = bindings::matches_batch(w, s, key, params, &refs)?;
                Ok(check_len(answers, events.len()))
            },
        );
        one_by_one_on_fault(
            batch.map(|answers| answers.into_iter().map(Ok).collect()),
            events,
            |e| self.matches(key, params, e),
        )
    }

    /// Runs `process` on one event. A key with a native schema (no
    /// `process`) emits the payload unchanged.
    fn process(&self, key: &str, params: &Params, event: &Event) -> Result<Outcome, PluginFault> {
        if self.require(key, Function::Process).is_err() {
            return Ok(Outcome::Emit(event.new.payload.clone()));
        }
        let limit = self.limits.max_output_bytes;
        self.call_checked(key, Running::Process, self.limits.call_deadline, |w, s| {
            let result = bindings::process(w, s, key, params, event.into())?;
            Ok(check_outcome(result, limit))
        })
    }

    /// Runs `process-batch`: one answer per event, with the same per-event
    /// retry as [`Self::matches_batch`] when the whole batch faults.
    fn process_batch(
        &self,
        key: &str,
        params: &Params,
        events: &[&Event],
    ) -> Vec<Result<Outcome, PluginFault>> {
        if self.require(key, Function::Process).is_err() {
            return events
                .iter()
                .map(|e| Ok(Outcome::Emit(e.new.payload.clone())))
                .collect();
        }
        let limit = self.limits.max_output_bytes;
        let refs: Vec<EventRef<'_>> = events.iter().map(|e| EventRef::from(*e)).collect();
        let batch = self.call_checked(key, Running::Process, self.limits.call_deadline, |w, s| {
            let results = bindings::process_batch(w, s, key, params, &refs)?;
            // A single oversized or malformed output fails the batch, and the
            // per-event retry pins the fault on that event alone.
            Ok(check_len(results, events.len()).and_then(|results| {
                results
                    .into_iter()
                    .map(|r| match check_outcome(r, limit) {
                        Err(f @ PluginFault::Failed(_)) => Ok(Err(f)),
                        Err(f) => Err(f),
                        Ok(o) => Ok(Ok(o)),
                    })
                    .collect::<Result<Vec<_>, _>>()
            }))
        });
        one_by_one_on_fault(batch, events, |e| self.process(key, params, e))
    }

    /// Runs `pre-consume` if the key implements it.
    fn pre_consume(
        &self,
        key: &str,
        subscription_id: &str,
        params: &Params,
    ) -> Result<(), PluginFault> {
        if self.require(key, Function::PreConsume).is_err() {
            return Ok(());
        }
        self.call(
            key,
            Running::PreConsume,
            self.limits.call_deadline,
            |w, s| {
                w.weir_plugin_event_key()
                    .call_pre_consume(s, key, subscription_id, params)
            },
        )?
        .map_err(PluginFault::Failed)
    }

    /// Runs `cleanup` if the key implements it.
    fn cleanup(
        &self,
        key: &str,
        subscription_id: &str,
        params: &Params,
    ) -> Result<(), PluginFault> {
        if self.require(key, Function::Cleanup).is_err() {
            return Ok(());
        }
        self.call(key, Running::Cleanup, self.limits.call_deadline, |w, s| {
            w.weir_plugin_event_key()
                .call_cleanup(s, key, subscription_id, params)
        })?
        .map_err(PluginFault::Failed)
    }
}

fn ticks(deadline: Duration) -> u64 {
    let tick = EPOCH_TICK.as_nanos().max(1);
    // Round up, plus one: the first tick may come at once.
    (deadline.as_nanos().div_ceil(tick) as u64).saturating_add(1)
}

fn check_len<T>(answers: Vec<T>, expected: usize) -> Checked<Vec<T>> {
    if answers.len() == expected {
        Ok(answers)
    } else {
        Err(PluginFault::Malformed(format!(
            "batch of {expected} events answered with {} results",
            answers.len()
        )))
    }
}

fn check_outcome(
    result: Result<bindings::types::Outcome, String>,
    limit: usize,
) -> Checked<Outcome> {
    match result {
        Ok(bindings::types::Outcome::Emit(json)) => {
            if json.len() > limit {
                return Err(PluginFault::OutputTooLarge {
                    size: json.len(),
                    limit,
                });
            }
            serde_json::from_str::<serde::de::IgnoredAny>(&json)
                .map_err(|e| PluginFault::Malformed(format!("emitted output is not JSON: {e}")))?;
            Ok(Outcome::Emit(json))
        }
        Ok(bindings::types::Outcome::Drop) => Ok(Outcome::Drop),
        Err(message) => Err(PluginFault::Failed(message)),
    }
}

fn classify(
    e: wasmtime::Error,
    flags: &state::CallFlags,
    deadline: Duration,
    limits: &Limits,
    stderr: String,
) -> PluginFault {
    if flags.memory_exhausted {
        return PluginFault::MemoryExhausted {
            limit: limits.memory_bytes,
        };
    }
    if flags.api_in_matches {
        return PluginFault::ApiInMatches;
    }
    match e.downcast_ref::<Trap>() {
        Some(Trap::Interrupt) => PluginFault::Deadline(deadline),
        Some(trap) if stderr.is_empty() => PluginFault::Trap(trap.to_string()),
        Some(trap) => PluginFault::Trap(format!("{trap} (guest stderr: {stderr})")),
        None => PluginFault::Malformed(format!("{e:#}")),
    }
}

fn definition_from_wit(d: bindings::types::KeyDefinition) -> KeyDefinition {
    use bindings::types::{Functions, OutputSchema as W, ParamType as P};
    let flags = [
        (Functions::NORMALIZE_PARAMS, Function::NormalizeParams),
        (Functions::MATCHES, Function::Matches),
        (Functions::PROCESS, Function::Process),
        (Functions::PRE_CONSUME, Function::PreConsume),
        (Functions::CLEANUP, Function::Cleanup),
    ];
    KeyDefinition {
        key: d.key,
        display_name: d.display_name,
        description: d.description,
        event_type: d.event_type,
        params: d
            .params
            .into_iter()
            .map(|p| ParamDef {
                name: p.name,
                ty: match p.type_ {
                    P::String => ParamType::String,
                    P::Enum => ParamType::Enum,
                    P::Multi => ParamType::Multi,
                    P::Bool => ParamType::Bool,
                    P::Int => ParamType::Int,
                },
                required: p.required,
                default: p.default,
                description: p.description,
                values: p
                    .values
                    .into_iter()
                    .map(|v| ParamValue {
                        value: v.value,
                        description: v.description,
                    })
                    .collect(),
                subscription_key: p.subscription_key,
            })
            .collect(),
        schema: match d.schema {
            W::Native => OutputSchema::Native,
            W::Custom(json_schema) => OutputSchema::Custom { json_schema },
        },
        scopes: d.scopes,
        auth_types: d.auth_types,
        required_console_events: d.required_console_events,
        buffer_size: d.buffer_size,
        workers: d.workers,
        implements: flags
            .into_iter()
            .filter(|(flag, _)| d.implements.contains(*flag))
            .map(|(_, f)| f)
            .collect(),
    }
}
