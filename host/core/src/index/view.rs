//! Tree views written as JSON straight from the index: no intermediate
//! `serde_json::Value` tree, so a large subtree costs its bytes and little
//! else.
//!
//! Node shape (Fustor's): `{name, content_type, path, size, modified_time,
//! created_time, integrity_suspect, children?}`; `only_path` keeps `name`,
//! `content_type`, `path` and `children`. `max_depth = 0` writes no
//! `children` key; `recursive = false` writes `children: []` on a directory;
//! files never have `children`.

use std::io::{self, Write};

use super::{FsIndex, NodeId};

/// What a tree request asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TreeQuery {
    /// Normalized path of the subtree root.
    pub path: String,
    /// List children at all (`false`: the node with `children: []`).
    pub recursive: bool,
    /// Levels of children to list (`None`: all).
    pub max_depth: Option<u32>,
    /// Names, types and paths only.
    pub only_path: bool,
}

impl TreeQuery {
    /// A query from request parameters: `path` (default `/`, must be clean),
    /// `recursive` (default true), `max_depth`, `only_path` (default false).
    pub fn from_params(
        path: Option<String>,
        recursive: Option<bool>,
        max_depth: Option<u32>,
        only_path: Option<bool>,
    ) -> Result<Self, String> {
        let raw = path.unwrap_or_else(|| "/".into());
        let path =
            super::normalize(&raw).ok_or_else(|| format!("path `{raw}` is not a clean path"))?;
        Ok(Self {
            path,
            recursive: recursive.unwrap_or(true),
            max_depth,
            only_path: only_path.unwrap_or(false),
        })
    }
}

/// Why a tree cannot be written.
#[derive(Debug, thiserror::Error)]
pub enum ViewError {
    /// No node at that path.
    #[error("path `{0}` is not in the index")]
    NotFound(String),
    /// The subtree asked for has more nodes than allowed.
    #[error(
        "the subtree at `{path}` has more than {limit} items; ask for a smaller path or a max_depth"
    )]
    TooLarge {
        /// The path asked for.
        path: String,
        /// The limit.
        limit: usize,
    },
    /// The search pattern is too long.
    #[error("the pattern is longer than {limit} bytes")]
    PatternTooLong {
        /// The limit in bytes.
        limit: usize,
    },
    /// The answer would be larger than allowed in bytes.
    #[error(
        "{what} would be more than {limit} bytes; ask for a smaller path, a max_depth or only_path"
    )]
    TooManyBytes {
        /// What was asked for.
        what: String,
        /// The limit in bytes.
        limit: usize,
    },
    /// Writing failed.
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// Checks the query against the index and the size guard (`limit` items in
/// the part of the subtree the query would write).
pub fn check_tree(ix: &FsIndex, q: &TreeQuery, limit: usize) -> Result<NodeId, ViewError> {
    bound_tree(ix, q, limit).map(|(id, _)| id)
}

/// Writes the subtree `q` asks for as JSON. Call [`check_tree`] first.
pub fn write_tree(
    ix: &FsIndex,
    q: &TreeQuery,
    root: NodeId,
    now: f64,
    out: &mut impl Write,
) -> io::Result<()> {
    NodeWriter::new(ix, q, now, &ix.tree().path(root)).node(root, 0, out)
}

struct NodeWriter<'a> {
    ix: &'a FsIndex,
    q: &'a TreeQuery,
    now: f64,
    /// Path of the node being written, JSON-escaped without its quotes;
    /// children push and pop their escaped names. Escaping is per
    /// character, so the escaped path is the escaped names joined by `/`,
    /// and no path is escaped again for each node below it.
    path: Vec<u8>,
    /// The name of the node being written, JSON-escaped with its quotes.
    name: Vec<u8>,
}

impl<'a> NodeWriter<'a> {
    fn new(ix: &'a FsIndex, q: &'a TreeQuery, now: f64, path: &str) -> Self {
        let mut w = Self {
            ix,
            q,
            now,
            path: Vec::with_capacity(256),
            name: Vec::with_capacity(64),
        };
        escape_into(&mut w.path, path);
        // Without its quotes.
        w.path.pop();
        w.path.remove(0);
        w
    }

    /// Escapes the name of `id` into `self.name`.
    fn set_name(&mut self, id: NodeId) {
        self.name.clear();
        escape_into(&mut self.name, self.ix.tree().name(id));
    }
}

