//! The built-in metrics handler: events published per type. Types are
//! chosen by producers, so only the first `max_types` distinct ones are
//! counted by name (each becomes a `/metrics` label); later ones are
//! counted together as [`OTHER`].

use std::collections::BTreeMap;
use std::sync::{Mutex, PoisonError};

use super::{Event, Handler};

/// Handler priority of [`EventCounts`]: after history (which the bus
/// records first), before any other handler.
pub const COUNTS_PRIORITY: i32 = 100;

/// The name under which events of types beyond the bound are counted.
pub const OTHER: &str = "(other)";

/// Counts every published event by type, at most `max_types` types by name.
#[derive(Debug)]
pub struct EventCounts {
    by_type: Mutex<BTreeMap<String, u64>>,
    max_types: usize,
}

impl Default for EventCounts {
    fn default() -> Self {
        Self::new(1_000)
    }
}

impl EventCounts {
    /// Counts at most `max_types` types by name.
    pub fn new(max_types: usize) -> Self {
        Self {
            by_type: Mutex::default(),
            max_types,
        }
    }

    /// Events per type so far.
    pub fn snapshot(&self) -> BTreeMap<String, u64> {
        self.by_type
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

impl Handler for EventCounts {
    fn name(&self) -> &str {
        "event-counts"
    }
    fn priority(&self) -> i32 {
        COUNTS_PRIORITY
    }
    fn pattern(&self) -> &str {
        "*"
    }
    fn handle(&self, event: &Event) {
        let mut m = self.by_type.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(n) = m.get_mut(&event.new.event_type) {
            *n += 1;
            return;
        }
        let named = m.len() - usize::from(m.contains_key(OTHER));
        let name = if named < self.max_types {
            event.new.event_type.clone()
        } else {
            OTHER.to_string()
        };
        *m.entry(name).or_insert(0) += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bus::NewEvent;

    fn event(event_type: &str) -> Event {
        Event {
            seq: 1,
            timestamp_ms: 0,
            new: NewEvent {
                id: "i".into(),
                event_type: event_type.into(),
                source: "s".into(),
                source_time: None,
                correlation_id: None,
                payload: "{}".into(),
                scope: None,
            },
        }
    }

    #[test]
    fn types_beyond_the_bound_are_counted_as_other() {
        let counts = EventCounts::new(3);
        for i in 0..1_000 {
            counts.handle(&event(&format!("t{}", i % 500)));
        }
        let snap = counts.snapshot();
        assert_eq!(snap.len(), 4, "{snap:?}");
        assert_eq!(snap["t0"], 2);
        assert_eq!(snap[OTHER], 1_000 - 6);
    }
}
