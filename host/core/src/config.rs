//! The configuration file (`weir.toml`): the server, default plugin limits,
//! datastores and their API keys, and the event bus and pipeline settings.
//! Every `[server]`, `[limits]` and `[events]` setting is also a `weir serve`
//! flag and environment variable (see `weir serve --help`); flags and
//! environment win over the file, the file over the defaults.
//! Without a file there is one datastore, `default`, whose keys come from
//! the environment or are generated.
//!
//! ```toml
//! [server]
//! listen = "127.0.0.1:7070"
//! plugins = "plugins"           # relative to this file; default: the examples
//! plugin_poll_ms = 500          # 0: load at start only
//! compile_cache = "cache"       # compiled components, by content hash
//! log_format = "json"           # or "text"
//! log = "info,weir::plugin=debug"  # tracing filter (RUST_LOG syntax)
//!
//! [limits]                      # defaults; a plugin's manifest overrides them
//! memory_mib = 64
//! matches_deadline_ms = 50
//! call_deadline_ms = 5000
//! max_output_kib = 1024
//!
//! [[datastores]]
//! name = "lab"
//! session_timeout_secs = 30     # optional, as every setting below
//! queue_rows = 100000
//! max_tree_items = 100000
//! max_tree_bytes = 67108864
//! max_path_bytes = 4096
//! max_path_depth = 256
//! max_name_bytes = 255
//! max_tombstones = 200000
//! max_blind_spots = 100000
//! hot_window_secs = 30
//! tombstone_ttl_secs = 3600
//! audit_interval_secs = 60
//! sentinel_interval_secs = 30
//! keys = [
//!   { role = "ingest", key_env = "LAB_INGEST_KEY" },   # secret from the environment
//!   { role = "query", key = "a-literal-secret" },
//! ]
//!
//! [events]
//! dedup_size = 10000            # event ids remembered (0: no dedup)
//! dedup_ttl_secs = 300
//! history_events = 10000        # events kept for replay (0: none)
//! history_bytes = 67108864
//! slow_consumer_wait_ms = 100   # a publisher's wait for a full consumer buffer
//! quarantine_after = 20         # consecutive faults (0: never)
//! dlq_capacity = 10000
//! dlq_bytes = 67108864
//! max_event_types = 1000
//! ```

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::auth::{Keys, Role};
use crate::manifest::LimitsSection;
use crate::settings::{BusConfig, DatastoreConfig, PipelineConfig};

/// `impl $Section { pub fn or(&self, base) }`: each field of `self` (the
/// flags) over the same field of `base` (the file). Every field of a
/// section is an `Option`, so the merge is the same for all of them.
macro_rules! flags_over_file {
    ($section:ident { $($field:ident),* $(,)? }) => {
        impl $section {
            /// These settings over `base` (flags over the file).
            pub fn or(&self, base: &$section) -> $section {
                $section {
                    $($field: self.$field.clone().or_else(|| base.$field.clone()),)*
                }
            }
        }
    };
}
pub(crate) use flags_over_file;

/// The file, as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// Listening address, plugins, logging.
    #[serde(default)]
    pub server: ServerSection,
    /// Default limits of plugin calls.
    #[serde(default)]
    pub limits: LimitsSection,
    /// Declared datastores.
    #[serde(default)]
    pub datastores: Vec<DatastoreSection>,
    /// Event bus and pipeline settings.
    #[serde(default)]
    pub events: EventsSection,
    /// Host-level API keys: every datastore, every event, the host-wide
    /// routes.
    #[serde(default)]
    pub keys: Vec<KeySection>,
    /// Several hosts over one NATS JetStream cluster.
    #[serde(default)]
    pub cluster: ClusterSection,
}

/// The `[cluster]` section; every field optional. The same settings exist as
/// `weir serve` flags, which win over the file.
#[derive(Debug, Default, Clone, Deserialize, clap::Args)]
#[serde(deny_unknown_fields)]
pub struct ClusterSection {
    /// NATS servers of a JetStream cluster, comma-separated
    /// (`nats://10.0.0.1:4222,...`): the bus goes there and every host on the
    /// same servers and cluster name shares it [default: none, one host].
    #[arg(long, env = "WEIR_NATS", value_delimiter = ',')]
    pub nats: Option<Vec<String>>,
    /// Prefix of the streams, subjects and buckets [default: weir].
    #[arg(long, env = "WEIR_CLUSTER_NAME")]
    pub cluster_name: Option<String>,
    /// Replicas of the event stream, 1 to 5 [default: 3].
    #[arg(long, env = "WEIR_NATS_REPLICAS")]
    pub nats_replicas: Option<usize>,
    /// The environment variable holding the NATS token, if the servers want
    /// one [default: WEIR_NATS_TOKEN].
    #[arg(long, env = "WEIR_NATS_TOKEN_ENV")]
    pub nats_token_env: Option<String>,
}

