//! A model test of the index: random sequences of realtime, snapshot, audit,
//! sentinel and delete rows are applied both to [`FsIndex`] and to a
//! reference model that states the arbitration rules plainly (a map from
//! full path to metadata, no hash tree, no node ids). After every step the
//! tree, the blind spots and the tombstones equal the model's, and the
//! index's own invariants hold.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use proptest::prelude::*;
use weir_core::index::tree::split_parent;
use weir_core::index::{Feedback, FsIndex, IndexConfig, Meta, ROOT, Source, Upsert};

const HOT: f64 = 30.0;
const TTL: f64 = 100.0;
const T0: f64 = 1_000_000.0;

/// What the model keeps per path.
#[derive(Debug, Clone, PartialEq)]
struct Node {
    meta: Meta,
    /// Logical time of the last realtime change (0: never).
    stamp: u64,
    /// Audit cycle that last saw it.
    seen: u32,
}

struct Audit {
    started_at: f64,
    started_stamp: u64,
    listed: BTreeSet<String>,
}

/// The rules, stated over full paths.
struct Model {
    nodes: BTreeMap<String, Node>,
    tombstones: HashMap<String, f64>,
    suspects: HashMap<String, f64>,
    additions: BTreeSet<String>,
    deletions: BTreeSet<String>,
    audit: Option<Audit>,
    cycle: u32,
    clock: u64,
}

fn dir_meta() -> Meta {
    Meta {
        is_dir: true,
        size: 0,
        mtime: 0.0,
        ctime: 0.0,
    }
}

fn is_below(path: &str, dir: &str) -> bool {
    if dir == "/" {
        path != "/"
    } else {
        path.len() > dir.len() && path.starts_with(dir) && path.as_bytes()[dir.len()] == b'/'
    }
}

impl Model {
    fn new() -> Self {
        let mut nodes = BTreeMap::new();
        nodes.insert(
            "/".to_string(),
            Node {
                meta: dir_meta(),
                stamp: 0,
                seen: 0,
            },
        );
        Self {
            nodes,
            tombstones: HashMap::new(),
            suspects: HashMap::new(),
            additions: BTreeSet::new(),
            deletions: BTreeSet::new(),
            audit: None,
            cycle: 0,
            clock: 0,
        }
    }

    /// Drops what is kept about a node that is gone (or no longer a file).
    fn forget(&mut self, path: &str) {
        self.suspects.remove(path);
        if let Some(a) = &mut self.audit {
            a.listed.remove(path);
        }
    }

    /// Removes `path` and what is below it (the root itself stays); returns
    /// the removed paths with their metadata.
    fn remove(&mut self, path: &str) -> Vec<(String, Meta)> {
        let gone: Vec<String> = self
            .nodes
            .keys()
            .filter(|p| is_below(p, path) || (p.as_str() == path && path != "/"))
            .cloned()
            .collect();
        let mut out = Vec::new();
        for p in gone {
            let node = self.nodes.remove(&p).expect("listed");
            self.forget(&p);
            out.push((p, node.meta));
        }
        out
    }

    /// The tree's upsert: parents created as zeroed directories, a file in
    /// the way turned directory, a directory turned file loses its subtree.
    fn put(&mut self, path: &str, meta: Meta) {
        if path == "/" {
            let root = self.nodes.get_mut("/").expect("root");
            root.meta = Meta {
                is_dir: true,
                ..meta
            };
            return;
        }
        if let Some(old) = self.nodes.get(path).cloned() {
            if old.meta.is_dir && !meta.is_dir {
                let below: Vec<String> = self
                    .nodes
                    .keys()
                    .filter(|p| is_below(p, path))
                    .cloned()
                    .collect();
                for p in below {
                    self.nodes.remove(&p);
                    self.forget(&p);
                }
            }
            self.nodes.get_mut(path).expect("present").meta = meta;
            if meta.is_dir {
                self.suspects.remove(path);
            }
            return;
        }
        // Missing ancestors, from the nearest existing one down.
        let mut missing = vec![path.to_string()];
        let mut above = path.to_string();
        loop {
            let (parent, _) = split_parent(&above);
            let parent = parent.to_string();
            if self.nodes.contains_key(&parent) {
                let node = self.nodes.get_mut(&parent).expect("present");
                if !node.meta.is_dir {
                    node.meta.is_dir = true;
                    self.forget(&parent);
                }
                break;
            }
            missing.push(parent.clone());
            above = parent;
        }
        while let Some(p) = missing.pop() {
            let m = if missing.is_empty() { meta } else { dir_meta() };
            self.nodes.insert(
                p,
                Node {
                    meta: m,
                    stamp: 0,
                    seen: 0,
                },
            );
        }
    }

    fn tombstone(&self, path: &str, now: f64) -> Option<f64> {
        self.tombstones
            .get(path)
            .copied()
            .filter(|&at| now - at < TTL)
    }

