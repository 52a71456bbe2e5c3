//! Subscription lifecycle: `pre-consume` once per (key, subscription id)
//! when its first consumer arrives, `cleanup` when its last one leaves, and
//! a newcomer waits while either of them is running for its subscription.
//! In a cluster, "first" and "last" are cluster-wide: the host whose first
//! local consumer arrives joins the subscription's lease
//! ([`crate::store::Leases`]) and runs `pre-consume` only if no other live
//! host holds it; the host whose last local consumer leaves lets go and
//! runs `cleanup` only if it was the last holder.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};

use serde::Serialize;
use tokio::sync::{Notify, mpsc};

use super::consumer::Ctx;
use super::{Delivery, params_json};
use crate::engine::{Params, PluginFault};
use crate::registry::Runner;
use crate::store::{Join, Leases, Leave};

/// Where a subscription is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// `pre-consume` is running.
    Starting,
    /// Consumers are attached.
    Active,
    /// `cleanup` is running.
    CleaningUp,
}

/// One attached consumer.
pub(crate) struct Slot {
    pub tx: mpsc::Sender<Delivery>,
    pub ctx: Arc<Ctx>,
}

struct Entry {
    phase: Phase,
    runner: Arc<dyn Runner>,
    /// The params `pre-consume` ran with; `cleanup` gets the same.
    params: Params,
    consumers: BTreeMap<u64, Slot>,
}

type Id = (String, String);

/// Every subscription with at least one consumer (or a lifecycle call
/// running).
#[derive(Default)]
pub(crate) struct Subscriptions {
    table: Mutex<HashMap<Id, Entry>>,
    changed: Notify,
    pre_consumes: AtomicU64,
    cleanups: AtomicU64,
    /// The cluster's leases (none: this host alone decides first and last).
    leases: OnceLock<Arc<dyn Leases>>,
}

/// The lease name of a subscription.
fn lease_name(key: &str, sub: &str) -> String {
    format!("{key}\u{0}{sub}")
}

/// Runs `pre-consume` if this host is the first holder of the
/// subscription anywhere; answers whether it ran.
fn start(
    leases: Option<&Arc<dyn Leases>>,
    runner: &Arc<dyn Runner>,
    (key, sub, params): (&str, &str, &Params),
) -> Result<bool, PluginFault> {
    let Some(leases) = leases else {
        return runner.pre_consume(key, sub, params).map(|()| true);
    };
    let name = lease_name(key, sub);
    let lease_fault = |e: crate::store::StoreError| {
        PluginFault::Failed(format!("cluster subscription lease: {e}"))
    };
    match leases.join(&name).map_err(lease_fault)? {
        Join::Joined => Ok(false),
        Join::First => match runner.pre_consume(key, sub, params) {
            Ok(()) => {
                leases.started(&name).map_err(lease_fault)?;
                Ok(true)
            }
            Err(fault) => {
                // Nothing started: let go, so that the next one tries again.
                if let Ok(Leave::Last) = leases.leave(&name) {
                    let _ = leases.ended(&name);
                }
                Err(fault)
            }
        },
    }
}

/// Runs `cleanup` if this host is the last holder anywhere; answers
/// whether it ran.
fn end(
    leases: Option<&Arc<dyn Leases>>,
    runner: &Arc<dyn Runner>,
    (key, sub, params): (&str, &str, &Params),
) -> Result<bool, PluginFault> {
    let Some(leases) = leases else {
        return runner.cleanup(key, sub, params).map(|()| true);
    };
    let name = lease_name(key, sub);
    let left = leases
        .leave(&name)
        .map_err(|e| PluginFault::Failed(format!("cluster subscription lease: {e}")))?;
    if left == Leave::Others {
        return Ok(false);
    }
    let result = runner.cleanup(key, sub, params);
    if let Err(e) = leases.ended(&name) {
        tracing::warn!(
            key,
            subscription = sub,
            "ending the cluster subscription lease: {e}"
        );
    }
    result.map(|()| true)
}

/// A subscription as `/v1/subscriptions` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct SubscriptionInfo {
    /// The key.
    pub key: String,
    /// Its id.
    pub subscription_id: String,
    /// Lifecycle phase.
    pub phase: Phase,
    /// Attached consumers.
    pub consumers: Vec<ConsumerInfo>,
}

