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
//! [`MemoryBus`] is the one backend today. Given an [`EventLog`] (the
//! store's, when the host has a data directory) it writes every accepted
//! event there before it answers or fans out, with one commit for all
//! batches that arrive while the previous commit runs; replays read the
//! log where the in-memory history does not reach.

mod counts;
mod dedup;
mod memory;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use serde::Serialize;

pub use counts::{COUNTS_PRIORITY, EventCounts};
pub use dedup::DedupFilter;
pub use memory::MemoryBus;
pub use weir_core::settings::{BusConfig, DEFAULT_DEDUP_SIZE, DEFAULT_DEDUP_TTL};

pub use weir_core::event::{Event, NewEvent, Selection, event_type_matches};

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
    /// The event log could not be read (the host logged why).
    LogUnreadable,
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

/// Why a publish was refused as a whole (nothing of it was accepted).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PublishError {
    /// The bus is closed (the host is shutting down).
    #[error("the host is shutting down")]
    Closed,
    /// The event log could not store the batch.
    #[error("the event log cannot store events now: {0}")]
    Log(String),
}

/// A durable, append-only log of accepted events, by sequence number.
/// Sequence numbers are strictly increasing; there may be holes (a batch
/// whose commit failed).
pub trait EventLog: Send + Sync {
    /// Stores `events` (in sequence order) as one commit, per the log's
    /// flush policy, and applies retention. Nothing of the batch is stored
    /// on error.
    fn append(&self, events: &[Arc<Event>]) -> Result<(), String>;
    /// Up to `max` stored events with `seq >= from`, in order.
    fn read(&self, from: u64, max: usize) -> Result<Vec<Arc<Event>>, String>;
    /// The first stored sequence number (`None`: empty).
    fn first_seq(&self) -> Result<Option<u64>, String>;
    /// The next sequence number to give: one past every number ever given,
    /// across restarts.
    fn next_seq(&self) -> u64;
    /// The ids and accept times (ms since the epoch) of the newest `n`
    /// events, oldest first: the dedup window is rebuilt from them.
    fn recent_ids(&self, n: usize) -> Result<Vec<(u64, String)>, String>;
}

/// A bus backend.
pub trait EventBus: Send + Sync {
    /// Deduplicates, numbers, stores (with a log) and fans out `events`, in
    /// order; one answer each. May block (bounded) while a full feed makes
    /// room or the log commits: call it from a blocking context.
    fn publish(&self, events: Vec<NewEvent>) -> Result<Vec<Published>, PublishError>;
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
