//! Several hosts, one system: the connection to a NATS JetStream cluster
//! and the event bus over it ([`JetStreamBus`]).
//!
//! Events go into one stream, `{name}-events`, on subjects
//! `{name}.events.{scope}` (`_` for host-level events). Any host publishes
//! with the event id as `Nats-Msg-Id`, so JetStream's duplicate window is the
//! dedup filter, and the stream sequence is the cluster-wide `seq`: a feed
//! opened on any host (`from=earliest|SEQ`, `Last-Event-ID`) reads the same
//! numbers. Feeds are ordered consumers filtered by scope; the type pattern
//! is matched by the host (event types may hold characters that subjects
//! do not take).
//!
//! Records (`store::Records`) live in key-value buckets ([`KvRecords`]):
//! plugin state and quarantines, read through or watched by every host.
//! Datastores ([`SharedDatastores`]) keep their agent sessions in a bucket
//! and their ingest in a stream every host applies to its own replica.
//!
//! The NATS client runs on a runtime of its own, so that the bus's blocking
//! `publish` can wait for JetStream's acknowledgements from any thread.

mod bus;
mod datastores;
mod leases;
mod presence;
mod records;

use std::sync::Arc;
use std::time::Duration;

pub use bus::JetStreamBus;
pub use datastores::SharedDatastores;
pub use leases::{HOLD_TTL, KvLeases, RENEW_EVERY, SharedLeases};
pub use presence::{ANNOUNCE_EVERY, PRESENCE_TTL, PluginVersions, Presence};
pub use records::KvRecords;
pub use weir_core::settings::{ClusterConfig, LogConfig};

/// The messages of `stream` on `filter` from sequence `start` on, through
/// an ordered consumer whose pulls expire every 4 s (with a 2 s idle
/// heartbeat), so that a consumer whose server died is noticed, and made
/// again by the caller, in seconds rather than the default half minute.
async fn ordered_messages(
    stream: &async_nats::jetstream::stream::Stream,
    filter: &str,
    start: u64,
) -> Result<async_nats::jetstream::consumer::pull::Ordered, String> {
    use async_nats::jetstream::consumer::{DeliverPolicy, pull::OrderedConfig};
    stream
        .create_consumer(OrderedConfig {
            filter_subject: filter.to_string(),
            deliver_policy: DeliverPolicy::ByStartSequence {
                start_sequence: start,
            },
            max_expires: Duration::from_secs(4),
            ..OrderedConfig::default()
        })
        .await
        .map_err(|e| e.to_string())?
        .messages()
        .await
        .map_err(|e| e.to_string())
}

/// Why the cluster could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// The name cannot prefix subjects and streams.
    #[error("cluster name `{0}` must be 1 to 32 letters, digits, `-` or `_`")]
    BadName(String),
    /// No server answered.
    #[error("cannot reach NATS at {urls}: {reason}")]
    Connect {
        /// The servers tried.
        urls: String,
        /// Why.
        reason: String,
    },
    /// JetStream refused a stream or bucket.
    #[error("JetStream: {0}")]
    JetStream(String),
}

