//! Key definitions: the builder a plugin author fills in, and its conversion
//! to the WIT record the host reads through `describe`.

use crate::bindings::weir::plugin::types as wit;

/// The type of a parameter. Values always travel as strings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParamType {
    /// Free text.
    String,
    /// One of the declared values.
    Enum,
    /// A comma-separated list of declared values.
    Multi,
    /// `true` or `false`.
    Bool,
    /// A signed 64-bit integer.
    Int,
}

/// One allowed value of an enum or multi parameter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParamValue {
    /// The value itself.
    pub value: String,
    /// What choosing it means; mandatory.
    pub description: String,
}

/// One parameter of a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParamDef {
    /// Name used in `?name=value` and [`Params`](crate::Params) look-ups.
    pub name: String,
    /// How the host checks values.
    pub ty: ParamType,
    /// Whether a consumer must give it (a default satisfies it too).
    pub required: bool,
    /// Filled in when the consumer gives none.
    pub default: Option<String>,
    /// Shown to consumers.
    pub description: String,
    /// Allowed values for enum and multi parameters.
    pub values: Vec<ParamValue>,
    /// Part of the subscription identity.
    pub subscription_key: bool,
}

impl ParamDef {
    fn new(name: &str, ty: ParamType, description: &str) -> Self {
        Self {
            name: name.to_string(),
            ty,
            required: false,
            default: None,
            description: description.to_string(),
            values: Vec::new(),
            subscription_key: false,
        }
    }

    /// A free-text parameter.
    pub fn string(name: &str, description: &str) -> Self {
        Self::new(name, ParamType::String, description)
    }

    /// An integer parameter.
    pub fn int(name: &str, description: &str) -> Self {
        Self::new(name, ParamType::Int, description)
    }

    /// A boolean parameter.
    pub fn bool(name: &str, description: &str) -> Self {
        Self::new(name, ParamType::Bool, description)
    }

    /// A parameter taking one of `values`, each `(value, description)`.
    pub fn enumeration(name: &str, description: &str, values: &[(&str, &str)]) -> Self {
        Self::new(name, ParamType::Enum, description).values(values)
    }

    /// A parameter taking a comma-separated subset of `values`.
    pub fn multi(name: &str, description: &str, values: &[(&str, &str)]) -> Self {
        Self::new(name, ParamType::Multi, description).values(values)
    }

    /// Replaces the allowed values, each `(value, description)`.
    pub fn values(mut self, values: &[(&str, &str)]) -> Self {
        self.values = values
            .iter()
            .map(|(v, d)| ParamValue {
                value: v.to_string(),
                description: d.to_string(),
            })
            .collect();
        self
    }

    /// Marks the parameter required.
    pub fn required(mut self) -> Self {
        self.required = true;
        self
    }

    /// Sets the default value.
    pub fn default_value(mut self, value: &str) -> Self {
        self.default = Some(value.to_string());
        self
    }

    /// Makes the parameter part of the subscription identity.
    pub fn subscription_key(mut self) -> Self {
        self.subscription_key = true;
        self
    }
}

/// What a key's consumers receive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Schema {
    /// The raw payload in the host's envelope; the key has no `process`.
    Native,
    /// The output of `process`, described by a JSON Schema text.
    Custom(String),
}

/// Which optional functions a key implements; combine with `|`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Functions(u8);

impl Functions {
    /// No optional function.
    pub const NONE: Self = Self(0);
    /// [`EventKey::normalize_params`](crate::EventKey::normalize_params).
    pub const NORMALIZE_PARAMS: Self = Self(1);
    /// [`EventKey::matches`](crate::EventKey::matches).
    pub const MATCHES: Self = Self(2);
    /// [`EventKey::process`](crate::EventKey::process).
    pub const PROCESS: Self = Self(4);
    /// [`EventKey::pre_consume`](crate::EventKey::pre_consume).
    pub const PRE_CONSUME: Self = Self(8);
    /// [`EventKey::cleanup`](crate::EventKey::cleanup).
    pub const CLEANUP: Self = Self(16);

    /// Whether every function in `other` is in `self`.
    pub fn contains(self, other: Self) -> bool {
        self.0 & other.0 == other.0
    }
}

impl std::ops::BitOr for Functions {
    type Output = Self;
    fn bitor(self, rhs: Self) -> Self {
        Self(self.0 | rhs.0)
    }
}

