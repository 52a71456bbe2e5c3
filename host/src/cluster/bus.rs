//! [`JetStreamBus`]: the [`EventBus`] over one JetStream stream.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use async_nats::jetstream::stream::{Config as StreamConfig, Stream};
use futures_util::StreamExt;
use tokio::sync::{mpsc, watch};

use super::{Cluster, ClusterError, REQUEST_TIMEOUT};
use crate::bus::{
    BusStats, Event, EventBus, Feed, FeedItem, GapReason, Handler, NewEvent, PublishError,
    Published, Selection, StartAt, event_type_matches,
};
use weir_core::codec;

/// The bus over the cluster's event stream.
pub struct JetStreamBus {
    cluster: Arc<Cluster>,
    stream: Stream,
    /// `{name}.events`: events go to `{prefix}.{scope}`.
    prefix: String,
    handlers: RwLock<Vec<Arc<dyn Handler>>>,
    published: AtomicU64,
    duplicates: AtomicU64,
    /// The newest stream sequence this host has seen (its acks, its feeds,
    /// the stream's state, refreshed every second): where a feed from
    /// `latest` starts.
    last_seq: Arc<AtomicU64>,
    feeds: Arc<AtomicUsize>,
    closed: AtomicBool,
    /// Tells every feed to end.
    closing: watch::Sender<bool>,
}

/// The subject token of a scope (`_`: host-level).
fn scope_token(scope: Option<&str>) -> &str {
    scope.unwrap_or("_")
}

impl JetStreamBus {
    /// Makes (or finds) the event stream, with its replicas, duplicate
    /// window and retention.
    pub fn open(cluster: Arc<Cluster>) -> Result<Self, ClusterError> {
        let c = cluster.config().clone();
        let prefix = format!("{}.events", c.name);
        let config = StreamConfig {
            name: format!("{}-events", c.name),
            subjects: vec![format!("{prefix}.>")],
            num_replicas: c.replicas,
            duplicate_window: c.duplicate_window,
            max_messages: i64::try_from(c.log.retention_events).unwrap_or(i64::MAX),
            max_bytes: i64::try_from(c.log.retention_bytes).unwrap_or(i64::MAX),
            max_age: c.log.retention_age.unwrap_or(Duration::ZERO),
            ..StreamConfig::default()
        };
        let js = cluster.js.clone();
        let stream = cluster
            .block_on(async move {
                let mut stream = js.get_or_create_stream(config).await?;
                let last = stream.info().await?.state.last_sequence;
                Ok::<_, Box<dyn std::error::Error + Send + Sync>>((stream, last))
            })
            .ok_or_else(|| ClusterError::JetStream("the NATS task failed".into()))?
            .map_err(|e| ClusterError::JetStream(format!("the event stream: {e}")))?;
        let (stream, last) = stream;
        let last_seq = Arc::new(AtomicU64::new(last));
        // Other hosts publish too: the newest number is refreshed, so that
        // `latest` means at most a second ago.
        let (watched, mut info) = (Arc::downgrade(&last_seq), stream.clone());
        cluster.rt().spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                let Some(last_seq) = watched.upgrade() else {
                    return;
                };
                if let Ok(i) = info.info().await {
                    last_seq.fetch_max(i.state.last_sequence, Ordering::Relaxed);
                }
            }
        });
        Ok(Self {
            cluster,
            stream,
            prefix,
            handlers: RwLock::default(),
            published: AtomicU64::new(0),
            duplicates: AtomicU64::new(0),
            last_seq,
            feeds: Arc::default(),
            closed: AtomicBool::new(false),
            closing: watch::Sender::new(false),
        })
    }

    fn run_handlers(&self, event: &Event) {
        let handlers = self.handlers.read().unwrap_or_else(PoisonError::into_inner);
        for h in handlers.iter() {
            if event_type_matches(h.pattern(), &event.new.event_type) {
                h.handle(event);
            }
        }
    }
}