    fn audit_saw(&mut self, row: &Upsert) {
        let cycle = self.cycle;
        if let Some(n) = self.nodes.get_mut(&row.path) {
            n.seen = cycle;
        }
        if row.meta.is_dir
            && !row.audit_skipped
            && let Some(a) = &mut self.audit
        {
            a.listed.insert(row.path.clone());
        }
    }

    fn upsert(&mut self, row: &Upsert, source: Source, now: f64) {
        if source == Source::Realtime {
            self.clock += 1;
            self.tombstones.remove(&row.path);
            self.additions.remove(&row.path);
            self.deletions.remove(&row.path);
            self.put(&row.path, row.meta);
            let clock = self.clock;
            self.nodes.get_mut(&row.path).expect("put").stamp = clock;
            self.suspects.remove(&row.path);
            if row.is_atomic_write == Some(false) && !self.nodes[&row.path].meta.is_dir {
                self.suspects.insert(row.path.clone(), now + HOT);
            }
            return;
        }
        let existing = self.nodes.get(&row.path).cloned();
        if let Some(at) = self.tombstone(&row.path, now) {
            if row.meta.mtime > at {
                self.tombstones.remove(&row.path);
            } else {
                return;
            }
        }
        let auditing = source == Source::Audit;
        if let Some(current) = &existing {
            if auditing {
                self.audit_saw(row);
            }
            if current.meta.mtime >= row.meta.mtime && !(auditing && row.audit_skipped) {
                return;
            }
            if current.meta == row.meta {
                return;
            }
        } else if auditing {
            let (parent, _) = split_parent(&row.path);
            if let (Some(pm), Some(p)) = (row.parent_mtime, self.nodes.get(parent))
                && p.meta.mtime > pm
            {
                return;
            }
        }
        self.put(&row.path, row.meta);
        if auditing {
            self.audit_saw(row);
            if existing.is_none() && !row.meta.is_dir {
                self.additions.insert(row.path.clone());
            }
        }
        if !self.nodes[&row.path].meta.is_dir && row.meta.mtime + HOT > now {
            self.suspects.insert(row.path.clone(), row.meta.mtime + HOT);
        }
    }

    fn delete(&mut self, path: &str, source: Source, now: f64, observed_at: f64) {
        if source == Source::Realtime {
            self.clock += 1;
            self.additions.remove(path);
            let removed = self.remove(path);
            if removed.is_empty() {
                self.tombstones.insert(path.to_string(), now);
            }
            for (p, _) in removed {
                self.tombstones.insert(p, now);
            }
            return;
        }
        if self.tombstone(path, now).is_some() {
            return;
        }
        let Some(node) = self.nodes.get(path) else {
            return;
        };
        let audit_stamp = self.audit.as_ref().map_or(u64::MAX, |a| a.started_stamp);
        if node.meta.mtime > observed_at || node.stamp > audit_stamp {
            return;
        }
        for (p, meta) in self.remove(path) {
            if source == Source::Audit && !meta.is_dir {
                self.deletions.insert(p);
            }
        }
    }

    fn audit_start(&mut self, now: f64) {
        if self.audit.is_some() {
            return;
        }
        self.cycle += 1;
        self.audit = Some(Audit {
            started_at: now,
            started_stamp: self.clock,
            listed: BTreeSet::new(),
        });
    }

    fn audit_end(&mut self, now: f64) {
        let Some(audit) = self.audit.take() else {
            return;
        };
        self.tombstones.retain(|_, at| *at >= audit.started_at);
        let mut missing = BTreeSet::new();
        for dir in &audit.listed {
            for (p, n) in &self.nodes {
                let child = is_below(p, dir) && split_parent(p).0 == dir.as_str();
                // Untouched: nothing at or below it changed by realtime
                // since the audit began.
                let untouched = self
                    .nodes
                    .iter()
                    .filter(|(q, _)| *q == p || is_below(q, p))
                    .all(|(_, m)| m.stamp <= audit.started_stamp);
                if child && n.seen != self.cycle && untouched {
                    missing.insert(p.clone());
                }
            }
        }
        for p in missing {
            if self.tombstone(&p, now).is_some() {
                continue;
            }
            for (gone, meta) in self.remove(&p) {
                if !meta.is_dir {
                    self.deletions.insert(gone);
                }
            }
        }
    }

    fn sentinel(&mut self, path: &str, feedback: Feedback, now: f64) {
        let Some(node) = self.nodes.get(path).cloned() else {
            return;
        };
        if node.meta.is_dir || !self.suspects.contains_key(path) {
            return;
        }
        match feedback {
            Feedback::Missing => {
                for (p, _) in self.remove(path) {
                    self.tombstones.insert(p, now);
                }
            }
            Feedback::Exists(meta) => {
                if node.meta.mtime == meta.mtime && node.meta.size == meta.size {
                    if now - meta.mtime >= HOT {
                        self.suspects.remove(path);
                    }
                } else {
                    self.put(path, meta);
                    self.suspects.insert(path.to_string(), now + HOT);
                }
            }
        }
    }
}

