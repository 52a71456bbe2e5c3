//! The snapshot walk and the rows it makes: what is left out ([`Filter`]),
//! one row per entry in the Fustor shape, and a walk on a thread of its own
//! that hands batches over a small bounded channel (so memory holds a few
//! batches, whatever the size of the tree).

use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use serde_json::Value;
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

/// The upsert row of an entry in the Fustor shape: written by
/// [`Rows::push`] and made a value by [`row`], so its shape is in one place.
#[derive(serde::Serialize)]
struct RowOut<'a> {
    path: &'a str,
    file_name: &'a str,
    size: u64,
    modified_time: f64,
    created_time: f64,
    is_directory: bool,
}

impl<'a> RowOut<'a> {
    fn of(wire: &'a str, meta: &std::fs::Metadata) -> Self {
        Self {
            path: wire,
            file_name: wire.rsplit('/').next().unwrap_or(""),
            size: meta.len(),
            modified_time: secs(meta.modified()),
            created_time: secs(meta.created()).max(0.0),
            is_directory: meta.is_dir(),
        }
    }
}

/// The upsert row of wire path `wire` with metadata `meta`, as a value
/// (realtime and sentinel rows).
pub fn row(wire: &str, meta: &std::fs::Metadata) -> Value {
    serde_json::to_value(RowOut::of(wire, meta)).unwrap_or(Value::Null)
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
        let out = &mut self.json;
        if self.n > 0 {
            out.push(b',');
        }
        self.n += 1;
        // Writing into a Vec cannot fail; the object is reopened for the
        // extra fields.
        let _ = serde_json::to_writer(&mut *out, &RowOut::of(wire, meta));
        out.pop();
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

/// Most threads one walk may use.
pub const MAX_WALK_THREADS: usize = 64;

/// Walk threads when not told: half the CPUs, 1 to 8. The agent is a
/// guest on a file server, whose clients need the rest; network file
/// systems, where each lookup waits on the server, may want more
/// (`--walk-threads`).
pub fn default_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| (n.get() / 2).clamp(1, 8))
}

/// How a walk goes: what it leaves out, rows per batch, and threads.
#[derive(Debug, Clone)]
pub struct Walking {
    /// What is left out.
    pub filter: Filter,
    /// Rows per batch (at least 1).
    pub batch: usize,
    /// Threads listing directories (1 to [`MAX_WALK_THREADS`]).
    pub threads: usize,
}

/// Walks `root` on threads of its own; batches of at most `batch` rows
/// come out of the receiver, which ends when the walk does. A directory's
/// row comes before its entries' rows. Unreadable entries are logged (at
/// most 100 lines per walk) and skipped.
pub fn snapshot(root: PathBuf, opts: Walking) -> mpsc::Receiver<Rows> {
    walk(root.clone(), root, true, opts, None).0
}