impl EventBus for JetStreamBus {
    fn publish(&self, events: Vec<NewEvent>) -> Result<Vec<Published>, PublishError> {
        if self.closed.load(Ordering::Acquire) {
            return Err(PublishError::Closed);
        }
        let now_ms = crate::time::now_ms();
        let js = self.cluster.js.clone();
        let prefix = self.prefix.clone();
        let events: Vec<Event> = events
            .into_iter()
            .map(|new| Event {
                seq: 0,
                timestamp_ms: now_ms,
                new,
            })
            .collect();
        // The task owns what it sends and gives the events back.
        let sent = self.cluster.block_on(async move {
            let all = async {
                // Every publish goes out before the first acknowledgement is
                // awaited: one round trip for the batch, in order.
                let mut pending = Vec::with_capacity(events.len());
                for event in &events {
                    let mut record = Vec::new();
                    codec::encode(event, &mut record);
                    let mut headers = async_nats::HeaderMap::new();
                    headers.insert(async_nats::header::NATS_MESSAGE_ID, event.new.id.as_str());
                    let subject = format!("{prefix}.{}", scope_token(event.new.scope.as_deref()));
                    pending.push(
                        js.publish_with_headers(subject, headers, record.into())
                            .await?,
                    );
                }
                let mut acks = Vec::with_capacity(pending.len());
                for p in pending {
                    acks.push(p.await?);
                }
                Ok::<_, Box<dyn std::error::Error + Send + Sync>>(acks)
            };
            let acks = match tokio::time::timeout(REQUEST_TIMEOUT, all).await {
                Ok(r) => r.map_err(|e| e.to_string()),
                Err(_) => Err(format!(
                    "NATS did not acknowledge within {} s",
                    REQUEST_TIMEOUT.as_secs()
                )),
            };
            acks.map(|a| (events, a))
        });
        // Nothing is answered `accepted` that JetStream did not acknowledge
        // (a batch cut short may have stored some events: a retry finds
        // them as duplicates).
        let (events, acks) = sent
            .unwrap_or_else(|| Err("the NATS task failed".into()))
            .map_err(|e| PublishError::Log(format!("NATS: {e}")))?;
        let mut out = Vec::with_capacity(acks.len());
        for (mut event, ack) in events.into_iter().zip(acks) {
            if ack.duplicate {
                self.duplicates.fetch_add(1, Ordering::Relaxed);
                out.push(Published::Duplicate);
                continue;
            }
            self.published.fetch_add(1, Ordering::Relaxed);
            self.last_seq.fetch_max(ack.sequence, Ordering::Relaxed);
            event.seq = ack.sequence;
            self.run_handlers(&event);
            out.push(Published::Accepted(ack.sequence));
        }
        Ok(out)
    }

    fn subscribe(&self, selection: Selection, start: StartAt, capacity: usize) -> Box<dyn Feed> {
        let (tx, rx) = mpsc::channel(capacity.clamp(1, 4096));
        let filter = format!(
            "{}.{}",
            self.prefix,
            selection
                .scope
                .as_deref()
                .map_or(">", |s| scope_token(Some(s)))
        );
        // The consumer is made on the cluster's runtime, after this returns:
        // "from now on" is pinned to a sequence number here, so that nothing
        // published after the subscription is missed.
        let start = match start {
            StartAt::Latest => StartAt::Seq(self.last_seq.load(Ordering::Relaxed) + 1),
            other => other,
        };
        let task = FeedTask {
            stream: self.stream.clone(),
            filter,
            selection,
            start,
            tx,
            closing: self.closing.subscribe(),
            last_seq: self.last_seq.clone(),
        };
        self.feeds.fetch_add(1, Ordering::Relaxed);
        self.cluster.rt().spawn(task.run());
        Box::new(JetStreamFeed {
            rx,
            held: None,
            feeds: self.feeds.clone(),
        })
    }

    fn add_handler(&self, handler: Arc<dyn Handler>) {
        let mut handlers = self
            .handlers
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        let at = handlers
            .iter()
            .position(|h| h.priority() < handler.priority())
            .unwrap_or(handlers.len());
        handlers.insert(at, handler);
    }

    fn stats(&self) -> BusStats {
        BusStats {
            published: self.published.load(Ordering::Relaxed),
            duplicates: self.duplicates.load(Ordering::Relaxed),
            last_seq: self.last_seq.load(Ordering::Relaxed),
            history_first_seq: 0,
            history_events: 0,
            history_bytes: 0,
            feeds: self.feeds.load(Ordering::Relaxed),
        }
    }

    fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.closing.send_replace(true);
    }
}

/// Reads the stream for one feed on the cluster's runtime and hands the
/// selected events over a bounded channel: a slow consumer holds the reader
/// back (JetStream keeps the events), it loses none.
struct FeedTask {
    stream: Stream,
    filter: String,
    selection: Selection,
    start: StartAt,
    tx: mpsc::Sender<FeedItem>,
    closing: watch::Receiver<bool>,
    last_seq: Arc<AtomicU64>,
}

