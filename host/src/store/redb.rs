//! The store on redb: one file, ACID transactions, crash-safe commits.
//!
//! Tables: `events` (seq -> record, see [`weir_core::codec`]), `meta`
//! (format, the next sequence number, the log's byte total) and one table
//! per [`Table`]. After an I/O error redb refuses further writes until the
//! database is opened again: the store then reopens it on the next write,
//! so that the host recovers by itself when, say, disk space returns.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use redb::{
    Database, Durability, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition,
};
use serde::Serialize;

use super::{DataDir, Fsync, LogConfig, Records, STORE_FILE, StoreError, Table};
use crate::bus::{Event, EventLog};
use weir_core::codec;

const EVENTS: TableDefinition<u64, &[u8]> = TableDefinition::new("events");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

/// The store format this build writes, in `meta` under `format`.
const FORMAT: u64 = 1;

/// Events retention removes in one commit at most, so that a commit after
/// a lowered limit does not stall publishers for long; the rest go with
/// the next commits.
const RETENTION_STEP: usize = 10_000;

/// Upper bounds (ms) of the commit latency histogram.
pub const COMMIT_BUCKETS_MS: [f64; 10] =
    [0.5, 1.0, 2.5, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 1000.0];

fn records(table: Table) -> TableDefinition<'static, &'static str, &'static [u8]> {
    TableDefinition::new(table.name())
}

/// Counters of the store, for `/metrics` and `/readyz`.
#[derive(Debug, Default)]
pub struct StoreStats {
    /// Commits of the event log.
    pub commits: AtomicU64,
    /// Commits flushed to disk (fsyncs).
    pub fsyncs: AtomicU64,
    /// Failed reads and writes.
    pub errors: AtomicU64,
    /// Events removed by retention.
    pub retained_out: AtomicU64,
    /// Commit latencies, per bucket of [`COMMIT_BUCKETS_MS`] (and one
    /// more: slower).
    pub commit_ms: [AtomicU64; 11],
    /// Sum of commit latencies, µs.
    pub commit_us_sum: AtomicU64,
    /// Whether the last write failed (publishing answers 503 until one
    /// succeeds).
    pub failing: AtomicBool,
    last_error: Mutex<Option<String>>,
}

impl StoreStats {
    fn commit_took(&self, took: Duration) {
        let ms = took.as_secs_f64() * 1000.0;
        let i = COMMIT_BUCKETS_MS
            .iter()
            .position(|b| ms <= *b)
            .unwrap_or(COMMIT_BUCKETS_MS.len());
        self.commit_ms[i].fetch_add(1, Ordering::Relaxed);
        self.commit_us_sum
            .fetch_add(took.as_micros() as u64, Ordering::Relaxed);
    }

