//! The ingestion queue of a datastore and its apply thread: pushes, audit
//! signals and sentinel feedback are admitted against one bound (rows, a
//! signal counting as one), queued in arrival order, and applied to the
//! index one job at a time by a worker thread. A job that panics is
//! contained (the consistency alarm goes up) and the thread goes on.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::{Arc, PoisonError};
use std::time::{Duration, Instant};

use super::replica::{IngestOp, TouchError};
use super::{Datastore, FeedChange, PushError, PushReceipt};
use crate::index::{Change, Source};
use crate::rows::{Batch, FeedbackUpdate, Op, parse_batch, parse_feedback};
use crate::time::now_secs;

/// Work for the apply thread, in arrival order.
pub(super) enum Job {
    Batch {
        session: String,
        batch: Batch,
    },
    AuditStart,
    AuditEnd,
    Feedback(Vec<FeedbackUpdate>),
    /// An operation of the cluster's ingest log, its sequence number, and
    /// whether its changes go on the bus (not while catching up on history
    /// that was published long ago).
    Shared {
        op: IngestOp,
        seq: u64,
        publish: bool,
    },
}

impl Job {
    /// A line for the log when the job fails: what it was, never its data.
    fn summary(&self) -> String {
        match self {
            Job::Batch { session, batch } => format!(
                "push of session {} ({:?}, {} rows, is_end {})",
                crate::text::echo(session),
                batch.source,
                batch.ops.len(),
                batch.is_end
            ),
            Job::AuditStart => "audit start".into(),
            Job::AuditEnd => "audit end".into(),
            Job::Feedback(updates) => format!("sentinel feedback ({} updates)", updates.len()),
            Job::Shared { op, seq, .. } => format!(
                "operation {seq} of the ingest log ({})",
                match op {
                    IngestOp::Session { .. } => "session",
                    IngestOp::Push { .. } => "push",
                    IngestOp::AuditStart => "audit start",
                    IngestOp::AuditEnd => "audit end",
                    IngestOp::Feedback { .. } => "feedback",
                    IngestOp::Job { .. } => "on-demand job",
                }
            ),
        }
    }
}

pub(super) struct Queue {
    pub(super) jobs: VecDeque<(Job, usize)>,
    pub(super) rows: usize,
    pub(super) closed: bool,
}

impl Datastore {
    /// Accepts a push of session `id` into the queue (also a keep-alive).
    /// All or nothing: a full queue refuses the whole push.
    pub fn push(&self, id: &str, mut batch: Batch) -> Result<PushReceipt, PushError> {
        self.sessions().touch(id, Instant::now())?;
        let rows = batch.ops.len().max(1);
        let rejected = std::mem::take(&mut batch.rejected);
        self.counters
            .rows_rejected
            .fetch_add(rejected.len() as u64, Ordering::Relaxed);
        // One line per push, not per row: a hostile push of 100,000 bad rows
        // must not write 100,000 log lines. The reasons are already short.
        if let Some(first) = rejected.first() {
            tracing::warn!(datastore = %self.config.name, session = %crate::text::echo(id), rejected = rejected.len(), event = first.event, row = ?first.row, "rows rejected; the first: {}", first.reason);
        }
        let count = batch.ops.len();
        self.enqueue(
            Job::Batch {
                session: id.to_string(),
                batch,
            },
            rows,
        )?;
        Ok(PushReceipt { count, rejected })
    }

    /// Accepts a push of session `id`: `batch` is `body` parsed at `at`.
    /// On one host the same as [`Self::push`]; in a cluster the body goes
    /// to the ingest log (after the session and the local queue's room are
    /// checked) and is applied when the log hands it back.
    pub fn accept(
        &self,
        id: &str,
        mut batch: Batch,
        body: &[u8],
        at: f64,
    ) -> Result<PushReceipt, PushError> {
        let Some(r) = self.replication.get() else {
            return self.push(id, batch);
        };
        r.touch(&self.config.name, id, self.config.sessions.timeout)
            .map_err(|e| match e {
                TouchError::Session(s) => PushError::Session(s),
                TouchError::Unavailable(u) => self.unavailable(u),
            })?;
        self.room_for(batch.ops.len())?;
        let op = IngestOp::Push {
            session: id.to_string(),
            at,
            body: body.to_vec(),
        };
        r.append(&self.config.name, &op)
            .map_err(|e| self.unavailable(e))?;
        let rejected = std::mem::take(&mut batch.rejected);
        self.counters
            .rows_rejected
            .fetch_add(rejected.len() as u64, Ordering::Relaxed);
        Ok(PushReceipt {
            count: batch.ops.len(),
            rejected,
        })
    }