impl FeedTask {
    async fn run(mut self) {
        let end = self.read().await;
        if let Err(reason) = end {
            tracing::error!(filter = %self.filter, "event feed ended: {reason}");
        }
        let _ = self.tx.send(FeedItem::Closed).await;
    }

    /// Reads from the start position; when the consumer is lost (its
    /// server died, the connection dropped) it is made again from the
    /// next unread sequence number, backing off, until the feed ends. So a
    /// feed skips nothing but what retention removed (reported as a gap).
    async fn read(&mut self) -> Result<(), String> {
        let mut next = match self.start {
            StartAt::Latest => self.last_seq.load(Ordering::Relaxed) + 1,
            StartAt::Earliest => 1,
            StartAt::Seq(n) => n.max(1),
        };
        let mut backoff = Duration::from_millis(100);
        loop {
            match self.follow(&mut next).await {
                Ok(Flow::Done) => return Ok(()),
                Ok(Flow::Lost(why)) | Err(why) => {
                    tracing::warn!(filter = %self.filter, next, "event feed lost its consumer ({why}); making it again");
                }
            }
            tokio::select! {
                _ = self.closing.wait_for(|c| *c) => return Ok(()),
                () = self.tx.closed() => return Ok(()),
                () = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(Duration::from_secs(2));
        }
    }

    /// One consumer's life: from `next`, which it moves on.
    async fn follow(&mut self, next: &mut u64) -> Result<Flow, String> {
        let first = self
            .stream
            .get_info()
            .await
            .map_err(|e| e.to_string())?
            .state
            .first_sequence;
        if *next < first {
            let gap = FeedItem::Gap {
                reason: GapReason::HistoryEvicted,
                count: first - *next,
                first_seq: *next,
                last_seq: first - 1,
            };
            if self.tx.send(gap).await.is_err() {
                return Ok(Flow::Done);
            }
            *next = first;
        }
        let mut messages = super::ordered_messages(&self.stream, &self.filter, *next).await?;
        loop {
            let message = tokio::select! {
                _ = self.closing.wait_for(|c| *c) => return Ok(Flow::Done),
                () = self.tx.closed() => return Ok(Flow::Done),
                m = messages.next() => m,
            };
            let message = match message {
                Some(Ok(m)) => m,
                Some(Err(e)) => return Ok(Flow::Lost(e.to_string())),
                None => return Ok(Flow::Lost("the consumer ended".into())),
            };
            let seq = message.info().map_err(|e| e.to_string())?.stream_sequence;
            if seq < *next {
                // Already handed over (a consumer made again overlaps).
                continue;
            }
            *next = seq + 1;
            self.last_seq.fetch_max(seq, Ordering::Relaxed);
            let event = match codec::decode(seq, &message.payload) {
                Ok(e) => e,
                Err(e) => {
                    tracing::error!(
                        seq,
                        "event feed: a record that cannot be read is skipped: {e}"
                    );
                    continue;
                }
            };
            if !self.selection.matches(&event) {
                continue;
            }
            if self
                .tx
                .send(FeedItem::Events(vec![Arc::new(event)]))
                .await
                .is_err()
            {
                return Ok(Flow::Done);
            }
        }
    }
}

/// How a consumer's life ended.
enum Flow {
    /// The feed is over (dropped, or the bus closed).
    Done,
    /// The consumer was lost: make it again.
    Lost(String),
}

/// The consumer side: batches of what the task handed over.
struct JetStreamFeed {
    rx: mpsc::Receiver<FeedItem>,
    /// A gap or the end met while a batch was being gathered: the next
    /// call answers it.
    held: Option<FeedItem>,
    feeds: Arc<AtomicUsize>,
}

impl Feed for JetStreamFeed {
    fn next(
        &mut self,
        max: usize,
    ) -> Pin<Box<dyn std::future::Future<Output = FeedItem> + Send + '_>> {
        Box::pin(async move {
            if let Some(item) = self.held.take() {
                return item;
            }
            let Some(first) = self.rx.recv().await else {
                return FeedItem::Closed;
            };
            let FeedItem::Events(mut events) = first else {
                return first;
            };
            // More events already waiting join the batch (never a gap or
            // the end: those come on their own).
            while events.len() < max.max(1) {
                match self.rx.try_recv() {
                    Ok(FeedItem::Events(more)) => events.extend(more),
                    Ok(other) => {
                        self.held = Some(other);
                        break;
                    }
                    Err(_) => break,
                }
            }
            FeedItem::Events(events)
        })
    }
}

impl Drop for JetStreamFeed {
    fn drop(&mut self) {
        self.feeds.fetch_sub(1, Ordering::Relaxed);
    }
}