/// A connection to the cluster, with the runtime that drives it.
pub struct Cluster {
    /// Taken only by `Drop`.
    rt: Option<tokio::runtime::Runtime>,
    js: async_nats::jetstream::Context,
    config: ClusterConfig,
    /// This host's id in the cluster (new at each start).
    host_id: String,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // The last owner may be async code (a host dropped at the end of
        // `weir serve`'s main task), where dropping a runtime would panic:
        // it is told to shut down in the background instead.
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

/// How long a starting host waits for JetStream to answer (a cluster whose
/// nodes start together elects its leader in seconds).
pub const JETSTREAM_WAIT: Duration = Duration::from_secs(60);

/// How long a JetStream request may take before the caller is told NATS is
/// unreachable.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

impl Cluster {
    /// Connects (waiting up to [`REQUEST_TIMEOUT`] for a first server) and
    /// makes sure the event stream exists. Later outages are survived: the
    /// client reconnects by itself.
    pub fn connect(config: ClusterConfig) -> Result<Arc<Self>, ClusterError> {
        let name_ok = !config.name.is_empty()
            && config.name.len() <= 32
            && config
                .name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !name_ok {
            return Err(ClusterError::BadName(
                weir_core::text::echo(&config.name).into_owned(),
            ));
        }
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("weir-nats")
            .enable_all()
            .build()
            .map_err(|e| ClusterError::JetStream(format!("cannot start the NATS runtime: {e}")))?;
        let urls = config.urls.join(",");
        let connect_err = |reason: String| ClusterError::Connect {
            urls: urls.clone(),
            reason,
        };
        let client = rt.block_on(async {
            let mut options = async_nats::ConnectOptions::new()
                .name("weir")
                .connection_timeout(REQUEST_TIMEOUT)
                .retry_on_initial_connect();
            if let Some(token) = &config.token {
                options = options.token(token.clone());
            }
            let servers: Vec<async_nats::ServerAddr> = config
                .urls
                .iter()
                .map(|u| u.parse())
                .collect::<Result<_, _>>()
                .map_err(|e| connect_err(format!("{e}")))?;
            let client = options
                .connect(servers)
                .await
                .map_err(|e| connect_err(e.to_string()))?;
            // `retry_on_initial_connect` returns at once: wait (bounded)
            // for the first connection, so a wrong URL is an error at start.
            let deadline = tokio::time::Instant::now() + REQUEST_TIMEOUT * 2;
            while client.connection_state() != async_nats::connection::State::Connected {
                if tokio::time::Instant::now() > deadline {
                    return Err(connect_err("no server answered".into()));
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Ok(client)
        })?;
        let mut js = async_nats::jetstream::new(client);
        js.set_timeout(REQUEST_TIMEOUT);
        // A cluster that is still forming (its nodes electing a JetStream
        // leader) answers a moment later: wait for it, bounded, so that
        // hosts started together with their NATS nodes come up.
        let probe = js.clone();
        rt.block_on(async move {
            let deadline = tokio::time::Instant::now() + JETSTREAM_WAIT;
            let mut told = false;
            loop {
                match probe.query_account().await {
                    Ok(_) => return Ok(()),
                    Err(e) if tokio::time::Instant::now() > deadline => {
                        return Err(ClusterError::JetStream(format!(
                            "JetStream did not answer within {} s: {e}; is it enabled (-js) on the servers, and has the cluster formed?",
                            JETSTREAM_WAIT.as_secs()
                        )));
                    }
                    Err(e) => {
                        if !told {
                            tracing::info!("waiting for JetStream: {e}");
                            told = true;
                        }
                        tokio::time::sleep(Duration::from_millis(250)).await;
                    }
                }
            }
        })?;
        Ok(Arc::new(Self {
            rt: Some(rt),
            js,
            config,
            host_id: crate::datastore::session::new_uuid(),
        }))
    }

    /// The runtime the client runs on.
    fn rt(&self) -> &tokio::runtime::Runtime {
        // Present until `Drop` takes it.
        self.rt
            .as_ref()
            .unwrap_or_else(|| unreachable!("the runtime lives until drop"))
    }

    /// This host's id in the cluster: new at each start.
    pub fn host_id(&self) -> &str {
        &self.host_id
    }

    /// Whether the client is connected to a NATS server now (it
    /// reconnects by itself).
    pub fn connected(&self) -> bool {
        self.js.client().connection_state() == async_nats::connection::State::Connected
    }

    /// The settings it was made with.
    pub fn config(&self) -> &ClusterConfig {
        &self.config
    }

    /// Makes (or finds) the KV bucket `{name}-{suffix}`, replicated like the
    /// streams; entries older than `max_age` leave it (zero: none do).
    fn bucket(
        &self,
        suffix: &str,
        max_age: Duration,
    ) -> Result<async_nats::jetstream::kv::Store, ClusterError> {
        let (js, replicas) = (self.js.clone(), self.config.replicas);
        let bucket = format!("{}-{suffix}", self.config.name);
        self.block_on(async move {
            js.create_key_value(async_nats::jetstream::kv::Config {
                bucket,
                history: 1,
                max_age,
                num_replicas: replicas,
                ..Default::default()
            })
            .await
        })
        .ok_or_else(|| ClusterError::JetStream("the NATS task failed".into()))?
        .map_err(|e| ClusterError::JetStream(format!("the {suffix} bucket: {e}")))
    }

    /// Runs `f` on the cluster's runtime and waits for it, from any thread:
    /// a plain thread drives it; a thread of another runtime (a blocking
    /// task, or, briefly, a worker) waits for it as a task on this one.
    /// `None` if the task panicked.
    fn block_on<T: Send + 'static>(
        &self,
        f: impl std::future::Future<Output = T> + Send + 'static,
    ) -> Option<T> {
        if tokio::runtime::Handle::try_current().is_err() {
            return Some(self.rt().block_on(f));
        }
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.rt().spawn(async move {
            let _ = tx.send(f.await);
        });
        rx.recv().ok()
    }
}
