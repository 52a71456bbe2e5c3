//! The snapshot walk and the rows it makes: what is left out ([`Filter`]),
//! one row per entry in the Fustor shape, and a walk on a thread of its own
//! that hands batches over a small bounded channel (so memory holds a few
//! batches, whatever the size of the tree).

use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use serde_json::{Value, json};
use tokio::sync::mpsc;

/// What the agent leaves out.
#[derive(Debug, Clone)]
pub struct Filter {
    ignore: globset::GlobSet,
    max_depth: Option<usize>,
    follow_symlinks: bool,
}

impl Filter {
    /// Globs (relative to the root), a deepest level and whether links are
    /// followed; says which glob is bad.
    pub fn new(
        globs: &[String],
        max_depth: Option<usize>,
        follow_symlinks: bool,
    ) -> anyhow::Result<Self> {
        let mut set = globset::GlobSetBuilder::new();
        for g in globs {
            let glob = globset::GlobBuilder::new(g.trim_start_matches('/'))
                .literal_separator(false)
                .build()
                .map_err(|e| anyhow::anyhow!("--ignore `{g}`: {e}"))?;
            set.add(glob);
        }
        Ok(Self {
            ignore: set.build()?,
            max_depth,
            follow_symlinks,
        })
    }

    /// Whether `rel` (relative, no leading `/`) at `depth` is left out.
    pub fn skips(&self, rel: &str, depth: usize) -> bool {
        self.max_depth.is_some_and(|m| depth > m) || (!rel.is_empty() && self.ignore.is_match(rel))
    }

    /// Whether symbolic links are followed.
    pub fn follows(&self) -> bool {
        self.follow_symlinks
    }
}

/// `path` relative to `root` in the wire's form (`/`, `/a/b`), if it is
/// below the root and valid UTF-8.
pub fn wire_path(root: &Path, path: &Path) -> Option<String> {
    let rel = path.strip_prefix(root).ok()?;
    let mut out = String::new();
    for part in rel.components() {
        out.push('/');
        out.push_str(part.as_os_str().to_str()?);
    }
    if out.is_empty() {
        out.push('/');
    }
    Some(out)
}

fn secs(t: std::io::Result<std::time::SystemTime>) -> f64 {
    t.ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0.0, |d| d.as_secs_f64())
}

/// The upsert row of `path` (wire path `wire`) with metadata `meta`.
pub fn row(wire: &str, meta: &std::fs::Metadata) -> Value {
    let name = wire.rsplit('/').next().unwrap_or("");
    let mtime = secs(meta.modified());
    json!({
        "path": wire,
        "file_name": name,
        "size": meta.len(),
        "modified_time": mtime,
        "created_time": secs(meta.created()).max(0.0),
        "is_directory": meta.is_dir(),
    })
}

/// Rows of a walk, already written as JSON (the objects, comma-separated,
/// without brackets): a walk of millions of entries builds no JSON values.
#[derive(Debug, Default)]
pub struct Rows {
    /// The rows' JSON.
    pub json: Vec<u8>,
    /// How many.
    pub n: usize,
}

impl Rows {
    /// Empty, with room for about `n` rows.
    fn with_capacity(n: usize) -> Self {
        Self {
            json: Vec::with_capacity(n * 160),
            n: 0,
        }
    }

    /// Appends the row of `wire` with `meta`; `extra` writes more fields
    /// (each starting with a comma) before the object closes.
    fn push(&mut self, wire: &str, meta: &std::fs::Metadata, extra: impl FnOnce(&mut Vec<u8>)) {
        use std::io::Write;
        let out = &mut self.json;
        if self.n > 0 {
            out.push(b',');
        }
        self.n += 1;
        let name = wire.rsplit('/').next().unwrap_or("");
        out.extend_from_slice(b"{\"path\":");
        json_str(out, wire);
        out.extend_from_slice(b",\"file_name\":");
        json_str(out, name);
        let _ = write!(out, ",\"size\":{},\"modified_time\":", meta.len());
        json_f64(out, secs(meta.modified()));
        out.extend_from_slice(b",\"created_time\":");
        json_f64(out, secs(meta.created()).max(0.0));
        out.extend_from_slice(if meta.is_dir() {
            b",\"is_directory\":true"
        } else {
            b",\"is_directory\":false"
        });
        extra(out);
        out.push(b'}');
    }

