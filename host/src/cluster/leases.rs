//! [`KvLeases`]: the store's [`Leases`] in the KV bucket `{name}-leases`.
//! One entry per lease: its phase (starting, active, ending), the host
//! running the start or the end, and every holder with the time its hold
//! expires. Every change is a compare-and-set on the entry's revision, and
//! each host renews its holds every [`RENEW_EVERY`]; a hold not renewed for
//! [`HOLD_TTL`] (its host died) no longer counts.

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use async_nats::jetstream::kv;
use serde::{Deserialize, Serialize};

use super::{Cluster, ClusterError};
use crate::store::{Join, Leases, Leave, StoreError};
use crate::time::now_ms;

/// How long a hold lasts without renewal.
pub const HOLD_TTL: Duration = Duration::from_secs(15);
/// How often a host renews its holds.
pub const RENEW_EVERY: Duration = Duration::from_secs(5);
/// Longest a join waits for another host's start or end.
const WAIT_LIMIT: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Phase {
    Starting,
    Active,
    Ending,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Lease {
    phase: Phase,
    /// The host running the start or the end.
    by: String,
    /// Holder host id -> when its hold expires (ms since the epoch).
    holders: BTreeMap<String, u64>,
}

impl Lease {
    /// Drops expired holds.
    fn prune(&mut self, now: u64) {
        self.holders.retain(|_, until| *until >= now);
    }
}

/// The leases of this host.
pub struct KvLeases {
    cluster: Arc<Cluster>,
    bucket: kv::Store,
    /// This host's id.
    me: String,
    /// The leases this host holds (renewed).
    held: Arc<Mutex<HashSet<String>>>,
}

fn io(e: impl std::fmt::Display) -> StoreError {
    StoreError::Io(format!("NATS: {e}"))
}

/// The outcome of one attempt.
enum Step<T> {
    Done(T),
    /// Written by someone else meanwhile, or waiting for another host.
    Again,
}

impl KvLeases {
    /// Makes (or finds) the bucket and starts renewing this host's holds.
    pub fn open(cluster: Arc<Cluster>, host_id: &str) -> Result<Arc<Self>, ClusterError> {
        let bucket = cluster.bucket("leases", Duration::ZERO)?;
        let this = Arc::new(Self {
            cluster,
            bucket,
            me: host_id.to_string(),
            held: Arc::default(),
        });
        this.renew_forever();
        Ok(this)
    }

    fn renew_forever(self: &Arc<Self>) {
        let weak = Arc::downgrade(self);
        self.cluster.rt().spawn(async move {
            loop {
                tokio::time::sleep(RENEW_EVERY).await;
                let Some(this) = weak.upgrade() else { return };
                let names: Vec<String> = this
                    .held
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .iter()
                    .cloned()
                    .collect();
                for name in names {
                    if let Err(e) = this.renew(&name).await {
                        tracing::warn!(lease = %name, "renewing a subscription lease: {e}");
                    }
                }
            }
        });
    }

    async fn renew(&self, name: &str) -> Result<(), StoreError> {
        for _ in 0..8 {
            let Some((mut lease, rev)) = self.read(name).await? else {
                return Ok(());
            };
            let Some(until) = lease.holders.get_mut(&self.me) else {
                return Ok(());
            };
            *until = now_ms() + HOLD_TTL.as_millis() as u64;
            if self.write(name, &lease, Some(rev)).await? {
                return Ok(());
            }
        }
        Ok(())
    }

    async fn read(&self, name: &str) -> Result<Option<(Lease, u64)>, StoreError> {
        let entry = self.bucket.entry(hex::encode(name)).await.map_err(io)?;
        Ok(entry.and_then(|e| match e.operation {
            kv::Operation::Put => serde_json::from_slice(&e.value)
                .ok()
                .map(|l| (l, e.revision)),
            _ => None,
        }))
    }

    /// Writes `lease` over revision `expected` (`None`: none); `false` when
    /// someone else wrote first.
    async fn write(
        &self,
        name: &str,
        lease: &Lease,
        expected: Option<u64>,
    ) -> Result<bool, StoreError> {
        let value: bytes::Bytes = serde_json::to_vec(lease).unwrap_or_default().into();
        let key = hex::encode(name);
        match expected {
            Some(rev) => match self.bucket.update(key, value, rev).await {
                Ok(_) => Ok(true),
                Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => Ok(false),
                Err(e) => Err(io(e)),
            },
            None => match self.bucket.create(key, value).await {
                Ok(_) => Ok(true),
                Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => Ok(false),
                Err(e) => Err(io(e)),
            },
        }
    }

    fn hold(&self) -> u64 {
        now_ms() + HOLD_TTL.as_millis() as u64
    }

    /// Runs `step` until it is done, waiting a little between attempts,
    /// at most [`WAIT_LIMIT`].
    fn until_done<T: Send + 'static>(
        self: &Arc<Self>,
        name: &str,
        step: impl Fn(
            Arc<Self>,
            String,
        ) -> futures_util::future::BoxFuture<'static, Result<Step<T>, StoreError>>
        + Send
        + 'static,
    ) -> Result<T, StoreError> {
        let (this, name) = (self.clone(), name.to_string());
        self.cluster
            .block_on(async move {
                let deadline = Instant::now() + WAIT_LIMIT;
                loop {
                    if let Step::Done(t) = step(this.clone(), name.clone()).await? {
                        return Ok(t);
                    }
                    if Instant::now() > deadline {
                        return Err(StoreError::Io(format!(
                            "subscription lease `{}` stayed busy for {} s",
                            weir_core::text::echo(&name),
                            WAIT_LIMIT.as_secs()
                        )));
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            })
            .unwrap_or_else(|| Err(io("the NATS task failed")))
    }
}

/// The shared leases, used through an `Arc` (the steps run as tasks).
pub struct SharedLeases(pub Arc<KvLeases>);

impl Leases for SharedLeases {
    fn join(&self, name: &str) -> Result<Join, StoreError> {
        let joined = self.0.until_done(name, |this, name| {
            Box::pin(async move {
                let now = now_ms();
                let Some((mut lease, rev)) = this.read(&name).await? else {
                    let lease = Lease {
                        phase: Phase::Starting,
                        by: this.me.clone(),
                        holders: BTreeMap::from([(this.me.clone(), this.hold())]),
                    };
                    return Ok(if this.write(&name, &lease, None).await? {
                        Step::Done(Join::First)
                    } else {
                        Step::Again
                    });
                };
                lease.prune(now);
                let runner_alive = lease.holders.contains_key(&lease.by);
                let outcome = match lease.phase {
                    // Another host starts or ends it: wait, unless it died.
                    Phase::Starting | Phase::Ending if runner_alive && lease.by != this.me => {
                        return Ok(Step::Again);
                    }
                    Phase::Active if !lease.holders.is_empty() => Join::Joined,
                    // Nobody live holds it (or its runner died): start over.
                    _ => {
                        lease.holders.clear();
                        lease.phase = Phase::Starting;
                        lease.by = this.me.clone();
                        Join::First
                    }
                };
                lease.holders.insert(this.me.clone(), this.hold());
                Ok(if this.write(&name, &lease, Some(rev)).await? {
                    Step::Done(outcome)
                } else {
                    Step::Again
                })
            })
        })?;
        self.0
            .held
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(name.to_string());
        Ok(joined)
    }

    fn started(&self, name: &str) -> Result<(), StoreError> {
        self.0.until_done(name, |this, name| {
            Box::pin(async move {
                let Some((mut lease, rev)) = this.read(&name).await? else {
                    return Ok(Step::Done(()));
                };
                lease.phase = Phase::Active;
                Ok(if this.write(&name, &lease, Some(rev)).await? {
                    Step::Done(())
                } else {
                    Step::Again
                })
            })
        })
    }

    fn leave(&self, name: &str) -> Result<Leave, StoreError> {
        let left = self.0.until_done(name, |this, name| {
            Box::pin(async move {
                let Some((mut lease, rev)) = this.read(&name).await? else {
                    return Ok(Step::Done(Leave::Others));
                };
                lease.prune(now_ms());
                lease.holders.remove(&this.me);
                let outcome = if lease.holders.is_empty() {
                    // The last one out ends it; its hold says it is alive.
                    lease.phase = Phase::Ending;
                    lease.by = this.me.clone();
                    lease.holders.insert(this.me.clone(), this.hold());
                    Leave::Last
                } else {
                    Leave::Others
                };
                Ok(if this.write(&name, &lease, Some(rev)).await? {
                    Step::Done(outcome)
                } else {
                    Step::Again
                })
            })
        })?;
        if left == Leave::Others {
            self.0
                .held
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .remove(name);
        }
        Ok(left)
    }

    fn ended(&self, name: &str) -> Result<(), StoreError> {
        let result = self.0.until_done(name, |this, name| {
            Box::pin(async move {
                let Some((lease, rev)) = this.read(&name).await? else {
                    return Ok(Step::Done(()));
                };
                if lease.phase != Phase::Ending || lease.by != this.me {
                    // Someone joined and took over meanwhile: theirs now.
                    return Ok(Step::Done(()));
                }
                let gone = this
                    .bucket
                    .delete_expect_revision(hex::encode(&name), Some(rev))
                    .await
                    .is_ok();
                Ok(if gone { Step::Done(()) } else { Step::Again })
            })
        });
        self.0
            .held
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(name);
        result
    }
}
