//! The event pipeline: connects the bus to keys and keys to consumers.
//!
//! A consumer subscribes to a key with params. The params are checked
//! against the definition, normalized by the key, and hashed into the
//! subscription id; the first consumer of a subscription runs
//! `pre-consume`, the last one out runs `cleanup` ([`subscriptions`]). Each
//! consumer then pulls its bus [`Feed`](crate::bus::Feed) in batches and runs
//! `matches` then `process` on up to `workers` batches at once, delivering
//! results in bus order (`consumer`). Output is wrapped in an envelope and,
//! for custom schemas, validated. Faults go to the dead-letter queue
//! ([`dlq`]); a key that faults too often in a row is quarantined
//! ([`health`]).

mod consumer;
pub mod dlq;
pub mod health;
pub mod stats;
pub mod subscriptions;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};

use std::time::Duration;

use serde::Serialize;
use tokio::sync::mpsc;

pub use weir_core::settings::PipelineConfig;

use crate::bus::{EventBus, EventCounts, GapReason, NewEvent, Published, StartAt};
use crate::datastore::FeedChange;
use crate::engine::{Params, PluginFault};
use crate::index::ChangeKind;
use crate::registry::{ParamError, RegisteredKey, Registry, params};
use crate::time::rfc3339_ms;
use consumer::Ctx;
pub use consumer::{Trial, trial};
use dlq::{DeadLetter, DeadLetterSelector, DeadLetters};
use health::{HealthBook, Quarantine};
use subscriptions::{Slot, SubscriptionInfo, Subscriptions};

/// What a consumer receives.
#[derive(Debug, Clone)]
pub enum Delivery {
    /// One envelope, as compact JSON.
    Envelope {
        /// The event's bus sequence number.
        seq: u64,
        /// `{id, key, subscription_id, seq, event_type, source, source_time, timestamp, data}`.
        json: String,
    },
    /// Something the consumer should know that is not an event.
    Notice(Notice),
}

/// Messages to a consumer besides envelopes.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "notice", rename_all = "snake_case")]
pub enum Notice {
    /// The subscription is set up; events follow.
    Subscribed {
        /// The key.
        key: String,
        /// The subscription id.
        subscription_id: String,
        /// The normalized params.
        params: serde_json::Map<String, serde_json::Value>,
        /// `latest`, `earliest` or a sequence number.
        from: String,
        /// Buffer size (events) before the oldest are dropped.
        buffer_size: u32,
        /// Parallel workers.
        workers: u32,
    },
    /// Events this consumer will never receive.
    Gap {
        /// Why.
        reason: GapReason,
        /// How many.
        count: u64,
        /// First sequence number skipped.
        first_seq: u64,
        /// Last sequence number skipped.
        last_seq: u64,
    },
    /// The key is quarantined: no events are processed until an admin
    /// resumes it; events meanwhile go to the dead-letter queue.
    Quarantined {
        /// The key.
        key: String,
        /// Consecutive faults that tripped it.
        faults: u32,
        /// The last fault.
        last_error: String,
    },
    /// The key was resumed.
    Resumed {
        /// The key.
        key: String,
    },
    /// The stream ends.
    Ended {
        /// Why.
        reason: String,
    },
}

/// Counters of one consumer.
#[derive(Debug, Default)]
pub struct ConsumerStats {
    received: AtomicU64,
    matched: AtomicU64,
    delivered: AtomicU64,
    filtered: AtomicU64,
    dropped_by_key: AtomicU64,
    faults: AtomicU64,
    overflow_dropped: AtomicU64,
    skipped_quarantined: AtomicU64,
}

/// A snapshot of [`ConsumerStats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct ConsumerCounts {
    /// Events pulled from the bus.
    pub received: u64,
    /// Events `matches` accepted (then processed).
    pub matched: u64,
    /// Envelopes delivered.
    pub delivered: u64,
    /// Events `matches` rejected.
    pub filtered: u64,
    /// Events `process` dropped.
    pub dropped_by_key: u64,
    /// Events that faulted (now dead letters).
    pub faults: u64,
    /// Events dropped because the consumer was slower than its buffer.
    pub overflow_dropped: u64,
    /// Events not processed because the key was quarantined.
    pub skipped_quarantined: u64,
}