    /// The last error, if the store is failing now.
    pub fn last_error(&self) -> Option<String> {
        if !self.failing.load(Ordering::Relaxed) {
            return None;
        }
        self.last_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

/// A summary for `/readyz`.
#[derive(Debug, Clone, Serialize)]
pub struct StoreSummary {
    /// The store file.
    pub file: String,
    /// Its size in bytes.
    pub size_bytes: u64,
    /// `ok`, or `failing` (with `error`).
    pub state: &'static str,
    /// The last error while failing.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The event log and records in one redb file.
pub struct RedbStore {
    file: PathBuf,
    /// `None` after an I/O error until reopened.
    db: Mutex<Option<Arc<Database>>>,
    config: LogConfig,
    stats: StoreStats,
    next_seq: AtomicU64,
    log_bytes: AtomicU64,
    /// Commits not yet flushed (with `Fsync::Interval`).
    dirty: AtomicBool,
    /// Set by [`RedbStore::close`]: nothing is read or written after.
    closed: AtomicBool,
    /// The data directory's lock, released by [`RedbStore::close`].
    dir: Mutex<Option<DataDir>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl RedbStore {
    /// Opens (or creates) the store in `dir`. A file that is not a weir
    /// store, or one of a newer format, is refused, named.
    pub fn open(dir: DataDir, config: LogConfig) -> Result<Arc<Self>, StoreError> {
        let file = dir.path().join(STORE_FILE);
        let db = open_db(&file)?;
        let (next_seq, log_bytes) = check_format(&db, &file)?;
        let store = Arc::new(Self {
            file,
            db: Mutex::new(Some(Arc::new(db))),
            config,
            stats: StoreStats::default(),
            next_seq: AtomicU64::new(next_seq),
            log_bytes: AtomicU64::new(log_bytes),
            dirty: AtomicBool::new(false),
            closed: AtomicBool::new(false),
            dir: Mutex::new(Some(dir)),
        });
        if let Fsync::Interval(every) = config.fsync {
            // Flushes what the interval's commits left in memory.
            let weak = Arc::downgrade(&store);
            std::thread::Builder::new()
                .name("weir-store-flush".into())
                .spawn(move || {
                    loop {
                        std::thread::sleep(every);
                        let Some(store) = weak.upgrade() else { return };
                        if store.dirty.swap(false, Ordering::AcqRel)
                            && let Err(e) = store.flush()
                        {
                            store.dirty.store(true, Ordering::Release);
                            tracing::error!("event log flush failed: {e}");
                        }
                    }
                })
                .map_err(|e| StoreError::Io(format!("cannot start the flush thread: {e}")))?;
        }
        Ok(store)
    }

    /// The store's file.
    pub fn file(&self) -> &Path {
        &self.file
    }

    /// Its counters.
    pub fn stats(&self) -> &StoreStats {
        &self.stats
    }

    /// Bytes of events in the log, as stored.
    pub fn log_bytes(&self) -> u64 {
        self.log_bytes.load(Ordering::Relaxed)
    }

    /// Size, state and last error.
    pub fn summary(&self) -> StoreSummary {
        let error = self.stats.last_error();
        StoreSummary {
            file: self.file.display().to_string(),
            size_bytes: std::fs::metadata(&self.file).map_or(0, |m| m.len()),
            state: if error.is_some() { "failing" } else { "ok" },
            error,
        }
    }

    /// Flushes what is not flushed yet, closes the file and releases the
    /// data directory (a host that shuts down, so that another may start
    /// on it in this process). Later calls fail.
    pub fn close(&self) {
        if self.dirty.swap(false, Ordering::AcqRel)
            && let Err(e) = self.flush()
        {
            tracing::error!("event log flush at close failed: {e}");
        }
        self.closed.store(true, Ordering::Release);
        lock(&self.db).take();
        lock(&self.dir).take();
    }

    /// The database, reopened if an earlier I/O error closed it.
    fn db(&self) -> Result<Arc<Database>, StoreError> {
        if self.closed.load(Ordering::Acquire) {
            return Err(StoreError::Io("the store is closed".into()));
        }
        let mut slot = lock(&self.db);
        if let Some(db) = slot.as_ref() {
            return Ok(db.clone());
        }
        let db = Arc::new(open_db(&self.file)?);
        *slot = Some(db.clone());
        tracing::info!(file = %self.file.display(), "store reopened after an error");
        Ok(db)
    }

    /// Records a failure; an I/O failure closes the database, to be
    /// reopened by the next call.
    fn failed(&self, e: redb::Error) -> StoreError {
        self.stats.errors.fetch_add(1, Ordering::Relaxed);
        let io = matches!(
            e,
            redb::Error::Io(_) | redb::Error::PreviousIo | redb::Error::DatabaseClosed
        );
        if io {
            lock(&self.db).take();
        }
        let message = e.to_string();
        self.set_failing(Some(message.clone()));
        StoreError::Io(message)
    }

    fn set_failing(&self, error: Option<String>) {
        let failing = error.is_some();
        if failing || self.stats.failing.load(Ordering::Relaxed) {
            *lock(&self.stats.last_error) = error;
            self.stats.failing.store(failing, Ordering::Relaxed);
        }
    }

    fn durability(&self) -> Durability {
        match self.config.fsync {
            Fsync::Always => Durability::Immediate,
            Fsync::Interval(_) => Durability::None,
        }
    }

    /// Flushes commits made without a flush (an empty durable commit).
    pub fn flush(&self) -> Result<(), StoreError> {
        let db = self.db()?;
        let mut tx = db.begin_write().map_err(|e| self.failed(e.into()))?;
        tx.set_durability(Durability::Immediate)
            .map_err(|e| StoreError::Io(e.to_string()))?;
        tx.commit().map_err(|e| self.failed(e.into()))?;
        self.stats.fsyncs.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    fn write_events(&self, events: &[Arc<Event>]) -> Result<(), StoreError> {
        let db = self.db()?;
        let started = Instant::now();
        let mut tx = db.begin_write().map_err(|e| self.failed(e.into()))?;
        tx.set_durability(self.durability())
            .map_err(|e| StoreError::Io(e.to_string()))?;
        let mut next = self.next_seq.load(Ordering::Relaxed);
        let mut bytes = self.log_bytes.load(Ordering::Relaxed);
        let mut dropped = 0u64;
        {
            let mut table = tx.open_table(EVENTS).map_err(|e| self.failed(e.into()))?;
            let mut buf = Vec::new();
            for event in events {
                buf.clear();
                codec::encode(event, &mut buf);
                table
                    .insert(event.seq, buf.as_slice())
                    .map_err(|e| self.failed(e.into()))?;
                bytes += buf.len() as u64;
                next = next.max(event.seq + 1);
            }
            let oldest_ms = self
                .config
                .retention_age
                .map(|age| crate::time::now_ms().saturating_sub(age.as_millis() as u64));
            let count = table.len().map_err(|e| self.failed(e.into()))?;
            let mut count = count;
            for _ in 0..RETENTION_STEP {
                let over =
                    count > self.config.retention_events || bytes > self.config.retention_bytes;
                let (seq, len, ts) = match table.first().map_err(|e| self.failed(e.into()))? {
                    Some((k, v)) => {
                        let v = v.value();
                        let ts = codec::decode_id(v).map_or(0, |(ts, _)| ts);
                        (k.value(), v.len() as u64, ts)
                    }
                    None => break,
                };
                let old = oldest_ms.is_some_and(|o| ts < o);
                // The newest event stays whatever the size bounds say.
                if !(old || over && count > 1) {
                    break;
                }
                table.remove(seq).map_err(|e| self.failed(e.into()))?;
                count -= 1;
                bytes = bytes.saturating_sub(len);
                dropped += 1;
            }
        }
        {
            let mut meta = tx.open_table(META).map_err(|e| self.failed(e.into()))?;
            meta.insert("next_seq", next)
                .map_err(|e| self.failed(e.into()))?;
            meta.insert("log_bytes", bytes)
                .map_err(|e| self.failed(e.into()))?;
        }
        tx.commit().map_err(|e| self.failed(e.into()))?;
        self.next_seq.store(next, Ordering::Relaxed);
        self.log_bytes.store(bytes, Ordering::Relaxed);
        self.stats.commits.fetch_add(1, Ordering::Relaxed);
        self.stats
            .retained_out
            .fetch_add(dropped, Ordering::Relaxed);
        match self.config.fsync {
            Fsync::Always => {
                self.stats.fsyncs.fetch_add(1, Ordering::Relaxed);
            }
            Fsync::Interval(_) => self.dirty.store(true, Ordering::Release),
        }
        self.stats.commit_took(started.elapsed());
        self.set_failing(None);
        Ok(())
    }

    /// `def` in a read transaction of its own (every table exists: they
    /// are made when the store is).
    fn read_table<K: redb::Key + 'static, V: redb::Value + 'static>(
        &self,
        def: TableDefinition<K, V>,
    ) -> Result<redb::ReadOnlyTable<K, V>, StoreError> {
        let db = self.db()?;
        let tx = db.begin_read().map_err(|e| self.failed(e.into()))?;
        tx.open_table(def).map_err(|e| self.failed(e.into()))
    }

    fn read_events(&self, from: u64, max: usize) -> Result<Vec<Arc<Event>>, StoreError> {
        let table = self.read_table(EVENTS)?;
        let mut out = Vec::new();
        for row in table.range(from..).map_err(|e| self.failed(e.into()))? {
            let (k, v) = row.map_err(|e| self.failed(e.into()))?;
            let seq = k.value();
            let event = codec::decode(seq, v.value()).map_err(|e| {
                self.stats.errors.fetch_add(1, Ordering::Relaxed);
                StoreError::Corrupt {
                    file: self.file.clone(),
                    table: "events",
                    key: seq.to_string(),
                    reason: e.to_string(),
                }
            })?;
            out.push(Arc::new(event));
            if out.len() >= max {
                break;
            }
        }
        Ok(out)
    }

    fn first(&self) -> Result<Option<u64>, StoreError> {
        let table = self.read_table(EVENTS)?;
        let first = table.first().map_err(|e| self.failed(e.into()))?;
        Ok(first.map(|(k, _)| k.value()))
    }

    fn recent(&self, n: usize) -> Result<Vec<(u64, String)>, StoreError> {
        let table = self.read_table(EVENTS)?;
        let mut out = Vec::with_capacity(n.min(1 << 16));
        for row in table.iter().map_err(|e| self.failed(e.into()))?.rev() {
            if out.len() >= n {
                break;
            }
            let (k, v) = row.map_err(|e| self.failed(e.into()))?;
            let id = codec::decode_id(v.value()).map_err(|e| StoreError::Corrupt {
                file: self.file.clone(),
                table: "events",
                key: k.value().to_string(),
                reason: e.to_string(),
            })?;
            out.push(id);
        }
        out.reverse();
        Ok(out)
    }

    fn write_record(
        &self,
        table: Table,
        key: &str,
        value: Option<&[u8]>,
    ) -> Result<(), StoreError> {
        let db = self.db()?;
        let tx = db.begin_write().map_err(|e| self.failed(e.into()))?;
        {
            let mut t = tx
                .open_table(records(table))
                .map_err(|e| self.failed(e.into()))?;
            match value {
                Some(v) => {
                    t.insert(key, v).map_err(|e| self.failed(e.into()))?;
                }
                None => {
                    t.remove(key).map_err(|e| self.failed(e.into()))?;
                }
            }
        }
        tx.commit().map_err(|e| self.failed(e.into()))?;
        self.set_failing(None);
        Ok(())
    }
}

impl EventLog for RedbStore {
    fn append(&self, events: &[Arc<Event>]) -> Result<(), String> {
        if events.is_empty() {
            return Ok(());
        }
        self.write_events(events).map_err(|e| e.to_string())
    }

    fn read(&self, from: u64, max: usize) -> Result<Vec<Arc<Event>>, String> {
        // A damaged page can make redb panic mid-read: a replay then ends
        // with an error, and the host goes on.
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            self.read_events(from, max.max(1))
        }))
        .unwrap_or_else(|_| {
            self.stats.errors.fetch_add(1, Ordering::Relaxed);
            Err(StoreError::Io(
                "the event log panicked while reading".into(),
            ))
        })
        .map_err(|e| e.to_string())
    }

    fn first_seq(&self) -> Result<Option<u64>, String> {
        self.first().map_err(|e| e.to_string())
    }

    fn next_seq(&self) -> u64 {
        self.next_seq.load(Ordering::Relaxed)
    }

    fn recent_ids(&self, n: usize) -> Result<Vec<(u64, String)>, String> {
        self.recent(n).map_err(|e| e.to_string())
    }
}

impl Records for RedbStore {
    fn get(&self, table: Table, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let t = self.read_table(records(table))?;
        let v = t.get(key).map_err(|e| self.failed(e.into()))?;
        Ok(v.map(|v| v.value().to_vec()))
    }

    fn keys(&self, table: Table, prefix: &str) -> Result<Vec<String>, StoreError> {
        let t = self.read_table(records(table))?;
        let mut out = Vec::new();
        for row in t.range(prefix..).map_err(|e| self.failed(e.into()))? {
            let (k, _) = row.map_err(|e| self.failed(e.into()))?;
            let k = k.value();
            if !k.starts_with(prefix) {
                break;
            }
            out.push(k.to_string());
        }
        Ok(out)
    }

    fn put(&self, table: Table, key: &str, value: &[u8]) -> Result<(), StoreError> {
        self.write_record(table, key, Some(value))
    }

    fn remove(&self, table: Table, key: &str) -> Result<(), StoreError> {
        self.write_record(table, key, None)
    }

    fn load(&self, table: Table) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let t = self.read_table(records(table))?;
        let mut out = Vec::new();
        for row in t.iter().map_err(|e| self.failed(e.into()))? {
            let (k, v) = row.map_err(|e| self.failed(e.into()))?;
            out.push((k.value().to_string(), v.value().to_vec()));
        }
        Ok(out)
    }
}

fn open_db(file: &Path) -> Result<Database, StoreError> {
    let foreign = |reason: String| StoreError::Foreign {
        file: file.to_path_buf(),
        reason,
    };
    // The whole file is checked at open (its pages' checksums): a file
    // changed behind redb's back is refused here, by name, rather than
    // trusted and found out by a read later.
    match redb::Builder::new()
        .set_check_integrity_on_open(true)
        .create(file)
    {
        Ok(db) => Ok(db),
        Err(redb::DatabaseError::Storage(redb::StorageError::Io(e))) => {
            if e.kind() == std::io::ErrorKind::InvalidData {
                Err(foreign(e.to_string()))
            } else {
                Err(StoreError::Io(format!("{}: {e}", file.display())))
            }
        }
        Err(redb::DatabaseError::Storage(redb::StorageError::Corrupted(m))) => Err(foreign(m)),
        Err(redb::DatabaseError::DatabaseAlreadyOpen) => Err(StoreError::Io(format!(
            "{}: open elsewhere (another process, or an earlier open in this one not yet closed)",
            file.display()
        ))),
        Err(redb::DatabaseError::UpgradeRequired(v)) => {
            Err(foreign(format!("redb file format {v}")))
        }
        Err(e) => Err(StoreError::Io(format!("{}: {e}", file.display()))),
    }
}

/// Checks (or, in a new file, writes) the format; answers the next sequence
/// number and the log's byte total.
fn check_format(db: &Database, file: &Path) -> Result<(u64, u64), StoreError> {
    let io = |e: redb::Error| StoreError::Io(format!("{}: {e}", file.display()));
    let tx = db.begin_write().map_err(|e| io(e.into()))?;
    let (next, bytes) = {
        let mut meta = tx.open_table(META).map_err(|e| io(e.into()))?;
        let format = meta
            .get("format")
            .map_err(|e| io(e.into()))?
            .map(|v| v.value());
        match format {
            None => {
                meta.insert("format", FORMAT).map_err(|e| io(e.into()))?;
            }
            Some(FORMAT) => {}
            Some(other) => {
                return Err(StoreError::Foreign {
                    file: file.to_path_buf(),
                    reason: format!("store format {other}, this build reads format {FORMAT}"),
                });
            }
        }
        let next = meta
            .get("next_seq")
            .map_err(|e| io(e.into()))?
            .map_or(1, |v| v.value());
        let bytes = meta
            .get("log_bytes")
            .map_err(|e| io(e.into()))?
            .map_or(0, |v| v.value());
        (next, bytes)
    };
    {
        // Create the tables, so that readers find them.
        tx.open_table(EVENTS).map_err(|e| io(e.into()))?;
        for t in Table::ALL {
            tx.open_table(records(t)).map_err(|e| io(e.into()))?;
        }
    }
    tx.commit().map_err(|e| io(e.into()))?;
    Ok((next.max(1), bytes))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bus::NewEvent;

    fn event(seq: u64, ts: u64) -> Arc<Event> {
        Arc::new(Event {
            seq,
            timestamp_ms: ts,
            new: NewEvent {
                id: format!("e{seq}"),
                event_type: "t".into(),
                source: "s".into(),
                source_time: None,
                correlation_id: None,
                payload: "{}".into(),
                scope: None,
            },
        })
    }

    fn open(dir: &Path, config: LogConfig) -> Arc<RedbStore> {
        RedbStore::open(DataDir::open(dir).unwrap(), config).unwrap()
    }

    #[test]
    fn the_log_survives_reopening_and_numbers_continue() {
        let dir = tempfile::tempdir().unwrap();
        let now = crate::time::now_ms();
        {
            let s = open(dir.path(), LogConfig::default());
            assert_eq!(s.next_seq(), 1);
            s.append(&[event(1, now), event(2, now)]).unwrap();
            s.append(&[event(5, now)]).unwrap();
            s.put(Table::PluginState, "p/x", b"1").unwrap();
        }
        let s = open(dir.path(), LogConfig::default());
        assert_eq!(s.next_seq(), 6);
        let seqs: Vec<u64> = s.read(2, 10).unwrap().iter().map(|e| e.seq).collect();
        assert_eq!(seqs, [2, 5]);
        assert_eq!(s.read(1, 1).unwrap()[0].new.id, "e1");
        assert_eq!(s.first_seq().unwrap(), Some(1));
        let ids: Vec<String> = s
            .recent_ids(2)
            .unwrap()
            .into_iter()
            .map(|(_, id)| id)
            .collect();
        assert_eq!(ids, ["e2", "e5"]);
        assert_eq!(
            s.load(Table::PluginState).unwrap(),
            [("p/x".to_string(), b"1".to_vec())]
        );
    }

    #[test]
    fn retention_by_count_bytes_and_age_removes_the_oldest() {
        let dir = tempfile::tempdir().unwrap();
        let now = crate::time::now_ms();
        let s = open(
            dir.path(),
            LogConfig {
                retention_events: 3,
                retention_age: Some(Duration::from_secs(60)),
                ..LogConfig::default()
            },
        );
        s.append(&[event(1, now - 120_000), event(2, now)]).unwrap();
        assert_eq!(s.first_seq().unwrap(), Some(2), "too old");
        s.append(&[event(3, now), event(4, now), event(5, now)])
            .unwrap();
        assert_eq!(s.first_seq().unwrap(), Some(3), "too many");
        let per = s.log_bytes() / 3;
        drop(s);
        let s = open(
            dir.path(),
            LogConfig {
                retention_bytes: per * 2,
                ..LogConfig::default()
            },
        );
        s.append(&[event(6, now)]).unwrap();
        assert_eq!(s.first_seq().unwrap(), Some(5), "too large");
        assert!(s.log_bytes() <= per * 2);
    }

    #[test]
    fn a_damaged_file_is_refused_by_name_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let now = crate::time::now_ms();
        {
            let s = open(dir.path(), LogConfig::default());
            let events: Vec<_> = (1..=2000).map(|i| event(i, now)).collect();
            s.append(&events).unwrap();
        }
        let file = dir.path().join(STORE_FILE);
        let mut bytes = std::fs::read(&file).unwrap();
        let mid = bytes.len() / 2;
        for b in &mut bytes[mid..mid + 4096] {
            *b ^= 0x5a;
        }
        std::fs::write(&file, bytes).unwrap();
        assert_refused(dir.path());
    }

