//! Registration rules: what a plugin's definitions must satisfy before any
//! of its keys is registered.

use std::collections::HashSet;

use weir_core::key::{
    AUTH_TYPES, Function, KeyDefinition, MAX_BUFFER_SIZE, OutputSchema, ParamType,
};

/// Parameter names a key may not declare: `GET /v1/keys/{key}/stream`
/// takes them as its own query parameters.
pub const RESERVED_PARAMS: [&str; 2] = ["from", "consumer"];

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
    /// A parameter name the stream API uses itself.
    #[error(
        "parameter name `{0}` is reserved (the stream API uses it: `from` for the start position, `consumer` for a named consumer)"
    )]
    ReservedParam(String),
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
    /// The custom schema is not a JSON Schema.
    #[error("the custom schema is not usable: {0}")]
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
            if RESERVED_PARAMS.contains(&p.name.as_str()) {
                push(key, Rule::ReservedParam(p.name.clone()));
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
                if let Err(e) = super::compile_schema(json_schema) {
                    push(key, Rule::InvalidSchema(e));
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::{ParamDef, ParamValue};

    fn def(key: &str, event_type: &str) -> KeyDefinition {
        KeyDefinition::new(key, event_type)
    }

    fn param(name: &str, ty: ParamType) -> ParamDef {
        ParamDef {
            name: name.into(),
            ty,
            required: false,
            default: None,
            description: "d".into(),
            values: vec![],
            subscription_key: false,
        }
    }

    fn rules(defs: &[KeyDefinition]) -> Vec<Rule> {
        check_definitions("p.wasm", defs)
            .into_iter()
            .map(|e| e.rule)
            .collect()
    }

    #[test]
    fn a_valid_definition_breaks_nothing() {
        let mut d = def("a.b", "fs.*");
        d.params.push(param("n", ParamType::Int));
        d.schema = OutputSchema::Custom {
            json_schema: "{}".into(),
        };
        d.implements = vec![Function::Matches, Function::Process];
        d.buffer_size = Some(1000);
        d.auth_types = vec!["user".into(), "bot".into()];
        assert_eq!(rules(&[d]), []);
    }

    #[test]
    fn event_type_patterns() {
        for ok in ["*", "fs.*", "deal.status.changed", "x"] {
            assert_eq!(rules(&[def("k", ok)]), [], "{ok}");
        }
        for bad in ["fs*", "*.x", "a.*.b", ".a", "a.", "a b", ".*"] {
            assert_eq!(
                rules(&[def("k", bad)]),
                [Rule::InvalidEventType(bad.into())],
                "{bad}"
            );
        }
        assert_eq!(rules(&[def("k", " ")]), [Rule::EmptyEventType]);
    }

    #[test]
    fn plugin_wide_and_key_rules() {
        assert_eq!(rules(&[]), [Rule::NoKeys]);
        assert_eq!(rules(&[def("", "x")]), [Rule::EmptyKey]);
        let mut d = def("k", "x");
        d.schema = OutputSchema::Custom {
            json_schema: "{nope".into(),
        };
        d.buffer_size = Some(0);
        d.params = vec![
            param("a", ParamType::String),
            param("a", ParamType::String),
            param("", ParamType::Bool),
        ];
        let got = rules(&[d]);
        assert_eq!(got[0], Rule::DuplicateParam("a".into()));
        assert_eq!(got[1], Rule::EmptyParamName);
        assert_eq!(got[2], Rule::CustomSchemaWithoutProcess);
        assert!(matches!(got[3], Rule::InvalidSchema(_)));
        assert_eq!(got[4], Rule::ZeroBuffer);
    }

    #[test]
    fn reserved_param_names_and_schemas_that_are_json_but_not_json_schema() {
        let mut d = def("k", "x");
        d.params = vec![param("from", ParamType::String)];
        d.schema = OutputSchema::Custom {
            json_schema: r#"{"type": "no-such-type"}"#.into(),
        };
        d.implements = vec![Function::Process];
        let got = rules(&[d]);
        assert_eq!(got[0], Rule::ReservedParam("from".into()));
        match &got[1] {
            Rule::InvalidSchema(why) => assert!(why.starts_with("invalid JSON Schema"), "{why}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn defaults_are_checked_against_the_type() {
        let mut d = def("k", "x");
        let mut n = param("n", ParamType::Int);
        n.default = Some("ten".into());
        let mut m = param("m", ParamType::Multi);
        m.values = vec![ParamValue {
            value: "a".into(),
            description: "A".into(),
        }];
        m.default = Some("a, a".into());
        d.params = vec![n, m];
        assert_eq!(
            rules(&[d]),
            [Rule::InvalidDefault {
                param: "n".into(),
                default: "ten".into(),
                reason: "`ten` is not an integer".into()
            }]
        );
    }
}
