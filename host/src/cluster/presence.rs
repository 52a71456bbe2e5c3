//! [`Presence`]: each live host announces itself, with the versions of the
//! plugins it runs, in the KV bucket `{name}-hosts`. An entry is renewed
//! every [`ANNOUNCE_EVERY`] and expires after [`PRESENCE_TTL`] (the
//! bucket's max age), so a host that dies leaves the list by itself.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::kv;
use futures_util::TryStreamExt;

use super::{Cluster, ClusterError};
use crate::time::now_ms;
use crate::wire::HostPresence;

/// How often a host renews its entry.
pub const ANNOUNCE_EVERY: Duration = Duration::from_secs(3);
/// How long an entry lives without renewal.
pub const PRESENCE_TTL: Duration = Duration::from_secs(10);

/// What a host runs: plugin name -> version.
pub type PluginVersions = Arc<dyn Fn() -> BTreeMap<String, String> + Send + Sync>;

/// This host's announcement and the view of every host's.
pub struct Presence {
    cluster: Arc<Cluster>,
    bucket: kv::Store,
}

fn host_name() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| weir_core::text::clip(h.trim(), 255).into_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "unknown".into())
}

impl Presence {
    /// Makes (or finds) the bucket, announces this host at once and then
    /// every [`ANNOUNCE_EVERY`], with what `plugins` answers at the time.
    pub fn open(cluster: Arc<Cluster>, plugins: PluginVersions) -> Result<Arc<Self>, ClusterError> {
        let bucket = cluster.bucket("hosts", PRESENCE_TTL)?;
        let this = Arc::new(Self {
            cluster: cluster.clone(),
            bucket: bucket.clone(),
        });
        let me = HostPresence {
            host_id: cluster.host_id().to_string(),
            name: host_name(),
            pid: std::process::id(),
            started_ms: now_ms(),
            seen_ms: 0,
            plugins: BTreeMap::new(),
        };
        let weak = Arc::downgrade(&this);
        cluster.rt().spawn(async move {
            loop {
                if weak.strong_count() == 0 {
                    // The host is gone: its entry leaves with the TTL.
                    return;
                }
                let mut entry = me.clone();
                entry.seen_ms = now_ms();
                entry.plugins = plugins();
                let value: bytes::Bytes = serde_json::to_vec(&entry).unwrap_or_default().into();
                if let Err(e) = bucket.put(&entry.host_id, value).await {
                    tracing::warn!("announcing this host to the cluster: {e}");
                }
                tokio::time::sleep(ANNOUNCE_EVERY).await;
            }
        });
        Ok(this)
    }

    /// Every live host's announcement, by host id.
    pub fn hosts(&self) -> Result<Vec<HostPresence>, ClusterError> {
        let bucket = self.bucket.clone();
        let mut hosts = self
            .cluster
            .block_on(async move {
                let keys: Vec<String> = bucket.keys().await?.try_collect().await?;
                let mut hosts = Vec::new();
                for k in keys {
                    if let Some(v) = bucket.get(&k).await?
                        && let Ok(h) = serde_json::from_slice::<HostPresence>(&v)
                    {
                        hosts.push(h);
                    }
                }
                Ok::<_, Box<dyn std::error::Error + Send + Sync>>(hosts)
            })
            .ok_or_else(|| ClusterError::JetStream("the NATS task failed".into()))?
            .map_err(|e| ClusterError::JetStream(format!("the host bucket: {e}")))?;
        hosts.sort_by(|a, b| a.host_id.cmp(&b.host_id));
        Ok(hosts)
    }
}
