//! The built-in metrics handler: events published per type.

use std::collections::BTreeMap;
use std::sync::{Mutex, PoisonError};

use super::{Event, Handler};

/// Handler priority of [`EventCounts`]: after history (which the bus
/// records first), before any other handler.
pub const COUNTS_PRIORITY: i32 = 100;

/// Counts every published event by type.
#[derive(Debug, Default)]
pub struct EventCounts {
    by_type: Mutex<BTreeMap<String, u64>>,
}

impl EventCounts {
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
        match m.get_mut(&event.new.event_type) {
            Some(n) => *n += 1,
            None => {
                m.insert(event.new.event_type.clone(), 1);
            }
        }
    }
}