/// An on-demand scan: like [`snapshot`], from `start` (a directory or a
/// file below `root`), with its subdirectories when `recursive` and its
/// direct entries only otherwise.
pub fn scan(root: PathBuf, start: PathBuf, recursive: bool, opts: Walking) -> mpsc::Receiver<Rows> {
    walk(root, start, recursive, opts, None).0
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
    opts: Walking,
    cache: MtimeCache,
) -> (
    mpsc::Receiver<Rows>,
    tokio::sync::oneshot::Receiver<MtimeCache>,
) {
    let (rows, cache) = walk(root.clone(), root, true, opts, Some(cache));
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

/// What the walk's threads share: the directories handed out for any of
/// them to list, and what every thread reads or counts.
struct Shared {
    filter: Filter,
    batch: usize,
    /// The last depth listed (`None`: all of them).
    deepest: Option<usize>,
    /// The previous audit's directory mtimes (audits only).
    old: Option<MtimeCache>,
    queue: std::sync::Mutex<Queue>,
    /// Signalled when directories are handed out or the walk ends.
    wake: std::sync::Condvar,
    /// How many threads wait for work (read without the lock to decide
    /// whether to hand some out).
    idle: std::sync::atomic::AtomicUsize,
    /// Set when the walk ends early (the receiver is gone).
    stop: std::sync::atomic::AtomicBool,
    /// Lines logged about skipped entries (at most 100 per walk).
    logged: std::sync::atomic::AtomicUsize,
    /// Directories already listed, by device and inode, when links are
    /// followed (a link loop is listed once).
    seen: std::sync::Mutex<std::collections::HashSet<(u64, u64)>>,
}

/// The directories handed out, and who is still walking.
struct Queue {
    dirs: Vec<Pending>,
    /// Threads still running (a thread that panicked leaves the count, so
    /// the others never wait for it).
    running: usize,
    waiting: usize,
    done: bool,
}

impl Shared {
    fn skip(&self, why: std::fmt::Arguments) {
        use std::sync::atomic::Ordering::Relaxed;
        if self.logged.fetch_add(1, Relaxed) < 100 {
            tracing::warn!("skipped during the walk: {why}");
        }
    }

    /// Whether directory `meta` was listed already (links followed only).
    fn listed_before(&self, meta: &std::fs::Metadata) -> bool {
        use std::os::unix::fs::MetadataExt;
        self.filter.follows()
            && !self
                .seen
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert((meta.dev(), meta.ino()))
    }

    fn stopped(&self) -> bool {
        self.stop.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Ends the walk for every thread.
    fn end(&self, queue: &mut Queue) {
        queue.done = true;
        self.wake.notify_all();
    }

    /// A directory to list, waiting while others may still hand some out;
    /// `None` when the walk is over (every thread waits, or it stopped).
    fn next(&self) -> Option<Pending> {
        use std::sync::atomic::Ordering::Relaxed;
        let mut queue = self.queue.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if queue.done || self.stopped() {
                return None;
            }
            if let Some(dir) = queue.dirs.pop() {
                return Some(dir);
            }
            if queue.waiting + 1 == queue.running {
                self.end(&mut queue);
                return None;
            }
            queue.waiting += 1;
            self.idle.fetch_add(1, Relaxed);
            queue = self.wake.wait(queue).unwrap_or_else(|p| p.into_inner());
            queue.waiting -= 1;
            self.idle.fetch_sub(1, Relaxed);
        }
    }

    /// Hands `dirs` out to the waiting threads.
    fn hand_out(&self, dirs: impl Iterator<Item = Pending>) {
        let mut queue = self.queue.lock().unwrap_or_else(|p| p.into_inner());
        queue.dirs.extend(dirs);
        self.wake.notify_all();
    }
}

/// Leaves the running count when its thread ends, however it ends.
struct Running<'a>(&'a Shared);

impl Drop for Running<'_> {
    fn drop(&mut self) {
        let mut queue = self.0.queue.lock().unwrap_or_else(|p| p.into_inner());
        queue.running -= 1;
        if queue.waiting == queue.running {
            self.0.end(&mut queue);
        }
    }
}

/// One thread of a walk: its batch being filled, its own directories to
/// list (depth first), and its part of the audit's next mtime cache.
struct Walker<'a> {
    shared: &'a Shared,
    rows: Rows,
    tx: mpsc::Sender<Rows>,
    mine: Vec<Pending>,
    next_cache: MtimeCache,
}