/// `s` as a JSON string, quoted, appended to `out`.
fn escape_into(out: &mut Vec<u8>, s: &str) {
    // Writing into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, s);
}

fn json_str(out: &mut impl Write, s: &str) -> io::Result<()> {
    serde_json::to_writer(&mut *out, s).map_err(io::Error::other)
}

fn json_f64(out: &mut impl Write, v: f64) -> io::Result<()> {
    serde_json::to_writer(&mut *out, &v).map_err(io::Error::other)
}

/// A directory being written: its children are written one at a time.
struct Frame {
    id: NodeId,
    depth: u32,
    next_child: usize,
    /// Length of `NodeWriter::path` before this node's escaped name was
    /// added.
    path_len: usize,
}

impl NodeWriter<'_> {
    /// Writes `root` and what the query asks for below it, depth first with
    /// an explicit stack (no recursion over the tree's depth).
    fn node(&mut self, root: NodeId, depth: u32, out: &mut impl Write) -> io::Result<()> {
        let mut stack: Vec<Frame> = Vec::new();
        let root_len = self.path.len();
        self.set_name(root);
        if let Some(frame) = self.open(root, depth, root_len, out)? {
            stack.push(frame);
        }
        while let Some(frame) = stack.last_mut() {
            let tree = self.ix.tree();
            let children = tree.children(frame.id);
            if frame.next_child == children.len() {
                out.write_all(b"]}")?;
                self.path.truncate(frame.path_len);
                stack.pop();
                continue;
            }
            let child = children[frame.next_child];
            if frame.next_child > 0 {
                out.write_all(b",")?;
            }
            frame.next_child += 1;
            let depth = frame.depth + 1;
            let len = self.path.len();
            if self.path.last() != Some(&b'/') {
                self.path.push(b'/');
            }
            self.set_name(child);
            self.path
                .extend_from_slice(&self.name[1..self.name.len() - 1]);
            match self.open(child, depth, len, out)? {
                Some(frame) => stack.push(frame),
                None => self.path.truncate(len),
            }
        }
        Ok(())
    }

    /// Writes a node's fields. A directory whose children are to be written
    /// is left open (`"children":[`) and returned as a frame; anything else
    /// is closed here.
    fn open(
        &mut self,
        id: NodeId,
        depth: u32,
        path_len: usize,
        out: &mut impl Write,
    ) -> io::Result<Option<Frame>> {
        let tree = self.ix.tree();
        let meta = tree.meta(id);
        out.write_all(b"{\"name\":")?;
        out.write_all(&self.name)?;
        out.write_all(if meta.is_dir {
            b",\"content_type\":\"directory\",\"path\":\""
        } else {
            b",\"content_type\":\"file\",\"path\":\""
        })?;
        out.write_all(&self.path)?;
        out.write_all(b"\"")?;
        if !self.q.only_path {
            out.write_all(b",\"size\":")?;
            // itoa, not `core::fmt`.
            serde_json::to_writer(&mut *out, &meta.size).map_err(io::Error::other)?;
            out.write_all(b",\"modified_time\":")?;
            json_f64(out, meta.mtime)?;
            out.write_all(b",\"created_time\":")?;
            json_f64(out, meta.ctime)?;
            let suspect = self.ix.is_suspect(id, self.now);
            out.write_all(if suspect {
                b",\"integrity_suspect\":true"
            } else {
                b",\"integrity_suspect\":false"
            })?;
        }
        if meta.is_dir {
            match (self.q.recursive, self.q.max_depth) {
                (_, Some(max)) if depth >= max => {}
                (false, _) => out.write_all(b",\"children\":[]")?,
                (true, _) => {
                    out.write_all(b",\"children\":[")?;
                    return Ok(Some(Frame {
                        id,
                        depth,
                        next_child: 0,
                        path_len,
                    }));
                }
            }
        }
        out.write_all(b"}")?;
        Ok(None)
    }
}

/// A writer into memory that refuses to grow beyond a byte budget, so that
/// an answer is bounded by bytes as well as by items (deep, long names make
/// a few items large).
struct Bounded {
    out: Vec<u8>,
    limit: usize,
    /// Set when a write was refused: whatever error reaches the caller
    /// (serializers wrap it) is then the budget's.
    exceeded: bool,
}