/// The definition of one EventKey, built with chained setters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyDefinition {
    /// Unique key name, such as `fs.large_files`.
    pub key: String,
    /// Human name.
    pub display_name: String,
    /// What the key delivers.
    pub description: String,
    /// Exact type, prefix pattern (`fs.*`) or `*`.
    pub event_type: String,
    /// Parameters consumers give.
    pub params: Vec<ParamDef>,
    /// Output schema.
    pub schema: Schema,
    /// Scopes the key needs.
    pub scopes: Vec<String>,
    /// Accepted identities: `user`, `bot`.
    pub auth_types: Vec<String>,
    /// Upstream console events the key relies on.
    pub required_console_events: Vec<String>,
    /// Per-subscription buffer (host default 100, at most 1000).
    pub buffer_size: Option<u32>,
    /// Parallel workers per subscription (host default 1).
    pub workers: Option<u32>,
    /// Optional functions implemented.
    pub implements: Functions,
}

impl KeyDefinition {
    /// A key on `event_type` with a native schema and no optional function.
    pub fn new(key: &str, event_type: &str) -> Self {
        Self {
            key: key.to_string(),
            display_name: String::new(),
            description: String::new(),
            event_type: event_type.to_string(),
            params: Vec::new(),
            schema: Schema::Native,
            scopes: Vec::new(),
            auth_types: Vec::new(),
            required_console_events: Vec::new(),
            buffer_size: None,
            workers: None,
            implements: Functions::NONE,
        }
    }

    /// Sets the display name.
    pub fn display_name(mut self, name: &str) -> Self {
        self.display_name = name.to_string();
        self
    }

    /// Sets the description.
    pub fn description(mut self, text: &str) -> Self {
        self.description = text.to_string();
        self
    }

    /// Adds a parameter.
    pub fn param(mut self, param: ParamDef) -> Self {
        self.params.push(param);
        self
    }

    /// Declares a custom output, described by a JSON Schema text.
    pub fn custom_schema(mut self, json_schema: &str) -> Self {
        self.schema = Schema::Custom(json_schema.to_string());
        self
    }

    /// Declares which optional functions the key implements.
    pub fn implements(mut self, functions: Functions) -> Self {
        self.implements = functions;
        self
    }

    /// Adds a scope.
    pub fn scope(mut self, scope: &str) -> Self {
        self.scopes.push(scope.to_string());
        self
    }

    /// Adds an accepted identity type (`user` or `bot`).
    pub fn auth_type(mut self, auth_type: &str) -> Self {
        self.auth_types.push(auth_type.to_string());
        self
    }

    /// Adds a required console event.
    pub fn required_console_event(mut self, event: &str) -> Self {
        self.required_console_events.push(event.to_string());
        self
    }

    /// Sets the per-subscription buffer size.
    pub fn buffer_size(mut self, size: u32) -> Self {
        self.buffer_size = Some(size);
        self
    }

    /// Sets the number of workers per subscription.
    pub fn workers(mut self, workers: u32) -> Self {
        self.workers = Some(workers);
        self
    }

    /// The WIT record `describe` returns.
    pub fn into_wit(self) -> wit::KeyDefinition {
        let mut implements = wit::Functions::empty();
        for (flag, wit_flag) in [
            (
                Functions::NORMALIZE_PARAMS,
                wit::Functions::NORMALIZE_PARAMS,
            ),
            (Functions::MATCHES, wit::Functions::MATCHES),
            (Functions::PROCESS, wit::Functions::PROCESS),
            (Functions::PRE_CONSUME, wit::Functions::PRE_CONSUME),
            (Functions::CLEANUP, wit::Functions::CLEANUP),
        ] {
            if self.implements.contains(flag) {
                implements |= wit_flag;
            }
        }
        wit::KeyDefinition {
            key: self.key,
            display_name: self.display_name,
            description: self.description,
            event_type: self.event_type,
            params: self.params.into_iter().map(param_into_wit).collect(),
            schema: match self.schema {
                Schema::Native => wit::OutputSchema::Native,
                Schema::Custom(s) => wit::OutputSchema::Custom(s),
            },
            scopes: self.scopes,
            auth_types: self.auth_types,
            required_console_events: self.required_console_events,
            buffer_size: self.buffer_size,
            workers: self.workers,
            implements,
        }
    }
}

fn param_into_wit(p: ParamDef) -> wit::ParamDef {
    wit::ParamDef {
        name: p.name,
        type_: match p.ty {
            ParamType::String => wit::ParamType::String,
            ParamType::Enum => wit::ParamType::Enum,
            ParamType::Multi => wit::ParamType::Multi,
            ParamType::Bool => wit::ParamType::Bool,
            ParamType::Int => wit::ParamType::Int,
        },
        required: p.required,
        default: p.default,
        description: p.description,
        values: p
            .values
            .into_iter()
            .map(|v| wit::ParamValue {
                value: v.value,
                description: v.description,
            })
            .collect(),
        subscription_key: p.subscription_key,
    }
}