impl ConsumerStats {
    /// Adds `n` to the counter `field` picks.
    fn add(&self, field: fn(&Self) -> &AtomicU64, n: u64) {
        field(self).fetch_add(n, Ordering::Relaxed);
    }

    /// A snapshot.
    pub fn counts(&self) -> ConsumerCounts {
        let l = |c: &AtomicU64| c.load(Ordering::Relaxed);
        ConsumerCounts {
            received: l(&self.received),
            matched: l(&self.matched),
            delivered: l(&self.delivered),
            filtered: l(&self.filtered),
            dropped_by_key: l(&self.dropped_by_key),
            faults: l(&self.faults),
            overflow_dropped: l(&self.overflow_dropped),
            skipped_quarantined: l(&self.skipped_quarantined),
        }
    }
}

/// A subscription request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscribeRequest {
    /// The key.
    pub key: String,
    /// Params as given.
    pub params: Params,
    /// Where in the bus to start.
    pub from: StartAt,
    /// The subscribing key's scope: its datastore (it sees that
    /// datastore's events only, and its subscriptions are that
    /// datastore's), or `None` for a host-level key (everything).
    pub scope: Option<String>,
}

/// Why a subscription was refused.
#[derive(Debug, thiserror::Error)]
pub enum SubscribeError {
    /// No such key.
    #[error("no key `{0}`")]
    UnknownKey(String),
    /// A param is not allowed (checked before or after normalization).
    #[error(transparent)]
    Param(#[from] ParamError),
    /// `normalize-params` refused the params.
    #[error("key `{key}` refused the params: {message}")]
    Normalize {
        /// The key.
        key: String,
        /// The key's reason.
        message: String,
    },
    /// `pre-consume` failed: the subscription is refused with its error.
    #[error("key `{key}`: pre-consume of subscription `{subscription_id}` failed: {fault}")]
    PreConsume {
        /// The key.
        key: String,
        /// The subscription.
        subscription_id: String,
        /// The failure.
        fault: PluginFault,
    },
    /// A key function faulted (trap, deadline...) while setting up.
    #[error("key `{key}`: {function} faulted: {fault}")]
    Fault {
        /// The key.
        key: String,
        /// The function.
        function: &'static str,
        /// The fault.
        fault: PluginFault,
    },
    /// The host is shutting down.
    #[error("the host is shutting down")]
    Closed,
}

/// A connected consumer: receive until `None`. Dropping it leaves the
/// subscription (the last consumer out runs `cleanup`).
pub struct Consumer {
    /// Its id.
    pub id: u64,
    /// The key.
    pub key: String,
    /// The subscription id.
    pub subscription_id: String,
    rx: mpsc::Receiver<Delivery>,
}

impl Consumer {
    /// The next delivery; `None` when the stream has ended.
    pub async fn recv(&mut self) -> Option<Delivery> {
        self.rx.recv().await
    }

