//! The dead-letter queue: events a key faulted on (or skipped while it was
//! quarantined), with enough to run them again. Bounded; the oldest leave
//! first and are counted.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use serde::Serialize;
use serde::ser::SerializeStruct;

use crate::bus::Event;
use crate::engine::{FaultKind, Params};
use crate::store::{Records, StoreError, Table};
pub use crate::wire::DeadLetterSelector;

/// Why an event became a dead letter; written as its snake_case name
/// (`error_kind` in answers and `kind` labels in metrics).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LetterKind {
    /// A call into the key faulted (the key's own error included).
    Fault(FaultKind),
    /// The output was not JSON, or broke the key's own output schema.
    InvalidOutput,
    /// Not run: the key is quarantined.
    Quarantined,
}

impl LetterKind {
    /// The snake_case name: a fault's kind, `invalid_output` or
    /// `quarantined`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Fault(kind) => kind.as_str(),
            Self::InvalidOutput => "invalid_output",
            Self::Quarantined => "quarantined",
        }
    }
}

impl LetterKind {
    /// The kind called `name` (its [`LetterKind::as_str`]).
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "invalid_output" => Some(Self::InvalidOutput),
            "quarantined" => Some(Self::Quarantined),
            other => FaultKind::from_name(other).map(Self::Fault),
        }
    }
}

impl std::fmt::Display for LetterKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for LetterKind {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// One dead letter.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    /// Its id in the queue.
    pub id: u64,
    /// The key that faulted.
    pub key: String,
    /// The subscription it was processed for.
    pub subscription_id: String,
    /// The subscription's scope: its datastore, or `None` (host-level).
    /// Only that datastore's admin keys (and the host's) see the letter.
    pub scope: Option<String>,
    /// The (normalized) params it was processed with.
    pub params: Params,
    /// The event.
    pub event: Arc<Event>,
    /// Why it is here.
    pub kind: LetterKind,
    /// What went wrong.
    pub message: String,
    /// Times it was run and faulted (0: never run, key quarantined).
    pub attempts: u32,
    /// First failure, ms since the Unix epoch.
    pub first_failed_ms: u64,
    /// Latest failure, ms since the Unix epoch.
    pub last_failed_ms: u64,
}

/// Serializes an event with its payload as JSON (not as a string).
pub struct EventJson<'a>(pub &'a Event);

impl Serialize for EventJson<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let e = self.0;
        let mut st = s.serialize_struct("Event", 8)?;
        st.serialize_field("event_id", &e.new.id)?;
        st.serialize_field("seq", &e.seq)?;
        st.serialize_field("event_type", &e.new.event_type)?;
        st.serialize_field("source", &e.new.source)?;
        st.serialize_field("source_time", &e.new.source_time)?;
        st.serialize_field("correlation_id", &e.new.correlation_id)?;
        st.serialize_field("timestamp", &crate::time::rfc3339_ms(e.timestamp_ms))?;
        let payload = serde_json::value::RawValue::from_string(e.new.payload.clone())
            .map_err(serde::ser::Error::custom)?;
        st.serialize_field("payload", &payload)?;
        st.end()
    }
}

impl Serialize for DeadLetter {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut st = s.serialize_struct("DeadLetter", 10)?;
        st.serialize_field("id", &self.id)?;
        st.serialize_field("key", &self.key)?;
        st.serialize_field("subscription_id", &self.subscription_id)?;
        let params: serde_json::Map<String, serde_json::Value> = self
            .params
            .iter()
            .map(|(k, v)| (k.clone(), v.clone().into()))
            .collect();
        st.serialize_field("params", &params)?;
        st.serialize_field("error_kind", &self.kind)?;
        st.serialize_field("error", &self.message)?;
        st.serialize_field("attempts", &self.attempts)?;
        st.serialize_field(
            "first_failed_at",
            &crate::time::rfc3339_ms(self.first_failed_ms),
        )?;
        st.serialize_field(
            "last_failed_at",
            &crate::time::rfc3339_ms(self.last_failed_ms),
        )?;
        st.serialize_field("event", &EventJson(&self.event))?;
        st.end()
    }
}

/// A letter as the store keeps it: the event's log record, then the rest
/// as JSON.
#[derive(serde::Serialize, serde::Deserialize)]
struct Stored {
    key: String,
    subscription_id: String,
    scope: Option<String>,
    params: Params,
    kind: String,
    message: String,
    attempts: u32,
    first_failed_ms: u64,
    last_failed_ms: u64,
    seq: u64,
}

