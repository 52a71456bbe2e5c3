//! The file-system index of one datastore: the hash tree plus the
//! consistency state (tombstones, suspects, blind spots, audit cycle) and the
//! arbitration rules that decide which rows change the tree.
//!
//! Rules (Fustor's consistency design, Weir's reading of it):
//! - realtime upsert: always applied; lifts a tombstone; clears suspect and
//!   blind-spot marks; `is_atomic_write: false` marks the file suspect for
//!   the hot-file window.
//! - realtime delete: removes the node (a directory with its subtree) and
//!   tombstones every removed path.
//! - snapshot/audit delete: ignored when tombstoned or when the node changed
//!   after the scan observed the deletion; otherwise applied (audit: recorded
//!   as a blind-spot deletion).
//! - snapshot/audit upsert: ignored when tombstoned (unless newer than the
//!   tombstone, which lifts it) or when the node has the same or a newer
//!   mtime (unless `audit_skipped`); an audit upsert of a new path is ignored
//!   when the parent directory in memory is newer than `parent_mtime`;
//!   otherwise applied. A file younger than the hot-file window becomes
//!   suspect; a new file first seen by audit is a blind-spot addition.
//! - audit end: tombstones older than the audit start are purged; in every
//!   directory the audit listed in full, an entry it did not see, that is
//!   not tombstoned and in whose subtree nothing was changed by realtime
//!   since the audit began, is deleted (a directory with its subtree; its
//!   files are blind-spot deletions). Fusion deletes unseen files only, so
//!   a directory removed while no watch saw it stayed there forever.
//!
//! Every applied change is returned as a [`Change`] for the change feed;
//! ignored rows return nothing.

pub mod tree;
pub mod view;

use std::collections::{BTreeSet, HashMap, HashSet};

pub use tree::{Meta, NodeId, ROOT, Tree, normalize};

/// Where a row comes from, in Fustor's `message_source` terms.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// inotify events: highest priority.
    Realtime,
    /// The initial full scan.
    Snapshot,
    /// A periodic audit scan.
    Audit,
    /// An on-demand scan job; arbitrated like a snapshot.
    OnDemandJob,
}

/// One upsert row.
#[derive(Debug, Clone, PartialEq)]
pub struct Upsert {
    /// Normalized path.
    pub path: String,
    /// Metadata.
    pub meta: Meta,
    /// `Some(false)`: a write in progress (realtime).
    pub is_atomic_write: Option<bool>,
    /// Audit: the directory is unchanged and its files were not listed.
    pub audit_skipped: bool,
    /// Audit: the parent directory's mtime when the agent scanned it.
    pub parent_mtime: Option<f64>,
}

/// What happened to the tree.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ChangeKind {
    /// A node appeared.
    Insert,
    /// A node's metadata changed.
    Update,
    /// A node was removed.
    Delete,
}

/// One applied change, for the change feed.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Change {
    /// Insert, update or delete.
    pub kind: ChangeKind,
    /// Path of the node.
    pub path: String,
    /// Metadata after the change (before it, for deletes).
    pub meta: Meta,
    /// The row's source.
    pub source: Source,
}

impl serde::Serialize for Meta {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut st = s.serialize_struct("Meta", 4)?;
        st.serialize_field("is_dir", &self.is_dir)?;
        st.serialize_field("size", &self.size)?;
        st.serialize_field("mtime", &self.mtime)?;
        st.serialize_field("ctime", &self.ctime)?;
        st.end()
    }
}

/// Tunables of the rules.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct IndexConfig {
    /// A file modified less than this many seconds ago is suspect.
    pub hot_window_secs: f64,
    /// How long a deletion is remembered, in seconds.
    pub tombstone_ttl_secs: f64,
    /// Most tombstones kept; beyond, expired ones are purged and then the
    /// oldest are evicted (counted in [`FsIndex::evictions`]).
    pub max_tombstones: usize,
    /// Most blind-spot additions, and separately deletions, listed; beyond,
    /// new ones are counted but not listed.
    pub max_blind_spots: usize,
}

impl Default for IndexConfig {
    fn default() -> Self {
        Self {
            hot_window_secs: 30.0,
            tombstone_ttl_secs: 3600.0,
            max_tombstones: 200_000,
            max_blind_spots: 100_000,
        }
    }
}