flags_over_file!(ClusterSection {
    nats,
    cluster_name,
    nats_replicas,
    nats_token_env,
});

impl ClusterSection {
    /// The cluster settings (`None`: one host), the token read through
    /// `env`, retention and the duplicate window taken from `bus`.
    pub fn resolve(
        &self,
        file: &str,
        bus: &BusConfig,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Option<crate::settings::ClusterConfig>, ConfigError> {
        let err = |problem: String| ConfigError {
            file: file.to_string(),
            problem,
        };
        let Some(urls) = self.nats.clone().filter(|u| !u.is_empty()) else {
            return Ok(None);
        };
        let mut c = crate::settings::ClusterConfig::new(urls);
        if let Some(name) = &self.cluster_name {
            c.name = name.clone();
        }
        if let Some(n) = self.nats_replicas {
            if !(1..=5).contains(&n) {
                return Err(err(format!(
                    "cluster.nats_replicas must be 1 to 5, not {n}"
                )));
            }
            c.replicas = n;
        }
        let var = self.nats_token_env.as_deref().unwrap_or("WEIR_NATS_TOKEN");
        c.token = env(var).filter(|t| !t.is_empty());
        if self.nats_token_env.is_some() && c.token.is_none() {
            return Err(err(format!(
                "cluster.nats_token_env: environment variable {var} is not set"
            )));
        }
        c.duplicate_window = bus.dedup_ttl;
        c.log = bus.log;
        Ok(Some(c))
    }
}

/// How `weir serve` writes its logs (to stderr).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// The `[server]` section; every field optional. The same settings exist as
/// `weir serve` flags, which win over the file.
#[derive(Debug, Default, Clone, Deserialize, clap::Args)]
#[serde(deny_unknown_fields)]
pub struct ServerSection {
    /// Address to listen on [default: 127.0.0.1:7070].
    #[arg(long, env = "WEIR_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// Directory of plugin components (`*.wasm`, each with an optional
    /// `NAME.toml` manifest) [default: the example plugins built with this
    /// binary].
    #[arg(long, env = "WEIR_PLUGINS")]
    pub plugins: Option<PathBuf>,
    /// How often the plugin directory is scanned for new, changed and
    /// removed plugins, ms (0: load at start only) [default: 500].
    #[arg(long, env = "WEIR_PLUGIN_POLL_MS")]
    pub plugin_poll_ms: Option<u64>,
    /// Directory for compiled components, keyed by content hash (restarts
    /// skip compiling) [default: none].
    #[arg(long, env = "WEIR_COMPILE_CACHE")]
    pub compile_cache: Option<PathBuf>,
    /// Log format [default: text].
    #[arg(long, env = "WEIR_LOG_FORMAT", value_enum)]
    pub log_format: Option<LogFormat>,
    /// Log filter in `RUST_LOG` syntax, such as `info,weir::plugin=debug`
    /// [default: `RUST_LOG`, else info].
    #[arg(long, env = "WEIR_LOG")]
    pub log: Option<String>,
    /// Connections served at once; more wait in the listen backlog
    /// [default: 1024].
    #[arg(long, env = "WEIR_MAX_CONNECTIONS")]
    pub max_connections: Option<usize>,
    /// Seconds a client has to send a request's head [default: 10].
    #[arg(long, env = "WEIR_HEADER_TIMEOUT_SECS")]
    pub header_timeout_secs: Option<u64>,
    /// Seconds a request may take until its answer starts (its body
    /// included; streams are not cut) [default: 30].
    #[arg(long, env = "WEIR_REQUEST_TIMEOUT_SECS")]
    pub request_timeout_secs: Option<u64>,
    /// Seconds a shutdown waits for open connections [default: 15].
    #[arg(long, env = "WEIR_SHUTDOWN_TIMEOUT_SECS")]
    pub shutdown_timeout_secs: Option<u64>,
    /// Data directory: the event log, dead letters, plugin state,
    /// quarantines and named consumers, kept across restarts; one host at a
    /// time [default: `$XDG_DATA_HOME/weir`, else `~/.local/share/weir`].
    #[arg(long, env = "WEIR_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Keep everything in memory only (nothing survives a restart); not
    /// with `--data-dir`.
    #[arg(long, env = "WEIR_EPHEMERAL", num_args = 0..=1, default_missing_value = "true")]
    pub ephemeral: Option<bool>,
}

flags_over_file!(ServerSection {
    listen,
    plugins,
    plugin_poll_ms,
    compile_cache,
    log_format,
    log,
    max_connections,
    header_timeout_secs,
    request_timeout_secs,
    shutdown_timeout_secs,
    data_dir,
    ephemeral,
});

/// The `[events]` section; every field optional. The same settings exist as
/// `weir serve` flags, which win over the file.
#[derive(Debug, Default, Clone, Deserialize, clap::Args)]
#[serde(deny_unknown_fields)]
pub struct EventsSection {
    /// Event ids remembered for dedup (0 disables it) [default: 10000].
    #[arg(long, env = "WEIR_DEDUP_SIZE")]
    pub dedup_size: Option<usize>,
    /// Seconds an event id is remembered [default: 300].
    #[arg(long, env = "WEIR_DEDUP_TTL_SECS")]
    pub dedup_ttl_secs: Option<u64>,
    /// Events kept in history for replay (0 disables it) [default: 10000].
    #[arg(long, env = "WEIR_HISTORY_EVENTS")]
    pub history_events: Option<usize>,
    /// Bytes kept in history [default: 67108864].
    #[arg(long, env = "WEIR_HISTORY_BYTES")]
    pub history_bytes: Option<usize>,
    /// Milliseconds a publisher waits for room in a full consumer buffer
    /// before dropping that consumer's oldest events [default: 100].
    #[arg(long, env = "WEIR_SLOW_CONSUMER_WAIT_MS")]
    pub slow_consumer_wait_ms: Option<u64>,
    /// Consecutive faults that quarantine a key (0: never) [default: 20].
    #[arg(long, env = "WEIR_QUARANTINE_AFTER")]
    pub quarantine_after: Option<u32>,
    /// Dead letters kept [default: 10000].
    #[arg(long, env = "WEIR_DLQ_CAPACITY")]
    pub dlq_capacity: Option<usize>,
    /// Bytes of dead letters kept (events, messages, params)
    /// [default: 67108864].
    #[arg(long, env = "WEIR_DLQ_BYTES")]
    pub dlq_bytes: Option<usize>,
    /// Distinct event types counted by name in /metrics; the rest are
    /// counted as `other` [default: 1000].
    #[arg(long, env = "WEIR_MAX_EVENT_TYPES")]
    pub max_event_types: Option<usize>,
    /// When the event log reaches the disk: `always` (before an event is
    /// answered `accepted`) or a number of milliseconds (flushed together
    /// that often; a crash can lose that long of accepted events)
    /// [default: always].
    #[arg(long, env = "WEIR_FSYNC")]
    pub fsync: Option<String>,
    /// Most events the durable log keeps [default: 10000000].
    #[arg(long, env = "WEIR_RETENTION_EVENTS")]
    pub retention_events: Option<u64>,
    /// Most bytes the durable log keeps [default: 4294967296].
    #[arg(long, env = "WEIR_RETENTION_BYTES")]
    pub retention_bytes: Option<u64>,
    /// Oldest event the durable log keeps, seconds (0: no limit)
    /// [default: 604800, a week].
    #[arg(long, env = "WEIR_RETENTION_AGE_SECS")]
    pub retention_age_secs: Option<u64>,
    /// Seconds a named consumer may stay neither connected nor
    /// acknowledging before it expires [default: 604800, a week].
    #[arg(long, env = "WEIR_CONSUMER_TTL_SECS")]
    pub consumer_ttl_secs: Option<u64>,
}

flags_over_file!(EventsSection {
    dedup_size,
    dedup_ttl_secs,
    history_events,
    history_bytes,
    slow_consumer_wait_ms,
    quarantine_after,
    dlq_capacity,
    dlq_bytes,
    max_event_types,
    fsync,
    retention_events,
    retention_bytes,
    retention_age_secs,
    consumer_ttl_secs,
});

impl EventsSection {
    /// The bus and pipeline settings, defaults filled in; `file` names the
    /// source in errors.
    pub fn resolve(&self, file: &str) -> Result<(BusConfig, PipelineConfig), ConfigError> {
        let mut bus = BusConfig::default();
        let mut pipeline = PipelineConfig::default();
        let err = |problem: String| ConfigError {
            file: file.to_string(),
            problem,
        };
        // A bound of 0 would refuse everything: named, not taken.
        let positive = |v: Option<u64>, field: &str, hint: &str| match v {
            Some(0) => Err(err(format!("events.{field} must be at least 1{hint}"))),
            other => Ok(other),
        };
        let size = |v: Option<usize>| v.map(|n| n as u64);
        if let Some(n) = self.dedup_size {
            bus.dedup_size = n;
        }
        let no_dedup = " (use dedup_size = 0 to disable dedup)";
        if let Some(s) = positive(self.dedup_ttl_secs, "dedup_ttl_secs", no_dedup)? {
            bus.dedup_ttl = Duration::from_secs(s);
        }
        if let Some(n) = self.history_events {
            bus.history_events = n;
        }
        if let Some(n) = self.history_bytes {
            bus.history_bytes = n;
        }
        if let Some(ms) = self.slow_consumer_wait_ms {
            bus.slow_consumer_wait = Duration::from_millis(ms);
        }
        if let Some(n) = self.quarantine_after {
            pipeline.quarantine_after = n;
        }
        if let Some(f) = &self.fsync {
            bus.log.fsync = f.parse().map_err(|e| err(format!("events.fsync: {e}")))?;
        }
        if let Some(n) = positive(self.retention_events, "retention_events", "")? {
            bus.log.retention_events = n;
        }
        if let Some(n) = positive(self.retention_bytes, "retention_bytes", "")? {
            bus.log.retention_bytes = n;
        }
        if let Some(s) = self.retention_age_secs {
            bus.log.retention_age = (s > 0).then(|| Duration::from_secs(s));
        }
        if let Some(s) = positive(self.consumer_ttl_secs, "consumer_ttl_secs", "")? {
            pipeline.consumer_ttl = Duration::from_secs(s);
        }
        for (field, value, target) in [
            (
                "dlq_capacity",
                self.dlq_capacity,
                &mut pipeline.dlq_capacity,
            ),
            ("dlq_bytes", self.dlq_bytes, &mut pipeline.dlq_bytes),
            (
                "max_event_types",
                self.max_event_types,
                &mut pipeline.max_event_types,
            ),
        ] {
            if let Some(n) = positive(size(value), field, "")? {
                *target = n as usize;
            }
        }
        Ok((bus, pipeline))
    }
}

/// One `[[datastores]]` entry.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatastoreSection {
    /// Name: letters, digits, `-` and `_`.
    pub name: String,
    /// Session timeout.
    pub session_timeout_secs: Option<u64>,
    /// Queue capacity in rows.
    pub queue_rows: Option<usize>,
    /// Most nodes one tree answer may hold.
    pub max_tree_items: Option<usize>,
    /// Most bytes of one view answer.
    pub max_tree_bytes: Option<usize>,
    /// Most bytes of a pushed path.
    pub max_path_bytes: Option<usize>,
    /// Most segments of a pushed path.
    pub max_path_depth: Option<usize>,
    /// Most bytes of one name in a pushed path.
    pub max_name_bytes: Option<usize>,
    /// Most tombstones kept.
    pub max_tombstones: Option<usize>,
    /// Most blind-spot additions (and deletions) listed.
    pub max_blind_spots: Option<usize>,
    /// Hot-file window.
    pub hot_window_secs: Option<f64>,
    /// Tombstone lifetime.
    pub tombstone_ttl_secs: Option<f64>,
    /// Audit interval told to agents.
    pub audit_interval_secs: Option<u64>,
    /// Sentinel interval told to agents.
    pub sentinel_interval_secs: Option<u64>,
    /// API keys of this datastore.
    #[serde(default)]
    pub keys: Vec<KeySection>,
}

