//! What runs a registered key: a WebAssembly plugin ([`LoadedPlugin`], whose
//! implementation lives with the engine in `plugin/`) or native Rust code
//! linked into the host (built-in keys, benchmarks), which implements the
//! batch functions and takes the defaults for the rest.
//!
//! The pipeline only ever calls keys through this trait.

use crate::plugin::{LoadedPlugin, Outcome, Params, PluginFault, RawEvent};

use super::KeyDefinition;

/// Runs the functions of the keys it defines. Calls are synchronous and may
/// be CPU-bound: async callers run them on blocking threads.
pub trait Runner: Send + Sync {
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
    fn matches(&self, key: &str, params: &Params, event: &RawEvent) -> Result<bool, PluginFault> {
        self.matches_batch(key, params, std::slice::from_ref(event))
            .pop()
            .unwrap_or(Ok(false))
    }
    /// `matches` for a batch: one answer per event.
    fn matches_batch(
        &self,
        key: &str,
        params: &Params,
        events: &[RawEvent],
    ) -> Vec<Result<bool, PluginFault>>;
    /// `process` for one event; by default a batch of one.
    fn process(
        &self,
        key: &str,
        params: &Params,
        event: &RawEvent,
    ) -> Result<Outcome, PluginFault> {
        self.process_batch(key, params, std::slice::from_ref(event))
            .pop()
            .unwrap_or(Ok(Outcome::Drop))
    }
    /// `process` for a batch: one answer per event.
    fn process_batch(
        &self,
        key: &str,
        params: &Params,
        events: &[RawEvent],
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
    /// The WebAssembly plugin behind it, if it is one.
    fn wasm(&self) -> Option<&LoadedPlugin> {
        None
    }
}