impl Write for Bounded {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.out.len() + buf.len() > self.limit {
            self.exceeded = true;
            return Err(io::Error::new(io::ErrorKind::FileTooLarge, "byte budget"));
        }
        self.out.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Runs `write` into memory within `limit_bytes`; an answer that would be
/// larger is [`ViewError::TooManyBytes`] about `what`.
fn bounded(
    what: impl FnOnce() -> String,
    limit_bytes: usize,
    write: impl FnOnce(&mut Bounded) -> Result<(), ViewError>,
) -> Result<Vec<u8>, ViewError> {
    let mut out = Bounded {
        out: Vec::with_capacity(256.min(limit_bytes)),
        limit: limit_bytes,
        exceeded: false,
    };
    match write(&mut out) {
        Ok(()) => Ok(out.out),
        Err(_) if out.exceeded => Err(ViewError::TooManyBytes {
            what: what(),
            limit: limit_bytes,
        }),
        Err(e) => Err(e),
    }
}

/// Bytes of a node's JSON beyond its name and path: the keys and
/// punctuation, the size (20 digits at most), two times (24 characters at
/// most each), and a comma.
const NODE_BYTES_BEYOND_STRINGS: usize = r#"{"name":,"content_type":"directory","path":,"size":,"modified_time":,"created_time":,"integrity_suspect":false,"children":[]}"#.len()
    + 20
    + 2 * 24
    + 1;

/// Bytes `s` takes as a JSON string at most: escaping makes a quote or a
/// backslash two bytes and a control character at most six.
fn json_str_bound(s: &str) -> usize {
    2 + s
        .bytes()
        .map(|b| match b {
            b'"' | b'\\' => 2,
            0..0x20 => 6,
            _ => 1,
        })
        .sum::<usize>()
}

/// [`check_tree`], also answering an upper bound of the answer's bytes
/// (exact for names and paths, the most digits numbers can take): one walk
/// of the part of the subtree the query would write.
pub fn bound_tree(ix: &FsIndex, q: &TreeQuery, limit: usize) -> Result<(NodeId, usize), ViewError> {
    let tree = ix.tree();
    let id = tree
        .get(&q.path)
        .ok_or_else(|| ViewError::NotFound(crate::text::echo(&q.path).into_owned()))?;
    let depth = if q.recursive { q.max_depth } else { Some(0) };
    let root_path = json_str_bound(&tree.path(id));
    let mut count = 1usize;
    let mut bytes = NODE_BYTES_BEYOND_STRINGS + json_str_bound(tree.name(id)) + root_path;
    // (node, depth, bound of its path's JSON string without the quotes).
    let mut stack: Vec<(NodeId, u32, usize)> = vec![(id, 0, root_path - 2)];
    while let Some((n, d, path)) = stack.pop() {
        if depth.is_some_and(|max| d >= max) {
            continue;
        }
        for &child in tree.children(n) {
            count += 1;
            if count > limit {
                return Err(ViewError::TooLarge {
                    path: crate::text::echo(&q.path).into_owned(),
                    limit,
                });
            }
            let name = json_str_bound(tree.name(child)) - 2;
            let child_path = path + 1 + name;
            // The name and the path, each quoted.
            bytes = bytes.saturating_add(NODE_BYTES_BEYOND_STRINGS + (name + 2) + (child_path + 2));
            stack.push((child, d + 1, child_path));
        }
    }
    Ok((id, bytes))
}

/// A writer that hands `send` chunks of about `chunk` bytes as it fills
/// them (an answer streamed while it is written); the last, partial one
/// stays in `buf` for the caller.
pub struct Chunks<F: FnMut(Vec<u8>)> {
    /// The chunk being filled.
    pub buf: Vec<u8>,
    chunk: usize,
    send: F,
}

impl<F: FnMut(Vec<u8>)> Chunks<F> {
    /// Chunks of about `chunk` bytes, each given to `send`.
    pub fn new(chunk: usize, send: F) -> Self {
        Self {
            buf: Vec::with_capacity(chunk + 4096),
            chunk,
            send,
        }
    }
}

impl<F: FnMut(Vec<u8>)> Write for Chunks<F> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.buf.extend_from_slice(buf);
        if self.buf.len() >= self.chunk {
            let full = std::mem::replace(&mut self.buf, Vec::with_capacity(self.chunk + 4096));
            (self.send)(full);
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The tree `q` asks for as JSON, within `limit_items` nodes (checked
/// before writing) and `limit_bytes` bytes.
pub fn tree_json(
    ix: &FsIndex,
    q: &TreeQuery,
    limit_items: usize,
    limit_bytes: usize,
    now: f64,
) -> Result<Vec<u8>, ViewError> {
    let root = check_tree(ix, q, limit_items)?;
    tree_json_at(ix, q, root, limit_bytes, now)
}

/// [`tree_json`] from `root`, already checked ([`check_tree`] or
/// [`bound_tree`]), within `limit_bytes` bytes.
pub fn tree_json_at(
    ix: &FsIndex,
    q: &TreeQuery,
    root: NodeId,
    limit_bytes: usize,
    now: f64,
) -> Result<Vec<u8>, ViewError> {
    bounded(
        || format!("the subtree at `{}`", crate::text::echo(&q.path)),
        limit_bytes,
        |out| Ok(write_tree(ix, q, root, now, out)?),
    )
}

/// The search for `pattern` as JSON (see [`write_search`]), within
/// `limit_items` nodes and `limit_bytes` bytes.
pub fn search_json(
    ix: &FsIndex,
    pattern: &str,
    limit_items: usize,
    limit_bytes: usize,
    now: f64,
) -> Result<Vec<u8>, ViewError> {
    bounded(
        || format!("search `{}`", crate::text::echo(pattern)),
        limit_bytes,
        |out| write_search(ix, pattern, limit_items, now, out),
    )
}

/// Longest search pattern, in bytes: matching costs up to the pattern's
/// length per character of each name.
pub const MAX_PATTERN_BYTES: usize = 256;

/// Whether `name` matches the glob `pattern` (`*` any run, `?` one char).
pub fn glob(pattern: &str, name: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    glob_chars(&p, name)
}

/// [`glob`] with the pattern already split into characters (a search
/// matches one pattern against every node).
fn glob_chars(p: &[char], name: &str) -> bool {
    let n: Vec<char> = name.chars().collect();
    let (mut pi, mut ni) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ni < n.len() {
        // `*` first: a `*` in the name must not be taken as the literal
        // match of the pattern's wildcard (found by fuzzing).
        if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ni));
            pi += 1;
        } else if pi < p.len() && (p[pi] == '?' || p[pi] == n[ni]) {
            pi += 1;
            ni += 1;
        } else if let Some((sp, sn)) = star {
            pi = sp + 1;
            ni = sn + 1;
            star = Some((sp, sn + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

/// Writes a JSON list of the nodes (without children) whose name matches
/// `pattern` (or whose path does, when the pattern has a `/`); without
/// wildcards the pattern matches as a substring. At most `limit` nodes.
pub fn write_search(
    ix: &FsIndex,
    pattern: &str,
    limit: usize,
    now: f64,
    out: &mut impl Write,
) -> Result<(), ViewError> {
    if pattern.len() > MAX_PATTERN_BYTES {
        return Err(ViewError::PatternTooLong {
            limit: MAX_PATTERN_BYTES,
        });
    }
    let wild = pattern.contains(['*', '?']);
    let on_path = pattern.contains('/');
    let chars: Vec<char> = pattern.chars().collect();
    let matches = |text: &str| {
        if wild {
            glob_chars(&chars, text)
        } else {
            text.contains(pattern)
        }
    };
    let q = TreeQuery {
        path: String::new(),
        recursive: true,
        max_depth: Some(0),
        only_path: false,
    };
    out.write_all(b"[")?;
    let mut found = 0usize;
    let mut stack = vec![super::ROOT];
    while let Some(id) = stack.pop() {
        let tree = ix.tree();
        stack.extend(tree.children(id).iter().rev());
        if id == super::ROOT {
            continue;
        }
        let hit = if on_path {
            matches(&tree.path(id))
        } else {
            matches(tree.name(id))
        };
        if !hit {
            continue;
        }
        found += 1;
        if found > limit {
            return Err(ViewError::TooLarge {
                path: format!("search `{}`", crate::text::echo(pattern)),
                limit,
            });
        }
        if found > 1 {
            out.write_all(b",")?;
        }
        NodeWriter::new(ix, &q, now, &tree.path(id)).node(id, 0, out)?;
    }
    out.write_all(b"]")?;
    Ok(())
}

/// The blind spots as Fusion answers them: `{additions_count, additions,
/// additions_truncated, deletion_count, deletions, deletions_truncated}`,
/// the additions as nodes without children (`{name, content_type, path,
/// size, modified_time, created_time, integrity_suspect}`), the deletions
/// as paths. Each list holds at most `limit_items` entries and half of
/// `limit_bytes`; the counts are of all.
pub fn blind_spots_json(ix: &FsIndex, limit_items: usize, limit_bytes: usize, now: f64) -> Vec<u8> {
    let half = limit_bytes / 2;
    let q = TreeQuery {
        path: String::new(),
        recursive: true,
        max_depth: Some(0),
        only_path: false,
    };
    // Items are written into the list until one would pass the budget.
    fn list<T>(
        items: impl Iterator<Item = T>,
        limit_items: usize,
        budget: usize,
        mut write: impl FnMut(T, &mut Vec<u8>) -> bool,
    ) -> (Vec<u8>, usize) {
        let (mut out, mut item, mut n) = (vec![b'['], Vec::new(), 0);
        for it in items.take(limit_items) {
            item.clear();
            if !write(it, &mut item) {
                continue;
            }
            if out.len() + item.len() + 2 > budget {
                break;
            }
            if n > 0 {
                out.push(b',');
            }
            out.extend_from_slice(&item);
            n += 1;
        }
        out.push(b']');
        (out, n)
    }
    let additions = ix.blind_additions();
    let (adds, added) = list(additions.iter(), limit_items, half, |path, out| {
        let Some(id) = ix.tree().get(path) else {
            return false;
        };
        NodeWriter::new(ix, &q, now, path).node(id, 0, out).is_ok()
    });
    let deletions = ix.blind_deletions();
    let (dels, deleted) = list(deletions.iter(), limit_items, half, |path, out| {
        json_str(out, path).is_ok()
    });
    let mut out = Vec::with_capacity(adds.len() + dels.len() + 128);
    let _ = write!(
        out,
        "{{\"additions_count\":{},\"additions\":",
        additions.len()
    );
    out.extend_from_slice(&adds);
    let _ = write!(
        out,
        ",\"additions_truncated\":{},\"deletion_count\":{},\"deletions\":",
        added < additions.len(),
        deletions.len()
    );
    out.extend_from_slice(&dels);
    let _ = write!(
        out,
        ",\"deletions_truncated\":{}}}",
        deleted < deletions.len()
    );
    out
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;
    use crate::index::{IndexConfig, Meta, Source, Upsert};

    const NOW: f64 = 1_800_000_000.0;

    fn deep_index(levels: usize, name: &str) -> FsIndex {
        let mut ix = FsIndex::new(IndexConfig::default());
        let row = Upsert {
            path: format!("/{name}").repeat(levels),
            meta: Meta {
                is_dir: false,
                size: 1,
                mtime: 1.0,
                ctime: 1.0,
            },
            is_atomic_write: None,
            audit_skipped: false,
            parent_mtime: None,
        };
        ix.upsert(&row, Source::Snapshot, NOW);
        ix
    }

    #[test]
    fn deep_trees_are_written_without_recursion() {
        crate::index::tree::tests::on_small_stack(|| {
            let ix = deep_index(3_000, "d");
            let q = TreeQuery {
                path: "/".into(),
                recursive: true,
                max_depth: None,
                only_path: true,
            };
            let out = tree_json(&ix, &q, usize::MAX, usize::MAX, NOW).unwrap();
            // Parse it back with a depth-unlimited reader: count the nesting.
            let text = String::from_utf8(out).unwrap();
            assert_eq!(text.matches("\"children\":[").count(), 3_000);
            assert!(text.ends_with(&"]}".repeat(3_000)));
            let found = search_json(&ix, "d", usize::MAX, usize::MAX, NOW).unwrap();
            assert!(found.starts_with(b"[{"));
        });
    }

    #[test]
    fn answers_are_bounded_by_bytes_as_well_as_items() {
        // Few nodes, long names: the item guard alone would let it through.
        let name = "n".repeat(200);
        let ix = deep_index(50, &name);
        let q = TreeQuery {
            path: "/".into(),
            recursive: true,
            max_depth: None,
            only_path: false,
        };
        let err = tree_json(&ix, &q, 1_000, 64 * 1024, NOW).unwrap_err();
        assert!(
            matches!(err, ViewError::TooManyBytes { limit: 65536, .. }),
            "{err}"
        );
        assert!(err.to_string().contains("more than 65536 bytes"), "{err}");
        let err = search_json(&ix, "n", 1_000, 64 * 1024, NOW).unwrap_err();
        assert!(matches!(err, ViewError::TooManyBytes { .. }), "{err}");
        let err = search_json(&ix, &"*n".repeat(200), 1_000, 64 * 1024, NOW).unwrap_err();
        assert_eq!(err.to_string(), "the pattern is longer than 256 bytes");
        // Within budget, the same answers are whole JSON.
        let out = tree_json(&ix, &q, 1_000, 16 << 20, NOW).unwrap();
        serde_json::from_slice::<Value>(&out).unwrap_or_else(|e| {
            // serde_json's own recursion limit (128) is below 50 levels x 2.
            assert!(e.to_string().contains("recursion"), "{e}");
            Value::Null
        });
    }

    fn ix() -> FsIndex {
        let mut ix = FsIndex::new(IndexConfig::default());
        let up = |ix: &mut FsIndex, path: &str, is_dir: bool, size: u64, mtime: f64| {
            let row = Upsert {
                path: path.into(),
                meta: Meta {
                    is_dir,
                    size,
                    mtime,
                    ctime: 1.5,
                },
                is_atomic_write: None,
                audit_skipped: false,
                parent_mtime: None,
            };
            ix.upsert(&row, Source::Snapshot, NOW);
        };
        up(&mut ix, "/", true, 4096, 10.0);
        up(&mut ix, "/a", true, 4096, 11.0);
        up(&mut ix, "/a/x \"q\".txt", false, 5, 12.0);
        up(&mut ix, "/a/hot", false, 6, NOW - 1.0);
        up(&mut ix, "/b.txt", false, 7, 13.0);
        ix
    }

    fn tree(q: TreeQuery) -> Value {
        let ix = ix();
        let root = check_tree(&ix, &q, 100).unwrap();
        let mut out = Vec::new();
        write_tree(&ix, &q, root, NOW, &mut out).unwrap();
        serde_json::from_slice(&out).unwrap()
    }

    fn q(path: &str) -> TreeQuery {
        TreeQuery {
            path: path.into(),
            recursive: true,
            max_depth: None,
            only_path: false,
        }
    }

    #[test]
    fn the_byte_bound_holds_and_chunks_make_the_same_answer() {
        let mut ix = ix();
        for (i, name) in ["q\"uo\\te", "ctl\u{1}\n", "é✓", "plain"]
            .iter()
            .enumerate()
        {
            let row = Upsert {
                path: format!("/a/{name}/{name}{i}"),
                meta: Meta {
                    is_dir: false,
                    size: u64::MAX >> 1,
                    mtime: 253_402_300_799.0 - 0.123_456_7,
                    ctime: 1e-7,
                },
                is_atomic_write: None,
                audit_skipped: false,
                parent_mtime: None,
            };
            ix.upsert(&row, Source::Snapshot, NOW);
        }
        for query in [q("/"), q("/a"), q("/b.txt")].into_iter().chain([
            TreeQuery {
                max_depth: Some(1),
                ..q("/")
            },
            TreeQuery {
                recursive: false,
                ..q("/a")
            },
            TreeQuery {
                only_path: true,
                ..q("/")
            },
        ]) {
            let (root, bound) = bound_tree(&ix, &query, 100).unwrap();
            let mut whole = Vec::new();
            write_tree(&ix, &query, root, NOW, &mut whole).unwrap();
            assert!(
                whole.len() <= bound,
                "{} > {bound} for {}",
                whole.len(),
                query.path
            );
            let mut sent = Vec::new();
            let mut chunks = Chunks::new(16, |c: Vec<u8>| sent.push(c));
            write_tree(&ix, &query, root, NOW, &mut chunks).unwrap();
            let rest = std::mem::take(&mut chunks.buf);
            drop(chunks);
            assert!(sent.len() > 1);
            assert_eq!([sent.concat(), rest].concat(), whole);
            // Names and paths read back as they were given, escapes and
            // all, and each path is its parent's with its name.
            let tree: serde_json::Value = serde_json::from_slice(&whole).unwrap();
            let mut stack = vec![(tree, None::<String>)];
            while let Some((node, parent)) = stack.pop() {
                let path = node["path"].as_str().unwrap().to_string();
                let name = node["name"].as_str().unwrap();
                if let Some(parent) = parent {
                    let sep = if parent.ends_with('/') { "" } else { "/" };
                    assert_eq!(path, format!("{parent}{sep}{name}"));
                }
                for child in node["children"].as_array().into_iter().flatten() {
                    stack.push((child.clone(), Some(path.clone())));
                }
            }
        }
        let mut all = Vec::new();
        write_tree(&ix, &q("/"), super::super::ROOT, NOW, &mut all).unwrap();
        let all = String::from_utf8(all).unwrap();
        for (i, name) in ["q\"uo\\te", "ctl\u{1}\n", "é✓", "plain"]
            .iter()
            .enumerate()
        {
            let path = serde_json::to_string(&format!("/a/{name}/{name}{i}")).unwrap();
            assert!(all.contains(&format!("\"path\":{path}")), "{path} in {all}");
        }
        assert!(matches!(
            bound_tree(&ix, &q("/"), 3),
            Err(ViewError::TooLarge { limit: 3, .. })
        ));
    }

    #[test]
    fn full_tree_with_metadata() {
        let t = tree(q("/"));
        assert_eq!(t["path"], "/");
        assert_eq!(t["content_type"], "directory");
        let a = &t["children"][0];
        assert_eq!(a["path"], "/a");
        assert_eq!(
            a["children"][0],
            json!({"name": "x \"q\".txt", "content_type": "file", "path": "/a/x \"q\".txt", "size": 5,
                   "modified_time": 12.0, "created_time": 1.5, "integrity_suspect": false})
        );
        assert_eq!(a["children"][1]["integrity_suspect"], true);
        assert_eq!(t["children"][1]["path"], "/b.txt");
    }

    #[test]
    fn depth_recursion_and_only_path() {
        let t = tree(TreeQuery {
            max_depth: Some(0),
            ..q("/")
        });
        assert!(t.get("children").is_none());
        let t = tree(TreeQuery {
            max_depth: Some(1),
            ..q("/")
        });
        assert!(t["children"][0].get("children").is_none());
        let t = tree(TreeQuery {
            recursive: false,
            ..q("/a")
        });
        assert_eq!(t["children"], json!([]));
        let t = tree(TreeQuery {
            only_path: true,
            ..q("/a")
        });
        assert_eq!(
            t["children"][1],
            json!({"name": "hot", "content_type": "file", "path": "/a/hot"})
        );
        assert!(t.get("size").is_none());
    }

    #[test]
    fn globs() {
        assert!(glob("*", "*x"));
        assert!(glob("a*", "a*b"));
        assert!(glob("file_01*", "file_014.txt"));
        assert!(glob("*.txt", "a.txt"));
        assert!(glob("a?c", "abc"));
        assert!(!glob("a?c", "abbc"));
        assert!(glob("*a*b*", "xxaxxbxx"));
        assert!(!glob("*.log", "a.txt"));
    }

    #[test]
    fn search_by_name_glob_substring_and_path() {
        let ix = ix();
        let run = |p: &str| {
            let mut out = Vec::new();
            write_search(&ix, p, 10, NOW, &mut out).unwrap();
            let v: Value = serde_json::from_slice(&out).unwrap();
            v.as_array()
                .unwrap()
                .iter()
                .map(|n| n["path"].as_str().unwrap().to_string())
                .collect::<Vec<_>>()
        };
        assert_eq!(run("*.txt"), ["/a/x \"q\".txt", "/b.txt"]);
        assert_eq!(run("ho"), ["/a/hot"]);
        assert_eq!(run("/a/*"), ["/a/x \"q\".txt", "/a/hot"]);
        let mut out = Vec::new();
        assert!(matches!(
            write_search(&ix, "*", 2, NOW, &mut out),
            Err(ViewError::TooLarge { .. })
        ));
    }

    #[test]
    fn unknown_paths_and_the_size_guard_apply_to_the_subtree() {
        let ix = ix();
        assert!(matches!(
            check_tree(&ix, &q("/nope"), 100),
            Err(ViewError::NotFound(_))
        ));
        // The whole tree has 6 nodes; /a has 3: a limit of 3 refuses / only.
        assert!(matches!(
            check_tree(&ix, &q("/"), 3),
            Err(ViewError::TooLarge { limit: 3, .. })
        ));
        assert!(check_tree(&ix, &q("/a"), 3).is_ok());
        assert!(
            check_tree(
                &ix,
                &TreeQuery {
                    max_depth: Some(1),
                    ..q("/")
                },
                3
            )
            .is_ok()
        );
    }
}