    /// Whether the queue has room for `rows` now (the cluster's admission:
    /// a replica that falls behind refuses new work rather than growing).
    fn room_for(&self, rows: usize) -> Result<(), PushError> {
        let q = self.queue.lock().unwrap_or_else(PoisonError::into_inner);
        if q.closed {
            return Err(PushError::ShuttingDown(self.config.name.clone()));
        }
        if q.rows + rows.max(1) > self.config.queue_rows && !q.jobs.is_empty() {
            return Err(PushError::QueueFull {
                datastore: self.config.name.clone(),
                queued: q.rows,
                capacity: self.config.queue_rows,
            });
        }
        Ok(())
    }

    /// An operation of the cluster's ingest log, `seq` its number there,
    /// queued for the apply thread whatever the queue holds (the log is
    /// already accepted; the cluster waits while [`Self::queued_rows`] is
    /// above the capacity). `publish`: its changes go on the bus, with ids
    /// every host gives alike, so that the bus keeps one of each.
    pub fn apply_shared(&self, op: IngestOp, seq: u64, publish: bool) {
        let rows = match &op {
            IngestOp::Push { body, .. } | IngestOp::Feedback { body } => body.len() / 64,
            _ => 1,
        };
        let mut q = self.queue.lock().unwrap_or_else(PoisonError::into_inner);
        q.rows += rows.max(1);
        q.jobs
            .push_back((Job::Shared { op, seq, publish }, rows.max(1)));
        drop(q);
        self.wake.notify_one();
    }

    /// Queues a job counted as `rows` (at least one: a signal that carries
    /// no rows counts as one) against the queue's capacity, all or nothing.
    fn enqueue(&self, job: Job, rows: usize) -> Result<(), PushError> {
        let rows = rows.max(1);
        let mut q = self.queue.lock().unwrap_or_else(PoisonError::into_inner);
        if q.closed {
            return Err(PushError::ShuttingDown(self.config.name.clone()));
        }
        // An empty queue takes any job, so that one push larger than the
        // capacity is not refused forever; memory stays within the capacity
        // plus one push.
        if q.rows + rows > self.config.queue_rows && !q.jobs.is_empty() {
            return Err(PushError::QueueFull {
                datastore: self.config.name.clone(),
                queued: q.rows,
                capacity: self.config.queue_rows,
            });
        }
        q.rows += rows;
        q.jobs.push_back((job, rows));
        drop(q);
        self.wake.notify_one();
        Ok(())
    }

    /// In a cluster, appends `op` to the ingest log (`Some`); on one host
    /// `None`, and the caller queues the job itself.
    fn share(&self, rows: usize, op: impl FnOnce() -> IngestOp) -> Option<Result<(), PushError>> {
        let r = self.replication.get()?;
        Some(self.room_for(rows).and_then(|()| {
            r.append(&self.config.name, &op())
                .map_err(|e| self.unavailable(e))
        }))
    }

    /// The agent starts an audit (applied in order with the pushes).
    pub fn audit_start(&self) -> Result<(), PushError> {
        if let Some(shared) = self.share(1, || IngestOp::AuditStart) {
            return shared;
        }
        self.enqueue(Job::AuditStart, 1)
    }

    /// The agent ends an audit.
    pub fn audit_end(&self) -> Result<(), PushError> {
        if let Some(shared) = self.share(1, || IngestOp::AuditEnd) {
            return shared;
        }
        self.enqueue(Job::AuditEnd, 1)
    }

    /// The agent's sentinel found these suspect paths as they are now
    /// (applied in order with the pushes; feedback on paths that are not
    /// suspect is ignored). `updates` is `body` parsed.
    pub fn sentinel_feedback(
        &self,
        updates: Vec<FeedbackUpdate>,
        body: &[u8],
    ) -> Result<(), PushError> {
        let rows = updates.len();
        if let Some(shared) = self.share(rows, || IngestOp::Feedback {
            body: body.to_vec(),
        }) {
            return shared;
        }
        self.enqueue(Job::Feedback(updates), rows)
    }