    /// The receiving end, for adapting into a stream.
    pub fn into_receiver(self) -> mpsc::Receiver<Delivery> {
        self.rx
    }
}

/// What replaying one dead letter did.
#[derive(Debug, Clone, Serialize)]
pub struct ReplayResult {
    /// The letter.
    pub id: u64,
    /// `delivered`, `dropped` (filtered or dropped by the key), `failed`
    /// (back in the queue) or `skipped` (key gone or quarantined, or no
    /// consumer of its subscription attached; back in the queue).
    pub outcome: &'static str,
    /// Consumers the output was delivered to.
    pub delivered_to: usize,
    /// The output envelope, when there is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub envelope: Option<Box<serde_json::value::RawValue>>,
    /// Why it failed or was skipped.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The pipeline.
pub struct Pipeline {
    bus: Arc<dyn EventBus>,
    registry: Arc<RwLock<Registry>>,
    subs: Arc<Subscriptions>,
    dlq: DeadLetters,
    health: HealthBook,
    config: PipelineConfig,
    next_consumer: AtomicU64,
    counts: Arc<EventCounts>,
    closed: std::sync::atomic::AtomicBool,
    stats: stats::StatsBook,
}

impl Pipeline {
    /// A pipeline over `bus` running the keys of `registry`.
    pub fn new(
        bus: Arc<dyn EventBus>,
        registry: Arc<RwLock<Registry>>,
        config: PipelineConfig,
    ) -> Arc<Self> {
        let counts = Arc::new(EventCounts::new(config.max_event_types));
        bus.add_handler(counts.clone());
        Arc::new(Self {
            bus,
            registry,
            subs: Arc::new(Subscriptions::default()),
            dlq: DeadLetters::new(config.dlq_capacity, config.dlq_bytes),
            health: HealthBook::new(config.quarantine_after),
            config,
            next_consumer: AtomicU64::new(1),
            counts,
            closed: std::sync::atomic::AtomicBool::new(false),
            stats: stats::StatsBook::default(),
        })
    }

    /// The bus.
    pub fn bus(&self) -> &Arc<dyn EventBus> {
        &self.bus
    }

    /// Events published per type (the built-in metrics handler).
    pub fn event_counts(&self) -> std::collections::BTreeMap<String, u64> {
        self.counts.snapshot()
    }

    /// Cumulative stats of every key that has run.
    pub fn key_stats(&self) -> Vec<(String, Arc<stats::KeyStats>)> {
        self.stats.all()
    }

    /// The dead-letter queue.
    pub fn dead_letters(&self) -> &DeadLetters {
        &self.dlq
    }

    /// Quarantine state of every key.
    pub fn health(&self) -> &HealthBook {
        &self.health
    }

    /// Publishes events; one answer each.
    pub fn publish(&self, events: Vec<NewEvent>) -> Vec<Published> {
        self.bus.publish(events)
    }

    /// Publishes unless shutdown began; `None` then (nothing published).
    pub fn try_publish(&self, events: Vec<NewEvent>) -> Option<Vec<Published>> {
        (!self.is_closed()).then(|| self.bus.publish(events))
    }

    /// Publishes the changes of a datastore's index as `fs.*` events.
    pub fn publish_changes(&self, changes: &[FeedChange]) {
        if changes.is_empty() {
            return;
        }
        self.bus.publish(changes.iter().map(change_event).collect());
    }

    /// Subscribes a consumer: checks and normalizes the params, computes the
    /// subscription id, runs `pre-consume` for the first consumer, and
    /// starts delivering.
    pub async fn subscribe(
        self: &Arc<Self>,
        req: SubscribeRequest,
    ) -> Result<Consumer, SubscribeError> {
        if self.closed.load(Ordering::SeqCst) {
            return Err(SubscribeError::Closed);
        }
        let entry = self
            .registry
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .lookup(&req.key)
            .cloned()
            .ok_or_else(|| SubscribeError::UnknownKey(req.key.clone()))?;
        let def = entry.def.clone();
        let (version, subscription_id) = prepare(&entry, &req.params, req.scope.as_deref()).await?;
        let runner = version.runner.clone();
        let normalized = version.params.clone();

        let id = self.next_consumer.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel(self.config.output_buffer.max(1));
        let ctx = Arc::new(Ctx {
            key: def.key.clone(),
            subscription_id: subscription_id.clone(),
            workers: def.effective_workers().max(1) as usize,
            max_batch: self
                .config
                .max_batch
                .min(def.effective_buffer_size() as usize)
                .max(1),
            requested: req.params.clone(),
            scope: req.scope.clone(),
            version: RwLock::new(Arc::new(version)),
            health: self.health.of(&def.key),
            stats: Arc::new(ConsumerStats::default()),
            key_stats: self.stats.of(&def.key),
            pipeline: self.clone(),
            end: tokio::sync::watch::Sender::new(None),
        });
        let slot = Slot {
            tx: tx.clone(),
            ctx: ctx.clone(),
        };
        self.subs
            .attach(&def.key, &subscription_id, &runner, &normalized, id, slot)
            .await
            .map_err(|fault| SubscribeError::PreConsume {
                key: def.key.clone(),
                subscription_id: subscription_id.clone(),
                fault,
            })?;

        let feed = self.bus.subscribe(
            crate::bus::Selection {
                pattern: def.event_type.clone(),
                scope: req.scope.clone(),
            },
            req.from,
            def.effective_buffer_size() as usize,
        );
        let from = match req.from {
            StartAt::Latest => "latest".to_string(),
            StartAt::Earliest => "earliest".to_string(),
            StartAt::Seq(n) => n.to_string(),
        };
        // Room for this notice is guaranteed: the channel is new.
        let _ = tx.try_send(Delivery::Notice(Notice::Subscribed {
            key: def.key.clone(),
            subscription_id: subscription_id.clone(),
            params: params_json(&normalized),
            from,
            buffer_size: def.effective_buffer_size(),
            workers: def.effective_workers(),
        }));
        tokio::spawn(consumer::run(ctx, feed, tx, id));
        Ok(Consumer {
            id,
            key: def.key.clone(),
            subscription_id,
            rx,
        })
    }