/// One API key.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeySection {
    /// `ingest`, `query` or `admin`.
    pub role: Role,
    /// The secret itself.
    pub key: Option<String>,
    /// The environment variable holding the secret.
    pub key_env: Option<String>,
}

impl KeySection {
    /// The secret, given or from the environment; `at` names the entry in
    /// errors.
    fn secret(&self, at: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
        match (&self.key, &self.key_env) {
            (Some(s), None) if !s.trim().is_empty() => Ok(s.clone()),
            (None, Some(var)) => env(var)
                .filter(|s| !s.trim().is_empty())
                .ok_or_else(|| format!("{at}: environment variable {var} is not set")),
            _ => Err(format!("{at}: give exactly one of `key` or `key_env`")),
        }
    }
}

/// A configuration problem, naming the file and what is wrong.
#[derive(Debug, thiserror::Error)]
#[error("{file}: {problem}")]
pub struct ConfigError {
    /// The file.
    pub file: String,
    /// What is wrong.
    pub problem: String,
}

/// Reads and parses a configuration file.
pub fn load(path: &Path) -> Result<FileConfig, ConfigError> {
    let err = |problem: String| ConfigError {
        file: path.display().to_string(),
        problem,
    };
    let text = std::fs::read_to_string(path).map_err(|e| err(format!("cannot read: {e}")))?;
    let mut file: FileConfig =
        toml::from_str(&text).map_err(|e| err(e.to_string().trim_end().to_string()))?;
    // Paths in the file are relative to the file, not to where weir runs.
    let base = path.parent().unwrap_or(Path::new("."));
    for p in [&mut file.server.plugins, &mut file.server.compile_cache]
        .into_iter()
        .flatten()
    {
        *p = base.join(&*p);
    }
    Ok(file)
}