    /// Stops the apply thread once the queue is drained; waits at most `limit`.
    pub fn drain(&self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        {
            let mut q = self.queue.lock().unwrap_or_else(PoisonError::into_inner);
            q.closed = true;
        }
        self.wake.notify_all();
        while Instant::now() < deadline {
            let empty = self
                .queue
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .jobs
                .is_empty();
            if empty && !self.applying.load(Ordering::SeqCst) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        false
    }

    /// Applies `job`; a panic is contained to it. The index may then be
    /// half-changed, so the consistency alarm is raised (views answer 503
    /// until the next complete snapshot), the panic is logged with what the
    /// job was and counted, and the thread goes on with the next job.
    fn apply_isolated(&self, job: Job) {
        let summary = job.summary();
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.apply(job)));
        if let Err(panic) = outcome {
            self.alarm.store(true, Ordering::SeqCst);
            self.counters.apply_panics.fetch_add(1, Ordering::Relaxed);
            crate::supervise::panicked(
                crate::supervise::Worker::Apply,
                &format!(
                    "datastore {}: {summary}; consistency alarm raised until the next complete snapshot",
                    self.config.name
                ),
                &*panic,
            );
        }
    }

    fn apply(&self, job: Job) {
        let mut now = now_secs();
        let mut changes = Vec::new();
        // Shared operations: their changes get ids every host gives alike.
        let mut shared: Option<(u64, bool)> = None;
        let job = match job {
            Job::Shared { op, seq, publish } => {
                shared = Some((seq, publish));
                match op {
                    IngestOp::Session { id, task_id } => {
                        let mut ix = self.index.write().unwrap_or_else(PoisonError::into_inner);
                        ix.clear();
                        self.sessions().adopt(&id, &task_id, Instant::now());
                        self.jobs().session_replaced(&id, now);
                        tracing::info!(datastore = %self.config.name, session = %id, "the replica starts over for a new session");
                        return;
                    }
                    IngestOp::Push { session, at, body } => {
                        now = at;
                        match parse_batch(&body, at, &self.config.rows) {
                            Ok(batch) => Job::Batch { session, batch },
                            Err(e) => {
                                tracing::error!(datastore = %self.config.name, seq, "an ingest-log push that cannot be read is skipped: {e}");
                                return;
                            }
                        }
                    }
                    IngestOp::Job {
                        id,
                        session,
                        path,
                        recursive,
                        at,
                    } => {
                        let name = &self.config.name;
                        self.jobs().add(name, &id, &session, &path, recursive, at);
                        return;
                    }
                    IngestOp::AuditStart => Job::AuditStart,
                    IngestOp::AuditEnd => Job::AuditEnd,
                    IngestOp::Feedback { body } => match parse_feedback(&body, &self.config.rows) {
                        Ok((updates, _)) => Job::Feedback(updates),
                        Err(e) => {
                            tracing::error!(datastore = %self.config.name, seq, "ingest-log feedback that cannot be read is skipped: {e}");
                            return;
                        }
                    },
                }
            }
            job => job,
        };
        {
            let mut ix = self.index.write().unwrap_or_else(PoisonError::into_inner);
            match job {
                Job::AuditStart => ix.audit_start(now),
                Job::AuditEnd => changes = ix.audit_end(now),
                Job::Feedback(updates) => {
                    for u in updates {
                        changes.extend(ix.sentinel_feedback(&u.path, u.feedback, now));
                    }
                }
                Job::Batch { session, batch } => {
                    self.apply_batch(&mut ix, &session, &batch, now, &mut changes)
                }
                Job::Shared { .. } => {}
            }
        }
        self.counters
            .rows_applied
            .fetch_add(changes.len() as u64, Ordering::Relaxed);
        if let Some((_, false)) = shared {
            return;
        }
        if let Some(sink) = self.sink.get()
            && !changes.is_empty()
        {
            let name_hash = fnv1a(self.config.name.as_bytes());
            let changes: Vec<FeedChange> = changes
                .into_iter()
                .enumerate()
                .map(|(i, change): (usize, Change)| FeedChange {
                    datastore: self.config.name.clone(),
                    change,
                    event_id: shared.map(|(seq, _)| change_id(name_hash, seq, i)),
                })
                .collect();
            sink(&changes);
        }
    }

    /// Applies the rows of a push of `session` (dropped unless it is the
    /// authoritative session).
    fn apply_batch(
        &self,
        ix: &mut crate::index::FsIndex,
        session: &str,
        batch: &Batch,
        now: f64,
        changes: &mut Vec<Change>,
    ) {
        let current = self.sessions().current().map(|s| s.id.clone());
        if current.as_deref() != Some(session) {
            tracing::info!(datastore = %self.config.name, session, "dropping a batch of an obsolete session");
            return;
        }
        if batch.source == Source::Audit {
            ix.audit_start(now);
        }
        let mut ignored = 0u64;
        for op in &batch.ops {
            match op {
                Op::Upsert(source, row) => {
                    if !ix.apply_upsert(row, *source, now, changes) {
                        tracing::trace!(datastore = %self.config.name, path = %row.path, ?source, "upsert ignored by arbitration");
                        ignored += 1
                    }
                }
                Op::Delete {
                    source,
                    path,
                    observed_at,
                } => {
                    let removed = ix.delete(path, *source, now, *observed_at);
                    if removed.is_empty() {
                        ignored += 1;
                    }
                    if *source == Source::Realtime {
                        let latency = ((now_secs() - observed_at) * 1000.0).max(0.0) as u64;
                        self.counters
                            .last_event_latency_ms
                            .store(latency, Ordering::Relaxed);
                    }
                    changes.extend(removed);
                }
            }
        }
        self.counters
            .rows_ignored
            .fetch_add(ignored, Ordering::Relaxed);
        if let Some(done) = &batch.job_complete {
            let ended = self.jobs().complete(
                session,
                done.job_id.as_deref(),
                done.scan_path.as_deref(),
                now_secs(),
            );
            tracing::info!(datastore = %self.config.name, session, job = ?done.job_id, path = ?done.scan_path, ended, "on-demand scan complete");
        }
        if batch.is_end && batch.source == Source::Snapshot {
            self.sessions().snapshot_done(session);
            self.alarm.store(false, Ordering::SeqCst);
            tracing::info!(datastore = %self.config.name, session, files = ix.tree().file_count(), "snapshot complete");
        }
    }
}

