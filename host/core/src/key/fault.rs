//! Typed plugin faults: how a single call into a plugin can fail.

use std::time::Duration;

use serde::Serialize;

/// A failed call into a plugin. Every variant except [`PluginFault::Failed`]
/// and [`PluginFault::NotImplemented`] recycles the instance that ran it; no
/// variant affects other instances, plugins or the host.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PluginFault {
    /// The key returned an error of its own (`Err` from the function).
    #[error("plugin error: {0}")]
    Failed(String),
    /// The call ran past its wall-clock deadline (epoch interruption).
    #[error("deadline of {} ms exceeded", .0.as_millis())]
    Deadline(Duration),
    /// The instance tried to grow its memory beyond the cap.
    #[error("memory limit of {limit} bytes exhausted")]
    MemoryExhausted {
        /// The cap in bytes.
        limit: usize,
    },
    /// The guest trapped: a panic, `unreachable`, an out-of-bounds access...
    #[error("trap: {0}")]
    Trap(String),
    /// `matches` called the host API, which it may not.
    #[error("call-api is not allowed while matches runs")]
    ApiInMatches,
    /// The result broke the contract: invalid JSON, wrong batch length...
    #[error("malformed result: {0}")]
    Malformed(String),
    /// An emitted output exceeded the size cap.
    #[error("output of {size} bytes exceeds the limit of {limit} bytes")]
    OutputTooLarge {
        /// Size of the output.
        size: usize,
        /// The cap.
        limit: usize,
    },
    /// The key does not declare the function the host was asked to call.
    #[error("key `{key}` does not implement {function}")]
    NotImplemented {
        /// The key.
        key: String,
        /// The WIT function name.
        function: &'static str,
    },
    /// A fresh instance could not be created.
    #[error("instantiation failed: {0}")]
    Instantiate(String),
}

impl PluginFault {
    /// A stable short name, for logs, metrics, dead letters and JSON.
    pub fn kind(&self) -> FaultKind {
        match self {
            Self::Failed(_) => FaultKind::PluginError,
            Self::Deadline(_) => FaultKind::Deadline,
            Self::MemoryExhausted { .. } => FaultKind::Memory,
            Self::Trap(_) => FaultKind::Trap,
            Self::ApiInMatches => FaultKind::ApiInMatches,
            Self::Malformed(_) => FaultKind::Malformed,
            Self::OutputTooLarge { .. } => FaultKind::OutputTooLarge,
            Self::NotImplemented { .. } => FaultKind::NotImplemented,
            Self::Instantiate(_) => FaultKind::Instantiate,
        }
    }

    /// Whether this fault counts toward the key's quarantine. Only faults
    /// of the plugin itself do: traps, deadlines, memory exhaustion,
    /// malformed results, `call-api` in `matches`, failed instantiation. An
    /// error the key returns for an event, or an output too large for the
    /// cap, is that event's outcome (a dead letter): a producer could
    /// otherwise quarantine a key for every consumer by posting events that
    /// make it answer so.
    pub fn counts_toward_quarantine(&self) -> bool {
        matches!(
            self,
            Self::Trap(_)
                | Self::Deadline(_)
                | Self::MemoryExhausted { .. }
                | Self::Malformed(_)
                | Self::ApiInMatches
                | Self::Instantiate(_)
        )
    }

    /// Whether the instance that produced this fault must be thrown away.
    pub fn recycles_instance(&self) -> bool {
        !matches!(self, Self::Failed(_) | Self::NotImplemented { .. })
    }
}

/// The kind of a [`PluginFault`], as a stable snake_case name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FaultKind {
    /// [`PluginFault::Failed`]
    PluginError,
    /// [`PluginFault::Deadline`]
    Deadline,
    /// [`PluginFault::MemoryExhausted`]
    Memory,
    /// [`PluginFault::Trap`]
    Trap,
    /// [`PluginFault::ApiInMatches`]
    ApiInMatches,
    /// [`PluginFault::Malformed`]
    Malformed,
    /// [`PluginFault::OutputTooLarge`]
    OutputTooLarge,
    /// [`PluginFault::NotImplemented`]
    NotImplemented,
    /// [`PluginFault::Instantiate`]
    Instantiate,
}

impl FaultKind {
    /// Every kind.
    pub const ALL: [FaultKind; 9] = [
        Self::PluginError,
        Self::Deadline,
        Self::Memory,
        Self::Trap,
        Self::ApiInMatches,
        Self::Malformed,
        Self::OutputTooLarge,
        Self::NotImplemented,
        Self::Instantiate,
    ];

    /// The kind called `name` (its [`FaultKind::as_str`]).
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == name)
    }

    /// The snake_case name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::PluginError => "plugin_error",
            Self::Deadline => "deadline",
            Self::Memory => "memory",
            Self::Trap => "trap",
            Self::ApiInMatches => "api_in_matches",
            Self::Malformed => "malformed",
            Self::OutputTooLarge => "output_too_large",
            Self::NotImplemented => "not_implemented",
            Self::Instantiate => "instantiate",
        }
    }
}

impl std::fmt::Display for FaultKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}