impl FileConfig {
    /// Resolves the file into datastore settings and keys, `default` always
    /// among them; `env` looks up environment variables. `file` names the
    /// file in errors.
    pub fn resolve(
        &self,
        file: &str,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<(Vec<DatastoreConfig>, Keys), ConfigError> {
        let err = |problem: String| ConfigError {
            file: file.to_string(),
            problem,
        };
        let mut datastores: Vec<DatastoreConfig> = Vec::new();
        let mut keys = Keys::new();
        for (i, d) in self.datastores.iter().enumerate() {
            let at = format!("datastores[{i}] (`{}`)", d.name);
            let valid_name = !d.name.is_empty()
                && d.name.len() <= 64
                && d.name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
            if !valid_name {
                return Err(err(format!(
                    "{at}: name must be 1 to 64 letters, digits, '-' or '_'"
                )));
            }
            if datastores.iter().any(|c| c.name == d.name) {
                return Err(err(format!(
                    "{at}: datastore `{}` is declared twice",
                    d.name
                )));
            }
            let mut c = DatastoreConfig::named(&d.name);
            let positive = |v: Option<u64>, field: &str| match v {
                Some(0) => Err(err(format!("{at}: {field} must be at least 1"))),
                other => Ok(other),
            };
            if let Some(s) = positive(d.session_timeout_secs, "session_timeout_secs")? {
                c.sessions.timeout = Duration::from_secs(s);
            }
            if let Some(s) = positive(d.audit_interval_secs, "audit_interval_secs")? {
                c.sessions.audit_interval = Duration::from_secs(s);
            }
            if let Some(s) = positive(d.sentinel_interval_secs, "sentinel_interval_secs")? {
                c.sessions.sentinel_interval = Duration::from_secs(s);
            }
            for (field, value, target) in [
                ("queue_rows", d.queue_rows, &mut c.queue_rows),
                ("max_tree_items", d.max_tree_items, &mut c.max_tree_items),
                ("max_tree_bytes", d.max_tree_bytes, &mut c.max_tree_bytes),
                (
                    "max_path_bytes",
                    d.max_path_bytes,
                    &mut c.rows.max_path_bytes,
                ),
                ("max_path_depth", d.max_path_depth, &mut c.rows.max_depth),
                (
                    "max_name_bytes",
                    d.max_name_bytes,
                    &mut c.rows.max_name_bytes,
                ),
                (
                    "max_tombstones",
                    d.max_tombstones,
                    &mut c.index.max_tombstones,
                ),
                (
                    "max_blind_spots",
                    d.max_blind_spots,
                    &mut c.index.max_blind_spots,
                ),
            ] {
                if let Some(n) = positive(value.map(|n| n as u64), field)? {
                    *target = n as usize;
                }
            }
            for (field, value, target) in [
                (
                    "hot_window_secs",
                    d.hot_window_secs,
                    &mut c.index.hot_window_secs,
                ),
                (
                    "tombstone_ttl_secs",
                    d.tombstone_ttl_secs,
                    &mut c.index.tombstone_ttl_secs,
                ),
            ] {
                if let Some(v) = value {
                    if !(v.is_finite() && v >= 0.0) {
                        return Err(err(format!("{at}: {field} must be a non-negative number")));
                    }
                    *target = v;
                }
            }
            for (k, key) in d.keys.iter().enumerate() {
                let at = format!("{at}.keys[{k}]");
                let secret = key.secret(&at, env).map_err(err)?;
                keys.try_insert(&secret, key.role, Some(&d.name), &at)
                    .map_err(|e| err(e.to_string()))?;
            }
            datastores.push(c);
        }
        for (k, key) in self.keys.iter().enumerate() {
            let at = format!("keys[{k}] (host)");
            let secret = key.secret(&at, env).map_err(err)?;
            keys.try_insert(&secret, key.role, None, &at)
                .map_err(|e| err(e.to_string()))?;
        }
        if !datastores.iter().any(|c| c.name == "default") {
            datastores.insert(0, DatastoreConfig::named("default"));
        }
        Ok((datastores, keys))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resolve(text: &str, env: &[(&str, &str)]) -> Result<(Vec<DatastoreConfig>, Keys), String> {
        let file: FileConfig = toml::from_str(text).map_err(|e| e.to_string())?;
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let lookup = move |var: &str| env.iter().find(|(k, _)| k == var).map(|(_, v)| v.clone());
        file.resolve("weir.toml", &lookup)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn datastores_and_keys() {
        let (ds, keys) = resolve(
            r#"
            [[datastores]]
            name = "lab"
            session_timeout_secs = 5
            queue_rows = 10
            keys = [{ role = "ingest", key_env = "LAB_KEY" }, { role = "query", key = "q" }]
            "#,
            &[("LAB_KEY", "from-env")],
        )
        .unwrap();
        assert_eq!(
            ds.iter().map(|d| d.name.as_str()).collect::<Vec<_>>(),
            ["default", "lab"]
        );
        assert_eq!(ds[1].sessions.timeout, Duration::from_secs(5));
        assert_eq!(ds[1].queue_rows, 10);
        assert_eq!(
            keys.authorize(Some("from-env"), Role::Ingest, Some("lab"))
                .unwrap()
                .datastore
                .as_deref(),
            Some("lab")
        );
        assert!(
            keys.authorize(Some("q"), Role::Query, Some("default"))
                .is_err()
        );
    }

    #[test]
    fn clear_errors() {
        let e = resolve("[[datastores]]\nname = \"a b\"", &[]).unwrap_err();
        assert_eq!(
            e,
            "weir.toml: datastores[0] (`a b`): name must be 1 to 64 letters, digits, '-' or '_'"
        );
        let e = resolve("[[datastores]]\nname = \"x\"\nqueue_rows = 0", &[]).unwrap_err();
        assert_eq!(
            e,
            "weir.toml: datastores[0] (`x`): queue_rows must be at least 1"
        );
        let e = resolve(
            "[[datastores]]\nname = \"x\"\nkeys = [{ role = \"query\", key_env = \"NOPE\" }]",
            &[],
        )
        .unwrap_err();
        assert_eq!(
            e,
            "weir.toml: datastores[0] (`x`).keys[0]: environment variable NOPE is not set"
        );
        let e = resolve(
            "[[datastores]]\nname = \"x\"\nkeys = [{ role = \"query\" }]",
            &[],
        )
        .unwrap_err();
        assert!(e.ends_with("give exactly one of `key` or `key_env`"), "{e}");
        let e = resolve(
            "[[datastores]]\nname = \"x\"\n[[datastores]]\nname = \"x\"",
            &[],
        )
        .unwrap_err();
        assert!(e.ends_with("datastore `x` is declared twice"), "{e}");
        assert!(
            resolve("[[datastores]]\nname = \"x\"\ncolour = 1", &[])
                .unwrap_err()
                .contains("unknown field `colour`")
        );
        assert!(
            resolve(
                "[[datastores]]\nname = \"x\"\nkeys = [{ role = \"root\", key = \"k\" }]",
                &[]
            )
            .unwrap_err()
            .contains("root")
        );
    }
}