/// The index's tree as path -> metadata.
fn tree_of(ix: &FsIndex) -> BTreeMap<String, Meta> {
    let t = ix.tree();
    let mut out = BTreeMap::new();
    let mut stack = vec![ROOT];
    while let Some(id) = stack.pop() {
        out.insert(t.path(id), t.meta(id));
        stack.extend_from_slice(t.children(id));
    }
    out
}

#[derive(Debug, Clone)]
enum Step {
    Upsert(Source, Upsert),
    Delete(Source, String, f64),
    AuditStart,
    AuditEnd,
    Sentinel(String, Option<(u64, f64)>),
    Wait(f64),
}

fn path() -> impl Strategy<Value = String> {
    prop::collection::vec(prop::sample::select(vec!["a", "b", "c"]), 0..4).prop_map(|s| {
        if s.is_empty() {
            "/".to_string()
        } else {
            format!("/{}", s.join("/"))
        }
    })
}

fn source() -> impl Strategy<Value = Source> {
    prop::sample::select(vec![Source::Realtime, Source::Snapshot, Source::Audit])
}

/// Times around the present, so that hot windows, tombstone lifetimes and
/// mtime comparisons all come into play.
fn time() -> impl Strategy<Value = f64> {
    prop::sample::select(vec![0.0, T0 - 200.0, T0 - 50.0, T0 - 10.0, T0, T0 + 5.0])
}

fn step() -> impl Strategy<Value = Step> {
    let upsert = (
        source(),
        path(),
        any::<bool>(),
        0u64..4,
        time(),
        prop::option::of(any::<bool>()),
        any::<bool>(),
        prop::option::of(time()),
    )
        .prop_map(|(s, path, is_dir, size, mtime, atomic, skipped, pm)| {
            Step::Upsert(
                s,
                Upsert {
                    path,
                    meta: Meta {
                        is_dir,
                        size,
                        mtime,
                        ctime: mtime,
                    },
                    is_atomic_write: atomic,
                    audit_skipped: skipped,
                    parent_mtime: pm,
                },
            )
        });
    prop_oneof![
        6 => upsert,
        3 => (source(), path(), time()).prop_map(|(s, p, t)| Step::Delete(s, p, t)),
        1 => Just(Step::AuditStart),
        1 => Just(Step::AuditEnd),
        2 => (path(), prop::option::of((0u64..4, time()))).prop_map(|(p, f)| Step::Sentinel(p, f)),
        1 => prop::sample::select(vec![1.0, 20.0, 60.0]).prop_map(Step::Wait),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    #[test]
    fn the_index_follows_the_model(steps in prop::collection::vec(step(), 1..60)) {
        let mut ix = FsIndex::new(IndexConfig {
            hot_window_secs: HOT,
            tombstone_ttl_secs: TTL,
            max_tombstones: 1 << 20,
            max_blind_spots: 1 << 20,
        });
        let mut model = Model::new();
        let mut now = T0;
        for (i, step) in steps.iter().enumerate() {
            match step {
                Step::Upsert(s, row) => {
                    ix.upsert(row, *s, now);
                    model.upsert(row, *s, now);
                }
                Step::Delete(s, p, observed) => {
                    ix.delete(p, *s, now, *observed);
                    model.delete(p, *s, now, *observed);
                }
                Step::AuditStart => {
                    ix.audit_start(now);
                    model.audit_start(now);
                }
                Step::AuditEnd => {
                    ix.audit_end(now);
                    model.audit_end(now);
                }
                Step::Sentinel(p, found) => {
                    let feedback = match found {
                        None => Feedback::Missing,
                        Some((size, mtime)) => Feedback::Exists(Meta {
                            is_dir: false,
                            size: *size,
                            mtime: *mtime,
                            ctime: *mtime,
                        }),
                    };
                    ix.sentinel_feedback(p, feedback.clone(), now);
                    model.sentinel(p, feedback, now);
                }
                Step::Wait(secs) => now += secs,
            }
            let expected: BTreeMap<String, Meta> =
                model.nodes.iter().map(|(p, n)| (p.clone(), n.meta)).collect();
            prop_assert_eq!(tree_of(&ix), expected, "tree after step {}: {:?}", i, step);
            prop_assert_eq!(ix.blind_additions(), &model.additions, "additions after step {}", i);
            prop_assert_eq!(ix.blind_deletions(), &model.deletions, "deletions after step {}", i);
            for p in model.tombstones.keys() {
                prop_assert_eq!(ix.is_tombstoned(p, now), model.tombstone(p, now).is_some(), "tombstone {} after step {}", p, i);
            }
            if let Err(broken) = ix.check() {
                prop_assert!(false, "invariant after step {}: {}", i, broken);
            }
        }
    }
}