    /// The rows as values.
    #[cfg(test)]
    pub fn values(&self) -> Vec<Value> {
        let mut list = Vec::with_capacity(self.n + 2);
        list.push(b'[');
        list.extend_from_slice(&self.json);
        list.push(b']');
        serde_json::from_slice(&list).unwrap_or_default()
    }
}

/// A JSON string, escaped.
pub fn json_str(out: &mut Vec<u8>, s: &str) {
    // Writing into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, s);
}

/// A JSON number (`0` for what JSON cannot hold).
pub fn json_f64(out: &mut Vec<u8>, v: f64) {
    if v.is_finite() {
        let _ = serde_json::to_writer(&mut *out, &v);
    } else {
        out.push(b'0');
    }
}

/// Directory mtimes seen by the last audit: an audit lists the files of a
/// directory only when its mtime moved.
pub type MtimeCache = std::collections::HashMap<String, f64>;

/// Walks `root` on a thread of its own; batches of at most `batch` rows
/// come out of the receiver, which ends when the walk does. Unreadable
/// entries are logged (at most 100 lines per walk) and skipped.
pub fn snapshot(root: PathBuf, filter: Filter, batch: usize) -> mpsc::Receiver<Rows> {
    walk(root.clone(), root, true, filter, batch, None).0
}

/// An on-demand scan: like [`snapshot`], from `start` (a directory or a
/// file below `root`), with its subdirectories when `recursive` and its
/// direct entries only otherwise.
pub fn scan(
    root: PathBuf,
    start: PathBuf,
    recursive: bool,
    filter: Filter,
    batch: usize,
) -> mpsc::Receiver<Rows> {
    walk(root, start, recursive, filter, batch, None).0
}

/// The depth of a wire path below the root (the root is 0).
pub fn depth(wire: &str) -> usize {
    if wire == "/" {
        0
    } else {
        wire.matches('/').count()
    }
}

/// An audit walk: like [`snapshot`], but a directory whose mtime is the
/// one in `cache` is sent with `audit_skipped` and its files are not
/// listed (its subdirectories are still walked); file rows carry their
/// `parent_path` and `parent_mtime`. The cache comes back, updated, when
/// the walk ends.
pub fn audit(
    root: PathBuf,
    filter: Filter,
    batch: usize,
    cache: MtimeCache,
) -> (
    mpsc::Receiver<Rows>,
    tokio::sync::oneshot::Receiver<MtimeCache>,
) {
    let (rows, cache) = walk(root.clone(), root, true, filter, batch, Some(cache));
    (rows, cache.expect("an audit walk returns its cache"))
}

type Walk = (
    mpsc::Receiver<Rows>,
    Option<tokio::sync::oneshot::Receiver<MtimeCache>>,
);

/// A directory waiting to be listed.
struct Pending {
    path: PathBuf,
    /// Its wire path.
    wire: String,
    /// Its depth below the root.
    depth: usize,
    /// Its mtime (seconds).
    mtime: f64,
}

/// What one walk does with what it finds: rows into batches, the audit's
/// mtime cache, the log of what it skipped.
struct Walker {
    filter: Filter,
    batch: usize,
    rows: Rows,
    tx: mpsc::Sender<Rows>,
    /// The previous audit's directory mtimes (audits only).
    old: Option<MtimeCache>,
    next_cache: MtimeCache,
    logged: usize,
    /// Directories already listed, by device and inode, when links are
    /// followed (a link loop is listed once).
    seen: std::collections::HashSet<(u64, u64)>,
}

impl Walker {
    fn skip(&mut self, why: std::fmt::Arguments) {
        if self.logged < 100 {
            tracing::warn!("skipped during the walk: {why}");
            self.logged += 1;
        }
    }

