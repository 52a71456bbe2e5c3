//! The host's own event: what producers offer ([`NewEvent`]), what the bus
//! numbered ([`Event`]), and which events a reader wants ([`Selection`],
//! [`event_type_matches`]). Plugins see a WIT record converted from these
//! inside the engine; nothing here knows the WIT exists, because the bus
//! carries these events to disk and over the network.

/// An event offered to the bus, before it has a sequence number.
#[derive(Debug, Clone, PartialEq)]
pub struct NewEvent {
    /// Unique id; duplicates within the dedup window are refused.
    pub id: String,
    /// Type, such as `fs.insert`.
    pub event_type: String,
    /// Who produced it.
    pub source: String,
    /// When it happened at the source (RFC 3339), if known.
    pub source_time: Option<String>,
    /// Correlation id, if the producer gave one.
    pub correlation_id: Option<String>,
    /// Payload as compact JSON text.
    pub payload: String,
    /// Who may see it: the datastore whose key published it (or whose
    /// index changed), or `None` for the host (host-level keys only).
    pub scope: Option<String>,
}

/// An event on the bus.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// Position on the bus; strictly increasing, starting at 1.
    pub seq: u64,
    /// When the bus accepted it, ms since the Unix epoch.
    pub timestamp_ms: u64,
    /// Everything the producer gave.
    pub new: NewEvent,
}

impl Event {
    /// Bytes this event holds, as history sizes count them.
    pub fn size_bytes(&self) -> usize {
        let n = &self.new;
        std::mem::size_of::<Self>()
            + n.id.len()
            + n.event_type.len()
            + n.source.len()
            + n.source_time.as_ref().map_or(0, String::len)
            + n.correlation_id.as_ref().map_or(0, String::len)
            + n.payload.len()
    }
}

/// Whether `event_type` fits `pattern`: exact, `prefix*` (such as `fs.*`)
/// or `*`.
pub fn event_type_matches(pattern: &str, event_type: &str) -> bool {
    if pattern == "*" {
        return true;
    }
    match pattern.strip_suffix('*') {
        Some(prefix) => event_type.starts_with(prefix),
        None => pattern == event_type,
    }
}

/// Which events a feed gets: those whose type matches `pattern` and, for a
/// scoped feed, that were published in its `scope` (a datastore). The bus
/// filters before a feed's buffer, so that another scope's traffic never
/// fills it, drops its events or shows in its gap notices.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selection {
    /// Event type: exact, `prefix.*` or `*`.
    pub pattern: String,
    /// `Some(datastore)`: only that scope's events; `None`: every event.
    pub scope: Option<String>,
}

impl Selection {
    /// Whether `event` is selected.
    pub fn matches(&self, event: &Event) -> bool {
        event_type_matches(&self.pattern, &event.new.event_type)
            && self
                .scope
                .as_ref()
                .is_none_or(|s| event.new.scope.as_ref() == Some(s))
    }
}

impl From<&str> for Selection {
    /// Every event whose type matches the pattern, whatever its scope.
    fn from(pattern: &str) -> Self {
        Self {
            pattern: pattern.to_string(),
            scope: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns() {
        assert!(event_type_matches("*", "x"));
        assert!(event_type_matches("fs.*", "fs.insert"));
        assert!(!event_type_matches("fs.*", "fsx"));
        assert!(event_type_matches("fs.insert", "fs.insert"));
        assert!(!event_type_matches("fs.insert", "fs.inserted"));
    }
}
