//! Raw events as a key sees them, and what `process` returns.

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::Error;
use crate::bindings::weir::plugin::types as wit;

/// An event as the host received it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawEvent {
    /// Unique id (the host deduplicates on it).
    pub event_id: String,
    /// Type such as `fs.insert` or `deal.status.changed`.
    pub event_type: String,
    /// Upstream creation time, as the source gave it.
    pub source_time: Option<String>,
    /// When the host observed the event, in ms since the Unix epoch.
    pub timestamp_ms: u64,
    /// The payload as JSON text.
    pub payload: String,
}

impl RawEvent {
    /// An event with this type and JSON payload, for tests.
    pub fn new(event_type: &str, payload: &str) -> Self {
        Self {
            event_id: String::new(),
            event_type: event_type.to_string(),
            source_time: None,
            timestamp_ms: 0,
            payload: payload.to_string(),
        }
    }

    /// Sets the id.
    pub fn with_id(mut self, id: &str) -> Self {
        self.event_id = id.to_string();
        self
    }

    /// The payload parsed into `T`.
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, Error> {
        serde_json::from_str(&self.payload).map_err(|e| {
            Error::msg(format!(
                "event {}: payload is not the expected JSON: {e}",
                self.event_id
            ))
        })
    }

    /// A top-level integer field of the payload, without parsing the rest into
    /// a value tree. `None` when absent, not an integer, or not JSON.
    pub fn field_i64(&self, name: &str) -> Option<i64> {
        self.json::<serde_json::Map<String, serde_json::Value>>()
            .ok()?
            .get(name)?
            .as_i64()
    }

    /// A top-level string field of the payload.
    pub fn field_str(&self, name: &str) -> Option<String> {
        self.json::<serde_json::Map<String, serde_json::Value>>()
            .ok()?
            .get(name)?
            .as_str()
            .map(str::to_string)
    }
}

impl From<wit::RawEvent> for RawEvent {
    fn from(e: wit::RawEvent) -> Self {
        Self {
            event_id: e.event_id,
            event_type: e.event_type,
            source_time: e.source_time,
            timestamp_ms: e.timestamp_ms,
            payload: e.payload,
        }
    }
}

/// What `process` decided for one event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Deliver this JSON text.
    Emit(String),
    /// Deliver nothing.
    Drop,
}

impl Outcome {
    /// Emit `value` serialized as JSON.
    pub fn emit<T: Serialize>(value: &T) -> Result<Self, Error> {
        Ok(Self::Emit(serde_json::to_string(value)?))
    }

    /// The emitted JSON parsed as a value, for tests. `None` for `Drop`.
    pub fn json(&self) -> Option<serde_json::Value> {
        match self {
            Self::Emit(s) => serde_json::from_str(s).ok(),
            Self::Drop => None,
        }
    }
}
