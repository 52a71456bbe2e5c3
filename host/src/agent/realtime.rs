//! Realtime: what inotify (through `notify`, recursive, so directories
//! made later are watched too) reports, as rows. Paths that changed are
//! gathered until a 10 ms pause (100 ms at most) and deduplicated, then
//! looked at: a path that exists is an `update` row, one that does not a
//! `delete` row. So a burst of writes to one file is one row, and an
//! event's details never matter, only what the file system says when the
//! rows are made.
//!
//! The queue between the watcher and the sender is bounded: when it
//! overflows, or inotify itself reports lost events, the watch is `Lost`
//! and the agent starts over with a full snapshot (nothing is lost
//! silently).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use notify::Watcher;
use serde_json::{Value, json};
use tokio::sync::mpsc;

use super::walk::{Filter, row, wire_path};

/// Paths waiting at most; beyond, the watch is lost.
const QUEUE: usize = 100_000;
/// Longest changes are gathered before they are sent (a burst).
const COALESCE: Duration = Duration::from_millis(100);
/// A pause this long ends the gathering early: a lone change goes out at
/// once, a burst is still coalesced.
const QUIET: Duration = Duration::from_millis(10);

/// What the watcher hands over.
enum Signal {
    /// Paths that changed; `true`: made (a new directory is looked into).
    Paths(Vec<PathBuf>, bool),
    Lost(String),
}

/// Most entries read inside a changed directory at once; a larger one is
/// synced by starting over.
const MAX_INSIDE: usize = 10_000;

/// The receiving side.
pub struct Changes {
    rx: mpsc::Receiver<Signal>,
    root: PathBuf,
    filter: Filter,
    /// Paths received and not yet sent: kept here, so that a read
    /// cancelled while it gathers loses nothing.
    pending: BTreeMap<PathBuf, bool>,
}

/// The next rows, or why the watch cannot go on.
pub enum Next {
    /// `(event_type, row)` pairs, in path order.
    Rows(Vec<(&'static str, Value)>),
    /// Start over.
    Lost(String),
}

/// Starts watching `root`; keep the watcher alive as long as the changes
/// are read.
pub fn watch(root: &Path, filter: Filter) -> notify::Result<(notify::RecommendedWatcher, Changes)> {
    let (tx, rx) = mpsc::channel(QUEUE);
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        use notify::EventKind;
        use notify::event::{AccessKind, AccessMode};
        let signal = match event {
            Ok(e) if e.need_rescan() => {
                Signal::Lost("the kernel dropped file events (queue overflow)".into())
            }
            // Reads (the agent's own walks among them) change nothing; a
            // write closed does.
            Ok(e)
                if matches!(
                    e.kind,
                    EventKind::Access(AccessKind::Close(AccessMode::Write))
                ) =>
            {
                Signal::Paths(e.paths, false)
            }
            Ok(e) if matches!(e.kind, EventKind::Access(_)) => return,
            Ok(e) => {
                let made = matches!(e.kind, EventKind::Create(_));
                Signal::Paths(e.paths, made)
            }
            Err(e) => Signal::Lost(format!("watching failed: {e}")),
        };
        if let Err(mpsc::error::TrySendError::Full(_)) = tx.try_send(signal) {
            // The sender is far behind: the next read finds the queue
            // closed and starts over.
            let _ = tx.try_send(Signal::Lost("the change queue overflowed".into()));
        }
    })?;
    watcher.watch(root, notify::RecursiveMode::Recursive)?;
    Ok((
        watcher,
        Changes {
            rx,
            root: root.to_path_buf(),
            filter,
            pending: BTreeMap::new(),
        },
    ))
}

impl Changes {
    fn take(&mut self, paths: Vec<PathBuf>, made: bool) {
        for p in paths {
            *self.pending.entry(p).or_default() |= made;
        }
    }

    /// Rows for what is below directory `dir` (at `depth`).
    fn inside(
        &self,
        dir: &Path,
        depth: usize,
        rows: &mut Vec<(&'static str, Value)>,
    ) -> Result<(), String> {
        let walk = walkdir::WalkDir::new(dir)
            .min_depth(1)
            .follow_links(self.filter.follows())
            .into_iter()
            .filter_entry(|e| {
                let rel = wire_path(&self.root, e.path()).unwrap_or_default();
                !self
                    .filter
                    .skips(rel.trim_start_matches('/'), depth + e.depth())
            });
        for (n, entry) in walk.enumerate() {
            if n == MAX_INSIDE {
                return Err(format!(
                    "more than {MAX_INSIDE} entries appeared in {}",
                    dir.display()
                ));
            }
            let Ok(entry) = entry else { continue };
            let (Some(wire), Ok(meta)) = (wire_path(&self.root, entry.path()), entry.metadata())
            else {
                continue;
            };
            rows.push(("update", row(&wire, &meta)));
        }
        Ok(())
    }

    /// Waits for changes, gathers more for a moment, and answers their rows
    /// (at most `max`; the rest come next time).
    pub async fn next(&mut self, max: usize) -> Next {
        if self.pending.is_empty() {
            match self.rx.recv().await {
                None => return Next::Lost("the watcher stopped".into()),
                Some(Signal::Lost(why)) => return Next::Lost(why),
                Some(Signal::Paths(p, made)) => self.take(p, made),
            }
        }
        let deadline = tokio::time::Instant::now() + COALESCE;
        while self.pending.len() < max {
            let until = deadline.min(tokio::time::Instant::now() + QUIET);
            match tokio::time::timeout_at(until, self.rx.recv()).await {
                Err(_) => break,
                Ok(None) => return Next::Lost("the watcher stopped".into()),
                Ok(Some(Signal::Lost(why))) => return Next::Lost(why),
                Ok(Some(Signal::Paths(p, made))) => self.take(p, made),
            }
        }
        let paths = std::mem::take(&mut self.pending);
        let mut rows = Vec::with_capacity(paths.len());
        for (path, made) in paths {
            let Some(wire) = wire_path(&self.root, &path) else {
                continue;
            };
            let rel = wire.trim_start_matches('/');
            // Left out, or below something left out.
            let parts: Vec<&str> = if rel.is_empty() {
                Vec::new()
            } else {
                rel.split('/').collect()
            };
            if (1..=parts.len()).any(|i| self.filter.skips(&parts[..i].join("/"), i)) {
                continue;
            }
            let meta = if self.filter.follows() {
                std::fs::metadata(&path)
            } else {
                std::fs::symlink_metadata(&path)
            };
            match meta {
                Ok(m) => {
                    let mut r = row(&wire, &m);
                    r["is_atomic_write"] = json!(true);
                    rows.push(("update", r));
                    if made && m.is_dir() {
                        // Entries made in a new directory before its watch
                        // was added send no events: look inside.
                        if let Err(why) = self.inside(&path, parts.len(), &mut rows) {
                            return Next::Lost(why);
                        }
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    rows.push(("delete", json!({ "path": wire })));
                }
                Err(e) => {
                    tracing::warn!(path = %path.display(), "cannot read a changed entry: {e}")
                }
            }
        }
        Next::Rows(rows)
    }
}
