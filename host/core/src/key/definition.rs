//! The host's view of a key definition, converted from the WIT record a
//! plugin's `describe` returns, and serialized for `/v1/keys` and the CLI.

use crate::event::event_type_matches;
use serde::{Deserialize, Serialize};

/// Default per-subscription buffer when a key declares none.
pub const DEFAULT_BUFFER_SIZE: u32 = 100;
/// Largest buffer a key may declare.
pub const MAX_BUFFER_SIZE: u32 = 1000;
/// Default number of workers per subscription.
pub const DEFAULT_WORKERS: u32 = 1;
/// Identity types a key may accept.
pub const AUTH_TYPES: [&str; 2] = ["user", "bot"];

/// Type of a parameter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ParamType {
    /// Free text.
    String,
    /// One of the values.
    Enum,
    /// Comma-separated subset of the values.
    Multi,
    /// `true` / `false`.
    Bool,
    /// Signed 64-bit integer.
    Int,
}

impl ParamType {
    /// The lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::String => "string",
            Self::Enum => "enum",
            Self::Multi => "multi",
            Self::Bool => "bool",
            Self::Int => "int",
        }
    }
}

/// One allowed value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ParamValue {
    /// The value.
    pub value: String,
    /// What it means.
    pub description: String,
}

/// One parameter.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ParamDef {
    /// Name.
    pub name: String,
    /// Type.
    #[serde(rename = "type")]
    pub ty: ParamType,
    /// Must be given (or defaulted).
    pub required: bool,
    /// Value used when none is given.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub default: Option<String>,
    /// Shown to consumers.
    pub description: String,
    /// Allowed values (enum, multi).
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub values: Vec<ParamValue>,
    /// Part of the subscription identity.
    pub subscription_key: bool,
}

/// Output schema of a key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum OutputSchema {
    /// Raw payload in the envelope.
    Native,
    /// Output of `process`, described by this JSON Schema text.
    Custom {
        /// The JSON Schema text.
        json_schema: String,
    },
}

/// An optional key function, by its WIT name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Function {
    /// `normalize-params`
    NormalizeParams,
    /// `matches` / `matches-batch`
    Matches,
    /// `process` / `process-batch`
    Process,
    /// `pre-consume`
    PreConsume,
    /// `cleanup`
    Cleanup,
}

impl Function {
    /// Every function, in pipeline order.
    pub const ALL: [Function; 5] = [
        Self::NormalizeParams,
        Self::Matches,
        Self::Process,
        Self::PreConsume,
        Self::Cleanup,
    ];

    /// The WIT name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NormalizeParams => "normalize-params",
            Self::Matches => "matches",
            Self::Process => "process",
            Self::PreConsume => "pre-consume",
            Self::Cleanup => "cleanup",
        }
    }
}

/// The definition of one EventKey as the host holds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyDefinition {
    /// Unique key.
    pub key: String,
    /// Human name.
    pub display_name: String,
    /// What it delivers.
    pub description: String,
    /// Exact type, `prefix.*` or `*`.
    pub event_type: String,
    /// Parameters.
    pub params: Vec<ParamDef>,
    /// Output schema.
    pub schema: OutputSchema,
    /// Scopes.
    pub scopes: Vec<String>,
    /// Accepted identities.
    pub auth_types: Vec<String>,
    /// Required upstream console events.
    pub required_console_events: Vec<String>,
    /// Buffer size as declared (`None`: default).
    pub buffer_size: Option<u32>,
    /// Workers as declared (`None`: default).
    pub workers: Option<u32>,
    /// Optional functions implemented, in pipeline order.
    pub implements: Vec<Function>,
}

impl KeyDefinition {
    /// A key on `event_type` with no params, a native schema, default
    /// buffer and workers, and no optional function.
    pub fn new(key: &str, event_type: &str) -> Self {
        Self {
            key: key.to_string(),
            display_name: String::new(),
            description: String::new(),
            event_type: event_type.to_string(),
            params: Vec::new(),
            schema: OutputSchema::Native,
            scopes: Vec::new(),
            auth_types: Vec::new(),
            required_console_events: Vec::new(),
            buffer_size: None,
            workers: None,
            implements: Vec::new(),
        }
    }

    /// Whether the key implements `f`.
    pub fn implements(&self, f: Function) -> bool {
        self.implements.contains(&f)
    }

    /// Effective buffer size.
    pub fn effective_buffer_size(&self) -> u32 {
        self.buffer_size.unwrap_or(DEFAULT_BUFFER_SIZE)
    }

    /// Effective number of workers.
    pub fn effective_workers(&self) -> u32 {
        self.workers.unwrap_or(DEFAULT_WORKERS)
    }

    /// The parameter called `name`.
    pub fn param(&self, name: &str) -> Option<&ParamDef> {
        self.params.iter().find(|p| p.name == name)
    }

    /// Whether an event of `event_type` reaches this key: exact type,
    /// `prefix.*` (any type starting with `prefix.`) or `*`.
    pub fn accepts_event_type(&self, event_type: &str) -> bool {
        event_type_matches(&self.event_type, event_type)
    }
}
