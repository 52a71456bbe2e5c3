//! Realtime: what inotify (through `notify`) reports, as rows. Every
//! directory the filter keeps is watched on its own, so that one that
//! cannot be (no permission, the inotify watch limit) is skipped and
//! counted rather than failing the whole watch; directories made or moved
//! in later are watched (and looked into) when their event arrives, which
//! also moves the watches of a renamed directory to its new paths, and
//! those that cannot be watched are audited in full. Paths that changed are
//! gathered until a 10 ms pause (100 ms at most) and deduplicated, then
//! looked at: a path that exists is an `update` row, one that does not a
//! `delete` row. So a burst of writes to one file is one row, and an
//! event's details never matter, only what the file system says when the
//! rows are made.
//!
//! The queue between the watcher and the sender is bounded: when it
//! overflows, or inotify itself reports lost events, the agent rescans
//! (a full audit, every directory listed): nothing is lost silently, and
//! the session and its views go on.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use notify::Watcher;
use serde_json::{Value, json};
use tokio::sync::mpsc;

use super::walk::{Filter, row, wire_path};

/// Signals waiting between the watcher and the sender, by default;
/// beyond, the agent rescans.
pub const QUEUE: usize = 100_000;

/// Most directories remembered as unwatched (so that audits list them in
/// full); beyond, every audit lists everything.
const MAX_UNWATCHED: usize = 10_000;
/// Longest changes are gathered before they are sent (a burst).
const COALESCE: Duration = Duration::from_millis(100);
/// A pause this long ends the gathering early: a lone change goes out at
/// once, a burst is still coalesced.
const QUIET: Duration = Duration::from_millis(10);

/// What the watcher hands over.
enum Signal {
    /// Paths that changed; `true`: made or moved in (a directory is
    /// watched and looked into).
    Paths(Vec<PathBuf>, bool),
    /// Events were lost (the kernel's queue overflowed): rescan.
    Rescan(String),
    /// The watch cannot go on.
    Lost(String),
}

/// Most entries read inside a changed directory at once; a larger one is
/// synced by starting over.
const MAX_INSIDE: usize = 10_000;

/// The watcher and the receiving side.
pub struct Changes {
    rx: mpsc::Receiver<Signal>,
    watcher: notify::RecommendedWatcher,
    /// Set by the watcher when a signal did not fit the queue.
    overflowed: Arc<AtomicBool>,
    root: PathBuf,
    filter: Filter,
    /// Paths received and not yet sent: kept here, so that a read
    /// cancelled while it gathers loses nothing.
    pending: BTreeMap<PathBuf, bool>,
    /// Directories (wire paths) that could not be watched.
    unwatched: BTreeSet<String>,
    /// More than [`MAX_UNWATCHED`] could not be watched.
    unwatched_overflow: bool,
    /// Watch failures logged (at most 100 lines).
    logged: usize,
}

/// The next rows, or what the agent must do instead.
pub enum Next {
    /// `(event_type, row)` pairs, in path order.
    Rows(Vec<(&'static str, Value)>),
    /// Events were lost: rescan everything (why).
    Rescan(String),
    /// Start over.
    Lost(String),
}

/// Starts watching `root` and every directory below it that `filter`
/// keeps, with at most `queue` signals waiting. Fails only when the root
/// itself cannot be watched.
pub fn watch(root: &Path, filter: Filter, queue: usize) -> notify::Result<Changes> {
    let (tx, rx) = mpsc::channel(queue.max(1));
    let overflowed = Arc::new(AtomicBool::new(false));
    let flag = overflowed.clone();
    let watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        use notify::EventKind;
        use notify::event::{AccessKind, AccessMode, ModifyKind, RenameMode};
        let signal = match event {
            Ok(e) if e.need_rescan() => {
                Signal::Rescan("the kernel dropped file events (inotify queue overflow)".into())
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
                // A directory moved in is new here: its watches (and
                // contents) are looked at like a made one's.
                let made = matches!(
                    e.kind,
                    EventKind::Create(_)
                        | EventKind::Modify(ModifyKind::Name(
                            RenameMode::To | RenameMode::Both | RenameMode::Any
                        ))
                );
                Signal::Paths(e.paths, made)
            }
            Err(e) => Signal::Lost(format!("watching failed: {e}")),
        };
        if let Err(mpsc::error::TrySendError::Full(_)) = tx.try_send(signal) {
            // The sender is far behind: its next read sees the flag and
            // rescans.
            flag.store(true, Ordering::SeqCst);
        }
    })?;
    let mut changes = Changes {
        rx,
        watcher,
        overflowed,
        root: root.to_path_buf(),
        filter,
        pending: BTreeMap::new(),
        unwatched: BTreeSet::new(),
        unwatched_overflow: false,
        logged: 0,
    };
    changes
        .watcher
        .watch(root, notify::RecursiveMode::NonRecursive)?;
    changes.inside(root, 0, None)?;
    Ok(changes)
}

