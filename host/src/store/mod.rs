//! The embedded durable store: one data directory, locked by one host, with
//! one redb file that holds the event log and the host's records (dead
//! letters, plugin state, quarantines, named consumers).
//!
//! Two narrow interfaces are the whole contract, so that a NATS JetStream
//! backend can stand behind the same traits:
//! - [`crate::bus::EventLog`] (defined by the bus, which is all it needs):
//!   append a batch durably, read from a sequence number, bounds.
//! - [`Records`]: small keyed records in a few [`Table`]s (put, remove,
//!   load all at start); the rooms keep their working copy in memory and
//!   write through.
//!
//! [`RedbStore`] implements both. Without a data directory (`--ephemeral`)
//! there is no store and every room keeps memory only.

mod redb;

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use self::redb::{COMMIT_BUCKETS_MS, RedbStore, StoreStats, StoreSummary};
pub use weir_core::settings::{Fsync, LogConfig};

/// The data directory's lock file.
pub const LOCK_FILE: &str = "LOCK";

/// The store's file in the data directory.
pub const STORE_FILE: &str = "weir.redb";

/// What went wrong with the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Another host holds the data directory.
    #[error(
        "data directory {dir} is in use by another weir process ({holder}); stop it, or give this one another --data-dir"
    )]
    Locked {
        /// The directory.
        dir: PathBuf,
        /// What the lock file says about its holder.
        holder: String,
    },
    /// A file in the data directory is not a store this build can read.
    #[error(
        "{file}: damaged, or not a weir store this build can read ({reason}); restore it from a backup, move it away, or use another --data-dir"
    )]
    Foreign {
        /// The file.
        file: PathBuf,
        /// Why.
        reason: String,
    },
    /// A stored record could not be read back.
    #[error("{file}: damaged record in `{table}` at {key}: {reason}")]
    Corrupt {
        /// The file.
        file: PathBuf,
        /// The table.
        table: &'static str,
        /// The record's key.
        key: String,
        /// Why.
        reason: String,
    },
    /// Reading or writing failed (a full disk, an I/O error).
    #[error("storage: {0}")]
    Io(String),
}

/// The tables of [`Records`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Table {
    /// Dead letters, by id.
    DeadLetters,
    /// Plugin key-value state, by `PLUGIN/NAME`.
    PluginState,
    /// Quarantined keys, by key.
    Quarantine,
    /// Named consumers, by scope and name.
    Consumers,
}

impl Table {
    /// Every table.
    pub const ALL: [Table; 4] = [
        Table::DeadLetters,
        Table::PluginState,
        Table::Quarantine,
        Table::Consumers,
    ];

    /// Its name in the store.
    pub fn name(self) -> &'static str {
        match self {
            Self::DeadLetters => "dead_letters",
            Self::PluginState => "plugin_state",
            Self::Quarantine => "quarantine",
            Self::Consumers => "consumers",
        }
    }
}

/// Small keyed records, written through by the rooms that own them.
pub trait Records: Send + Sync {
    /// Whether other hosts write these records too (a cluster's buckets):
    /// a room then reads through ([`Records::get`]) rather than trusting a
    /// working copy loaded at start.
    fn shared(&self) -> bool {
        false
    }
    /// One record of `table`.
    fn get(&self, table: Table, key: &str) -> Result<Option<Vec<u8>>, StoreError>;
    /// The keys of `table` that start with `prefix`, in order.
    fn keys(&self, table: Table, prefix: &str) -> Result<Vec<String>, StoreError>;
    /// Sets `key` in `table`, durably.
    fn put(&self, table: Table, key: &str, value: &[u8]) -> Result<(), StoreError>;
    /// Sets `key` in `table` only if it is not there (in a cluster, in one
    /// step, so that two hosts cannot both take it); `false` when it was.
    fn create(&self, table: Table, key: &str, value: &[u8]) -> Result<bool, StoreError> {
        if self.get(table, key)?.is_some() {
            return Ok(false);
        }
        self.put(table, key, value).map(|()| true)
    }
    /// Removes `key` from `table`, durably; removing nothing is fine.
    fn remove(&self, table: Table, key: &str) -> Result<(), StoreError>;
    /// Every record of `table`, in key order (read once, at start).
    fn load(&self, table: Table) -> Result<Vec<(String, Vec<u8>)>, StoreError>;
    /// Calls `on_change` with every record of `table` (its current value,
    /// then each change other hosts or this one make: `None` when removed),
    /// for as long as the records live. Records no other host writes have
    /// nothing to report: by default, nothing is called.
    fn watch(&self, table: Table, on_change: OnChange) {
        let _ = (table, on_change);
    }
}

