//! Wire types: the shapes the host answers with (and the one it reads from a
//! query), filled by the rooms that own the data and documented for the
//! OpenAPI document. The only place outside `http/` that knows utoipa, so
//! that the rooms stay free of documentation machinery.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::index::Evictions;

/// Stats of one datastore, as `GET .../stats` shows them.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct DatastoreStats {
    /// Files in the index.
    pub total_files: usize,
    /// Directories, the root included.
    pub total_directories: usize,
    /// Sum of file sizes.
    pub total_size: u64,
    /// Files plus directories.
    pub item_count: usize,
    /// Files currently suspect.
    pub suspect_file_count: usize,
    /// Files first seen by an audit.
    pub blind_spot_additions: usize,
    /// Files deleted because an audit missed them.
    pub blind_spot_deletions: usize,
    /// Any blind spot.
    pub has_blind_spot: bool,
    /// Observed-to-applied latency of the last realtime row, ms.
    pub last_event_latency_ms: u64,
    /// An audit is running.
    pub is_auditing: bool,
    /// Completed audits.
    pub audit_cycle_count: u32,
    /// End of the last audit, seconds since the epoch (0: none).
    pub last_audit_finished_at: f64,
    /// Rows waiting in the queue.
    pub queued_rows: usize,
    /// Changes applied since start.
    pub rows_applied: u64,
    /// Rows ignored by arbitration since start.
    pub rows_ignored: u64,
    /// Rows rejected as malformed since start.
    pub rows_rejected: u64,
    /// Jobs whose application failed with a panic since start; each raised
    /// the consistency alarm.
    pub apply_panics: u64,
    /// What the index let go of to stay within its bounds.
    #[schema(value_type = Object)]
    pub evictions: Evictions,
}

/// One loaded plugin, as `/v1/plugins` shows it.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct PluginInfo {
    /// Name (file stem).
    pub name: String,
    /// File path.
    pub file: Option<String>,
    /// SHA-256 of the component.
    pub hash: String,
    /// The hash, with `+` and the manifest's short hash when it has one.
    pub version: String,
    /// The limits its calls run with (defaults, or its manifest's).
    pub limits: PluginLimits,
    /// Its keys.
    pub keys: Vec<String>,
    /// Load time, ms since the Unix epoch.
    pub loaded_at_ms: u64,
    /// Calls made.
    pub calls: u64,
    /// Calls that faulted.
    pub faults: u64,
    /// Instances created.
    pub instances_created: u64,
    /// Linear memory its live instances (idle or running) hold, bytes.
    pub memory_bytes: u64,
    /// The most linear memory one of its instances has held, bytes.
    pub memory_peak_bytes: u64,
    /// `loaded` (failed files are listed apart, with their reasons).
    #[schema(value_type = String, example = "loaded")]
    pub state: &'static str,
    /// Its keys that are quarantined.
    pub quarantined_keys: Vec<String>,
}

/// A plugin's limits, as `/v1/plugins` shows them.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct PluginLimits {
    /// Linear memory per instance, MiB.
    pub memory_mib: usize,
    /// Deadline of `matches`, ms.
    pub matches_deadline_ms: u64,
    /// Deadline of other calls, ms.
    pub call_deadline_ms: u64,
    /// Largest output of one event, KiB.
    pub max_output_kib: usize,
}

/// A plugin file that failed to load, for `/v1/plugins` and the log.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct FailedPlugin {
    /// The file.
    pub file: String,
    /// Every reason.
    pub errors: Vec<String>,
    /// SHA-256 of the content that failed (`+` the manifest's short hash).
    pub hash: Option<String>,
    /// When, ms since the Unix epoch.
    pub failed_at_ms: u64,
    /// Version of what still runs, when a replacement failed.
    pub running_hash: Option<String>,
}

/// Which dead letters an operation applies to; also the body of
/// `POST /v1/dlq/replay`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, ToSchema)]
#[serde(default, deny_unknown_fields)]
#[schema(as = Selector)]
pub struct DeadLetterSelector {
    /// Only these ids (empty: any).
    pub ids: Vec<u64>,
    /// Only this key.
    pub key: Option<String>,
    /// Only letters of this datastore's subscriptions (set from the
    /// caller's key, never from a body).
    #[serde(skip)]
    #[schema(ignore)]
    pub scope: Option<String>,
}

/// A live host of the cluster, as it announces itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct HostPresence {
    /// Its id (new at each start).
    pub host_id: String,
    /// Its machine's host name.
    pub name: String,
    /// Its process id.
    pub pid: u32,
    /// When it started, ms since the Unix epoch.
    pub started_ms: u64,
    /// Its last announcement, ms since the Unix epoch.
    pub seen_ms: u64,
    /// The plugins it runs: name -> version.
    pub plugins: std::collections::BTreeMap<String, String>,
}

/// A plugin that the live hosts do not all run in one version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct PluginSkew {
    /// The plugin.
    pub plugin: String,
    /// Each version run, with the hosts that run it.
    pub versions: std::collections::BTreeMap<String, Vec<String>>,
    /// Hosts that do not run it at all.
    pub missing_on: Vec<String>,
}

/// The cluster as one host sees it (`GET /v1/plugins`).
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ClusterPlugins {
    /// The cluster's name.
    pub name: String,
    /// This host's id.
    pub host_id: String,
    /// Every live host.
    pub hosts: Vec<HostPresence>,
    /// Plugins whose version differs between hosts, or that some lack.
    pub skew: Vec<PluginSkew>,
    /// Why the hosts could not be listed (NATS unreachable), if so.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The plugins whose versions differ across `hosts` (or that some lack).
pub fn plugin_skew(hosts: &[HostPresence]) -> Vec<PluginSkew> {
    use std::collections::{BTreeMap, BTreeSet};
    let names: BTreeSet<&String> = hosts.iter().flat_map(|h| h.plugins.keys()).collect();
    let mut out = Vec::new();
    for name in names {
        let mut versions: BTreeMap<String, Vec<String>> = BTreeMap::new();
        let mut missing_on = Vec::new();
        for h in hosts {
            match h.plugins.get(name) {
                Some(v) => versions
                    .entry(v.clone())
                    .or_default()
                    .push(h.host_id.clone()),
                None => missing_on.push(h.host_id.clone()),
            }
        }
        if versions.len() > 1 || !missing_on.is_empty() {
            out.push(PluginSkew {
                plugin: name.clone(),
                versions,
                missing_on,
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(id: &str, plugins: &[(&str, &str)]) -> HostPresence {
        HostPresence {
            host_id: id.into(),
            name: "h".into(),
            pid: 1,
            started_ms: 0,
            seen_ms: 0,
            plugins: plugins
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    #[test]
    fn skew_names_differing_versions_and_missing_plugins() {
        let hosts = [
            host("a", &[("enrich", "v1"), ("fs", "x")]),
            host("b", &[("enrich", "v2"), ("fs", "x")]),
            host("c", &[("fs", "x")]),
        ];
        let skew = plugin_skew(&hosts);
        assert_eq!(skew.len(), 1, "{skew:?}");
        assert_eq!(skew[0].plugin, "enrich");
        assert_eq!(skew[0].versions["v1"], vec!["a"]);
        assert_eq!(skew[0].versions["v2"], vec!["b"]);
        assert_eq!(skew[0].missing_on, vec!["c"]);
        assert!(plugin_skew(&hosts[..1]).is_empty());
    }
}