    /// The plugin running `key` was replaced by `entry`: each consumer's
    /// params are resolved and normalized again by the new version, which
    /// runs their next batches; a consumer the new version refuses (or gives
    /// another subscription identity) is ended with the reason. The key's
    /// quarantine, if any, is lifted: it is new code.
    pub async fn key_replaced(&self, entry: &RegisteredKey) {
        let key = entry.def.key.as_str();
        if self.resume(key) {
            tracing::info!(key, "quarantine lifted: the key's plugin was replaced");
        }
        self.subs.set_runner(key, &entry.plugin);
        for ctx in self.subs.consumers_of(key) {
            match prepare(entry, &ctx.requested, ctx.scope.as_deref()).await {
                Ok((version, id)) if id == ctx.subscription_id => ctx.swap(version),
                Ok((_, id)) => ctx.finish(format!(
                    "the new version of key `{key}` gives these params another subscription identity ({id}); subscribe again"
                )),
                Err(e) => ctx.finish(format!(
                    "the new version of key `{key}` refuses this subscription: {e}"
                )),
            }
        }
    }

    /// `key` is gone: its consumers are ended with `reason` (and the last
    /// one of each subscription runs its cleanup).
    pub fn key_removed(&self, key: &str, reason: &str) {
        for ctx in self.subs.consumers_of(key) {
            ctx.finish(reason.to_string());
        }
    }

    /// Every subscription with its consumers.
    pub fn subscriptions(&self) -> Vec<SubscriptionInfo> {
        self.subs.list()
    }

    /// `pre-consume` runs that succeeded and `cleanup` runs, since start.
    pub fn lifecycle_counts(&self) -> (u64, u64) {
        self.subs.lifecycle_counts()
    }

    /// Lifts the quarantine of `key`; `false` when it was not quarantined.
    pub fn resume(&self, key: &str) -> bool {
        let resumed = self.health.of(key).resume();
        if resumed {
            tracing::info!(key, "key resumed");
        }
        resumed
    }

    /// The quarantine of `key`, if any.
    pub fn quarantine(&self, key: &str) -> Option<Quarantine> {
        self.health.of(key).quarantine()
    }

    /// Runs the selected dead letters again through the key's current
    /// plugin, delivering output to the subscription's current consumers.
    /// Letters that fail again (or cannot run) go back with their id.
    pub async fn replay(self: &Arc<Self>, selector: DeadLetterSelector) -> Vec<ReplayResult> {
        let letters = self.dlq.take(&selector, usize::MAX);
        let this = self.clone();
        tokio::task::spawn_blocking(move || {
            letters
                .into_iter()
                .map(|letter| consumer::replay_one(&this, letter))
                .collect()
        })
        .await
        .unwrap_or_default()
    }