/// The state of the audit in progress.
#[derive(Debug, Default)]
struct Audit {
    /// Wall-clock start, seconds.
    started_at: f64,
    /// Logical clock at the start.
    started_stamp: u64,
    /// Directories the audit listed in full.
    listed_dirs: HashSet<NodeId>,
}

/// The index of one datastore.
pub struct FsIndex {
    tree: Tree,
    config: IndexConfig,
    /// Deleted path -> deletion time (seconds).
    tombstones: HashMap<String, f64>,
    /// Suspect node -> time until which it stays suspect.
    suspects: HashMap<NodeId, f64>,
    blind_additions: BTreeSet<String>,
    blind_deletions: BTreeSet<String>,
    audit: Option<Audit>,
    audit_cycle: u32,
    audit_cycles_done: u32,
    last_audit_finished_at: f64,
    /// Logical clock, advanced on every realtime change.
    clock: u64,
    evictions: Evictions,
}

/// What the index let go of to stay within its bounds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Evictions {
    /// Tombstones evicted before their time to live ended.
    pub tombstones: u64,
    /// Blind-spot additions or deletions not listed because the list was
    /// full.
    pub blind_spots: u64,
    /// Sentinel feedback about paths that are not suspect, ignored.
    pub feedback_ignored: u64,
}

/// Result of sentinel feedback on one path.
#[derive(Debug, Clone, PartialEq)]
pub enum Feedback {
    /// The file exists with this metadata.
    Exists(Meta),
    /// The file is gone.
    Missing,
}

impl FsIndex {
    /// An empty index.
    pub fn new(config: IndexConfig) -> Self {
        Self {
            tree: Tree::new(),
            config,
            tombstones: HashMap::new(),
            suspects: HashMap::new(),
            blind_additions: BTreeSet::new(),
            blind_deletions: BTreeSet::new(),
            audit: None,
            audit_cycle: 0,
            audit_cycles_done: 0,
            last_audit_finished_at: 0.0,
            clock: 0,
            evictions: Evictions::default(),
        }
    }

    /// What the index let go of to stay within its bounds, since it was
    /// created (kept across [`Self::clear`]).
    pub fn evictions(&self) -> Evictions {
        self.evictions
    }

    /// Number of tombstones held (expired ones included until purged).
    pub fn tombstone_count(&self) -> usize {
        self.tombstones.len()
    }

    /// Remembers the deletion of `path` at `now`, within `max_tombstones`.
    fn add_tombstone(&mut self, path: String, now: f64) {
        let max = self.config.max_tombstones;
        if max == 0 {
            return;
        }
        if self.tombstones.len() >= max && !self.tombstones.contains_key(&path) {
            let ttl = self.config.tombstone_ttl_secs;
            self.tombstones.retain(|_, at| now - *at < ttl);
            if self.tombstones.len() >= max {
                // Evict the oldest quarter at once, so that the cost of the
                // selection is shared by many insertions.
                let excess = self.tombstones.len() - max * 3 / 4;
                let mut times: Vec<f64> = self.tombstones.values().copied().collect();
                let (_, &mut cut, _) = times.select_nth_unstable_by(excess - 1, f64::total_cmp);
                let before = self.tombstones.len();
                self.tombstones.retain(|_, at| *at > cut);
                self.evictions.tombstones += (before - self.tombstones.len()) as u64;
            }
        }
        self.tombstones.insert(path, now);
    }

    /// Lists `path` as a blind-spot addition or deletion, within
    /// `max_blind_spots`.
    fn add_blind_spot(&mut self, deletion: bool, path: String) {
        let max = self.config.max_blind_spots;
        let list = if deletion {
            &mut self.blind_deletions
        } else {
            &mut self.blind_additions
        };
        if list.len() >= max && !list.contains(&path) {
            self.evictions.blind_spots += 1;
            return;
        }
        list.insert(path);
    }

    /// The tree, read-only.
    pub fn tree(&self) -> &Tree {
        &self.tree
    }

    /// Checks the tree's structure and that the consistency state refers
    /// only to live nodes; `Err` names the first broken invariant. For tests
    /// and fuzzing: it walks the whole index.
    pub fn check(&self) -> Result<(), String> {
        self.tree.check()?;
        for &id in self.suspects.keys() {
            if !self.tree.is_live(id) || self.tree.is_dir(id) {
                return Err(format!("suspect {id} is not a live file"));
            }
        }
        if let Some(audit) = &self.audit {
            // A listed directory may have turned into a file since (it then
            // has no children to judge); it may not be a freed node.
            for &id in &audit.listed_dirs {
                if !self.tree.is_live(id) {
                    return Err(format!("listed directory {id} is not a live node"));
                }
            }
        }
        let max = self.config.max_blind_spots;
        if self.blind_additions.len() > max || self.blind_deletions.len() > max {
            return Err("a blind-spot list is beyond max_blind_spots".into());
        }
        if self.config.max_tombstones > 0 && self.tombstones.len() > self.config.max_tombstones {
            return Err("tombstones are beyond max_tombstones".into());
        }
        Ok(())
    }

