//! The in-memory bus: one lock orders publishing, history and the switch of
//! a replaying feed to live delivery, so a feed sees every event once, in
//! sequence order, across that switch.
//!
//! Each live feed has its own ring of `capacity` events. An event is always
//! appended under the bus lock (so rings stay in sequence order); when that
//! takes a ring past its capacity, the publisher lets go of the bus lock and
//! waits for room up to `slow_consumer_wait` (so a burst larger than the
//! buffer does not cost a consumer that keeps up). Every ring that overflowed
//! at the same event shares one deadline, and no other publisher waits for
//! the lock meanwhile: N stalled feeds cost a publisher one wait, not N. A
//! ring still over capacity at the deadline is marked slow: it is trimmed to
//! capacity from its oldest end, and until the feed has drained its ring a
//! full ring drops its oldest event at once, counts it, and the feed reports
//! the gap before its next events. Publishers that append while another
//! waits can take a ring to at most twice its capacity; past that the oldest
//! is dropped at once.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::Instant;

use tokio::sync::Notify;

use super::{
    BusConfig, BusStats, DedupFilter, Event, EventBus, EventLog, Feed, FeedItem, GapReason,
    Handler, NewEvent, PublishError, Published, Selection, StartAt, event_type_matches,
};

/// History entries a replaying feed scans per lock hold, so that a replay of
/// a long history does not stall publishers.
const REPLAY_SCAN: usize = 4096;

/// The in-memory [`EventBus`].
#[derive(Clone)]
pub struct MemoryBus {
    inner: Arc<Inner>,
}

struct Inner {
    state: Mutex<State>,
    config: BusConfig,
    /// The durable log and the queue of its writer thread, if any.
    log: Option<LogWriter>,
}

/// Publishers hand their numbered batches to one writer thread (in sequence
/// order, under the bus lock); it stores everything waiting in one commit,
/// then fans the batches out and answers each publisher.
struct LogWriter {
    log: Arc<dyn EventLog>,
    jobs: std::sync::mpsc::Sender<Job>,
    /// Joined when the bus goes, so that the log is released with it.
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Some(writer) = self.log.take() {
            let thread = lock(&writer.thread).take();
            // The writer ends when its queue closes.
            drop(writer);
            if let Some(t) = thread
                && t.thread().id() != std::thread::current().id()
            {
                let _ = t.join();
            }
        }
    }
}

/// One publisher's batch, waiting for its commit.
struct Job {
    events: Vec<Arc<Event>>,
    /// The commit's outcome: the feeds that overflowed (the publisher waits
    /// for room in them), or why nothing was stored.
    done: std::sync::mpsc::SyncSender<Result<Vec<Arc<Tap>>, String>>,
}

/// Batches one commit takes at most, so that a publisher's wait stays
/// bounded under a flood.
const MAX_GROUP_EVENTS: usize = 64 * 1024;

struct State {
    next_seq: u64,
    /// The newest sequence number fanned out (events up to it are in the
    /// history or the log; newer ones reach live feeds).
    delivered: u64,
    dedup: DedupFilter,
    history: VecDeque<Arc<Event>>,
    history_bytes: usize,
    /// Sorted by priority, highest first; equal priorities in insertion order.
    handlers: Vec<Arc<dyn Handler>>,
    taps: HashMap<u64, Arc<Tap>>,
    next_tap: u64,
    published: u64,
    duplicates: u64,
    closed: bool,
}

/// A live feed's buffer.
struct Tap {
    selection: Selection,
    /// Events before this sequence number are not for this feed.
    min_seq: u64,
    capacity: usize,
    ring: Mutex<Ring>,
    /// Wakes the consumer.
    notify: Notify,
    /// Wakes a publisher waiting for room.
    room: Condvar,
}