    /// Opening the store in `dir` is refused, naming the file.
    fn assert_refused(dir: &Path) {
        let err = RedbStore::open(DataDir::open(dir).unwrap(), LogConfig::default())
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains(STORE_FILE), "{err}");
        assert!(err.contains("damaged, or not a weir store"), "{err}");
    }

    #[test]
    fn a_foreign_file_is_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join(STORE_FILE),
            b"not a database at all, just text",
        )
        .unwrap();
        assert_refused(dir.path());
    }

    /// The durable bus over this store: what is accepted survives a
    /// restart, numbers continue, retries stay duplicates, and replays
    /// cross the restart.
    #[tokio::test]
    async fn a_durable_bus_remembers_across_a_restart() {
        use crate::bus::{BusConfig, EventBus, FeedItem, MemoryBus, Published, StartAt};
        let dir = tempfile::tempdir().unwrap();
        let config = BusConfig {
            history_events: 2,
            ..BusConfig::default()
        };
        let new = |id: &str| NewEvent {
            id: id.into(),
            ..event(0, 0).new.clone()
        };
        {
            let store = open(dir.path(), LogConfig::default());
            let bus = MemoryBus::durable(config.clone(), store).unwrap();
            // Concurrent publishers share commits and keep their order.
            let threads: Vec<_> = (0..4)
                .map(|t| {
                    let bus = bus.clone();
                    std::thread::spawn(move || {
                        for i in 0..50 {
                            let got = bus.publish(vec![new(&format!("{t}-{i}"))]).unwrap();
                            assert!(matches!(got[0], Published::Accepted(_)));
                        }
                    })
                })
                .collect();
            for t in threads {
                t.join().unwrap();
            }
            assert_eq!(bus.stats().last_seq, 200);
        }
        let store = open(dir.path(), LogConfig::default());
        let commits_before = store.stats().commits.load(Ordering::Relaxed);
        let bus = MemoryBus::durable(config, store.clone()).unwrap();
        assert_eq!(
            bus.publish(vec![new("0-0"), new("fresh")]).unwrap(),
            [Published::Duplicate, Published::Accepted(201)]
        );
        assert_eq!(
            store.stats().commits.load(Ordering::Relaxed),
            commits_before + 1
        );
        let mut feed = bus.subscribe("*".into(), StartAt::Earliest, 1000);
        let mut seqs = Vec::new();
        while seqs.len() < 201 {
            match feed.next(1000).await {
                FeedItem::Events(evs) => seqs.extend(evs.iter().map(|e| e.seq)),
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(seqs, (1..=201).collect::<Vec<_>>());
        // And live after the replay.
        bus.publish(vec![new("live")]).unwrap();
        match feed.next(10).await {
            FeedItem::Events(evs) => assert_eq!(evs[0].seq, 202),
            other => panic!("{other:?}"),
        }
    }
}
