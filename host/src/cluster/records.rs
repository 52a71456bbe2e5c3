//! [`KvRecords`]: the store's [`Records`] in JetStream key-value buckets,
//! one per [`Table`] (`{name}-{table}`), replicated like the event stream.
//! Shared by every host: rooms read through them.
//!
//! A record key may hold any character, a KV key only a few: keys are
//! stored hex-encoded (byte by byte, so a prefix stays a prefix).

use std::collections::HashMap;
use std::sync::Arc;

use async_nats::jetstream::kv;
use futures_util::TryStreamExt;

use super::{Cluster, ClusterError};
use crate::store::{OnChange, Records, StoreError, Table};

/// The buckets, one per table.
pub struct KvRecords {
    cluster: Arc<Cluster>,
    buckets: HashMap<Table, kv::Store>,
}

fn encode(key: &str) -> String {
    hex::encode(key.as_bytes())
}

fn decode(key: &str) -> Option<String> {
    hex::decode(key)
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
}

fn io(e: impl std::fmt::Display) -> StoreError {
    StoreError::Io(format!("NATS: {e}"))
}

impl KvRecords {
    /// Makes (or finds) the buckets.
    pub fn open(cluster: Arc<Cluster>) -> Result<Self, ClusterError> {
        let mut buckets = HashMap::new();
        for table in Table::ALL {
            let suffix = table.name().replace('_', "-");
            buckets.insert(table, cluster.bucket(&suffix, std::time::Duration::ZERO)?);
        }
        Ok(Self { cluster, buckets })
    }

    fn bucket(&self, table: Table) -> kv::Store {
        // Every table has its bucket: made in `open`.
        self.buckets[&table].clone()
    }
}

impl Records for KvRecords {
    fn shared(&self) -> bool {
        true
    }

    fn put(&self, table: Table, key: &str, value: &[u8]) -> Result<(), StoreError> {
        let (b, k, v) = (self.bucket(table), encode(key), value.to_vec());
        self.cluster
            .block_on(async move { b.put(k, v.into()).await.map(|_| ()).map_err(io) })
            .unwrap_or_else(|| Err(io("the NATS task failed")))
    }

    fn create(&self, table: Table, key: &str, value: &[u8]) -> Result<bool, StoreError> {
        let (b, k, v) = (self.bucket(table), encode(key), value.to_vec());
        self.cluster
            .block_on(async move {
                match b.create(k, v.into()).await {
                    Ok(_) => Ok(true),
                    Err(e)
                        if e.kind()
                            == async_nats::jetstream::kv::CreateErrorKind::AlreadyExists =>
                    {
                        Ok(false)
                    }
                    Err(e) => Err(io(e)),
                }
            })
            .unwrap_or_else(|| Err(io("the NATS task failed")))
    }

    fn remove(&self, table: Table, key: &str) -> Result<(), StoreError> {
        let (b, k) = (self.bucket(table), encode(key));
        self.cluster
            .block_on(async move { b.purge(k).await.map_err(io) })
            .unwrap_or_else(|| Err(io("the NATS task failed")))
    }

    fn get(&self, table: Table, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let (b, k) = (self.bucket(table), encode(key));
        self.cluster
            .block_on(async move { b.get(k).await.map(|v| v.map(|v| v.to_vec())).map_err(io) })
            .unwrap_or_else(|| Err(io("the NATS task failed")))
    }

    fn keys(&self, table: Table, prefix: &str) -> Result<Vec<String>, StoreError> {
        let (b, p) = (self.bucket(table), encode(prefix));
        let mut keys: Vec<String> = self
            .cluster
            .block_on(async move {
                let keys = b.keys().await.map_err(io)?;
                keys.try_filter(|k| std::future::ready(k.starts_with(&p)))
                    .try_collect::<Vec<String>>()
                    .await
                    .map_err(io)
            })
            .unwrap_or_else(|| Err(io("the NATS task failed")))?
            .iter()
            .filter_map(|k| decode(k))
            .collect();
        keys.sort();
        Ok(keys)
    }

    fn watch(&self, table: Table, on_change: OnChange) {
        let bucket = self.bucket(table);
        self.cluster.rt().spawn(async move {
            let mut backoff = std::time::Duration::from_millis(100);
            loop {
                // The current value of every key, then every change.
                match bucket.watch_with_history(">").await {
                    Ok(mut changes) => {
                        backoff = std::time::Duration::from_millis(100);
                        while let Some(change) = futures_util::StreamExt::next(&mut changes).await {
                            let entry = match change {
                                Ok(e) => e,
                                Err(e) => {
                                    tracing::warn!(
                                        table = table.name(),
                                        "watching shared records: {e}"
                                    );
                                    break;
                                }
                            };
                            let Some(key) = decode(&entry.key) else {
                                continue;
                            };
                            match entry.operation {
                                kv::Operation::Put => on_change(&key, Some(&entry.value)),
                                kv::Operation::Delete | kv::Operation::Purge => {
                                    on_change(&key, None)
                                }
                            }
                        }
                    }
                    Err(e) => tracing::warn!(table = table.name(), "watching shared records: {e}"),
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(std::time::Duration::from_secs(5));
            }
        });
    }

    fn load(&self, table: Table) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let mut out = Vec::new();
        for key in self.keys(table, "")? {
            if let Some(v) = self.get(table, &key)? {
                out.push((key, v));
            }
        }
        Ok(out)
    }
}
