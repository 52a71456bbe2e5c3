//! The event bus: where accepted events are deduplicated, numbered, kept in
//! a bounded history and fanned out by event type.
//!
//! Two narrow traits are the whole contract, so that a distributed backend
//! (NATS JetStream: a stream with per-subject consumers and start sequences)
//! can replace the in-memory one without touching the pipeline:
//! - [`EventBus`]: publish a batch, open a [`Feed`] for a type pattern from a
//!   start position, register in-process [`Handler`]s.
//! - [`Feed`]: the consumer side, pulled in batches; it reports the events
//!   it had to drop as a [`FeedItem::Gap`].
//!
//! [`MemoryBus`] is the one backend today.

mod counts;
mod dedup;
mod memory;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

pub use counts::{COUNTS_PRIORITY, EventCounts};
pub use dedup::{DEFAULT_DEDUP_SIZE, DEFAULT_DEDUP_TTL, DedupFilter};
pub use memory::MemoryBus;

use crate::plugin::RawEvent;

/// Now, ms since the Unix epoch: what event timestamps are.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

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

    /// The event as plugins receive it.
    pub fn to_raw(&self) -> RawEvent {
        RawEvent {
            event_id: self.new.id.clone(),
            event_type: self.new.event_type.clone(),
            source_time: self.new.source_time.clone(),
            timestamp_ms: self.timestamp_ms,
            payload: self.new.payload.clone(),
        }
    }
}

/// What became of one published event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Published {
    /// Accepted with this sequence number.
    Accepted(u64),
    /// Its id was seen within the dedup window; dropped.
    Duplicate,
}

/// Where a feed starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StartAt {
    /// Only events published from now on.
    #[default]
    Latest,
    /// The oldest event the history still holds.
    Earliest,
    /// This sequence number (or the oldest retained one after it).
    Seq(u64),
}

impl std::str::FromStr for StartAt {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "latest" => Ok(Self::Latest),
            "earliest" => Ok(Self::Earliest),
            n => n
                .parse::<u64>()
                .map(Self::Seq)
                .map_err(|_| format!("`{n}` is not `earliest`, `latest` or a sequence number")),
        }
    }
}

/// Why a feed skipped events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum GapReason {
    /// The consumer was slower than its buffer; the oldest were dropped.
    BufferOverflow,
    /// The history no longer held them when the replay reached them.
    HistoryEvicted,
}

/// One pull from a feed.
#[derive(Debug)]
pub enum FeedItem {
    /// Events in sequence order.
    Events(Vec<Arc<Event>>),
    /// Events of this feed that will never be delivered.
    Gap {
        /// Why.
        reason: GapReason,
        /// How many.
        count: u64,
        /// Sequence number of the first one skipped.
        first_seq: u64,
        /// Sequence number of the last one skipped.
        last_seq: u64,
    },
    /// The bus shut down.
    Closed,
}

/// The consumer side of a bus subscription. Dropping it unsubscribes.
pub trait Feed: Send {
    /// The next events (at most `max`), a gap, or the end. Cancel-safe:
    /// dropping the future before it completes loses nothing.
    fn next(&mut self, max: usize) -> Pin<Box<dyn Future<Output = FeedItem> + Send + '_>>;
}

/// An in-process handler run on every published event of its pattern,
/// inside `publish`, before any feed sees the event. Handlers must be quick.
pub trait Handler: Send + Sync {
    /// Its name, for stats and logs.
    fn name(&self) -> &str;
    /// Higher runs first.
    fn priority(&self) -> i32;
    /// Event type pattern: exact, `prefix.*` or `*`.
    fn pattern(&self) -> &str;
    /// Sees one event.
    fn handle(&self, event: &Event);
}

/// Settings of a bus.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BusConfig {
    /// Ids remembered for dedup (0 disables it).
    pub dedup_size: usize,
    /// How long an id is remembered.
    pub dedup_ttl: Duration,
    /// Events kept in history (0 disables replay).
    pub history_events: usize,
    /// Bytes kept in history.
    pub history_bytes: usize,
    /// How long a publisher waits for room in a full feed buffer before it
    /// marks that consumer slow and drops its oldest events instead.
    pub slow_consumer_wait: Duration,
}

impl Default for BusConfig {
    fn default() -> Self {
        Self {
            dedup_size: DEFAULT_DEDUP_SIZE,
            dedup_ttl: DEFAULT_DEDUP_TTL,
            history_events: 10_000,
            history_bytes: 64 * 1024 * 1024,
            slow_consumer_wait: Duration::from_millis(100),
        }
    }
}

/// Counters of a bus.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct BusStats {
    /// Events accepted.
    pub published: u64,
    /// Events refused as duplicates.
    pub duplicates: u64,
    /// Sequence number of the newest event (0: none yet).
    pub last_seq: u64,
    /// Oldest sequence number in history (0: empty).
    pub history_first_seq: u64,
    /// Events in history.
    pub history_events: usize,
    /// Bytes in history.
    pub history_bytes: usize,
    /// Open feeds.
    pub feeds: usize,
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
        crate::registry::event_type_matches(&self.pattern, &event.new.event_type)
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

/// A bus backend.
pub trait EventBus: Send + Sync {
    /// Deduplicates, numbers and fans out `events`, in order; one answer
    /// each. May block (bounded) while a full feed makes room: call it from
    /// a blocking context.
    fn publish(&self, events: Vec<NewEvent>) -> Vec<Published>;
    /// Opens a feed of the events `selection` selects, from `start`; a
    /// consumer more than `capacity` events behind loses the oldest.
    fn subscribe(&self, selection: Selection, start: StartAt, capacity: usize) -> Box<dyn Feed>;
    /// Adds an in-process handler.
    fn add_handler(&self, handler: Arc<dyn Handler>);
    /// Counters.
    fn stats(&self) -> BusStats;
    /// Ends every feed (they answer [`FeedItem::Closed`]) and refuses new events.
    fn close(&self);
}