impl Walker<'_> {
    /// Adds a row; `false` when the walk is to stop.
    fn row(
        &mut self,
        wire: &str,
        meta: &std::fs::Metadata,
        parent: Option<&Pending>,
        parent_skipped: bool,
    ) -> bool {
        match self.shared.old.as_ref() {
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
        self.rows.n < self.shared.batch || self.flush()
    }

    /// Sends the rows so far; `false` (and the walk stops) when the
    /// receiver is gone.
    fn flush(&mut self) -> bool {
        if self.rows.n == 0 {
            return true;
        }
        let full = std::mem::replace(&mut self.rows, Rows::with_capacity(self.shared.batch));
        if self.tx.blocking_send(full).is_err() {
            self.shared
                .stop
                .store(true, std::sync::atomic::Ordering::Relaxed);
            self.shared.hand_out(std::iter::empty());
            return false;
        }
        true
    }

    /// The first row of the walk, `start`'s, and `start` to list when it
    /// is a directory.
    fn begin(&mut self, root: &Path, start: PathBuf) {
        let Some(wire) = wire_path(root, &start) else {
            return self
                .shared
                .skip(format_args!("{}: not UTF-8", start.display()));
        };
        let meta = if self.shared.filter.follows() {
            std::fs::metadata(&start)
        } else {
            std::fs::symlink_metadata(&start)
        };
        let meta = match meta {
            Ok(m) => m,
            Err(e) => return self.shared.skip(format_args!("{}: {e}", start.display())),
        };
        if !self.row(&wire, &meta, None, false) || !meta.is_dir() {
            return;
        }
        self.shared.listed_before(&meta);
        self.mine.push(Pending {
            path: start,
            depth: depth(&wire),
            wire,
            mtime: secs(meta.modified()),
        });
    }

    /// Lists directories until the walk is over: its own, depth first,
    /// and those other threads hand out. While another thread waits, it
    /// hands out the shallower half of its own, after sending its rows so
    /// far: a directory's row always reaches the wire before its entries'
    /// rows do, whoever lists them.
    fn run(&mut self) {
        use std::sync::atomic::Ordering::Relaxed;
        loop {
            let dir = match self.mine.pop() {
                Some(dir) => dir,
                None => {
                    // Nothing of its own: what it has goes out while it
                    // waits for more.
                    if !self.flush() {
                        return;
                    }
                    match self.shared.next() {
                        Some(dir) => dir,
                        None => return,
                    }
                }
            };
            if !self.list(dir) {
                return;
            }
            if self.mine.len() > 1 && self.shared.idle.load(Relaxed) > 0 {
                if !self.flush() {
                    return;
                }
                let half = self.mine.len() / 2;
                self.shared.hand_out(self.mine.drain(..half));
            }
        }
    }

    /// Lists directory `dir`: a row per entry, its subdirectories kept to
    /// list next. Entries are looked at relative to the directory's open
    /// handle (no path lookup per file) and wire paths are built as the
    /// walk descends. `false` when the walk is to stop.
    fn list(&mut self, dir: Pending) -> bool {
        let shared = self.shared;
        if shared.stopped() {
            return false;
        }
        let entries = match std::fs::read_dir(&dir.path) {
            Ok(e) => e,
            Err(e) => {
                shared.skip(format_args!("{}: {e}", dir.path.display()));
                return true;
            }
        };
        let files_skipped = shared
            .old
            .as_ref()
            .is_some_and(|old| old.get(&dir.wire) == Some(&dir.mtime));
        // Subdirectories are listed only above the deepest level.
        let descend = shared.deepest.is_none_or(|d| dir.depth + 1 < d);
        let below = self.mine.len();
        for entry in entries {
            let entry = match entry {
                Ok(e) => e,
                Err(e) => {
                    shared.skip(format_args!("{}: {e}", dir.path.display()));
                    continue;
                }
            };
            let name = entry.file_name();
            let Some(name) = name.to_str() else {
                shared.skip(format_args!("{}: not UTF-8", entry.path().display()));
                continue;
            };
            let mut wire = String::with_capacity(dir.wire.len() + name.len() + 1);
            wire.push_str(&dir.wire);
            if dir.wire != "/" {
                wire.push('/');
            }
            wire.push_str(name);
            if shared.filter.skips(&wire[1..], dir.depth + 1) {
                continue;
            }
            // `DirEntry::metadata` looks at the entry relative to its
            // directory's handle, without following a link.
            let meta = if shared.filter.follows() {
                std::fs::metadata(entry.path())
            } else {
                entry.metadata()
            };
            let meta = match meta {
                Ok(m) => m,
                Err(e) => {
                    shared.skip(format_args!("{}: {e}", entry.path().display()));
                    continue;
                }
            };
            if !self.row(&wire, &meta, Some(&dir), files_skipped) {
                return false;
            }
            if meta.is_dir() && descend && !shared.listed_before(&meta) {
                self.mine.push(Pending {
                    path: entry.path(),
                    wire,
                    depth: dir.depth + 1,
                    mtime: secs(meta.modified()),
                });
            }
        }
        // Depth first, in the order the directory listed them.
        self.mine[below..].reverse();
        true
    }
}