#[derive(Default)]
struct Ring {
    events: VecDeque<Arc<Event>>,
    /// Did not make room within the wait: publishers drop at once until
    /// the consumer empties its ring.
    slow: bool,
    dropped: u64,
    first_dropped: u64,
    last_dropped: u64,
    closed: bool,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Tap {
    /// Appends `event` if this feed wants it. Called under the bus lock, so
    /// it never waits; `true` means the ring is now over capacity and the
    /// publisher should wait for room (outside the bus lock) with
    /// [`Tap::wait_for_room`].
    fn push(&self, event: &Arc<Event>, may_wait: bool) -> bool {
        if event.seq < self.min_seq || !self.selection.matches(event) {
            return false;
        }
        let mut ring = lock(&self.ring);
        // A slow feed, a publisher that does not wait, or the hard ceiling
        // while other publishers are waiting: make room at once.
        let limit = if ring.slow || ring.closed || !may_wait {
            self.capacity
        } else {
            self.capacity * 2
        };
        while ring.events.len() >= limit {
            ring.drop_oldest();
        }
        ring.events.push_back(event.clone());
        let over = ring.events.len() > self.capacity;
        drop(ring);
        self.notify.notify_one();
        over
    }

    /// Waits until the ring is back within capacity, the feed is closed or
    /// `deadline` passes; at the deadline the feed is marked slow and
    /// trimmed to capacity. Called without the bus lock.
    fn wait_for_room(&self, deadline: Instant) {
        let mut ring = lock(&self.ring);
        while ring.events.len() > self.capacity && !ring.closed {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                ring.slow = true;
                break;
            }
            ring = self
                .room
                .wait_timeout(ring, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        while ring.events.len() > self.capacity {
            ring.drop_oldest();
        }
    }
}

impl Ring {
    fn drop_oldest(&mut self) {
        if let Some(old) = self.events.pop_front() {
            if self.dropped == 0 {
                self.first_dropped = old.seq;
            }
            self.dropped += 1;
            self.last_dropped = old.seq;
        }
    }
}

impl MemoryBus {
    /// An empty bus in memory only.
    pub fn new(config: BusConfig) -> Self {
        Self::build(config, None, 1)
    }

    /// A bus whose accepted events are stored in `log` before they are
    /// answered or fanned out. Numbering continues after the log's newest
    /// event, and the dedup window is rebuilt from the log, so a retry after
    /// a restart is still a duplicate.
    pub fn durable(config: BusConfig, log: Arc<dyn EventLog>) -> Result<Self, String> {
        let recent = log.recent_ids(config.dedup_size)?;
        let (tx, rx) = std::sync::mpsc::channel::<Job>();
        let bus = Self::build(
            config,
            Some(LogWriter {
                log: log.clone(),
                jobs: tx,
                thread: Mutex::new(None),
            }),
            log.next_seq(),
        );
        {
            let mut st = lock(&bus.inner.state);
            let (now, now_ms) = (Instant::now(), crate::time::now_ms());
            for (ts, id) in recent {
                let age = std::time::Duration::from_millis(now_ms.saturating_sub(ts));
                if age < bus.inner.config.dedup_ttl {
                    st.dedup.remember(&id, now.checked_sub(age).unwrap_or(now));
                }
            }
        }
        let weak = Arc::downgrade(&bus.inner);
        let thread = std::thread::Builder::new()
            .name("weir-bus-log".into())
            .spawn(move || write_log(&weak, &log, &rx))
            .map_err(|e| format!("cannot start the event log writer: {e}"))?;
        if let Some(writer) = &bus.inner.log {
            *lock(&writer.thread) = Some(thread);
        }
        Ok(bus)
    }

    fn build(config: BusConfig, log: Option<LogWriter>, next_seq: u64) -> Self {
        Self {
            inner: Arc::new(Inner {
                log,
                state: Mutex::new(State {
                    next_seq,
                    delivered: next_seq - 1,
                    dedup: DedupFilter::new(config.dedup_size, config.dedup_ttl),
                    history: VecDeque::new(),
                    history_bytes: 0,
                    handlers: Vec::new(),
                    taps: HashMap::new(),
                    next_tap: 0,
                    published: 0,
                    duplicates: 0,
                    closed: false,
                }),
                config,
            }),
        }
    }
}

/// The writer thread: one commit for every batch waiting, then fan-out in
/// sequence order, then the answers. Ends when the bus is dropped.
fn write_log(
    inner: &std::sync::Weak<Inner>,
    log: &Arc<dyn EventLog>,
    jobs: &std::sync::mpsc::Receiver<Job>,
) {
    while let Ok(first) = jobs.recv() {
        let mut group = vec![first];
        let mut count = group[0].events.len();
        while count < MAX_GROUP_EVENTS
            && let Ok(job) = jobs.try_recv()
        {
            count += job.events.len();
            group.push(job);
        }
        let all: Vec<Arc<Event>> = group
            .iter()
            .flat_map(|j| j.events.iter().cloned())
            .collect();
        let stored = log.append(&all);
        let Some(inner) = inner.upgrade() else { return };
        let wait = !inner.config.slow_consumer_wait.is_zero();
        let mut answers = Vec::with_capacity(group.len());
        {
            let mut st = lock(&inner.state);
            for job in &group {
                match &stored {
                    Ok(()) => {
                        let mut full = Vec::new();
                        for event in &job.events {
                            st.deliver(event, &inner.config, wait, &mut full);
                        }
                        answers.push(Ok(full));
                    }
                    Err(e) => {
                        // Not stored: not delivered, and a retry is new.
                        for event in &job.events {
                            st.dedup.forget(&event.new.id);
                            st.published = st.published.saturating_sub(1);
                            st.delivered = st.delivered.max(event.seq);
                        }
                        answers.push(Err(e.clone()));
                    }
                }
            }
        }
        // This thread lets go of the bus before anyone is answered: the last
        // owner is then a publisher, whose drop joins this thread (and so
        // releases the log) instead of this thread dropping the bus.
        drop(inner);
        for (job, answer) in group.into_iter().zip(answers) {
            let _ = job.done.send(answer);
        }
    }
}

impl State {
    /// Hands a numbered (and, with a log, stored) event to the history, the
    /// handlers and the feeds; `full` gets the feeds it took over capacity.
    fn deliver(
        &mut self,
        event: &Arc<Event>,
        config: &BusConfig,
        may_wait: bool,
        full: &mut Vec<Arc<Tap>>,
    ) {
        // Built-in history first, then handlers by priority, then feeds.
        self.record(event, config);
        for h in &self.handlers {
            if event_type_matches(h.pattern(), &event.new.event_type) {
                h.handle(event);
            }
        }
        for tap in self.taps.values() {
            if tap.push(event, may_wait) {
                full.push(tap.clone());
            }
        }
        self.delivered = event.seq;
    }

    fn record(&mut self, event: &Arc<Event>, config: &BusConfig) {
        if config.history_events == 0 {
            return;
        }
        self.history_bytes += event.size_bytes();
        self.history.push_back(event.clone());
        while self.history.len() > config.history_events
            || (self.history_bytes > config.history_bytes && self.history.len() > 1)
        {
            if let Some(old) = self.history.pop_front() {
                self.history_bytes -= old.size_bytes();
            }
        }
    }

    fn add_tap(&mut self, selection: &Selection, min_seq: u64, capacity: usize) -> (u64, Arc<Tap>) {
        let id = self.next_tap;
        self.next_tap += 1;
        let tap = Arc::new(Tap {
            selection: selection.clone(),
            min_seq,
            capacity: capacity.max(1),
            ring: Mutex::new(Ring {
                closed: self.closed,
                ..Ring::default()
            }),
            notify: Notify::new(),
            room: Condvar::new(),
        });
        self.taps.insert(id, tap.clone());
        (id, tap)
    }
}

impl State {
    /// Numbers `new` unless its id is a duplicate.
    fn number(&mut self, new: NewEvent, now: Instant, now_ms: u64) -> Option<Arc<Event>> {
        if self.dedup.is_duplicate(&new.id, now) {
            self.duplicates += 1;
            return None;
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        self.published += 1;
        Some(Arc::new(Event {
            seq,
            timestamp_ms: now_ms,
            new,
        }))
    }
}

/// Waits (one deadline for all) until the feeds that overflowed at an
/// event have room, or marks them slow.
fn wait_for_room(full: impl Iterator<Item = Arc<Tap>>, wait: std::time::Duration) {
    let deadline = Instant::now() + wait;
    for tap in full {
        tap.wait_for_room(deadline);
    }
}

impl MemoryBus {
    /// `publish` with a log: numbered under the bus lock and queued for the
    /// writer in that order; answered once the writer's commit ran.
    fn publish_logged(
        &self,
        log: &LogWriter,
        events: Vec<NewEvent>,
    ) -> Result<Vec<Published>, PublishError> {
        let now_ms = crate::time::now_ms();
        let mut out = Vec::with_capacity(events.len());
        let mut batch = Vec::new();
        let (done, answer) = std::sync::mpsc::sync_channel(1);
        {
            let mut st = lock(&self.inner.state);
            let now = Instant::now();
            for new in events {
                match st.number(new, now, now_ms) {
                    Some(event) => {
                        out.push(Published::Accepted(event.seq));
                        batch.push(event);
                    }
                    None => out.push(Published::Duplicate),
                }
            }
            if batch.is_empty() {
                return Ok(out);
            }
            if log
                .jobs
                .send(Job {
                    events: batch,
                    done,
                })
                .is_err()
            {
                return Err(PublishError::Log("the event log writer has stopped".into()));
            }
        }
        match answer.recv() {
            Ok(Ok(full)) => {
                wait_for_room(full.into_iter(), self.inner.config.slow_consumer_wait);
                Ok(out)
            }
            Ok(Err(e)) => Err(PublishError::Log(e)),
            Err(_) => Err(PublishError::Log("the event log writer has stopped".into())),
        }
    }
}

impl EventBus for MemoryBus {
    fn publish(&self, events: Vec<NewEvent>) -> Result<Vec<Published>, PublishError> {
        if let Some(log) = &self.inner.log {
            return self.publish_logged(log, events);
        }
        let now_ms = crate::time::now_ms();
        let wait = self.inner.config.slow_consumer_wait;
        let mut out = Vec::with_capacity(events.len());
        let mut events = events.into_iter().peekable();
        let mut full: Vec<Arc<Tap>> = Vec::new();
        while events.peek().is_some() {
            let mut st = lock(&self.inner.state);
            let now = Instant::now();
            // Up to the first event that overflows a ring: then the lock
            // goes, so waiting for that feed stalls no other publisher.
            while full.is_empty()
                && let Some(new) = events.next()
            {
                match st.number(new, now, now_ms) {
                    Some(event) => {
                        st.deliver(&event, &self.inner.config, !wait.is_zero(), &mut full);
                        out.push(Published::Accepted(event.seq));
                    }
                    None => out.push(Published::Duplicate),
                }
            }
            drop(st);
            wait_for_room(full.drain(..), wait);
        }
        Ok(out)
    }

    fn subscribe(&self, selection: Selection, start: StartAt, capacity: usize) -> Box<dyn Feed> {
        let mut st = lock(&self.inner.state);
        let cursor = match start {
            StartAt::Latest => None,
            // With a log, the replay finds the log's first event itself.
            StartAt::Earliest if self.inner.log.is_some() => Some(1),
            StartAt::Earliest => Some(st.history.front().map_or(st.delivered + 1, |e| e.seq)),
            StartAt::Seq(n) => Some(n.max(1)),
        };
        let phase = match cursor {
            Some(c) if c <= st.delivered => Phase::Replay { cursor: c },
            other => Phase::Live(st.add_tap(&selection, other.unwrap_or(0), capacity)),
        };
        Box::new(MemoryFeed {
            inner: self.inner.clone(),
            selection,
            capacity,
            phase,
        })
    }

    fn add_handler(&self, handler: Arc<dyn Handler>) {
        let mut st = lock(&self.inner.state);
        let at = st
            .handlers
            .iter()
            .position(|h| h.priority() < handler.priority())
            .unwrap_or(st.handlers.len());
        st.handlers.insert(at, handler);
    }

    fn stats(&self) -> BusStats {
        let st = lock(&self.inner.state);
        BusStats {
            published: st.published,
            duplicates: st.duplicates,
            last_seq: st.delivered,
            history_first_seq: st.history.front().map_or(0, |e| e.seq),
            history_events: st.history.len(),
            history_bytes: st.history_bytes,
            feeds: st.taps.len(),
        }
    }

    fn close(&self) {
        let mut st = lock(&self.inner.state);
        st.closed = true;
        for tap in st.taps.values() {
            lock(&tap.ring).closed = true;
            tap.notify.notify_one();
            tap.room.notify_all();
        }
    }
}

enum Phase {
    /// Reading history from `cursor`.
    Replay { cursor: u64 },
    /// Registered for live events.
    Live((u64, Arc<Tap>)),
}

struct MemoryFeed {
    inner: Arc<Inner>,
    selection: Selection,
    capacity: usize,
    phase: Phase,
}

impl MemoryFeed {
    /// One step of a replay: a gap, some events, or nothing (then the feed
    /// may have gone live). Never waits.
    fn replay_step(&mut self, cursor: u64, max: usize) -> Option<FeedItem> {
        let mut st = lock(&self.inner.state);
        if st.closed {
            return Some(FeedItem::Closed);
        }
        let first = st.history.front().map_or(st.delivered + 1, |e| e.seq);
        if cursor < first {
            if let Some(log) = self.inner.log.as_ref().map(|l| l.log.clone()) {
                // Older than the history: the log has it (read without the
                // bus lock; it only holds what was fanned out or is about to).
                drop(st);
                return self.replay_from_log(&*log, cursor, first, max);
            }
            drop(st);
            return Some(self.skip_to(GapReason::HistoryEvicted, cursor, first));
        }
        let mut next = cursor;
        let mut out = Vec::new();
        for event in st
            .history
            .iter()
            .skip((cursor - first) as usize)
            .take(REPLAY_SCAN)
        {
            next = event.seq + 1;
            if self.selection.matches(event) {
                out.push(event.clone());
                if out.len() >= max {
                    break;
                }
            }
        }
        self.phase = if next > st.delivered {
            // Caught up, under the lock: no event can slip between the
            // history read and the live registration.
            Phase::Live(st.add_tap(&self.selection, next, self.capacity))
        } else {
            Phase::Replay { cursor: next }
        };
        (!out.is_empty()).then_some(FeedItem::Events(out))
    }

    /// Moves the replay on to `to`, reporting `from..to` as a gap.
    fn skip_to(&mut self, reason: GapReason, from: u64, to: u64) -> FeedItem {
        self.phase = Phase::Replay { cursor: to };
        FeedItem::Gap {
            reason,
            count: to - from,
            first_seq: from,
            last_seq: to - 1,
        }
    }

    /// One step of a replay from the log, for events before `until` (where
    /// the in-memory history starts).
    fn replay_from_log(
        &mut self,
        log: &dyn EventLog,
        cursor: u64,
        until: u64,
        max: usize,
    ) -> Option<FeedItem> {
        let mut unreadable = |e: String| {
            tracing::error!("replay: the event log cannot be read: {e}");
            self.skip_to(GapReason::LogUnreadable, cursor, until)
        };
        let oldest = match log.first_seq() {
            Ok(first) => first.unwrap_or(until).min(until),
            Err(e) => return Some(unreadable(e)),
        };
        if cursor < oldest {
            return Some(self.skip_to(GapReason::HistoryEvicted, cursor, oldest));
        }
        let events = match log.read(cursor, REPLAY_SCAN) {
            Ok(events) => events,
            Err(e) => return Some(unreadable(e)),
        };
        let mut next = until;
        let mut out = Vec::new();
        for event in events {
            if event.seq >= until {
                next = until;
                break;
            }
            next = event.seq + 1;
            if self.selection.matches(&event) {
                out.push(event);
                if out.len() >= max {
                    break;
                }
            }
        }
        self.phase = Phase::Replay { cursor: next };
        (!out.is_empty()).then_some(FeedItem::Events(out))
    }
}

impl Feed for MemoryFeed {
    fn next(&mut self, max: usize) -> Pin<Box<dyn Future<Output = FeedItem> + Send + '_>> {
        let max = max.max(1);
        Box::pin(async move {
            loop {
                let tap = match &self.phase {
                    Phase::Replay { cursor } => {
                        let cursor = *cursor;
                        if let Some(item) = self.replay_step(cursor, max) {
                            return item;
                        }
                        continue;
                    }
                    Phase::Live((_, tap)) => tap.clone(),
                };
                {
                    let mut ring = lock(&tap.ring);
                    if ring.dropped > 0 {
                        let gap = FeedItem::Gap {
                            reason: GapReason::BufferOverflow,
                            count: ring.dropped,
                            first_seq: ring.first_dropped,
                            last_seq: ring.last_dropped,
                        };
                        ring.dropped = 0;
                        return gap;
                    }
                    if !ring.events.is_empty() {
                        let n = ring.events.len().min(max);
                        let events = ring.events.drain(..n).collect();
                        if ring.events.is_empty() {
                            ring.slow = false;
                        }
                        tap.room.notify_all();
                        return FeedItem::Events(events);
                    }
                    if ring.closed {
                        return FeedItem::Closed;
                    }
                }
                tap.notify.notified().await;
            }
        })
    }
}

impl Drop for MemoryFeed {
    fn drop(&mut self) {
        if let Phase::Live((id, tap)) = &self.phase {
            lock(&self.inner.state).taps.remove(id);
            // A publisher may be waiting for this feed to make room.
            lock(&tap.ring).closed = true;
            tap.room.notify_all();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::time::Duration;

    fn ev(id: &str, ty: &str) -> NewEvent {
        NewEvent {
            id: id.into(),
            event_type: ty.into(),
            source: "test".into(),
            source_time: None,
            correlation_id: None,
            payload: "{}".into(),
            scope: None,
        }
    }

    fn bus(history: usize) -> MemoryBus {
        MemoryBus::new(BusConfig {
            history_events: history,
            slow_consumer_wait: Duration::ZERO,
            ..BusConfig::default()
        })
    }

    async fn seqs(feed: &mut Box<dyn Feed>, max: usize) -> Vec<u64> {
        match tokio::time::timeout(Duration::from_secs(1), feed.next(max)).await {
            Ok(FeedItem::Events(evs)) => evs.iter().map(|e| e.seq).collect(),
            Ok(other) => panic!("expected events, got {other:?}"),
            Err(_) => panic!("no events"),
        }
    }

    #[tokio::test]
    async fn fan_out_by_exact_prefix_and_star() {
        let b = bus(0);
        let mut exact = b.subscribe("fs.insert".into(), StartAt::Latest, 10);
        let mut prefix = b.subscribe("fs.*".into(), StartAt::Latest, 10);
        let mut all = b.subscribe("*".into(), StartAt::Latest, 10);
        b.publish(vec![
            ev("1", "fs.insert"),
            ev("2", "fs.delete"),
            ev("3", "x"),
        ])
        .unwrap();
        assert_eq!(seqs(&mut exact, 10).await, vec![1]);
        assert_eq!(seqs(&mut prefix, 10).await, vec![1, 2]);
        assert_eq!(seqs(&mut all, 10).await, vec![1, 2, 3]);
    }

    #[tokio::test]
    async fn duplicates_get_no_sequence_number() {
        let b = bus(0);
        let got = b
            .publish(vec![ev("a", "t"), ev("a", "t"), ev("b", "t")])
            .unwrap();
        assert_eq!(
            got,
            vec![
                Published::Accepted(1),
                Published::Duplicate,
                Published::Accepted(2)
            ]
        );
        assert_eq!(b.stats().duplicates, 1);
    }

    #[tokio::test]
    async fn a_full_ring_drops_the_oldest_and_reports_the_gap_first() {
        let b = bus(0);
        let mut f = b.subscribe("*".into(), StartAt::Latest, 3);
        b.publish((0..5).map(|i| ev(&i.to_string(), "t")).collect())
            .unwrap();
        match f.next(10).await {
            FeedItem::Gap {
                reason,
                count,
                first_seq,
                last_seq,
            } => {
                assert_eq!(reason, GapReason::BufferOverflow);
                assert_eq!((count, first_seq, last_seq), (2, 1, 2));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(seqs(&mut f, 10).await, vec![3, 4, 5]);
    }

    #[tokio::test]
    async fn a_scoped_feed_gets_its_scope_only_live_and_replayed() {
        let b = bus(100);
        let scoped = |scope: &str| Selection {
            pattern: "*".into(),
            scope: Some(scope.into()),
        };
        let in_scope = |id: &str, scope: Option<&str>| NewEvent {
            scope: scope.map(str::to_string),
            ..ev(id, "t")
        };
        let mut lab = b.subscribe(scoped("lab"), StartAt::Latest, 3);
        // Another scope's burst neither fills lab's buffer nor shows as a gap.
        let mut events: Vec<NewEvent> = (0..10)
            .map(|i| in_scope(&format!("d{i}"), Some("default")))
            .collect();
        events.push(in_scope("h", None));
        events.push(in_scope("l", Some("lab")));
        b.publish(events).unwrap();
        assert_eq!(seqs(&mut lab, 10).await, vec![12]);
        // A replay selects the same way.
        let mut replay = b.subscribe(scoped("lab"), StartAt::Earliest, 10);
        assert_eq!(seqs(&mut replay, 10).await, vec![12]);
        let mut all = b.subscribe("*".into(), StartAt::Earliest, 100);
        assert_eq!(seqs(&mut all, 100).await.len(), 12);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_burst_waits_for_a_consumer_that_keeps_up_then_a_stuck_one_is_dropped_from() {
        let b = MemoryBus::new(BusConfig {
            history_events: 0,
            slow_consumer_wait: Duration::from_millis(200),
            ..BusConfig::default()
        });
        let mut fast = b.subscribe("*".into(), StartAt::Latest, 4);
        let reader = tokio::spawn(async move {
            let mut got = Vec::new();
            while got.len() < 100 {
                match fast.next(2).await {
                    FeedItem::Events(evs) => got.extend(evs.iter().map(|e| e.seq)),
                    other => panic!("no gap expected: {other:?}"),
                }
            }
            got
        });
        let pub_bus = b.clone();
        tokio::task::spawn_blocking(move || {
            pub_bus
                .publish((0..100).map(|i| ev(&i.to_string(), "t")).collect())
                .unwrap()
        })
        .await
        .unwrap();
        assert_eq!(reader.await.unwrap(), (1..=100).collect::<Vec<_>>());

        // A feed nobody reads: the first overflow waits once, then drops.
        let mut stuck = b.subscribe("*".into(), StartAt::Latest, 4);
        let started = Instant::now();
        let pub_bus = b.clone();
        tokio::task::spawn_blocking(move || {
            pub_bus
                .publish((100..200).map(|i| ev(&i.to_string(), "t")).collect())
                .unwrap()
        })
        .await
        .unwrap();
        let took = started.elapsed();
        assert!(took >= Duration::from_millis(200), "{took:?}");
        assert!(
            took < Duration::from_millis(2000),
            "waited once, not per event: {took:?}"
        );
        assert!(matches!(
            stuck.next(10).await,
            FeedItem::Gap { count: 96, .. }
        ));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn stalled_feeds_cost_a_publisher_one_wait_and_never_hold_the_lock() {
        let wait = Duration::from_millis(300);
        let b = MemoryBus::new(BusConfig {
            history_events: 10,
            slow_consumer_wait: wait,
            ..BusConfig::default()
        });
        // Ten feeds that nobody reads, one event of room each.
        let mut stuck: Vec<_> = (0..10)
            .map(|_| b.subscribe("slow.*".into(), StartAt::Latest, 1))
            .collect();
        let started = Instant::now();
        let pub_bus = b.clone();
        let slow = std::thread::spawn(move || {
            pub_bus
                .publish((0..4).map(|i| ev(&format!("s{i}"), "slow.x")).collect())
                .unwrap()
        });
        // While that publisher waits, the bus lock is free: another
        // publisher, a subscriber and the stats all answer at once.
        std::thread::sleep(Duration::from_millis(50));
        let other = Instant::now();
        // It takes the next sequence number, between the slow ones (the
        // second slow event overflowed the rings).
        assert_eq!(
            b.publish(vec![ev("o", "other")]).unwrap(),
            vec![Published::Accepted(3)]
        );
        drop(b.subscribe("*".into(), StartAt::Earliest, 10));
        let _ = b.stats();
        let blocked = other.elapsed();
        assert!(blocked < wait / 2, "blocked for {blocked:?}");
        assert_eq!(slow.join().unwrap().len(), 4);
        let took = started.elapsed();
        // One shared wait for the ten feeds, not ten waits.
        assert!(took >= wait, "{took:?}");
        assert!(took < wait * 4, "waited per feed: {took:?}");
        for feed in &mut stuck {
            match feed.next(10).await {
                FeedItem::Gap {
                    count: 3,
                    first_seq: 1,
                    last_seq: 4,
                    ..
                } => {}
                other => panic!("{other:?}"),
            }
            // The newest survives, in order.
            assert_eq!(seqs(feed, 10).await, vec![5]);
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_dropped_feed_releases_a_waiting_publisher() {
        let b = MemoryBus::new(BusConfig {
            history_events: 0,
            slow_consumer_wait: Duration::from_secs(30),
            ..BusConfig::default()
        });
        let feed = b.subscribe("*".into(), StartAt::Latest, 1);
        let pub_bus = b.clone();
        let started = Instant::now();
        let publisher =
            std::thread::spawn(move || pub_bus.publish(vec![ev("1", "t"), ev("2", "t")]).unwrap());
        std::thread::sleep(Duration::from_millis(50));
        drop(feed);
        assert_eq!(publisher.join().unwrap().len(), 2);
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    #[tokio::test]
    async fn replay_from_earliest_then_live_without_loss_or_repeat() {
        let b = bus(100);
        b.publish((0..5).map(|i| ev(&i.to_string(), "t")).collect())
            .unwrap();
        let mut f = b.subscribe("*".into(), StartAt::Earliest, 2);
        assert_eq!(seqs(&mut f, 3).await, vec![1, 2, 3]);
        // Published while the feed is still replaying: history, not the ring.
        b.publish((5..8).map(|i| ev(&i.to_string(), "t")).collect())
            .unwrap();
        assert_eq!(seqs(&mut f, 10).await, vec![4, 5, 6, 7, 8]);
        b.publish(vec![ev("live", "t")]).unwrap();
        assert_eq!(seqs(&mut f, 10).await, vec![9]);
    }

    #[tokio::test]
    async fn replay_from_a_sequence_number_and_from_the_future() {
        let b = bus(100);
        b.publish((0..5).map(|i| ev(&i.to_string(), "t")).collect())
            .unwrap();
        let mut f = b.subscribe("*".into(), StartAt::Seq(4), 10);
        assert_eq!(seqs(&mut f, 10).await, vec![4, 5]);
        let mut later = b.subscribe("*".into(), StartAt::Seq(8), 10);
        b.publish((5..9).map(|i| ev(&i.to_string(), "t")).collect())
            .unwrap();
        assert_eq!(seqs(&mut later, 10).await, vec![8, 9]);
    }

    #[tokio::test]
    async fn evicted_history_is_a_gap() {
        let b = bus(3);
        b.publish((0..6).map(|i| ev(&i.to_string(), "t")).collect())
            .unwrap();
        assert_eq!(b.stats().history_first_seq, 4);
        let mut f = b.subscribe("*".into(), StartAt::Seq(2), 10);
        match f.next(10).await {
            FeedItem::Gap {
                reason: GapReason::HistoryEvicted,
                count: 2,
                first_seq: 2,
                last_seq: 3,
            } => {}
            other => panic!("{other:?}"),
        }
        assert_eq!(seqs(&mut f, 10).await, vec![4, 5, 6]);
    }

    #[tokio::test]
    async fn history_is_bounded_by_bytes_too() {
        let one = Event {
            seq: 1,
            timestamp_ms: 0,
            new: ev("0", "t"),
        }
        .size_bytes();
        let b = MemoryBus::new(BusConfig {
            history_events: 1000,
            history_bytes: 3 * one + one / 2,
            ..BusConfig::default()
        });
        b.publish((0..10).map(|i| ev(&i.to_string(), "t")).collect())
            .unwrap();
        let s = b.stats();
        assert_eq!((s.history_events, s.history_bytes), (3, 3 * one), "{s:?}");
        assert_eq!(s.history_first_seq, 8);
    }

    struct Recorder {
        name: &'static str,
        priority: i32,
        log: Arc<Mutex<Vec<String>>>,
        seen: AtomicU64,
    }

    impl Handler for Recorder {
        fn name(&self) -> &str {
            self.name
        }
        fn priority(&self) -> i32 {
            self.priority
        }
        fn pattern(&self) -> &str {
            "fs.*"
        }
        fn handle(&self, event: &Event) {
            self.seen.fetch_add(1, Ordering::Relaxed);
            lock(&self.log).push(format!("{}:{}", self.name, event.seq));
        }
    }

    #[tokio::test]
    async fn handlers_run_by_priority_before_feeds() {
        let b = bus(0);
        let log = Arc::new(Mutex::new(Vec::new()));
        for (name, priority) in [("low", 1), ("high", 10), ("mid", 5)] {
            b.add_handler(Arc::new(Recorder {
                name,
                priority,
                log: log.clone(),
                seen: AtomicU64::new(0),
            }));
        }
        b.publish(vec![ev("1", "fs.insert"), ev("2", "other")])
            .unwrap();
        assert_eq!(*lock(&log), vec!["high:1", "mid:1", "low:1"]);
    }

    #[tokio::test]
    async fn close_ends_feeds_and_drop_unsubscribes() {
        let b = bus(0);
        let f = b.subscribe("*".into(), StartAt::Latest, 3);
        assert_eq!(b.stats().feeds, 1);
        drop(f);
        assert_eq!(b.stats().feeds, 0);
        let mut g = b.subscribe("*".into(), StartAt::Latest, 3);
        let waiting = tokio::spawn(async move { matches!(g.next(1).await, FeedItem::Closed) });
        tokio::time::sleep(Duration::from_millis(20)).await;
        b.close();
        assert!(waiting.await.unwrap());
    }
}
