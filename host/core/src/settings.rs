//! The settings of every room, as plain data: what `weir.toml`, the
//! `weir serve` flags and the plugin manifests resolve into, and what the
//! bus, the pipeline, the datastores, the plugin engine and the connection
//! layer are built from. Defaults live here, next to the types.

use std::time::Duration;

use crate::index::IndexConfig;
use crate::rows::RowLimits;

/// Default number of ids remembered.
pub const DEFAULT_DEDUP_SIZE: usize = 10_000;
/// Default time an id is remembered.
pub const DEFAULT_DEDUP_TTL: Duration = Duration::from_secs(300);

/// Settings of a bus.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BusConfig {
    /// Ids remembered for dedup (0 disables it).
    pub dedup_size: usize,
    /// How long an id is remembered.
    pub dedup_ttl: Duration,
    /// Events kept in history (0 disables replay).
    pub history_events: usize,
    /// Bytes kept in history.
    pub history_bytes: usize,
    /// How long a publisher waits for room in a full feed buffer before it
    /// marks that consumer slow and drops its oldest events instead.
    pub slow_consumer_wait: Duration,
    /// The durable event log (used when the host has a data directory).
    pub log: LogConfig,
}

/// When the event log's commits reach the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Fsync {
    /// Every commit is flushed before `POST /v1/events` answers: an
    /// accepted event survives a crash of the process or of the machine.
    #[default]
    Always,
    /// Commits are flushed together at most this often: an accepted event
    /// survives a crash of the process only once its flush ran, and of the
    /// machine likewise; up to this long of accepted events can be lost.
    Interval(Duration),
}

impl std::str::FromStr for Fsync {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "always" => Ok(Self::Always),
            ms => match ms.parse::<u64>() {
                Ok(0) | Err(_) => Err(format!(
                    "`{}` is not `always` or a number of milliseconds (at least 1)",
                    crate::text::echo(ms)
                )),
                Ok(n) => Ok(Self::Interval(Duration::from_millis(n))),
            },
        }
    }
}

/// The durable event log: flushing and retention. An event leaves the log
/// when any of the three bounds is passed, oldest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogConfig {
    /// When commits reach the disk.
    pub fsync: Fsync,
    /// Most events kept.
    pub retention_events: u64,
    /// Most bytes of events kept (as stored).
    pub retention_bytes: u64,
    /// Oldest event kept, by the time it was accepted (`None`: no limit).
    pub retention_age: Option<Duration>,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            fsync: Fsync::Always,
            retention_events: 10_000_000,
            retention_bytes: 4 * 1024 * 1024 * 1024,
            retention_age: Some(Duration::from_secs(7 * 24 * 3600)),
        }
    }
}

impl Default for BusConfig {
    fn default() -> Self {
        Self {
            dedup_size: DEFAULT_DEDUP_SIZE,
            dedup_ttl: DEFAULT_DEDUP_TTL,
            history_events: 10_000,
            history_bytes: 64 * 1024 * 1024,
            slow_consumer_wait: Duration::from_millis(100),
            log: LogConfig::default(),
        }
    }
}

/// Settings of the pipeline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PipelineConfig {
    /// Consecutive faults that quarantine a key (0: never).
    pub quarantine_after: u32,
    /// Dead letters kept.
    pub dlq_capacity: usize,
    /// Bytes of dead letters kept.
    pub dlq_bytes: usize,
    /// Distinct event types counted by name; the rest count as `other`.
    pub max_event_types: usize,
    /// Most events handed to one `matches-batch`/`process-batch` call.
    pub max_batch: usize,
    /// Deliveries buffered between a consumer's workers and its connection.
    pub output_buffer: usize,
    /// How long a named consumer may stay neither connected nor
    /// acknowledging before it expires.
    pub consumer_ttl: Duration,
}

impl Default for PipelineConfig {
    fn default() -> Self {
        Self {
            quarantine_after: 20,
            dlq_capacity: 10_000,
            dlq_bytes: 64 * 1024 * 1024,
            max_event_types: 1_000,
            max_batch: 100,
            output_buffer: 64,
            consumer_ttl: Duration::from_secs(7 * 24 * 3600),
        }
    }
}