impl Changes {
    fn take(&mut self, paths: Vec<PathBuf>, made: bool) {
        for p in paths {
            *self.pending.entry(p).or_default() |= made;
        }
    }

    /// Directories (wire paths) that could not be watched: an audit lists
    /// them in full. `None`: too many to remember; audit everything.
    pub fn unwatched(&self) -> Option<&BTreeSet<String>> {
        (!self.unwatched_overflow).then_some(&self.unwatched)
    }

    /// How many directories could not be watched.
    pub fn unwatched_count(&self) -> usize {
        self.unwatched.len()
    }

    /// Watches directory `dir` (wire path `wire`); a failure is counted and
    /// logged, and the directory is left to audits.
    fn watch_dir(&mut self, dir: &Path, wire: &str) {
        let Err(e) = self.watcher.watch(dir, notify::RecursiveMode::NonRecursive) else {
            self.unwatched.remove(wire);
            return;
        };
        if matches!(e.kind, notify::ErrorKind::PathNotFound) {
            return;
        }
        let limit = matches!(e.kind, notify::ErrorKind::MaxFilesWatch);
        if self.logged < 100 {
            self.logged += 1;
            if limit {
                tracing::error!(dir = %dir.display(), "the inotify watch limit is reached: this directory is not watched (raise fs.inotify.max_user_watches; audits list it in full meanwhile)");
            } else {
                tracing::warn!(dir = %dir.display(), "cannot watch a directory (audits list it in full): {e}");
            }
        }
        if self.unwatched.len() < MAX_UNWATCHED {
            self.unwatched.insert(wire.to_string());
        } else {
            self.unwatched_overflow = true;
        }
    }

    /// Watches every directory below `dir` (at `depth`) that the filter
    /// keeps; with `rows`, also answers a row for each entry, at most
    /// [`MAX_INSIDE`] (a larger new directory is left to a rescan).
    fn inside(
        &mut self,
        dir: &Path,
        depth: usize,
        mut rows: Option<&mut Vec<(&'static str, Value)>>,
    ) -> notify::Result<()> {
        let (root, filter) = (self.root.clone(), self.filter.clone());
        let listing = rows.is_some();
        let walk = walkdir::WalkDir::new(dir)
            .min_depth(1)
            .follow_links(filter.follows())
            .into_iter()
            .filter_entry(|e| {
                // Watching alone needs the directories only.
                if !listing && !e.file_type().is_dir() {
                    return false;
                }
                let rel = wire_path(&root, e.path()).unwrap_or_default();
                !filter.skips(rel.trim_start_matches('/'), depth + e.depth())
            });
        for (n, entry) in walk.enumerate() {
            if rows.is_some() && n == MAX_INSIDE {
                return Err(notify::Error::generic(&format!(
                    "more than {MAX_INSIDE} entries appeared in {}",
                    dir.display()
                )));
            }
            let entry = match entry {
                Ok(e) => e,
                Err(e) => {
                    // An unreadable directory: not watched, not listed.
                    if let Some(p) = e.path()
                        && let Some(wire) = wire_path(&root, p)
                    {
                        self.watch_dir(p, &wire);
                    }
                    continue;
                }
            };
            let Some(wire) = wire_path(&root, entry.path()) else {
                continue;
            };
            if entry.file_type().is_dir() {
                self.watch_dir(entry.path(), &wire);
            }
            if let (Some(rows), Ok(meta)) = (rows.as_deref_mut(), entry.metadata()) {
                rows.push(("update", row(&wire, &meta)));
            }
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
                Some(Signal::Rescan(why)) => return self.rescan(why),
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
                Ok(Some(Signal::Rescan(why))) => return self.rescan(why),
                Ok(Some(Signal::Paths(p, made))) => self.take(p, made),
            }
        }
        if self.overflowed.swap(false, Ordering::SeqCst) {
            return self.rescan("the change queue overflowed".into());
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
                        // was added send no events: watch it, then look
                        // inside (watching first, so nothing falls between).
                        self.watch_dir(&path, &wire);
                        if let Err(why) = self.inside(&path, parts.len(), Some(&mut rows)) {
                            return self.rescan(why.to_string());
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

    /// Events were lost: what was gathered is dropped, and so is what
    /// waits in the queue (the rescan covers both); directories made
    /// meanwhile are watched now, before the rescan lists them.
    fn rescan(&mut self, why: String) -> Next {
        self.pending.clear();
        while self.rx.try_recv().is_ok() {}
        self.overflowed.store(false, Ordering::SeqCst);
        let root = self.root.clone();
        if let Err(e) = self.inside(&root, 0, None) {
            return Next::Lost(format!("cannot watch {} again: {e}", root.display()));
        }
        Next::Rescan(why)
    }
}
