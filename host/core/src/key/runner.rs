//! What runs a registered key: a WebAssembly plugin (the engine's
//! `LoadedPlugin`) or native Rust code linked into the host (built-in keys,
//! benchmarks), which implements the batch functions and takes the defaults
//! for the rest. Events are the host's own [`Event`]s: a runner converts
//! them to whatever it speaks (the engine, to the WIT record).
//!
//! The pipeline only ever calls keys through this trait.

use std::any::Any;

use super::{KeyDefinition, PluginFault};
use crate::event::Event;

/// Parameters as name/value pairs, the shape every key function takes.
pub type Params = Vec<(String, String)>;

/// What `process` decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// JSON text to deliver.
    Emit(String),
    /// Nothing to deliver.
    Drop,
}

/// Runs the functions of the keys it defines. Calls are synchronous and may
/// be CPU-bound: async callers run them on blocking threads.
pub trait Runner: Send + Sync + Any {
    /// Name, unique among runners (a plugin's file stem).
    fn name(&self) -> &str;
    /// How errors name it (`file.wasm`, `native:name`).
    fn file_label(&self) -> String;
    /// The keys it implements.
    fn definitions(&self) -> &[KeyDefinition];
    /// `normalize-params`, or (by default) the params unchanged.
    fn normalize_params(&self, _key: &str, params: &Params) -> Result<Params, PluginFault> {
        Ok(params.clone())
    }
    /// `matches` for one event; by default a batch of one.
    fn matches(&self, key: &str, params: &Params, event: &Event) -> Result<bool, PluginFault> {
        self.matches_batch(key, params, &[event])
            .pop()
            .unwrap_or(Ok(false))
    }
    /// `matches` for a batch: one answer per event.
    fn matches_batch(
        &self,
        key: &str,
        params: &Params,
        events: &[&Event],
    ) -> Vec<Result<bool, PluginFault>>;
    /// `process` for one event; by default a batch of one.
    fn process(&self, key: &str, params: &Params, event: &Event) -> Result<Outcome, PluginFault> {
        self.process_batch(key, params, &[event])
            .pop()
            .unwrap_or(Ok(Outcome::Drop))
    }
    /// `process` for a batch: one answer per event.
    fn process_batch(
        &self,
        key: &str,
        params: &Params,
        events: &[&Event],
    ) -> Vec<Result<Outcome, PluginFault>>;
    /// `pre-consume`; by default nothing to do.
    fn pre_consume(
        &self,
        _key: &str,
        _subscription_id: &str,
        _params: &Params,
    ) -> Result<(), PluginFault> {
        Ok(())
    }
    /// `cleanup`; by default nothing to do.
    fn cleanup(
        &self,
        _key: &str,
        _subscription_id: &str,
        _params: &Params,
    ) -> Result<(), PluginFault> {
        Ok(())
    }
    /// The runner itself, so that the host, which built it, can reach its
    /// concrete type (a plugin's file, version and counters) without this
    /// trait knowing the engine. Implementations answer `self`.
    fn as_any(&self) -> &dyn Any;
}
