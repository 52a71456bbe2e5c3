//! One loaded plugin: its `InstancePre`, the key definitions `describe`
//! returned, and a pool of idle instances. Every call checks out an
//! instance, resets its epoch deadline, runs, and returns the instance to
//! the pool, unless the call faulted: then that instance alone is dropped
//! and the next call gets a fresh one. Faults are classified here, and the
//! [`Runner`] calls the pipeline makes are implemented here.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use wasmtime::{Engine, Store, Trap};
use weir_core::event::Event;
use weir_core::key::{Function, KeyDefinition, Outcome, Params, PluginFault, Runner};
use weir_core::settings::Limits;

use super::bindings::{self, EventRef};
use super::state::{Running, StoreState};
use super::upstream::UpstreamClient;
use super::{CallApi, EPOCH_TICK, Grants};

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
pub(super) struct Slot {
    store: Store<StoreState>,
    world: bindings::Plugin,
}

/// A compiled, described plugin component.
pub struct LoadedPlugin {
    pub(super) name: String,
    pub(super) path: Option<PathBuf>,
    pub(super) hash: String,
    /// The component hash, plus the manifest's when there is one: what
    /// tells a reload whether anything changed.
    pub(super) version: String,
    pub(super) defs: Vec<KeyDefinition>,
    pub(super) pre: bindings::PluginPre<StoreState>,
    pub(super) engine: Engine,
    pub(super) limits: Limits,
    pub(super) api: Arc<dyn CallApi>,
    pub(super) upstream: Arc<UpstreamClient>,
    /// What its manifest grants.
    pub(super) grants: Arc<Grants>,
    pub(super) idle: Mutex<Vec<Slot>>,
    pub(super) max_idle: usize,
    pub(super) loaded_at: SystemTime,
    pub(super) counters: Counters,
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
    pub(super) fn call<T>(
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
    flags: &super::state::CallFlags,
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