/// A stable 32-bit hash (FNV-1a): the same on every host and release.
fn fnv1a(bytes: &[u8]) -> u32 {
    bytes.iter().fold(0x811c_9dc5u32, |h, &b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    })
}

/// The event id of the `i`th change of ingest-log operation `seq` of the
/// datastore whose name hashes to `name_hash`: the same on every host, so
/// that the bus's duplicate window keeps one of each.
fn change_id(name_hash: u32, seq: u64, i: usize) -> String {
    let mut b = [0u8; 16];
    b[..8].copy_from_slice(&seq.to_be_bytes());
    b[8..12].copy_from_slice(&(i as u32).to_be_bytes());
    b[12..].copy_from_slice(&name_hash.to_be_bytes());
    uuid::Builder::from_custom_bytes(b).into_uuid().to_string()
}

pub(super) fn apply_loop(ds: std::sync::Weak<Datastore>) {
    loop {
        let Some(ds) = ds.upgrade() else { return };
        let job = {
            let mut q = ds.queue.lock().unwrap_or_else(PoisonError::into_inner);
            loop {
                if let Some((job, rows)) = q.jobs.pop_front() {
                    // Set before the queue lock is released so that readiness
                    // never sees an empty queue and an idle worker mid-batch.
                    ds.applying.store(true, Ordering::SeqCst);
                    q.rows -= rows;
                    break Some(job);
                }
                if q.closed {
                    break None;
                }
                // Wake up now and then so that a dropped datastore ends this thread.
                let (guard, _) = ds
                    .wake
                    .wait_timeout(q, Duration::from_millis(200))
                    .unwrap_or_else(PoisonError::into_inner);
                q = guard;
                if Arc::strong_count(&ds) == 1 {
                    return;
                }
            }
        };
        match job {
            Some(job) => {
                ds.apply_isolated(job);
                ds.applying.store(false, Ordering::SeqCst);
            }
            None => return,
        }
    }
}
