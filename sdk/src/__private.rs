//! Glue between the generated bindings and [`EventKey`] implementations.
//! Used by [`export_keys!`](crate::export_keys); not a stable API.

use crate::{EventKey, HostApi, Outcome, Params, RawEvent};

pub use crate::bindings::exports::weir::plugin::event_key::Guest;

/// The WIT types, under short names for the macro.
pub mod wit {
    pub use crate::bindings::weir::plugin::types::{
        KeyDefinition, Outcome, ParamDef, ParamType, ParamValue, Params, RawEvent,
    };
}

/// The keys one component exports, looked up by key name.
pub struct KeySet {
    keys: Vec<(String, Box<dyn EventKey>)>,
}

impl KeySet {
    /// Builds the set, asking each key for its name once.
    pub fn new(keys: Vec<Box<dyn EventKey>>) -> Self {
        let keys = keys.into_iter().map(|k| (k.definition().key, k)).collect();
        Self { keys }
    }

    fn get(&self, key: &str) -> Result<&dyn EventKey, String> {
        self.keys
            .iter()
            .find(|(name, _)| name == key)
            .map(|(_, k)| k.as_ref())
            .ok_or_else(|| format!("this plugin defines no key `{key}`"))
    }

    pub fn describe(&self) -> Vec<wit::KeyDefinition> {
        self.keys
            .iter()
            .map(|(_, k)| k.definition().into_wit())
            .collect()
    }

    pub fn normalize_params(&self, key: &str, params: wit::Params) -> Result<wit::Params, String> {
        let k = self.get(key)?;
        let mut params = Params::from_pairs(params);
        k.normalize_params(&HostApi, &mut params)
            .map_err(|e| e.to_string())?;
        Ok(params.into_pairs())
    }

    pub fn matches(&self, key: &str, params: wit::Params, event: wit::RawEvent) -> bool {
        // An unknown key cannot match anything; the host never asks for one.
        let Ok(k) = self.get(key) else { return false };
        k.matches(&RawEvent::from(event), &Params::from_pairs(params))
    }

    pub fn matches_batch(
        &self,
        key: &str,
        params: wit::Params,
        events: Vec<wit::RawEvent>,
    ) -> Vec<bool> {
        let Ok(k) = self.get(key) else {
            return vec![false; events.len()];
        };
        let params = Params::from_pairs(params);
        events
            .into_iter()
            .map(|e| k.matches(&RawEvent::from(e), &params))
            .collect()
    }

    pub fn process(
        &self,
        key: &str,
        params: wit::Params,
        event: wit::RawEvent,
    ) -> Result<wit::Outcome, String> {
        let k = self.get(key)?;
        run_process(k, &Params::from_pairs(params), event)
    }

    pub fn process_batch(
        &self,
        key: &str,
        params: wit::Params,
        events: Vec<wit::RawEvent>,
    ) -> Vec<Result<wit::Outcome, String>> {
        match self.get(key) {
            Ok(k) => {
                let params = Params::from_pairs(params);
                events
                    .into_iter()
                    .map(|e| run_process(k, &params, e))
                    .collect()
            }
            Err(e) => events.iter().map(|_| Err(e.clone())).collect(),
        }
    }

    pub fn pre_consume(
        &self,
        key: &str,
        subscription_id: &str,
        params: wit::Params,
    ) -> Result<(), String> {
        let k = self.get(key)?;
        k.pre_consume(&HostApi, subscription_id, &Params::from_pairs(params))
            .map_err(|e| e.to_string())
    }

    pub fn cleanup(
        &self,
        key: &str,
        subscription_id: &str,
        params: wit::Params,
    ) -> Result<(), String> {
        let k = self.get(key)?;
        k.cleanup(&HostApi, subscription_id, &Params::from_pairs(params))
            .map_err(|e| e.to_string())
    }
}

fn run_process(
    k: &dyn EventKey,
    params: &Params,
    event: wit::RawEvent,
) -> Result<wit::Outcome, String> {
    match k.process(&HostApi, &RawEvent::from(event), params) {
        Ok(Outcome::Emit(json)) => Ok(wit::Outcome::Emit(json)),
        Ok(Outcome::Drop) => Ok(wit::Outcome::Drop),
        Err(e) => Err(e.to_string()),
    }
}