    /// Adds a row; `false` when the receiver is gone (stop walking).
    fn row(
        &mut self,
        wire: &str,
        meta: &std::fs::Metadata,
        parent: Option<&Pending>,
        parent_skipped: bool,
    ) -> bool {
        match self.old.as_ref() {
            None => self.rows.push(wire, meta, |_| {}),
            Some(old) => {
                let mtime = secs(meta.modified());
                if meta.is_dir() {
                    self.next_cache.insert(wire.to_string(), mtime);
                    let unchanged = old.get(wire) == Some(&mtime);
                    self.rows.push(wire, meta, |out| {
                        if unchanged {
                            out.extend_from_slice(b",\"audit_skipped\":true");
                        }
                    });
                } else if parent_skipped {
                    return true;
                } else {
                    self.rows.push(wire, meta, |out| {
                        if let Some(p) = parent {
                            out.extend_from_slice(b",\"parent_mtime\":");
                            json_f64(out, p.mtime);
                            out.extend_from_slice(b",\"parent_path\":");
                            json_str(out, &p.wire);
                        }
                    });
                }
            }
        }
        if self.rows.n >= self.batch {
            let full = std::mem::replace(&mut self.rows, Rows::with_capacity(self.batch));
            return self.tx.blocking_send(full).is_ok();
        }
        true
    }

    /// Whether directory `meta` was listed already (links followed only).
    fn listed_before(&mut self, meta: &std::fs::Metadata) -> bool {
        use std::os::unix::fs::MetadataExt;
        self.filter.follows() && !self.seen.insert((meta.dev(), meta.ino()))
    }

    /// Walks from `start`: its row, then each directory's entries before
    /// what is below them (parents always before children), with an
    /// explicit stack. Entries are looked at relative to their directory's
    /// open handle (no path lookup per file) and wire paths are built as it
    /// descends. `deepest`: the last depth listed.
    fn walk(&mut self, root: &Path, start: PathBuf, deepest: Option<usize>) {
        let Some(wire) = wire_path(root, &start) else {
            self.skip(format_args!("{}: not UTF-8", start.display()));
            return;
        };
        let meta = if self.filter.follows() {
            std::fs::metadata(&start)
        } else {
            std::fs::symlink_metadata(&start)
        };
        let meta = match meta {
            Ok(m) => m,
            Err(e) => return self.skip(format_args!("{}: {e}", start.display())),
        };
        let depth = depth(&wire);
        if !self.row(&wire, &meta, None, false) || !meta.is_dir() {
            return;
        }
        self.listed_before(&meta);
        let mut stack = vec![Pending {
            path: start,
            wire,
            depth,
            mtime: secs(meta.modified()),
        }];
        while let Some(dir) = stack.pop() {
            let entries = match std::fs::read_dir(&dir.path) {
                Ok(e) => e,
                Err(e) => {
                    self.skip(format_args!("{}: {e}", dir.path.display()));
                    continue;
                }
            };
            let files_skipped = self
                .old
                .as_ref()
                .is_some_and(|old| old.get(&dir.wire) == Some(&dir.mtime));
            // Subdirectories are listed only above the deepest level.
            let descend = deepest.is_none_or(|d| dir.depth + 1 < d);
            let below = stack.len();
            for entry in entries {
                let entry = match entry {
                    Ok(e) => e,
                    Err(e) => {
                        self.skip(format_args!("{}: {e}", dir.path.display()));
                        continue;
                    }
                };
                let name = entry.file_name();
                let Some(name) = name.to_str() else {
                    self.skip(format_args!("{}: not UTF-8", entry.path().display()));
                    continue;
                };
                let mut wire = String::with_capacity(dir.wire.len() + name.len() + 1);
                wire.push_str(&dir.wire);
                if dir.wire != "/" {
                    wire.push('/');
                }
                wire.push_str(name);
                if self.filter.skips(&wire[1..], dir.depth + 1) {
                    continue;
                }
                // `DirEntry::metadata` looks at the entry relative to its
                // directory's handle, without following a link.
                let meta = if self.filter.follows() {
                    std::fs::metadata(entry.path())
                } else {
                    entry.metadata()
                };
                let meta = match meta {
                    Ok(m) => m,
                    Err(e) => {
                        self.skip(format_args!("{}: {e}", entry.path().display()));
                        continue;
                    }
                };
                if !self.row(&wire, &meta, Some(&dir), files_skipped) {
                    return;
                }
                if meta.is_dir() && descend && !self.listed_before(&meta) {
                    stack.push(Pending {
                        path: entry.path(),
                        wire,
                        depth: dir.depth + 1,
                        mtime: secs(meta.modified()),
                    });
                }
            }
            // Depth first, in the order the directory listed them.
            stack[below..].reverse();
        }
    }
}

