//! The EventKey registry: every key of every loaded plugin, checked against
//! the registration rules, listed sorted by key and looked up by name.
//!
//! Registration is all or nothing per plugin: one broken rule and none of
//! that plugin's keys is registered.

mod definition;
pub mod params;
mod rules;
mod runner;

use std::collections::BTreeMap;
use std::sync::Arc;

pub use definition::{
    AUTH_TYPES, DEFAULT_BUFFER_SIZE, DEFAULT_WORKERS, Function, KeyDefinition, MAX_BUFFER_SIZE,
    OutputSchema, ParamDef, ParamType, ParamValue, event_type_matches,
};
pub use params::ParamError;
pub use rules::{RegistrationError, Rule, check_definitions};
pub use runner::Runner;

/// A registered key: its definition and what runs it.
#[derive(Clone)]
pub struct RegisteredKey {
    /// The definition, as validated.
    pub def: Arc<KeyDefinition>,
    /// The plugin (or native code) implementing it.
    pub plugin: Arc<dyn Runner>,
}

/// Keys by name.
#[derive(Default, Clone)]
pub struct Registry {
    keys: BTreeMap<String, RegisteredKey>,
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Every rule `plugin` breaks, on its own and against the keys already
    /// registered. Empty means it can be registered.
    pub fn check(&self, plugin: &dyn Runner) -> Vec<RegistrationError> {
        let file = plugin.file_label();
        let mut errors = check_definitions(&file, plugin.definitions());
        for def in plugin.definitions() {
            if let Some(existing) = self.keys.get(&def.key) {
                errors.push(RegistrationError {
                    file: file.to_string(),
                    key: def.key.clone(),
                    rule: Rule::DuplicateKey {
                        other: existing.plugin.file_label(),
                    },
                });
            }
        }
        errors
    }

    /// Registers every key of `plugin`, or none of them with every broken rule.
    pub fn register(&mut self, plugin: Arc<dyn Runner>) -> Result<(), Vec<RegistrationError>> {
        let errors = self.check(plugin.as_ref());
        if !errors.is_empty() {
            return Err(errors);
        }
        for def in plugin.definitions() {
            self.keys.insert(
                def.key.clone(),
                RegisteredKey {
                    def: Arc::new(def.clone()),
                    plugin: plugin.clone(),
                },
            );
        }
        Ok(())
    }

    /// Removes every key of the plugin called `name`; returns the keys removed.
    pub fn unregister_plugin(&mut self, name: &str) -> Vec<String> {
        let keys: Vec<String> = self
            .keys
            .iter()
            .filter(|(_, k)| k.plugin.name() == name)
            .map(|(key, _)| key.clone())
            .collect();
        for key in &keys {
            self.keys.remove(key);
        }
        keys
    }

    /// Every key, sorted by key.
    pub fn list(&self) -> impl Iterator<Item = &RegisteredKey> {
        self.keys.values()
    }

    /// The key called `key`.
    pub fn lookup(&self, key: &str) -> Option<&RegisteredKey> {
        self.keys.get(key)
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether no key is registered.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}