/// How a host joined a lease ([`Leases::join`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Join {
    /// No other live host holds it: this host starts it (and then calls
    /// [`Leases::started`]).
    First,
    /// Other hosts hold it, started.
    Joined,
}

/// How a host left a lease ([`Leases::leave`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Leave {
    /// It was the last holder: it ends it (and then calls
    /// [`Leases::ended`]).
    Last,
    /// Other hosts still hold it.
    Others,
}

/// Reference-counted leases shared by the hosts of a cluster: something
/// (a subscription) that must be started once when the first host takes it
/// and ended once when the last one lets go. A host that dies stops renewing
/// its hold, which expires, so it pins nothing forever. Calls block (a
/// while, bounded, when another host is starting or ending the same lease).
pub trait Leases: Send + Sync {
    /// Takes a hold on `name`.
    fn join(&self, name: &str) -> Result<Join, StoreError>;
    /// The start (after [`Join::First`]) is done: others may join.
    fn started(&self, name: &str) -> Result<(), StoreError>;
    /// Lets go of `name`.
    fn leave(&self, name: &str) -> Result<Leave, StoreError>;
    /// The end (after [`Leave::Last`]) is done: the lease is gone.
    fn ended(&self, name: &str) -> Result<(), StoreError>;
}

/// What [`Records::watch`] calls: the key and its new value (`None`:
/// removed).
pub type OnChange = Arc<dyn Fn(&str, Option<&[u8]>) + Send + Sync>;

/// A data directory, held by this process for as long as the value lives.
#[derive(Debug)]
pub struct DataDir {
    path: PathBuf,
    /// Holds the exclusive lock; released when dropped (or when the
    /// process dies, however it dies).
    _lock: File,
}

impl DataDir {
    /// Creates `path` if needed and takes its lock, or names the holder.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        std::fs::create_dir_all(path).map_err(|e| {
            StoreError::Io(format!(
                "cannot create data directory {}: {e}",
                path.display()
            ))
        })?;
        let lock_path = path.join(LOCK_FILE);
        let mut lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&lock_path)
            .map_err(|e| StoreError::Io(format!("cannot open {}: {e}", lock_path.display())))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                let holder = std::fs::read_to_string(&lock_path)
                    .ok()
                    .map(|s| s.trim().to_string())
                    .filter(|s| !s.is_empty())
                    .unwrap_or_else(|| "unknown".into());
                return Err(StoreError::Locked {
                    dir: path.to_path_buf(),
                    holder: weir_core::text::echo(&holder).into_owned(),
                });
            }
            Err(std::fs::TryLockError::Error(e)) => {
                return Err(StoreError::Io(format!(
                    "cannot lock {}: {e}",
                    lock_path.display()
                )));
            }
        }
        // Who holds it, for the next one's error message.
        let _ = lock.set_len(0);
        let _ = writeln!(lock, "pid {}", std::process::id());
        Ok(Self {
            path: path.to_path_buf(),
            _lock: lock,
        })
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// The platform's data directory for `weir`: `$XDG_DATA_HOME/weir`, else
/// `$HOME/.local/share/weir`; `None` without either.
pub fn default_data_dir() -> Option<PathBuf> {
    let from = |var: &str| {
        std::env::var_os(var)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    from("XDG_DATA_HOME")
        .map(|d| d.join("weir"))
        .or_else(|| from("HOME").map(|h| h.join(".local/share/weir")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_holder_is_refused_and_named() {
        let dir = tempfile::tempdir().unwrap();
        let first = DataDir::open(dir.path()).unwrap();
        let err = DataDir::open(dir.path()).unwrap_err().to_string();
        assert!(err.contains("in use by another weir process"), "{err}");
        assert!(
            err.contains(&format!("pid {}", std::process::id())),
            "{err}"
        );
        drop(first);
        DataDir::open(dir.path()).unwrap();
    }
}