/// Walks `start` (below `root`; rows carry paths relative to `root`) on a
/// thread of its own: all of it when `recursive`, else its direct entries.
fn walk(
    root: PathBuf,
    start: PathBuf,
    recursive: bool,
    filter: Filter,
    batch: usize,
    cache: Option<MtimeCache>,
) -> Walk {
    let (done_tx, done_rx) = match cache.is_some() {
        true => {
            let (tx, rx) = tokio::sync::oneshot::channel();
            (Some(tx), Some(rx))
        }
        false => (None, None),
    };
    // Two batches ahead of the sender: enough to keep it busy.
    let (tx, rx) = mpsc::channel(2);
    std::thread::Builder::new()
        .name("weir-agent-walk".into())
        .spawn(move || {
            let deepest = if recursive {
                None
            } else {
                wire_path(&root, &start).map(|w| depth(&w) + 1)
            };
            let mut w = Walker {
                filter,
                batch,
                rows: Rows::with_capacity(batch),
                tx,
                old: cache,
                next_cache: MtimeCache::new(),
                logged: 0,
                seen: Default::default(),
            };
            w.walk(&root, start, deepest);
            let rows = std::mem::take(&mut w.rows);
            if rows.n > 0 && w.tx.blocking_send(rows).is_err() {
                return;
            }
            if let Some(done) = done_tx {
                let _ = done.send(w.next_cache);
            }
        })
        .ok();
    (rx, done_rx)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_filters_and_rows() {
        let root = Path::new("/data");
        assert_eq!(wire_path(root, Path::new("/data")).as_deref(), Some("/"));
        assert_eq!(
            wire_path(root, Path::new("/data/a/b.txt")).as_deref(),
            Some("/a/b.txt")
        );
        assert_eq!(wire_path(root, Path::new("/elsewhere")), None);
        let f = Filter::new(&["**/*.tmp".into(), ".git".into()], Some(2), false).unwrap();
        assert!(f.skips("x/y.tmp", 2));
        assert!(f.skips(".git", 1));
        assert!(f.skips("a/b/c", 3), "deeper than max_depth");
        assert!(!f.skips("a/b", 2));
        assert!(!f.skips("", 0), "the root is never left out");
        let bad = Filter::new(&["a[".into()], None, false)
            .unwrap_err()
            .to_string();
        assert!(bad.contains("--ignore `a[`"), "{bad}");
    }

    #[tokio::test]
    async fn the_walk_streams_every_entry_in_batches() {
        let dir = tempfile::tempdir().unwrap();
        for d in 0..3 {
            std::fs::create_dir(dir.path().join(format!("d{d}"))).unwrap();
            for f in 0..10 {
                std::fs::write(dir.path().join(format!("d{d}/f{f}")), b"x").unwrap();
            }
        }
        std::fs::write(dir.path().join("skip.tmp"), b"x").unwrap();
        let filter = Filter::new(&["*.tmp".into()], None, false).unwrap();
        let mut rx = snapshot(dir.path().canonicalize().unwrap(), filter, 7);
        let mut rows = Vec::new();
        while let Some(b) = rx.recv().await {
            assert!(b.n <= 7);
            let values = b.values();
            assert_eq!(values.len(), b.n, "the JSON holds n rows");
            rows.extend(values);
        }
        assert_eq!(rows.len(), 1 + 3 + 30, "root, dirs, files; not the .tmp");
        let f = rows.iter().find(|r| r["path"] == "/d1/f3").unwrap();
        assert_eq!(
            (f["size"].as_u64(), f["is_directory"].as_bool()),
            (Some(1), Some(false))
        );
        assert_eq!(f["file_name"], "f3");
    }

    #[tokio::test]
    async fn a_scan_walks_one_subtree_or_one_level_of_it() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().canonicalize().unwrap();
        std::fs::create_dir_all(root.join("a/b/c")).unwrap();
        std::fs::write(root.join("a/f"), b"x").unwrap();
        std::fs::write(root.join("a/b/c/g"), b"xy").unwrap();
        std::fs::write(root.join("h"), b"x").unwrap();
        let filter = Filter::new(&[], Some(3), false).unwrap();
        let all = collect(&mut scan(
            root.clone(),
            root.join("a"),
            true,
            filter.clone(),
            2,
        ))
        .await;
        // max_depth 3 counts from the root, not from the scan's start.
        assert_eq!(paths(all), ["/a", "/a/b", "/a/b/c", "/a/f"]);
        let one = collect(&mut scan(
            root.clone(),
            root.join("a"),
            false,
            filter.clone(),
            2,
        ))
        .await;
        assert_eq!(paths(one), ["/a", "/a/b", "/a/f"]);
        let file = collect(&mut scan(root.clone(), root.join("h"), true, filter, 2)).await;
        assert_eq!(paths(file), ["/h"]);
    }

    #[tokio::test]
    async fn links_are_rows_unless_followed_and_a_loop_is_listed_once() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().canonicalize().unwrap();
        std::fs::create_dir_all(root.join("a/b")).unwrap();
        std::fs::write(root.join("a/b/f"), b"x").unwrap();
        std::os::unix::fs::symlink(root.join("a"), root.join("a/b/up")).unwrap();
        let plain = Filter::new(&[], None, false).unwrap();
        let rows = collect(&mut snapshot(root.clone(), plain, 10)).await;
        assert_eq!(paths(rows), ["/", "/a", "/a/b", "/a/b/f", "/a/b/up"]);
        let follow = Filter::new(&[], None, true).unwrap();
        let rows = collect(&mut snapshot(root.clone(), follow, 10)).await;
        // The link is a directory row; what it leads to was listed already.
        assert_eq!(paths(rows), ["/", "/a", "/a/b", "/a/b/f", "/a/b/up"]);
    }

    /// The rows' paths, sorted.
    fn paths(rows: Vec<Value>) -> Vec<String> {
        let mut p: Vec<String> = rows
            .iter()
            .map(|r| r["path"].as_str().unwrap().to_string())
            .collect();
        p.sort();
        p
    }

    async fn collect(rx: &mut mpsc::Receiver<Rows>) -> Vec<Value> {
        let mut rows = Vec::new();
        while let Some(b) = rx.recv().await {
            rows.extend(b.values());
        }
        rows
    }

    #[tokio::test]
    async fn an_audit_lists_only_the_files_of_directories_that_changed() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().canonicalize().unwrap();
        for d in ["a", "b"] {
            std::fs::create_dir(root.join(d)).unwrap();
            std::fs::write(root.join(d).join("f"), b"x").unwrap();
        }
        let filter = Filter::new(&[], None, false).unwrap();
        let (mut rx, done) = audit(root.clone(), filter.clone(), 100, MtimeCache::new());
        let first = collect(&mut rx).await;
        let cache = done.await.unwrap();
        assert_eq!(first.len(), 5, "root, two directories, two files");
        let f = first.iter().find(|r| r["path"] == "/a/f").unwrap();
        assert_eq!(f["parent_path"], "/a");
        assert!(f["parent_mtime"].as_f64().unwrap() > 0.0);
        // Nothing moved: every directory is skipped and no file listed.
        let (mut rx, done) = audit(root.clone(), filter.clone(), 100, cache);
        let second = collect(&mut rx).await;
        assert_eq!(second.len(), 3, "{second:?}");
        assert!(second.iter().all(|r| r["audit_skipped"] == true));
        // A new file in b: b is listed again, a is not.
        let cache = done.await.unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::write(root.join("b/g"), b"y").unwrap();
        let (mut rx, _) = audit(root, filter, 100, cache);
        let mut third: Vec<String> = collect(&mut rx)
            .await
            .iter()
            .filter(|r| r["audit_skipped"] != true)
            .map(|r| r["path"].as_str().unwrap().to_string())
            .collect();
        third.sort();
        assert_eq!(third, ["/b", "/b/f", "/b/g"].map(String::from), "{third:?}");
    }
}
