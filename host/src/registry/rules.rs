//! Registration rules: what a plugin's definitions must satisfy before any
//! of its keys is registered.

use std::collections::HashSet;

use super::definition::{
    AUTH_TYPES, Function, KeyDefinition, MAX_BUFFER_SIZE, OutputSchema, ParamType,
};

/// One broken registration rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rule {
    /// The plugin's `describe` returned no key.
    #[error("the plugin defines no key")]
    NoKeys,
    /// The key name is empty.
    #[error("key is empty")]
    EmptyKey,
    /// Two keys of the same plugin share a name.
    #[error("duplicate key inside the plugin")]
    DuplicateKeyInPlugin,
    /// Another loaded plugin already registered the key.
    #[error("duplicate key: already registered by {other}")]
    DuplicateKey {
        /// The plugin that holds the key.
        other: String,
    },
    /// The event type is empty.
    #[error("event type is empty")]
    EmptyEventType,
    /// The event type is not exact, `prefix.*` or `*`.
    #[error("event type `{0}` is not an exact type, a prefix pattern such as `fs.*`, or `*`")]
    InvalidEventType(String),
    /// A parameter has an empty name.
    #[error("a parameter has an empty name")]
    EmptyParamName,
    /// Two parameters share a name.
    #[error("parameter `{0}` is declared twice")]
    DuplicateParam(String),
    /// An enum or multi parameter has no values.
    #[error("{ty} parameter `{param}` has no values")]
    MissingValues {
        /// Parameter name.
        param: String,
        /// `enum` or `multi`.
        ty: &'static str,
    },
    /// A value has no description.
    #[error("value `{value}` of parameter `{param}` has no description")]
    ValueWithoutDescription {
        /// Parameter name.
        param: String,
        /// The value.
        value: String,
    },
    /// A default is not among the declared values (or not of the type).
    #[error("default `{default}` of parameter `{param}` is not allowed: {reason}")]
    InvalidDefault {
        /// Parameter name.
        param: String,
        /// The default.
        default: String,
        /// Why.
        reason: String,
    },
    /// A native schema together with a process function.
    #[error("a native schema cannot be combined with a process function")]
    NativeSchemaWithProcess,
    /// A custom schema without a process function.
    #[error("a custom schema needs a process function")]
    CustomSchemaWithoutProcess,
    /// The custom schema is not JSON.
    #[error("the custom schema is not valid JSON: {0}")]
    InvalidSchema(String),
    /// An auth type other than `user` or `bot`.
    #[error("unknown auth type `{0}` (allowed: user, bot)")]
    UnknownAuthType(String),
    /// Buffer size above the maximum.
    #[error("buffer size {0} is above the maximum of {MAX_BUFFER_SIZE}")]
    BufferTooLarge(u32),
    /// Buffer size of zero.
    #[error("buffer size must be at least 1")]
    ZeroBuffer,
    /// Zero workers.
    #[error("workers must be at least 1")]
    ZeroWorkers,
}

/// A rule broken by one key of one plugin file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}: key `{key}`: {rule}")]
pub struct RegistrationError {
    /// The plugin file (or name).
    pub file: String,
    /// The key (empty for plugin-wide rules).
    pub key: String,
    /// The rule.
    pub rule: Rule,
}

/// Every rule that `defs` breaks on its own (not against other plugins).
pub fn check_definitions(file: &str, defs: &[KeyDefinition]) -> Vec<RegistrationError> {
    let mut errors = Vec::new();
    let mut push = |key: &str, rule| {
        errors.push(RegistrationError {
            file: file.to_string(),
            key: key.to_string(),
            rule,
        })
    };
    if defs.is_empty() {
        push("", Rule::NoKeys);
    }
    let mut seen = HashSet::new();
    for def in defs {
        let key = def.key.as_str();
        if key.trim().is_empty() {
            push(key, Rule::EmptyKey);
        }
        if !seen.insert(key) {
            push(key, Rule::DuplicateKeyInPlugin);
        }
        check_event_type(&def.event_type)
            .into_iter()
            .for_each(|r| push(key, r));
        let mut names = HashSet::new();
        for p in &def.params {
            if p.name.trim().is_empty() {
                push(key, Rule::EmptyParamName);
            } else if !names.insert(p.name.as_str()) {
                push(key, Rule::DuplicateParam(p.name.clone()));
            }
            let listed = matches!(p.ty, ParamType::Enum | ParamType::Multi);
            if listed && p.values.is_empty() {
                push(
                    key,
                    Rule::MissingValues {
                        param: p.name.clone(),
                        ty: p.ty.as_str(),
                    },
                );
            }
            for v in &p.values {
                if v.description.trim().is_empty() {
                    push(
                        key,
                        Rule::ValueWithoutDescription {
                            param: p.name.clone(),
                            value: v.value.clone(),
                        },
                    );
                }
            }
            if let Some(default) = &p.default
                && let Err(reason) = super::params::check_value(p, default)
            {
                push(
                    key,
                    Rule::InvalidDefault {
                        param: p.name.clone(),
                        default: default.clone(),
                        reason,
                    },
                );
            }
        }
        match &def.schema {
            OutputSchema::Native if def.implements(Function::Process) => {
                push(key, Rule::NativeSchemaWithProcess)
            }
            OutputSchema::Custom { json_schema } => {
                if !def.implements(Function::Process) {
                    push(key, Rule::CustomSchemaWithoutProcess);
                }
                if let Err(e) = serde_json::from_str::<serde_json::Value>(json_schema) {
                    push(key, Rule::InvalidSchema(e.to_string()));
                }
            }
            OutputSchema::Native => {}
        }
        for a in &def.auth_types {
            if !AUTH_TYPES.contains(&a.as_str()) {
                push(key, Rule::UnknownAuthType(a.clone()));
            }
        }
        match def.buffer_size {
            Some(0) => push(key, Rule::ZeroBuffer),
            Some(n) if n > MAX_BUFFER_SIZE => push(key, Rule::BufferTooLarge(n)),
            _ => {}
        }
        if def.workers == Some(0) {
            push(key, Rule::ZeroWorkers);
        }
    }
    errors
}

fn check_event_type(t: &str) -> Option<Rule> {
    if t.trim().is_empty() {
        return Some(Rule::EmptyEventType);
    }
    let body = t.strip_suffix(".*").unwrap_or(t);
    let valid = t == "*"
        || (!body.is_empty()
            && !body.contains('*')
            && !body.chars().any(char::is_whitespace)
            && !body.starts_with('.')
            && !body.ends_with('.'));
    (!valid).then(|| Rule::InvalidEventType(t.to_string()))
}