impl DeadLetter {
    /// Its stored form.
    fn to_record(&self) -> Vec<u8> {
        let mut out = vec![0; 4];
        weir_core::codec::encode(&self.event, &mut out);
        let len = (out.len() - 4) as u32;
        out[..4].copy_from_slice(&len.to_le_bytes());
        let rest = Stored {
            key: self.key.clone(),
            subscription_id: self.subscription_id.clone(),
            scope: self.scope.clone(),
            params: self.params.clone(),
            kind: self.kind.as_str().into(),
            message: self.message.clone(),
            attempts: self.attempts,
            first_failed_ms: self.first_failed_ms,
            last_failed_ms: self.last_failed_ms,
            seq: self.event.seq,
        };
        // Plain data: serializing it cannot fail.
        out.extend(serde_json::to_vec(&rest).unwrap_or_default());
        out
    }

    /// Reads back a stored letter.
    fn from_record(id: u64, bytes: &[u8]) -> Result<Self, String> {
        let len = bytes
            .get(..4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
            .ok_or("truncated")?;
        let event = bytes.get(4..4 + len).ok_or("truncated event")?;
        let rest: Stored = serde_json::from_slice(&bytes[4 + len..]).map_err(|e| e.to_string())?;
        let event = weir_core::codec::decode(rest.seq, event).map_err(|e| e.to_string())?;
        Ok(DeadLetter {
            id,
            key: rest.key,
            subscription_id: rest.subscription_id,
            scope: rest.scope,
            params: rest.params,
            event: Arc::new(event),
            kind: LetterKind::from_name(&rest.kind)
                .ok_or_else(|| format!("unknown kind `{}`", rest.kind))?,
            message: rest.message,
            attempts: rest.attempts,
            first_failed_ms: rest.first_failed_ms,
            last_failed_ms: rest.last_failed_ms,
        })
    }
}

/// The store key of letter `id` (fixed width, so keys sort by id).
fn record_key(id: u64) -> String {
    format!("{id:020}")
}

impl DeadLetterSelector {
    fn selects(&self, d: &DeadLetter) -> bool {
        (self.ids.is_empty() || self.ids.contains(&d.id))
            && self.key.as_ref().is_none_or(|k| k == &d.key)
            && self
                .scope
                .as_ref()
                .is_none_or(|s| d.scope.as_ref() == Some(s))
    }
}

/// The queue, bounded by count and by bytes.
pub struct DeadLetters {
    /// Shared with the watch of a cluster's records.
    entries: Arc<Mutex<Held>>,
    /// Where letters are written through (none: memory only).
    records: Option<Arc<dyn Records>>,
    capacity: usize,
    capacity_bytes: usize,
    next_id: AtomicU64,
    evicted: AtomicU64,
}

/// The letters held and their bytes.
#[derive(Default)]
struct Held {
    letters: VecDeque<DeadLetter>,
    bytes: usize,
}

/// What a letter holds in memory, roughly: its event's payload and fields,
/// the message and the params (the event is shared with the bus history
/// while it lasts, but outlives it here).
fn size_of(d: &DeadLetter) -> usize {
    let e = &d.event.new;
    256 + e.payload.len()
        + e.id.len()
        + e.event_type.len()
        + e.source.len()
        + d.key.len()
        + d.subscription_id.len()
        + d.message.len()
        + d.params
            .iter()
            .map(|(k, v)| k.len() + v.len())
            .sum::<usize>()
}

impl DeadLetters {
    /// A queue of at most `capacity` letters and `capacity_bytes` bytes
    /// (oldest evicted first; the newest letter is always kept).
    pub fn new(capacity: usize, capacity_bytes: usize) -> Self {
        Self {
            entries: Arc::default(),
            records: None,
            capacity: capacity.max(1),
            capacity_bytes,
            next_id: AtomicU64::new(1),
            evicted: AtomicU64::new(0),
        }
    }

