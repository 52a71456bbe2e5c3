//! The EventKey registry: every key of every loaded plugin, checked against
//! the registration rules, listed sorted by key and looked up by name.
//!
//! Registration is all or nothing per plugin: one broken rule and none of
//! that plugin's keys is registered.

pub mod params;
mod rules;

use std::collections::BTreeMap;
use std::sync::Arc;

pub use params::ParamError;
pub use rules::{RegistrationError, Rule, check_definitions};
pub use weir_core::key::Runner;
pub use weir_core::key::{
    AUTH_TYPES, DEFAULT_BUFFER_SIZE, DEFAULT_WORKERS, Function, KeyDefinition, MAX_BUFFER_SIZE,
    OutputSchema, ParamDef, ParamType, ParamValue,
};

/// A registered key: its definition and what runs it.
#[derive(Clone)]
pub struct RegisteredKey {
    /// The definition, as validated.
    pub def: Arc<KeyDefinition>,
    /// The plugin (or native code) implementing it.
    pub plugin: Arc<dyn Runner>,
    /// How its output is checked, compiled once at registration.
    pub output: OutputCheck,
}

/// How a key's output is checked before it is delivered.
#[derive(Clone)]
pub enum OutputCheck {
    /// Native schema: the payload is delivered as it came.
    Native,
    /// Custom schema: the output must be JSON matching it.
    Schema(Arc<jsonschema::Validator>),
}

/// What a [`Registry::replace`] did, by key.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyChanges {
    /// Keys the new version adds.
    pub added: Vec<String>,
    /// Keys both versions define, now run by the new one.
    pub replaced: Vec<String>,
    /// Keys the new version no longer defines.
    pub removed: Vec<String>,
}

/// The entries of `plugin`'s keys, their output schemas compiled. The rules
/// already refused schemas that do not compile; one that does not here is
/// reported the same way.
fn entries(plugin: &Arc<dyn Runner>) -> Result<Vec<RegisteredKey>, Vec<RegistrationError>> {
    plugin
        .definitions()
        .iter()
        .map(|def| {
            let output = match &def.schema {
                OutputSchema::Native => OutputCheck::Native,
                OutputSchema::Custom { json_schema } => {
                    OutputCheck::Schema(Arc::new(compile_schema(json_schema).map_err(|e| {
                        vec![RegistrationError {
                            file: plugin.file_label(),
                            key: def.key.clone(),
                            rule: Rule::InvalidSchema(e),
                        }]
                    })?))
                }
            };
            Ok(RegisteredKey {
                def: Arc::new(def.clone()),
                plugin: plugin.clone(),
                output,
            })
        })
        .collect()
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
        self.check_replacing(plugin, None)
    }

    /// As [`Self::check`], ignoring the keys of the plugin called `replacing`
    /// (the version `plugin` would replace).
    fn check_replacing(
        &self,
        plugin: &dyn Runner,
        replacing: Option<&str>,
    ) -> Vec<RegistrationError> {
        let file = plugin.file_label();
        let mut errors = check_definitions(&file, plugin.definitions());
        for def in plugin.definitions() {
            if let Some(existing) = self
                .keys
                .get(&def.key)
                .filter(|k| Some(k.plugin.name()) != replacing)
            {
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
        for entry in entries(&plugin)? {
            self.keys.insert(entry.def.key.clone(), entry);
        }
        Ok(())
    }

    /// Replaces every key of the plugin of the same name with the keys of
    /// `plugin`, all at once, or changes nothing and returns every broken
    /// rule. Keys the new version no longer defines are removed.
    pub fn replace(
        &mut self,
        plugin: Arc<dyn Runner>,
    ) -> Result<KeyChanges, Vec<RegistrationError>> {
        let errors = self.check_replacing(plugin.as_ref(), Some(plugin.name()));
        if !errors.is_empty() {
            return Err(errors);
        }
        let new = entries(&plugin)?;
        let old = self.unregister_plugin(plugin.name());
        let mut changes = KeyChanges::default();
        for entry in new {
            let key = entry.def.key.clone();
            if old.contains(&key) {
                changes.replaced.push(key.clone());
            } else {
                changes.added.push(key.clone());
            }
            self.keys.insert(key, entry);
        }
        changes.removed = old
            .into_iter()
            .filter(|k| !self.keys.contains_key(k))
            .collect();
        Ok(changes)
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

/// Compiles a custom output schema.
pub fn compile_schema(json_schema: &str) -> Result<jsonschema::Validator, String> {
    let schema: serde_json::Value =
        serde_json::from_str(json_schema).map_err(|e| format!("schema is not JSON: {e}"))?;
    jsonschema::validator_for(&schema).map_err(|e| format!("invalid JSON Schema: {e}"))
}