    /// Whether the node is suspect at time `now`.
    pub fn is_suspect(&self, id: NodeId, now: f64) -> bool {
        self.suspects.get(&id).is_some_and(|&until| until > now)
    }

    /// Suspect paths at `now`, sorted.
    pub fn suspect_paths(&self, now: f64) -> Vec<(String, f64)> {
        let mut out: Vec<(String, f64)> = self
            .suspects
            .iter()
            .filter(|(_, until)| **until > now)
            .map(|(&id, &until)| (self.tree.path(id), until))
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    /// Number of suspect files at `now`.
    pub fn suspect_count(&self, now: f64) -> usize {
        self.suspects.values().filter(|&&until| until > now).count()
    }

    /// Files first seen by an audit (blind-spot additions).
    pub fn blind_additions(&self) -> &BTreeSet<String> {
        &self.blind_additions
    }

    /// Files deleted because an audit did not find them (blind-spot deletions).
    pub fn blind_deletions(&self) -> &BTreeSet<String> {
        &self.blind_deletions
    }

    /// Whether an audit is in progress.
    pub fn is_auditing(&self) -> bool {
        self.audit.is_some()
    }

    /// Completed audit cycles.
    pub fn audit_cycles_done(&self) -> u32 {
        self.audit_cycles_done
    }

    /// Wall-clock end of the last audit (0: none).
    pub fn last_audit_finished_at(&self) -> f64 {
        self.last_audit_finished_at
    }

    /// Whether `path` is tombstoned at `now`.
    pub fn is_tombstoned(&self, path: &str, now: f64) -> bool {
        self.tombstone(path, now).is_some()
    }

    fn tombstone(&self, path: &str, now: f64) -> Option<f64> {
        self.tombstones
            .get(path)
            .copied()
            .filter(|&at| now - at < self.config.tombstone_ttl_secs)
    }

    /// Empties the index: a new authoritative session starts over from its
    /// own snapshot, without the previous session's audit state, blind
    /// spots, suspects or tombstones.
    pub fn clear(&mut self) {
        let evictions = self.evictions;
        *self = Self::new(self.config);
        self.evictions = evictions;
    }

    fn mark_suspect(&mut self, id: NodeId, meta: &Meta, now: f64, forced: bool) {
        // The node's kind, not the row's: a row for `/` cannot make the root
        // a file.
        if meta.is_dir || self.tree.is_dir(id) {
            return;
        }
        let until = if forced {
            now + self.config.hot_window_secs
        } else {
            meta.mtime + self.config.hot_window_secs
        };
        if until > now {
            self.suspects.insert(id, until);
        }
    }

    /// Applies an upsert to the tree. What it displaces (the subtree of a
    /// directory turned file, a file turned directory) loses its suspect
    /// and audit marks; removed nodes are returned as deletes, before the
    /// change itself.
    fn upsert_change(
        &mut self,
        row: &Upsert,
        source: Source,
        displaced: &mut Vec<Change>,
    ) -> (NodeId, Change) {
        let mut gone = Vec::new();
        let (id, new) = self
            .tree
            .upsert_with(&row.path, row.meta, &mut |p, meta, id| {
                gone.push((p.to_string(), meta, id))
            });
        for (p, meta, gone_id) in gone {
            self.suspects.remove(&gone_id);
            if let Some(audit) = &mut self.audit {
                audit.listed_dirs.remove(&gone_id);
            }
            // A file turned directory keeps its node: it is not deleted.
            if self.tree.is_live(gone_id) && self.tree.is_dir(gone_id) && !meta.is_dir {
                continue;
            }
            displaced.push(Change {
                kind: ChangeKind::Delete,
                path: p,
                meta,
                source,
            });
        }
        if self.tree.is_dir(id) {
            // Only files are suspect: a file turned directory is not.
            self.suspects.remove(&id);
        }
        let change = Change {
            kind: if new {
                ChangeKind::Insert
            } else {
                ChangeKind::Update
            },
            path: row.path.clone(),
            meta: row.meta,
            source,
        };
        (id, change)
    }

    fn delete_subtree(
        &mut self,
        path: &str,
        source: Source,
        now: f64,
        tombstone: bool,
    ) -> Vec<Change> {
        let mut removed = Vec::new();
        self.tree.remove(path, &mut |p, meta, id| {
            removed.push((p.to_string(), meta, id))
        });
        let mut changes = Vec::with_capacity(removed.len());
        for (p, meta, id) in removed {
            self.suspects.remove(&id);
            if let Some(audit) = &mut self.audit {
                audit.listed_dirs.remove(&id);
            }
            if tombstone {
                self.add_tombstone(p.clone(), now);
            }
            changes.push(Change {
                kind: ChangeKind::Delete,
                path: p,
                meta,
                source,
            });
        }
        changes
    }

    /// Applies one upsert row from `source` at wall-clock `now`; returns the
    /// applied change, or `None` when arbitration ignored the row. Nodes the
    /// row displaces (the subtree of a directory turned file) are removed
    /// without being reported: [`Self::apply_upsert`] reports them.
    pub fn upsert(&mut self, row: &Upsert, source: Source, now: f64) -> Option<Change> {
        let mut changes = Vec::new();
        self.apply_upsert(row, source, now, &mut changes);
        changes.pop()
    }

    /// Applies one upsert row; appends the deletes of what it displaces and
    /// then its own change to `changes`. Returns `false` when arbitration
    /// ignored the row.
    pub fn apply_upsert(
        &mut self,
        row: &Upsert,
        source: Source,
        now: f64,
        changes: &mut Vec<Change>,
    ) -> bool {
        let Some(change) = self.upsert_inner(row, source, now, changes) else {
            return false;
        };
        changes.push(change);
        true
    }

    fn upsert_inner(
        &mut self,
        row: &Upsert,
        source: Source,
        now: f64,
        displaced: &mut Vec<Change>,
    ) -> Option<Change> {
        if source == Source::Realtime {
            self.clock += 1;
            self.tombstones.remove(&row.path);
            self.blind_additions.remove(&row.path);
            self.blind_deletions.remove(&row.path);
            let (id, change) = self.upsert_change(row, source, displaced);
            self.tree.set_realtime_stamp(id, self.clock);
            self.suspects.remove(&id);
            if row.is_atomic_write == Some(false) {
                self.mark_suspect(id, &row.meta, now, true);
            }
            return Some(change);
        }
        let existing = self.tree.get(&row.path);
        if let Some(deleted_at) = self.tombstone(&row.path, now) {
            if row.meta.mtime > deleted_at {
                self.tombstones.remove(&row.path);
            } else {
                return None;
            }
        }
        let auditing = source == Source::Audit;
        if let Some(id) = existing {
            if auditing {
                self.audit_saw(id, row);
            }
            let current = self.tree.meta(id);
            if current.mtime >= row.meta.mtime && !(auditing && row.audit_skipped) {
                return None;
            }
            if current == row.meta {
                return None;
            }
        } else if auditing {
            let (parent_path, _) = tree::split_parent(&row.path);
            // The agent sends `parent_path` as an absolute disk path; the
            // parent is derived from the row's own relative path instead.
            let parent = self.tree.get(parent_path);
            if let (Some(pm), Some(parent)) = (row.parent_mtime, parent)
                && self.tree.meta(parent).mtime > pm
            {
                return None;
            }
        }
        let (id, change) = self.upsert_change(row, source, displaced);
        if auditing {
            self.audit_saw(id, row);
            if existing.is_none() && !row.meta.is_dir {
                self.add_blind_spot(false, row.path.clone());
            }
        }
        self.mark_suspect(id, &row.meta, now, false);
        Some(change)
    }

    /// Applies one delete row. `observed_at` is when the scan saw the path
    /// missing (the event's `index`), seconds.
    pub fn delete(
        &mut self,
        path: &str,
        source: Source,
        now: f64,
        observed_at: f64,
    ) -> Vec<Change> {
        if source == Source::Realtime {
            self.clock += 1;
            self.blind_additions.remove(path);
            let changes = self.delete_subtree(path, source, now, true);
            if changes.is_empty() {
                // Deleting what we never saw still protects against a stale
                // snapshot row bringing it back (within `max_tombstones`).
                self.add_tombstone(path.to_string(), now);
            }
            return changes;
        }
        if self.is_tombstoned(path, now) {
            return Vec::new();
        }
        let Some(id) = self.tree.get(path) else {
            return Vec::new();
        };
        if self.tree.meta(id).mtime > observed_at
            || self.tree.realtime_stamp(id) > self.audit_start_stamp()
        {
            return Vec::new();
        }
        let changes = self.delete_subtree(path, source, now, false);
        if source == Source::Audit {
            for c in &changes {
                if !c.meta.is_dir {
                    self.add_blind_spot(true, c.path.clone());
                }
            }
        }
        changes
    }

    /// Records that the running audit saw `id`; a directory row without
    /// `audit_skipped` means the audit lists that directory in full.
    fn audit_saw(&mut self, id: NodeId, row: &Upsert) {
        self.tree.set_audit_seen(id, self.audit_cycle);
        if row.meta.is_dir
            && !row.audit_skipped
            && let Some(a) = &mut self.audit
        {
            a.listed_dirs.insert(id);
        }
    }

    fn audit_start_stamp(&self) -> u64 {
        self.audit.as_ref().map_or(u64::MAX, |a| a.started_stamp)
    }

    /// An audit begins (the first audit batch, or the agent's audit start).
    pub fn audit_start(&mut self, now: f64) {
        if self.audit.is_some() {
            return;
        }
        self.audit_cycle += 1;
        self.audit = Some(Audit {
            started_at: now,
            started_stamp: self.clock,
            listed_dirs: HashSet::new(),
        });
    }

    /// The audit ends: purge old tombstones, delete files the audit did not
    /// find in directories it listed in full. Returns the deletions.
    pub fn audit_end(&mut self, now: f64) -> Vec<Change> {
        let Some(audit) = self.audit.take() else {
            return Vec::new();
        };
        self.tombstones.retain(|_, at| *at >= audit.started_at);
        let mut missing = Vec::new();
        for &dir in &audit.listed_dirs {
            for &child in self.tree.children(dir) {
                let unseen = self.tree.audit_seen(child) != self.audit_cycle;
                if unseen && self.untouched_since(child, audit.started_stamp) {
                    missing.push(self.tree.path(child));
                }
            }
        }
        missing.sort();
        let mut changes = Vec::new();
        for path in missing {
            if self.is_tombstoned(&path, now) {
                continue;
            }
            for c in self.delete_subtree(&path, Source::Audit, now, false) {
                if !c.meta.is_dir {
                    self.add_blind_spot(true, c.path.clone());
                }
                changes.push(c);
            }
        }
        self.audit_cycles_done += 1;
        self.last_audit_finished_at = now;
        changes
    }

    /// Whether nothing in the subtree of `id` was changed by realtime after
    /// `stamp` (a directory an audit did not see is gone with its subtree,
    /// unless realtime put something in it since the audit began).
    fn untouched_since(&self, id: NodeId, stamp: u64) -> bool {
        let mut stack = vec![id];
        while let Some(n) = stack.pop() {
            if self.tree.realtime_stamp(n) > stamp {
                return false;
            }
            stack.extend_from_slice(self.tree.children(n));
        }
        true
    }

    /// Sentinel feedback on a suspect path: a stable old file stops being
    /// suspect; a changed one is updated and stays suspect; a missing one is
    /// deleted. Feedback on anything else (a path that is not a suspect
    /// file) is ignored and counted: the sentinel checks what it was asked
    /// to, and may not delete the rest of the tree.
    pub fn sentinel_feedback(&mut self, path: &str, feedback: Feedback, now: f64) -> Vec<Change> {
        let Some(id) = self
            .tree
            .get(path)
            .filter(|&id| !self.tree.is_dir(id) && self.suspects.contains_key(&id))
        else {
            self.evictions.feedback_ignored += 1;
            return Vec::new();
        };
        match feedback {
            Feedback::Missing => self.delete_subtree(path, Source::Realtime, now, true),
            Feedback::Exists(meta) => {
                let current = self.tree.meta(id);
                if current.mtime == meta.mtime && current.size == meta.size {
                    if now - meta.mtime >= self.config.hot_window_secs {
                        self.suspects.remove(&id);
                    }
                    Vec::new()
                } else {
                    self.tree.upsert(path, meta);
                    self.suspects.insert(id, now + self.config.hot_window_secs);
                    vec![Change {
                        kind: ChangeKind::Update,
                        path: path.to_string(),
                        meta,
                        source: Source::Realtime,
                    }]
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
