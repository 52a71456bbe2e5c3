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
//! ([`health`]). What subscribing takes and gives is in `subscribe.rs`.

mod consumer;
pub mod dlq;
pub mod health;
pub mod named;
pub mod stats;
mod subscribe;
pub mod subscriptions;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};

use std::time::Duration;

use tokio::sync::mpsc;

pub use weir_core::settings::PipelineConfig;

use crate::bus::{EventBus, EventCounts, NewEvent, PublishError, Published, StartAt};
use crate::datastore::FeedChange;
use crate::engine::{Params, PluginFault};
use crate::registry::{RegisteredKey, Registry, params};
use crate::store::{Records, StoreError};
use consumer::Ctx;
pub use consumer::{Verdict, trial};
use dlq::{DeadLetter, DeadLetterSelector, DeadLetters};
use health::{HealthBook, Quarantine};
use named::NamedConsumers;
pub use subscribe::{
    Consumer, ConsumerCounts, ConsumerStats, Delivery, Notice, ReplayResult, SubscribeError,
    SubscribeRequest,
};
use subscriptions::{Slot, SubscriptionInfo, Subscriptions};

/// The pipeline.
pub struct Pipeline {
    bus: Arc<dyn EventBus>,
    registry: Arc<RwLock<Registry>>,
    subs: Arc<Subscriptions>,
    dlq: DeadLetters,
    health: HealthBook,
    named: Arc<NamedConsumers>,
    config: PipelineConfig,
    next_consumer: AtomicU64,
    counts: Arc<EventCounts>,
    closed: std::sync::atomic::AtomicBool,
    stats: stats::StatsBook,
}

impl Pipeline {
    /// A pipeline over `bus` running the keys of `registry`; with
    /// `records`, its dead letters, quarantines and named consumers are
    /// written through and what they held is loaded. `shared`, when given
    /// (a cluster), holds them instead, shared by every host.
    pub fn new(
        bus: Arc<dyn EventBus>,
        registry: Arc<RwLock<Registry>>,
        config: PipelineConfig,
        records: Option<Arc<dyn Records>>,
        shared: Option<Arc<dyn Records>>,
    ) -> Result<Arc<Self>, StoreError> {
        let counts = Arc::new(EventCounts::new(config.max_event_types));
        bus.add_handler(counts.clone());
        // In a cluster, dead letters, quarantines and named consumers are
        // shared by every host; the local store keeps nothing of them.
        let records = shared.clone().or(records);
        let named = Arc::new(NamedConsumers::new(config.consumer_ttl, records.clone())?);
        let dlq = match &records {
            Some(r) => DeadLetters::durable(config.dlq_capacity, config.dlq_bytes, r.clone())?,
            None => DeadLetters::new(config.dlq_capacity, config.dlq_bytes),
        };
        let health = match records {
            Some(r) => HealthBook::durable(config.quarantine_after, r)?,
            None => HealthBook::new(config.quarantine_after),
        };
        Ok(Arc::new(Self {
            bus,
            registry,
            subs: Arc::new(Subscriptions::default()),
            dlq,
            health,
            named,
            config,
            next_consumer: AtomicU64::new(1),
            counts,
            closed: std::sync::atomic::AtomicBool::new(false),
            stats: stats::StatsBook::default(),
        }))
    }

    /// Runs `pre-consume` and `cleanup` once per subscription across the
    /// hosts that share `leases` (a cluster), from now on.
    pub fn share_subscriptions(&self, leases: Arc<dyn crate::store::Leases>) {
        self.subs.share(leases);
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
    pub fn publish(&self, events: Vec<NewEvent>) -> Result<Vec<Published>, PublishError> {
        self.bus.publish(events)
    }

    /// Publishes unless shutdown began ([`PublishError::Closed`] then:
    /// nothing published).
    pub fn try_publish(&self, events: Vec<NewEvent>) -> Result<Vec<Published>, PublishError> {
        if self.is_closed() {
            return Err(PublishError::Closed);
        }
        self.bus.publish(events)
    }

    /// Publishes the changes of a datastore's index as `fs.*` events.
    pub fn publish_changes(&self, changes: &[FeedChange]) {
        if changes.is_empty() {
            return;
        }
        if let Err(e) = self
            .bus
            .publish(changes.iter().map(FeedChange::to_event).collect())
        {
            // The index has them; a consumer of `fs.*` sees a gap in seq.
            tracing::error!(
                count = changes.len(),
                "datastore changes not published: {e}"
            );
        }
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
        let (start, named) = match &req.consumer {
            Some(name) => {
                let (start, attached) = self.named.attach(
                    req.scope.as_deref(),
                    name,
                    &def.key,
                    &req.params,
                    req.from,
                    self.bus.stats().last_seq,
                )?;
                (start, Some(attached))
            }
            None => (req.from, None),
        };

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
            start,
            def.effective_buffer_size() as usize,
        );
        let from = match start {
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
            consumer: req.consumer.clone(),
            buffer_size: def.effective_buffer_size(),
            workers: def.effective_workers(),
        }));
        tokio::spawn(consumer::run(ctx, feed, tx, id));
        Ok(Consumer {
            id,
            key: def.key.clone(),
            subscription_id,
            rx,
            _named: named,
        })
    }

    /// The named consumers.
    pub fn named(&self) -> &Arc<NamedConsumers> {
        &self.named
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