    /// A queue written through to `records`, holding what they held (ids
    /// continue after the newest).
    pub fn durable(
        capacity: usize,
        capacity_bytes: usize,
        records: Arc<dyn Records>,
    ) -> Result<Self, StoreError> {
        let mut q = Self::new(capacity, capacity_bytes);
        let mut held = Vec::new();
        for (key, bytes) in records.load(Table::DeadLetters)? {
            let corrupt = |reason: String| StoreError::Corrupt {
                file: "dead letters".into(),
                table: Table::DeadLetters.name(),
                key: key.clone(),
                reason,
            };
            let id = key.parse::<u64>().map_err(|e| corrupt(e.to_string()))?;
            held.push(DeadLetter::from_record(id, &bytes).map_err(corrupt)?);
        }
        let next = if records.shared() {
            // Several hosts number letters at once: each numbers within a
            // range of its own (a random 11-bit tag above a 42-bit count,
            // so ids stay exact in JSON), checked against the bucket.
            let tag = u64::from(rand::random::<u16>() & 0x7ff);
            (tag << 42) | 1
        } else {
            held.iter().map(|d| d.id + 1).max().unwrap_or(1)
        };
        q.next_id = AtomicU64::new(next);
        for letter in held {
            q.put_back(letter);
        }
        if records.shared() {
            q.follow(records.as_ref());
        }
        q.records = Some(records);
        Ok(q)
    }

    /// Takes the letters other hosts raise, replay and delete (a cluster).
    fn follow(&self, records: &dyn Records) {
        let held = Arc::downgrade(&self.entries);
        let (capacity, capacity_bytes) = (self.capacity, self.capacity_bytes);
        records.watch(
            Table::DeadLetters,
            Arc::new(move |key: &str, value: Option<&[u8]>| {
                let (Some(held), Ok(id)) = (held.upgrade(), key.parse::<u64>()) else {
                    return;
                };
                let mut q = held.lock().unwrap_or_else(PoisonError::into_inner);
                let at = q.letters.partition_point(|d| d.id < id);
                let here = q.letters.get(at).is_some_and(|d| d.id == id);
                match value {
                    Some(bytes) if !here => {
                        let Ok(letter) = DeadLetter::from_record(id, bytes) else {
                            tracing::warn!(id, "a dead letter another host wrote cannot be read");
                            return;
                        };
                        q.bytes += size_of(&letter);
                        q.letters.insert(at, letter);
                        // The host that raised it evicts in the bucket too.
                        while q.letters.len() > capacity
                            || (q.bytes > capacity_bytes && q.letters.len() > 1)
                        {
                            let Some(old) = q.letters.pop_front() else {
                                break;
                            };
                            q.bytes -= size_of(&old);
                        }
                    }
                    None if here => {
                        if let Some(old) = q.letters.remove(at) {
                            q.bytes -= size_of(&old);
                        }
                    }
                    _ => {}
                }
            }),
        );
    }

    /// Writes a change through; a failure is logged and counted (the queue
    /// in memory stays right until a restart).
    fn write(&self, letter: Option<&DeadLetter>, removed: &[u64]) {
        let Some(records) = &self.records else { return };
        let mut result = Ok(());
        if let Some(d) = letter {
            result = records.put(Table::DeadLetters, &record_key(d.id), &d.to_record());
        }
        for id in removed {
            if result.is_ok() {
                result = records.remove(Table::DeadLetters, &record_key(*id));
            }
        }
        if let Err(e) = result {
            tracing::error!("dead letters not stored: {e}");
        }
    }

    fn lock(&self) -> MutexGuard<'_, Held> {
        self.entries.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Adds a letter (its `id` is assigned here); returns the id.
    pub fn push(&self, mut letter: DeadLetter) -> u64 {
        letter.id = self.next_id.fetch_add(1, Ordering::Relaxed);
        if let Some(records) = self.records.as_ref().filter(|r| r.shared()) {
            // Another host with the same tag may have used the id: the
            // record is made only where none is (one round trip each).
            loop {
                let key = record_key(letter.id);
                match records.create(Table::DeadLetters, &key, &letter.to_record()) {
                    Ok(true) => {
                        let id = letter.id;
                        self.insert(letter, false);
                        return id;
                    }
                    Ok(false) => letter.id = self.next_id.fetch_add(1, Ordering::Relaxed),
                    Err(e) => {
                        tracing::error!("dead letter {} not stored: {e}", letter.id);
                        break;
                    }
                }
            }
        }
        let id = letter.id;
        self.put_back(letter);
        id
    }

    /// Puts a letter back after a failed replay, keeping its id, in id order.
    pub fn put_back(&self, letter: DeadLetter) {
        self.insert(letter, true)
    }

