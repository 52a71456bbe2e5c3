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

/// Walks `start` (below `root`; rows carry paths relative to `root`).
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
    let mut cache = cache;
    let (tx, rx) = mpsc::channel(4);
    std::thread::Builder::new()
        .name("weir-agent-walk".into())
        .spawn(move || {
            let mut rows = Rows::with_capacity(batch);
            let mut logged = 0;
            let mut next_cache = MtimeCache::new();
            // Directories whose files are not listed (unchanged since the
            // last audit).
            let mut skipped = std::collections::HashSet::new();
            let walk = walkdir::WalkDir::new(&start)
                .follow_links(filter.follows())
                .max_depth(if recursive { usize::MAX } else { 1 })
                .into_iter()
                .filter_entry(|e| {
                    let rel = wire_path(&root, e.path()).unwrap_or_default();
                    !filter.skips(rel.trim_start_matches('/'), depth(&rel))
                });
            for entry in walk {
                let (wire, meta) = match entry.map_err(|e| e.to_string()).and_then(|e| {
                    let wire = wire_path(&root, e.path())
                        .ok_or_else(|| format!("{}: not UTF-8", e.path().display()))?;
                    let meta = e.metadata().map_err(|err| err.to_string())?;
                    Ok((wire, meta))
                }) {
                    Ok(x) => x,
                    Err(why) => {
                        if logged < 100 {
                            tracing::warn!("skipped during the walk: {why}");
                            logged += 1;
                        }
                        continue;
                    }
                };
                match cache.as_mut() {
                    None => rows.push(&wire, &meta, |_| {}),
                    Some(old) => {
                        let mtime = secs(meta.modified());
                        let parent = match wire.rsplit_once('/') {
                            Some(("", _)) => "/",
                            Some((p, _)) => p,
                            None => "",
                        };
                        if meta.is_dir() {
                            next_cache.insert(wire.clone(), mtime);
                            let unchanged = old.get(&wire) == Some(&mtime);
                            if unchanged {
                                skipped.insert(wire.clone());
                            }
                            rows.push(&wire, &meta, |out| {
                                if unchanged {
                                    out.extend_from_slice(b",\"audit_skipped\":true");
                                }
                            });
                        } else if skipped.contains(parent) {
                            continue;
                        } else {
                            let parent_mtime = next_cache.get(parent).copied().unwrap_or(0.0);
                            rows.push(&wire, &meta, |out| {
                                if wire != "/" {
                                    out.extend_from_slice(b",\"parent_mtime\":");
                                    json_f64(out, parent_mtime);
                                    out.extend_from_slice(b",\"parent_path\":");
                                    json_str(out, parent);
                                }
                            });
                        }
                    }
                }
                if rows.n == batch {
                    let full = std::mem::replace(&mut rows, Rows::with_capacity(batch));
                    if tx.blocking_send(full).is_err() {
                        return;
                    }
                }
            }
            if rows.n > 0 && tx.blocking_send(rows).is_err() {
                return;
            }
            if let Some(done) = done_tx {
                let _ = done.send(next_cache);
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
        let paths = |rows: Vec<Value>| {
            let mut p: Vec<String> = rows
                .iter()
                .map(|r| r["path"].as_str().unwrap().to_string())
                .collect();
            p.sort();
            p
        };
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