/// One consumer as `/v1/subscriptions` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct ConsumerInfo {
    /// Consumer id (unique in this host's life).
    pub id: u64,
    /// Its normalized params.
    pub params: serde_json::Map<String, serde_json::Value>,
    /// Its counters.
    #[serde(flatten)]
    pub stats: super::ConsumerCounts,
}

impl Subscriptions {
    /// Decides first and last with the cluster's `leases` from now on.
    pub fn share(&self, leases: Arc<dyn Leases>) {
        let _ = self.leases.set(leases);
    }

    fn table(&self) -> MutexGuard<'_, HashMap<Id, Entry>> {
        self.table.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Attaches consumer `slot_id` to (`key`, `sub`), running `pre-consume`
    /// first if it is the first consumer; waits while a `pre-consume` or
    /// `cleanup` of the same subscription runs.
    pub async fn attach(
        self: &Arc<Self>,
        key: &str,
        sub: &str,
        runner: &Arc<dyn Runner>,
        params: &Params,
        slot_id: u64,
        slot: Slot,
    ) -> Result<(), PluginFault> {
        let id: Id = (key.to_string(), sub.to_string());
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let mut table = self.table();
                match table.get_mut(&id) {
                    Some(e) if e.phase == Phase::Active => {
                        e.consumers.insert(slot_id, slot);
                        return Ok(());
                    }
                    Some(_) => {}
                    None => {
                        table.insert(
                            id.clone(),
                            Entry {
                                phase: Phase::Starting,
                                runner: runner.clone(),
                                params: params.clone(),
                                consumers: BTreeMap::new(),
                            },
                        );
                        break;
                    }
                }
            }
            notified.await;
        }
        // Pre-consume and the phase change run in a task of their own: if
        // this subscriber goes away meanwhile (its request is cancelled),
        // the subscription still leaves `Starting`, and with nobody attached
        // its cleanup runs, so that later subscribers do not wait forever.
        let (done, outcome) = tokio::sync::oneshot::channel();
        let this = self.clone();
        let (r, k, s, p) = (runner.clone(), id.0.clone(), id.1.clone(), params.clone());
        let task_id = id.clone();
        let leases = self.leases.get().cloned();
        tokio::spawn(async move {
            let result =
                tokio::task::spawn_blocking(move || start(leases.as_ref(), &r, (&k, &s, &p)))
                    .await
                    .unwrap_or_else(|e| {
                        Err(PluginFault::Trap(format!("pre-consume task failed: {e}")))
                    });
            let result = result.map(|ran| {
                if ran {
                    this.pre_consumes.fetch_add(1, Ordering::Relaxed);
                }
            });
            {
                let mut table = this.table();
                match &result {
                    Ok(()) => {
                        if let Some(e) = table.get_mut(&task_id) {
                            e.phase = Phase::Active;
                            e.consumers.insert(slot_id, slot);
                        }
                    }
                    Err(_) => {
                        table.remove(&task_id);
                    }
                }
            }
            this.changed.notify_waiters();
            if let Err(Ok(())) = done.send(result) {
                // The subscriber left during pre-consume: detach its slot.
                this.detach(&task_id.0, &task_id.1, slot_id).await;
            }
        });
        outcome.await.unwrap_or_else(|_| {
            Err(PluginFault::Trap(
                "the pre-consume task ended without an answer".into(),
            ))
        })
    }

    /// Detaches a consumer; the last one out runs `cleanup`.
    pub async fn detach(&self, key: &str, sub: &str, slot_id: u64) {
        let id: Id = (key.to_string(), sub.to_string());
        let (runner, params) = {
            let mut table = self.table();
            let Some(e) = table.get_mut(&id) else { return };
            e.consumers.remove(&slot_id);
            if !e.consumers.is_empty() || e.phase != Phase::Active {
                return;
            }
            e.phase = Phase::CleaningUp;
            (e.runner.clone(), e.params.clone())
        };
        let (k, s) = id.clone();
        let leases = self.leases.get().cloned();
        let result =
            tokio::task::spawn_blocking(move || end(leases.as_ref(), &runner, (&k, &s, &params)))
                .await;
        match result {
            Ok(Ok(true)) => {
                tracing::debug!(key, subscription = sub, "cleanup done");
                self.cleanups.fetch_add(1, Ordering::Relaxed);
            }
            Ok(Ok(false)) => {
                tracing::debug!(
                    key,
                    subscription = sub,
                    "other hosts still consume it: no cleanup"
                )
            }
            Ok(Err(fault)) => {
                tracing::warn!(key, subscription = sub, "cleanup failed: {fault}");
                self.cleanups.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => tracing::warn!(key, subscription = sub, "cleanup task failed: {e}"),
        }
        self.table().remove(&id);
        self.changed.notify_waiters();
    }

    /// Offers `delivery` to every consumer of (`key`, `sub`) without waiting;
    /// returns how many took it.
    pub fn offer(&self, key: &str, sub: &str, delivery: &Delivery) -> usize {
        let table = self.table();
        let Some(e) = table.get(&(key.to_string(), sub.to_string())) else {
            return 0;
        };
        e.consumers
            .values()
            .filter(|slot| slot.tx.try_send(delivery.clone()).is_ok())
            .count()
    }

    /// Every consumer of `key`.
    pub fn consumers_of(&self, key: &str) -> Vec<Arc<Ctx>> {
        self.table()
            .iter()
            .filter(|((k, _), _)| k == key)
            .flat_map(|(_, e)| e.consumers.values().map(|s| s.ctx.clone()))
            .collect()
    }

    /// Runs the `cleanup` of `key`'s subscriptions with `runner` from now on
    /// (its plugin was replaced).
    pub fn set_runner(&self, key: &str, runner: &Arc<dyn Runner>) {
        for ((k, _), e) in self.table().iter_mut() {
            if k == key {
                e.runner = runner.clone();
            }
        }
    }

    /// `pre-consume` calls that succeeded, and `cleanup` calls made.
    pub fn lifecycle_counts(&self) -> (u64, u64) {
        (
            self.pre_consumes.load(Ordering::Relaxed),
            self.cleanups.load(Ordering::Relaxed),
        )
    }

    /// Every subscription, sorted by key and id.
    pub fn list(&self) -> Vec<SubscriptionInfo> {
        let table = self.table();
        let mut out: Vec<SubscriptionInfo> = table
            .iter()
            .map(|((key, sub), e)| SubscriptionInfo {
                key: key.clone(),
                subscription_id: sub.clone(),
                phase: e.phase,
                consumers: e
                    .consumers
                    .iter()
                    .map(|(id, slot)| ConsumerInfo {
                        id: *id,
                        params: params_json(&slot.ctx.current().params),
                        stats: slot.ctx.stats.counts(),
                    })
                    .collect(),
            })
            .collect();
        out.sort_by(|a, b| (&a.key, &a.subscription_id).cmp(&(&b.key, &b.subscription_id)));
        out
    }

    /// Whether no subscription is left (all cleanups done).
    pub fn is_empty(&self) -> bool {
        self.table().is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bus::Event;
    use crate::engine::Outcome;
    use crate::registry::KeyDefinition;
    use std::time::Duration;

    /// Records lifecycle calls; cleanup takes a while, and pre-consume too
    /// when `slow_pre` is set.
    #[derive(Default)]
    struct Slow {
        log: Mutex<Vec<String>>,
        slow_pre: bool,
    }

    impl Runner for Slow {
        fn name(&self) -> &str {
            "slow"
        }
        fn file_label(&self) -> String {
            "native:slow".into()
        }
        fn definitions(&self) -> &[KeyDefinition] {
            &[]
        }
        fn as_any(&self) -> &dyn std::any::Any {
            self
        }
        fn matches_batch(
            &self,
            _: &str,
            _: &Params,
            e: &[&Event],
        ) -> Vec<Result<bool, PluginFault>> {
            vec![Ok(true); e.len()]
        }
        fn process_batch(
            &self,
            _: &str,
            _: &Params,
            e: &[&Event],
        ) -> Vec<Result<Outcome, PluginFault>> {
            vec![Ok(Outcome::Drop); e.len()]
        }
        fn pre_consume(&self, _: &str, sub: &str, _: &Params) -> Result<(), PluginFault> {
            if self.slow_pre {
                std::thread::sleep(Duration::from_millis(300));
            }
            self.log.lock().unwrap().push(format!("pre {sub}"));
            Ok(())
        }
        fn cleanup(&self, _: &str, sub: &str, _: &Params) -> Result<(), PluginFault> {
            self.log
                .lock()
                .unwrap()
                .push(format!("cleanup {sub} begins"));
            std::thread::sleep(Duration::from_millis(200));
            self.log.lock().unwrap().push(format!("cleanup {sub} ends"));
            Ok(())
        }
    }

    fn slot(runner: &Arc<dyn Runner>) -> Slot {
        use crate::bus::MemoryBus;
        use crate::pipeline::consumer::Version;
        use crate::pipeline::{Pipeline, PipelineConfig};
        let pipeline = Pipeline::new(
            Arc::new(MemoryBus::new(Default::default())),
            Arc::default(),
            PipelineConfig::default(),
            None,
            None,
        )
        .unwrap();
        let (tx, _rx) = mpsc::channel(1);
        Slot {
            tx,
            ctx: Arc::new(Ctx {
                key: "k".into(),
                subscription_id: "s".into(),
                workers: 1,
                max_batch: 1,
                requested: vec![],
                scope: None,
                version: std::sync::RwLock::new(Arc::new(Version {
                    runner: runner.clone(),
                    params: vec![],
                    output: crate::registry::OutputCheck::Native,
                })),
                health: pipeline.health().of("k"),
                stats: Arc::default(),
                key_stats: Arc::default(),
                end: tokio::sync::watch::Sender::new(None),
                pipeline,
            }),
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_newcomer_waits_for_the_cleanup_then_runs_pre_consume_again() {
        let subs = Arc::new(Subscriptions::default());
        let slow = Arc::new(Slow::default());
        let runner: Arc<dyn Runner> = slow.clone();
        let p = vec![];
        subs.attach("k", "s", &runner, &p, 1, slot(&runner))
            .await
            .unwrap();
        subs.attach("k", "s", &runner, &p, 2, slot(&runner))
            .await
            .unwrap();
        subs.attach("k", "other", &runner, &p, 3, slot(&runner))
            .await
            .unwrap();
        assert_eq!(subs.lifecycle_counts(), (2, 0));
        subs.detach("k", "s", 1).await;
        assert_eq!(subs.lifecycle_counts(), (2, 0), "one consumer left");
        let leaving = {
            let subs = subs.clone();
            tokio::spawn(async move { subs.detach("k", "s", 2).await })
        };
        // Let the cleanup start, then arrive during it.
        tokio::time::sleep(Duration::from_millis(50)).await;
        subs.attach("k", "s", &runner, &p, 4, slot(&runner))
            .await
            .unwrap();
        leaving.await.unwrap();
        assert_eq!(
            *slow.log.lock().unwrap(),
            vec![
                "pre s",
                "pre other",
                "cleanup s begins",
                "cleanup s ends",
                "pre s"
            ]
        );
        assert_eq!(subs.lifecycle_counts(), (3, 1));
        assert_eq!(subs.list().len(), 2);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_subscriber_that_leaves_during_pre_consume_wedges_nothing() {
        let subs = Arc::new(Subscriptions::default());
        let slow = Arc::new(Slow {
            slow_pre: true,
            ..Slow::default()
        });
        let runner: Arc<dyn Runner> = slow.clone();
        let p = vec![];
        // The first subscriber's request is cancelled during pre-consume.
        let first = {
            let (subs, runner) = (subs.clone(), runner.clone());
            tokio::spawn(async move {
                let p = vec![];
                subs.attach("k", "s", &runner, &p, 1, slot(&runner)).await
            })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        first.abort();
        // A later subscriber is not stuck behind a `Starting` forever.
        tokio::time::timeout(
            Duration::from_secs(5),
            subs.attach("k", "s", &runner, &p, 2, slot(&runner)),
        )
        .await
        .expect("the second subscriber is served")
        .unwrap();
        subs.detach("k", "s", 2).await;
        // Every pre-consume was followed by its cleanup.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while !subs.is_empty() && std::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(subs.is_empty(), "{:?}", slow.log.lock().unwrap());
        let (pre, clean) = subs.lifecycle_counts();
        assert_eq!(pre, clean, "{:?}", slow.log.lock().unwrap());
    }
}