/// Walks `start` (below `root`; rows carry paths relative to `root`) on
/// `threads` threads of its own: all of it when `recursive`, else its
/// direct entries.
fn walk(
    root: PathBuf,
    start: PathBuf,
    recursive: bool,
    opts: Walking,
    cache: Option<MtimeCache>,
) -> Walk {
    let (done_tx, done_rx) = match cache.is_some() {
        true => {
            let (tx, rx) = tokio::sync::oneshot::channel();
            (Some(tx), Some(rx))
        }
        false => (None, None),
    };
    let threads = opts.threads.clamp(1, MAX_WALK_THREADS);
    // Two batches ahead of the sender: enough to keep it busy.
    let (tx, rx) = mpsc::channel(2);
    std::thread::Builder::new()
        .name("weir-agent-walk".into())
        .spawn(move || {
            let shared = Shared {
                deepest: if recursive {
                    None
                } else {
                    wire_path(&root, &start).map(|w| depth(&w) + 1)
                },
                filter: opts.filter,
                batch: opts.batch,
                old: cache,
                queue: std::sync::Mutex::new(Queue {
                    dirs: Vec::new(),
                    running: threads,
                    waiting: 0,
                    done: false,
                }),
                wake: std::sync::Condvar::new(),
                idle: Default::default(),
                stop: Default::default(),
                logged: Default::default(),
                seen: Default::default(),
            };
            let walker = |first: bool| {
                let (shared, tx) = (&shared, tx.clone());
                let (root, start) = (&root, start.clone());
                move || {
                    let _running = Running(shared);
                    let mut w = Walker {
                        shared,
                        rows: Rows::with_capacity(shared.batch),
                        tx,
                        mine: Vec::new(),
                        next_cache: MtimeCache::new(),
                    };
                    if first {
                        w.begin(root, start);
                    }
                    w.run();
                    w.flush();
                    w.next_cache
                }
            };
            let caches: Vec<MtimeCache> = std::thread::scope(|scope| {
                let helpers: Vec<_> = (1..threads)
                    .filter_map(|_| {
                        let spawned = std::thread::Builder::new()
                            .name("weir-agent-walk".into())
                            .spawn_scoped(scope, walker(false));
                        if spawned.is_err() {
                            // It never runs: it leaves the count now.
                            drop(Running(&shared));
                        }
                        spawned.ok()
                    })
                    .collect();
                let mut caches = vec![walker(true)()];
                for h in helpers {
                    match h.join() {
                        Ok(cache) => caches.push(cache),
                        Err(_) => tracing::error!(
                            "a walk thread panicked; its directories were not listed"
                        ),
                    }
                }
                caches
            });
            drop(tx);
            if let Some(done) = done_tx
                && !shared.stopped()
            {
                let mut all = MtimeCache::new();
                for c in caches {
                    all.extend(c);
                }
                let _ = done.send(all);
            }
        })
        .ok();
    (rx, done_rx)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Three threads: the tests walk in parallel.
    fn opts(filter: Filter, batch: usize) -> Walking {
        Walking {
            filter,
            batch,
            threads: 3,
        }
    }

    #[tokio::test]
    async fn threads_share_the_walk_and_parents_come_before_their_entries() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().canonicalize().unwrap();
        // Wide and deep: directories to hand out at every level.
        for a in 0..8 {
            for b in 0..6 {
                let d = root.join(format!("a{a}/b{b}/c"));
                std::fs::create_dir_all(&d).unwrap();
                for f in 0..5 {
                    std::fs::write(d.join(format!("f{f}")), b"x").unwrap();
                    std::fs::write(root.join(format!("a{a}/b{b}/g{f}")), b"xy").unwrap();
                }
            }
        }
        let filter = Filter::new(&[], None, false).unwrap();
        let mut one = None;
        for threads in [1, 2, 4, 16] {
            let mut rx = snapshot(
                root.clone(),
                Walking {
                    filter: filter.clone(),
                    batch: 9,
                    threads,
                },
            );
            let mut order = Vec::new();
            while let Some(b) = rx.recv().await {
                assert!(b.n <= 9 && b.n > 0, "{} rows in a batch", b.n);
                order.extend(b.values());
            }
            let mut sent = std::collections::HashSet::new();
            for row in &order {
                let path = row["path"].as_str().unwrap();
                if path != "/" {
                    let parent = path.rsplit_once('/').unwrap().0;
                    let parent = if parent.is_empty() { "/" } else { parent };
                    assert!(sent.contains(parent), "{path} came before {parent}");
                }
                assert!(sent.insert(path.to_string()), "{path} twice");
            }
            let all = paths(order);
            assert_eq!(all.len(), 1 + 8 + 48 * 2 + 48 * 10);
            match &one {
                None => one = Some(all),
                Some(one) => assert_eq!(&all, one, "{threads} threads"),
            }
        }
    }

    #[tokio::test]
    async fn a_parallel_walk_stops_when_its_receiver_goes() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().canonicalize().unwrap();
        for a in 0..50 {
            std::fs::create_dir_all(root.join(format!("d{a}/e"))).unwrap();
            std::fs::write(root.join(format!("d{a}/e/f")), b"x").unwrap();
        }
        let filter = Filter::new(&[], None, false).unwrap();
        let (rx, done) = audit(root, opts(filter, 1), MtimeCache::new());
        drop(rx);
        // Every thread ends, and an unfinished audit returns no cache.
        let waited = tokio::time::timeout(std::time::Duration::from_secs(10), done).await;
        assert!(matches!(waited, Ok(Err(_))), "{waited:?}");
    }

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
        let mut rx = snapshot(dir.path().canonicalize().unwrap(), opts(filter, 7));
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
            opts(filter.clone(), 2),
        ))
        .await;
        // max_depth 3 counts from the root, not from the scan's start.
        assert_eq!(paths(all), ["/a", "/a/b", "/a/b/c", "/a/f"]);
        let one = collect(&mut scan(
            root.clone(),
            root.join("a"),
            false,
            opts(filter.clone(), 2),
        ))
        .await;
        assert_eq!(paths(one), ["/a", "/a/b", "/a/f"]);
        let file = collect(&mut scan(
            root.clone(),
            root.join("h"),
            true,
            opts(filter, 2),
        ))
        .await;
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
        let rows = collect(&mut snapshot(root.clone(), opts(plain, 10))).await;
        assert_eq!(paths(rows), ["/", "/a", "/a/b", "/a/b/f", "/a/b/up"]);
        let follow = Filter::new(&[], None, true).unwrap();
        let rows = collect(&mut snapshot(root.clone(), opts(follow, 10))).await;
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
        let (mut rx, done) = audit(root.clone(), opts(filter.clone(), 100), MtimeCache::new());
        let first = collect(&mut rx).await;
        let cache = done.await.unwrap();
        assert_eq!(first.len(), 5, "root, two directories, two files");
        let f = first.iter().find(|r| r["path"] == "/a/f").unwrap();
        assert_eq!(f["parent_path"], "/a");
        assert!(f["parent_mtime"].as_f64().unwrap() > 0.0);
        // Nothing moved: every directory is skipped and no file listed.
        let (mut rx, done) = audit(root.clone(), opts(filter.clone(), 100), cache);
        let second = collect(&mut rx).await;
        assert_eq!(second.len(), 3, "{second:?}");
        assert!(second.iter().all(|r| r["audit_skipped"] == true));
        // A new file in b: b is listed again, a is not.
        let cache = done.await.unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::write(root.join("b/g"), b"y").unwrap();
        let (mut rx, _) = audit(root, opts(filter, 100), cache);
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