    /// Holds `letter` in id order (writing its record first when `write`),
    /// evicting the oldest beyond the bounds.
    fn insert(&self, letter: DeadLetter, write: bool) {
        let mut q = self.lock();
        let at = q.letters.partition_point(|d| d.id < letter.id);
        if q.letters.get(at).is_some_and(|d| d.id == letter.id) {
            // The cluster's watch handed it over already (its record was
            // made before this lock was taken).
            return;
        }
        q.bytes += size_of(&letter);
        let mut evicted = Vec::new();
        if write {
            self.write(Some(&letter), &[]);
        }
        q.letters.insert(at, letter);
        while q.letters.len() > self.capacity
            || (q.bytes > self.capacity_bytes && q.letters.len() > 1)
        {
            let Some(old) = q.letters.pop_front() else {
                break;
            };
            q.bytes -= size_of(&old);
            evicted.push(old.id);
            self.evicted.fetch_add(1, Ordering::Relaxed);
        }
        self.write(None, &evicted);
    }

    /// Letters selected, oldest first, at most `limit`.
    pub fn list(&self, selector: &DeadLetterSelector, limit: usize) -> Vec<DeadLetter> {
        self.lock()
            .letters
            .iter()
            .filter(|d| selector.selects(d))
            .take(limit)
            .cloned()
            .collect()
    }

    /// Removes and returns the oldest `limit` letters selected.
    pub fn take(&self, selector: &DeadLetterSelector, limit: usize) -> Vec<DeadLetter> {
        let mut q = self.lock();
        let mut taken = Vec::new();
        let kept: VecDeque<DeadLetter> = q
            .letters
            .drain(..)
            .filter_map(|d| {
                if taken.len() < limit && selector.selects(&d) {
                    taken.push(d);
                    None
                } else {
                    Some(d)
                }
            })
            .collect();
        q.bytes = kept.iter().map(size_of).sum();
        q.letters = kept;
        let ids: Vec<u64> = taken.iter().map(|d| d.id).collect();
        self.write(None, &ids);
        taken
    }

    /// Letters `selector` selects.
    pub fn count(&self, selector: &DeadLetterSelector) -> usize {
        self.lock()
            .letters
            .iter()
            .filter(|d| selector.selects(d))
            .count()
    }

    /// Letters held.
    pub fn len(&self) -> usize {
        self.lock().letters.len()
    }

    /// Bytes held (as [`DeadLetters::new`] counts them).
    pub fn bytes(&self) -> usize {
        self.lock().bytes
    }

    /// Whether none is held.
    pub fn is_empty(&self) -> bool {
        self.lock().letters.is_empty()
    }

    /// Letters that left because the queue was full (by count or bytes).
    pub fn evicted(&self) -> u64 {
        self.evicted.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bus::NewEvent;

    fn letter(payload_bytes: usize) -> DeadLetter {
        DeadLetter {
            id: 0,
            key: "k".into(),
            subscription_id: "s".into(),
            scope: None,
            params: Params::default(),
            event: Arc::new(Event {
                seq: 1,
                timestamp_ms: 0,
                new: NewEvent {
                    id: "e".into(),
                    event_type: "t".into(),
                    source: "s".into(),
                    source_time: None,
                    correlation_id: None,
                    payload: "x".repeat(payload_bytes),
                    scope: None,
                },
            }),
            kind: LetterKind::Fault(FaultKind::PluginError),
            message: "m".into(),
            attempts: 1,
            first_failed_ms: 0,
            last_failed_ms: 0,
        }
    }

    #[test]
    fn the_queue_is_bounded_by_bytes_as_well_as_count() {
        let q = DeadLetters::new(10_000, 4 << 20);
        for _ in 0..100 {
            q.push(letter(1 << 20));
        }
        assert!(q.bytes() <= 4 << 20, "{} bytes", q.bytes());
        assert_eq!(q.len(), 3);
        assert_eq!(q.evicted(), 97);
        // The newest are kept, and one letter larger than the cap stays.
        let newest = q.list(&DeadLetterSelector::default(), 10);
        assert_eq!(newest.last().map(|d| d.id), Some(100));
        q.push(letter(8 << 20));
        assert_eq!(q.len(), 1);
        let taken = q.take(&DeadLetterSelector::default(), 10);
        assert_eq!((taken.len(), q.bytes()), (1, 0));
    }
}