    fn bury(&self, letter: DeadLetter) {
        // A quarantined key buries every event it skips; the quarantine
        // itself was logged once, so these would only flood the log.
        if letter.kind == dlq::LetterKind::Quarantined {
            tracing::debug!(key = %letter.key, subscription = %letter.subscription_id, event = %letter.event.new.id, kind = %letter.kind, "dead letter: {}", letter.message);
        } else {
            tracing::warn!(key = %letter.key, subscription = %letter.subscription_id, event = %letter.event.new.id, kind = %letter.kind, "dead letter: {}", letter.message);
        }
        self.dlq.push(letter);
    }

    /// Whether [`Self::shutdown`] has begun.
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
    }

    /// Ends every feed; consumers are told and detach (running cleanups).
    /// Waits up to `limit` for the cleanups; `false` if some did not finish.
    pub async fn shutdown(&self, limit: Duration) -> bool {
        self.closed.store(true, Ordering::SeqCst);
        self.bus.close();
        let deadline = tokio::time::Instant::now() + limit;
        while !self.subs.is_empty() {
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        true
    }
}

/// Checks and normalizes `given` for `entry` and computes the subscription
/// id: what a consumer runs the key with. A datastore's subscriptions are
/// its own (`DATASTORE/ID`): they share nothing (pre-consume, cleanup,
/// plugin state named by the id, dead letters) with another scope's.
async fn prepare(
    entry: &RegisteredKey,
    given: &Params,
    scope: Option<&str>,
) -> Result<(consumer::Version, String), SubscribeError> {
    let def = entry.def.clone();
    let runner = entry.plugin.clone();
    let resolved = params::resolve(&def, given)?;
    let normalized = {
        let (r, k) = (runner.clone(), def.key.clone());
        tokio::task::spawn_blocking(move || r.normalize_params(&k, &resolved))
            .await
            .unwrap_or_else(|e| Err(PluginFault::Trap(format!("task failed: {e}"))))
    }
    .map_err(|fault| match fault {
        PluginFault::Failed(message) => SubscribeError::Normalize {
            key: def.key.clone(),
            message,
        },
        fault => SubscribeError::Fault {
            key: def.key.clone(),
            function: "normalize-params",
            fault,
        },
    })?;
    params::verify_normalized(&def, &normalized)?;
    let subscription_id = match scope {
        Some(d) => format!("{d}/{}", params::subscription_id(&def, &normalized)),
        None => params::subscription_id(&def, &normalized),
    };
    Ok((
        consumer::Version {
            runner,
            params: normalized,
            output: entry.output.clone(),
        },
        subscription_id,
    ))
}

/// Params as a JSON object, in their order.
pub fn params_json(params: &Params) -> serde_json::Map<String, serde_json::Value> {
    params
        .iter()
        .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
        .collect()
}

/// An index change as a bus event: `fs.insert`, `fs.update` or `fs.delete`,
/// source `datastore/NAME`, payload `{datastore, path, is_dir, size, mtime,
/// ctime, origin}` (origin: the row's source, such as `realtime`).
/// `source_time` is the mtime when it is a time RFC 3339 can write.
pub fn change_event(c: &FeedChange) -> NewEvent {
    let kind = match c.change.kind {
        ChangeKind::Insert => "fs.insert",
        ChangeKind::Update => "fs.update",
        ChangeKind::Delete => "fs.delete",
    };
    let m = &c.change.meta;
    let payload = serde_json::json!({
        "datastore": c.datastore,
        "path": c.change.path,
        "is_dir": m.is_dir,
        "size": m.size,
        "mtime": m.mtime,
        "ctime": m.ctime,
        "origin": c.change.source,
    });
    let source_time =
        (m.mtime.is_finite() && m.mtime > 0.0).then(|| rfc3339_ms((m.mtime * 1000.0) as u64));
    NewEvent {
        id: uuid::Uuid::new_v4().to_string(),
        event_type: kind.to_string(),
        source: format!("datastore/{}", c.datastore),
        source_time,
        correlation_id: None,
        payload: payload.to_string(),
        scope: Some(c.datastore.clone()),
    }
}