/// Settings of one datastore.
#[derive(Debug, Clone)]
pub struct DatastoreConfig {
    /// Its name (`default` for the built-in one).
    pub name: String,
    /// Session timing.
    pub sessions: SessionConfig,
    /// Arbitration tunables.
    pub index: IndexConfig,
    /// Most rows waiting in the queue; pushes beyond get 503.
    pub queue_rows: usize,
    /// Most nodes one tree answer may hold.
    pub max_tree_items: usize,
    /// Most bytes of one view answer (tree, search, suspects, blind spots).
    pub max_tree_bytes: usize,
    /// Bounds of every pushed row (path bytes, depth, name bytes).
    pub rows: RowLimits,
}

impl DatastoreConfig {
    /// Defaults for a datastore called `name`.
    pub fn named(name: &str) -> Self {
        Self {
            name: name.to_string(),
            sessions: SessionConfig::default(),
            index: IndexConfig::default(),
            queue_rows: 100_000,
            max_tree_items: 100_000,
            max_tree_bytes: 64 * 1024 * 1024,
            rows: RowLimits::default(),
        }
    }
}

/// Session timing the agent is told to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionConfig {
    /// Without a heartbeat or push for this long, the session expires.
    pub timeout: Duration,
    /// How often the agent should audit.
    pub audit_interval: Duration,
    /// How often the agent should ask for sentinel tasks.
    pub sentinel_interval: Duration,
}

impl Default for SessionConfig {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(30),
            audit_interval: Duration::from_secs(60),
            sentinel_interval: Duration::from_secs(30),
        }
    }
}

/// Bounds of the connection layer; each is a `[server]` setting and a
/// `weir serve` flag.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerLimits {
    /// Connections served at once; beyond, new connections wait in the
    /// listen backlog until one closes.
    pub max_connections: usize,
    /// Time a client has to send a request's head (line and headers).
    pub header_timeout: Duration,
    /// Time a request may take until its answer starts: reading its body
    /// and running its handler. Streams are not cut: their answer starts
    /// at once.
    pub request_timeout: Duration,
    /// Time a shutdown waits for open connections after the host wound
    /// down; then they are dropped.
    pub shutdown_timeout: Duration,
}

impl Default for ServerLimits {
    fn default() -> Self {
        Self {
            max_connections: 1024,
            header_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(30),
            shutdown_timeout: Duration::from_secs(15),
        }
    }
}

/// Resource limits of one plugin's calls.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Deadline of one `matches` call (and of a `matches-batch`).
    pub matches_deadline: Duration,
    /// Deadline of every other call.
    pub call_deadline: Duration,
    /// Linear memory cap per instance, in bytes.
    pub memory_bytes: usize,
    /// Largest output one event may emit, in bytes.
    pub max_output_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            matches_deadline: Duration::from_millis(50),
            call_deadline: Duration::from_secs(5),
            memory_bytes: 64 * 1024 * 1024,
            max_output_bytes: 1024 * 1024,
        }
    }
}

/// How to reach the cluster and what to keep there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterConfig {
    /// NATS server URLs (`nats://host:port`); the client fails over.
    pub urls: Vec<String>,
    /// Prefixes the stream, subjects and buckets, so that several Weir
    /// systems can share one NATS cluster.
    pub name: String,
    /// A token, if the servers want one.
    pub token: Option<String>,
    /// Replicas of the stream (1 to 5; 3 survives the loss of one node).
    pub replicas: usize,
    /// JetStream's duplicate window: how long an event id is remembered.
    pub duplicate_window: Duration,
    /// Retention of the event stream (its flush policy is NATS's own).
    pub log: LogConfig,
}

impl ClusterConfig {
    /// A cluster config with defaults for everything but the servers.
    pub fn new(urls: Vec<String>) -> Self {
        Self {
            urls,
            name: "weir".into(),
            token: None,
            replicas: 3,
            duplicate_window: DEFAULT_DEDUP_TTL,
            log: LogConfig::default(),
        }
    }
}
