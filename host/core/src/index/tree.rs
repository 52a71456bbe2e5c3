//! The hash tree: file-system metadata by path, compact in memory.
//!
//! Nodes live in a slab (`Vec<Node>` plus a free list) and refer to each
//! other by `u32` ids. A `HashTable<u32>` keyed by the hash of the full path
//! finds any node in O(1) without storing full paths: equality walks the
//! node's parent chain comparing names. Each directory keeps its children in
//! a `Vec<u32>`, and each node remembers its position there, so removal is
//! O(1) too.
//!
//! Per file, beyond the name itself: an 80-byte node, about 6 bytes of hash
//! table and 4 bytes in the parent's child list.

use std::hash::BuildHasher;

use hashbrown::HashTable;

/// Id of a node in the slab.
pub type NodeId = u32;

/// The root directory's id; it always exists.
pub const ROOT: NodeId = 0;

const NONE: u32 = u32::MAX;

const FLAG_DIR: u8 = 1;
const FLAG_LIVE: u8 = 2;

/// Metadata of one file or directory.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Meta {
    /// Directory or file.
    pub is_dir: bool,
    /// Size in bytes.
    pub size: u64,
    /// Modification time, seconds since the Unix epoch.
    pub mtime: f64,
    /// Creation time, seconds since the Unix epoch.
    pub ctime: f64,
}

/// One node. Kept small: see the module docs.
#[derive(Debug)]
struct Node {
    name: Box<str>,
    hash: u64,
    size: u64,
    mtime: f64,
    ctime: f64,
    /// Logical time of the last realtime change (0: never).
    realtime_stamp: u64,
    parent: NodeId,
    /// Position in the parent's child list.
    slot: u32,
    /// Index into `Tree::children` for directories, `NONE` otherwise.
    children: u32,
    /// Audit cycle in which the node was last seen (0: never).
    audit_seen: u32,
    flags: u8,
}

/// The tree.
pub struct Tree {
    nodes: Vec<Node>,
    free: Vec<NodeId>,
    children: Vec<Vec<NodeId>>,
    free_children: Vec<u32>,
    table: HashTable<NodeId>,
    hasher: foldhash::fast::FixedState,
    files: usize,
    dirs: usize,
    /// Wide enough that no sum of `u64` sizes overflows it.
    total_size: u128,
}

impl Default for Tree {
    fn default() -> Self {
        Self::new()
    }
}

/// Splits a normalized path into its parent path and its name.
pub fn split_parent(path: &str) -> (&str, &str) {
    match path.rfind('/') {
        Some(0) => ("/", &path[1..]),
        Some(i) => (&path[..i], &path[i + 1..]),
        None => ("/", path),
    }
}

/// Normalizes an agent path: leading `/`, no trailing `/`, no empty, `.` or
/// `..` segments. `None` when the path cannot be made sane.
pub fn normalize(path: &str) -> Option<String> {
    let mut out = String::with_capacity(path.len() + 1);
    for segment in path.split('/') {
        match segment {
            "" | "." => continue,
            ".." => return None,
            s if s.contains('\0') => return None,
            s => {
                out.push('/');
                out.push_str(s);
            }
        }
    }
    if out.is_empty() {
        out.push('/');
    }
    Some(out)
}

impl Tree {
    /// A tree with only the root directory.
    pub fn new() -> Self {
        let hasher = foldhash::fast::FixedState::with_seed(0x5745_4952);
        let mut tree = Self {
            nodes: Vec::new(),
            free: Vec::new(),
            children: Vec::new(),
            free_children: Vec::new(),
            table: HashTable::new(),
            hasher,
            files: 0,
            dirs: 0,
            total_size: 0,
        };
        let hash = tree.hash("/");
        tree.nodes.push(Node {
            name: "".into(),
            hash,
            size: 0,
            mtime: 0.0,
            ctime: 0.0,
            realtime_stamp: 0,
            parent: NONE,
            slot: 0,
            children: 0,
            audit_seen: 0,
            flags: FLAG_DIR | FLAG_LIVE,
        });
        tree.children.push(Vec::new());
        tree.table.insert_unique(hash, ROOT, |_| hash);
        tree
    }

    fn hash(&self, path: &str) -> u64 {
        self.hasher.hash_one(path)
    }

    /// Whether node `id` is at `path`: compares names up the parent chain.
    fn is_at(&self, mut id: NodeId, path: &str) -> bool {
        if path == "/" {
            return id == ROOT;
        }
        for segment in path.rsplit('/') {
            if segment.is_empty() {
                // The leading slash: we must have reached the root.
                return id == ROOT;
            }
            if id == ROOT || id == NONE || *self.nodes[id as usize].name != *segment {
                return false;
            }
            id = self.nodes[id as usize].parent;
        }
        false
    }

    /// The node at a normalized `path`.
    pub fn get(&self, path: &str) -> Option<NodeId> {
        let hash = self.hash(path);
        self.table
            .find(hash, |&id| {
                self.nodes[id as usize].hash == hash && self.is_at(id, path)
            })
            .copied()
    }

    /// Metadata of a node.
    pub fn meta(&self, id: NodeId) -> Meta {
        let n = &self.nodes[id as usize];
        Meta {
            is_dir: n.flags & FLAG_DIR != 0,
            size: n.size,
            mtime: n.mtime,
            ctime: n.ctime,
        }
    }

    /// Name of a node (empty for the root).
    pub fn name(&self, id: NodeId) -> &str {
        &self.nodes[id as usize].name
    }

    /// Whether the node is a directory.
    pub fn is_dir(&self, id: NodeId) -> bool {
        self.nodes[id as usize].flags & FLAG_DIR != 0
    }

    /// Children of a directory, in insertion order (empty for files).
    pub fn children(&self, id: NodeId) -> &[NodeId] {
        match self.nodes[id as usize].children {
            NONE => &[],
            c => &self.children[c as usize],
        }
    }

    /// Parent of a node (`None` for the root).
    pub fn parent(&self, id: NodeId) -> Option<NodeId> {
        Some(self.nodes[id as usize].parent).filter(|&p| p != NONE)
    }

    /// The full path of a node.
    pub fn path(&self, id: NodeId) -> String {
        if id == ROOT {
            return "/".into();
        }
        let mut names = Vec::new();
        let mut cur = id;
        while cur != ROOT && cur != NONE {
            names.push(&*self.nodes[cur as usize].name);
            cur = self.nodes[cur as usize].parent;
        }
        let mut out = String::new();
        for name in names.iter().rev() {
            out.push('/');
            out.push_str(name);
        }
        out
    }

    /// Logical time of the node's last realtime change.
    pub fn realtime_stamp(&self, id: NodeId) -> u64 {
        self.nodes[id as usize].realtime_stamp
    }

    /// Records a realtime change at logical time `stamp`.
    pub fn set_realtime_stamp(&mut self, id: NodeId, stamp: u64) {
        self.nodes[id as usize].realtime_stamp = stamp;
    }

    /// The audit cycle in which the node was last seen.
    pub fn audit_seen(&self, id: NodeId) -> u32 {
        self.nodes[id as usize].audit_seen
    }

    /// Marks the node seen by audit cycle `cycle`.
    pub fn set_audit_seen(&mut self, id: NodeId, cycle: u32) {
        self.nodes[id as usize].audit_seen = cycle;
    }

    /// Number of files.
    pub fn file_count(&self) -> usize {
        self.files
    }

    /// Number of directories, the root included.
    pub fn dir_count(&self) -> usize {
        self.dirs + 1
    }

    /// Sum of file sizes (saturating at `u64::MAX`).
    pub fn total_size(&self) -> u64 {
        u64::try_from(self.total_size).unwrap_or(u64::MAX)
    }

    fn account(&mut self, meta: &Meta, sign: i8) {
        let counter = if meta.is_dir {
            &mut self.dirs
        } else {
            &mut self.files
        };
        if sign > 0 {
            *counter += 1;
            if !meta.is_dir {
                self.total_size += u128::from(meta.size);
            }
        } else {
            *counter -= 1;
            if !meta.is_dir {
                self.total_size -= u128::from(meta.size);
            }
        }
    }

    /// Inserts or updates the node at normalized `path`, creating missing
    /// parent directories (with zeroed metadata). Returns the id and whether
    /// it was new. A file replaced by a directory (or the reverse) keeps its
    /// id; a directory turned file loses its subtree.
    pub fn upsert(&mut self, path: &str, meta: Meta) -> (NodeId, bool) {
        self.upsert_with(path, meta, &mut |_, _, _| {})
    }

    /// [`Self::upsert`], calling `removed(path, meta, id)` for every node a
    /// directory turned file loses, and for a file that becomes a directory
    /// because a path goes through it (its id stays, as a directory).
    pub fn upsert_with(
        &mut self,
        path: &str,
        meta: Meta,
        removed: &mut dyn FnMut(&str, Meta, NodeId),
    ) -> (NodeId, bool) {
        if path == "/" {
            let root = &mut self.nodes[ROOT as usize];
            root.size = meta.size;
            root.mtime = meta.mtime;
            root.ctime = meta.ctime;
            return (ROOT, false);
        }
        if let Some(id) = self.get(path) {
            let old = self.meta(id);
            if old.is_dir && !meta.is_dir {
                for child in self.children(id).to_vec() {
                    self.remove_subtree(child, removed);
                }
                let c = self.nodes[id as usize].children;
                self.free_children.push(c);
                self.nodes[id as usize].children = NONE;
            } else if !old.is_dir && meta.is_dir {
                let c = self.alloc_children();
                self.nodes[id as usize].children = c;
            }
            self.account(&old, -1);
            self.account(&meta, 1);
            let n = &mut self.nodes[id as usize];
            n.size = meta.size;
            n.mtime = meta.mtime;
            n.ctime = meta.ctime;
            n.flags = if meta.is_dir {
                FLAG_DIR | FLAG_LIVE
            } else {
                FLAG_LIVE
            };
            return (id, false);
        }
        // Walk up to the nearest existing ancestor, then create the missing
        // directories downwards: a loop, never recursion, so that a path of
        // any depth costs heap, not stack.
        let mut missing: Vec<&str> = Vec::new();
        let mut above = path;
        let mut parent = loop {
            let (parent_path, _) = split_parent(above);
            missing.push(above);
            if let Some(p) = self.get(parent_path) {
                break p;
            }
            above = parent_path;
        };
        if !self.is_dir(parent) {
            // A file where a directory must be: it becomes the directory
            // (reported as removed, so that what is kept about files is
            // dropped for it).
            let p = self.path(parent);
            let m = self.meta(parent);
            removed(&p, m, parent);
            parent = self.upsert_with(&p, Meta { is_dir: true, ..m }, removed).0;
        }
        let zeroed_dir = Meta {
            is_dir: true,
            size: 0,
            mtime: 0.0,
            ctime: 0.0,
        };
        while let Some(at) = missing.pop() {
            let (_, name) = split_parent(at);
            let m = if missing.is_empty() { meta } else { zeroed_dir };
            parent = self.insert_child(parent, name, self.hash(at), m);
        }
        (parent, true)
    }

    fn alloc_children(&mut self) -> u32 {
        match self.free_children.pop() {
            Some(c) => c,
            None => {
                self.children.push(Vec::new());
                (self.children.len() - 1) as u32
            }
        }
    }

    fn insert_child(&mut self, parent: NodeId, name: &str, hash: u64, meta: Meta) -> NodeId {
        let children = if meta.is_dir {
            self.alloc_children()
        } else {
            NONE
        };
        let parent_list = self.nodes[parent as usize].children as usize;
        let slot = self.children[parent_list].len() as u32;
        let node = Node {
            name: name.into(),
            hash,
            size: meta.size,
            mtime: meta.mtime,
            ctime: meta.ctime,
            realtime_stamp: 0,
            parent,
            slot,
            children,
            audit_seen: 0,
            flags: if meta.is_dir {
                FLAG_DIR | FLAG_LIVE
            } else {
                FLAG_LIVE
            },
        };
        let id = match self.free.pop() {
            Some(id) => {
                self.nodes[id as usize] = node;
                id
            }
            None => {
                self.nodes.push(node);
                (self.nodes.len() - 1) as NodeId
            }
        };
        self.children[parent_list].push(id);
        let nodes = &self.nodes;
        self.table
            .insert_unique(hash, id, |&other| nodes[other as usize].hash);
        self.account(&meta, 1);
        id
    }

    /// Removes the node at `path` and its subtree, calling `removed(path,
    /// meta, id)` for every removed node (children before their directory).
    /// The root is never removed: removing `/` empties it instead.
    pub fn remove(&mut self, path: &str, removed: &mut dyn FnMut(&str, Meta, NodeId)) -> bool {
        let Some(id) = self.get(path) else {
            return false;
        };
        if id == ROOT {
            for child in self.children(ROOT).to_vec() {
                self.remove_subtree(child, removed);
            }
            return true;
        }
        self.remove_subtree(id, removed);
        true
    }

    /// Removes `id` and everything below it, children before their
    /// directory, with an explicit stack (no recursion over input depth).
    fn remove_subtree(&mut self, id: NodeId, removed: &mut dyn FnMut(&str, Meta, NodeId)) {
        // Each entry is a node and whether its children were pushed already.
        let mut stack: Vec<(NodeId, bool)> = vec![(id, false)];
        while let Some((n, expanded)) = stack.pop() {
            if !expanded && !self.children(n).is_empty() {
                stack.push((n, true));
                stack.extend(self.children(n).iter().map(|&c| (c, false)));
                continue;
            }
            let meta = self.meta(n);
            removed(&self.path(n), meta, n);
            self.detach(n);
            self.account(&meta, -1);
        }
    }

    /// Unlinks a (childless) node from its parent, the table and the slab.
    fn detach(&mut self, id: NodeId) {
        let (parent, slot, hash, children) = {
            let n = &self.nodes[id as usize];
            (n.parent, n.slot, n.hash, n.children)
        };
        let list = self.nodes[parent as usize].children as usize;
        let siblings = &mut self.children[list];
        siblings.swap_remove(slot as usize);
        if let Some(&moved) = siblings.get(slot as usize) {
            self.nodes[moved as usize].slot = slot;
        }
        if children != NONE {
            self.children[children as usize] = Vec::new();
            self.free_children.push(children);
        }
        if let Ok(entry) = self.table.find_entry(hash, |&other| other == id) {
            entry.remove();
        }
        let n = &mut self.nodes[id as usize];
        n.name = "".into();
        n.flags = 0;
        n.children = NONE;
        self.free.push(id);
    }

    /// Every live node id below `id` (excluded), depth first.
    pub fn descendants(&self, id: NodeId) -> Vec<NodeId> {
        let mut out = Vec::new();
        let mut stack: Vec<NodeId> = self.children(id).to_vec();
        while let Some(n) = stack.pop() {
            out.push(n);
            stack.extend_from_slice(self.children(n));
        }
        out
    }

    /// Number of nodes in the subtree of `id`, itself included, stopping at
    /// `limit` (so that a size guard costs at most `limit` steps).
    pub fn subtree_len(&self, id: NodeId, limit: usize) -> usize {
        let mut count = 1;
        let mut stack: Vec<NodeId> = self.children(id).to_vec();
        while let Some(n) = stack.pop() {
            count += 1;
            if count >= limit {
                return count;
            }
            stack.extend_from_slice(self.children(n));
        }
        count
    }

    /// Checks the tree's structure; `Err` names the first broken invariant.
    /// For tests and fuzzing: it walks the whole tree.
    ///
    /// Every live node is reachable from the root, found by its own path,
    /// in its parent's child list at its slot; the counters and the total
    /// size equal what the walk finds; the table holds exactly the live
    /// nodes.
    pub fn check(&self) -> Result<(), String> {
        let (mut files, mut dirs, mut total) = (0usize, 0usize, 0u128);
        let mut stack = vec![ROOT];
        let mut seen = 0usize;
        while let Some(id) = stack.pop() {
            seen += 1;
            let n = &self.nodes[id as usize];
            if n.flags & FLAG_LIVE == 0 {
                return Err(format!("node {id} is reachable but not live"));
            }
            let path = self.path(id);
            if self.get(&path) != Some(id) {
                return Err(format!("node {id} is not found at its path {path:?}"));
            }
            if id != ROOT {
                let parent = &self.nodes[n.parent as usize];
                if parent.flags & FLAG_DIR == 0 {
                    return Err(format!("the parent of {path:?} is not a directory"));
                }
                if self.children[parent.children as usize].get(n.slot as usize) != Some(&id) {
                    return Err(format!("{path:?} is not at its slot in its parent"));
                }
                if n.flags & FLAG_DIR != 0 {
                    dirs += 1;
                } else {
                    files += 1;
                    total += u128::from(n.size);
                }
            }
            if n.flags & FLAG_DIR != 0 {
                stack.extend_from_slice(self.children(id));
            } else if n.children != NONE {
                return Err(format!("file {path:?} has a child list"));
            }
        }
        if (files, dirs, total) != (self.files, self.dirs, self.total_size) {
            return Err(format!(
                "counters say {} files, {} dirs, {} bytes; the walk found {files}, {dirs}, {total}",
                self.files, self.dirs, self.total_size
            ));
        }
        if self.table.len() != seen {
            return Err(format!(
                "the table holds {} nodes; {seen} are reachable",
                self.table.len()
            ));
        }
        Ok(())
    }

    /// Whether `id` is a live node.
    pub fn is_live(&self, id: NodeId) -> bool {
        self.nodes
            .get(id as usize)
            .is_some_and(|n| n.flags & FLAG_LIVE != 0)
    }

    /// Bytes of heap the tree uses, names excluded (an estimate for the
    /// memory benchmark).
    pub fn heap_bytes_without_names(&self) -> usize {
        self.nodes.capacity() * std::mem::size_of::<Node>()
            + self.free.capacity() * 4
            + self.children.capacity() * std::mem::size_of::<Vec<NodeId>>()
            + self
                .children
                .iter()
                .map(|c| c.capacity() * 4)
                .sum::<usize>()
            + self.free_children.capacity() * 4
            + self.table.capacity() * (std::mem::size_of::<NodeId>() + 1)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    fn file(size: u64, mtime: f64) -> Meta {
        Meta {
            is_dir: false,
            size,
            mtime,
            ctime: mtime,
        }
    }

    fn dir(mtime: f64) -> Meta {
        Meta {
            is_dir: true,
            size: 4096,
            mtime,
            ctime: mtime,
        }
    }

    #[test]
    fn normalizes_agent_paths() {
        assert_eq!(normalize("/a/b/").as_deref(), Some("/a/b"));
        assert_eq!(normalize("a//b/./c").as_deref(), Some("/a/b/c"));
        assert_eq!(normalize("").as_deref(), Some("/"));
        assert_eq!(normalize("/"), Some("/".into()));
        assert_eq!(normalize("/a/../b"), None);
    }

    #[test]
    fn upsert_creates_missing_parents_and_looks_up_in_constant_time() {
        let mut t = Tree::new();
        let (id, new) = t.upsert("/a/b/c.txt", file(10, 1.0));
        assert!(new);
        assert_eq!(t.get("/a/b/c.txt"), Some(id));
        assert_eq!(t.path(id), "/a/b/c.txt");
        let b = t.get("/a/b").unwrap();
        assert!(t.is_dir(b));
        assert_eq!(t.children(b), &[id]);
        assert_eq!(t.get("/a/b/c"), None);
        assert_eq!(t.get("/b/c.txt"), None);
        assert_eq!((t.file_count(), t.dir_count(), t.total_size()), (1, 3, 10));
        let (same, new) = t.upsert("/a/b/c.txt", file(20, 2.0));
        assert_eq!((same, new), (id, false));
        assert_eq!(t.meta(id).size, 20);
        assert_eq!(t.total_size(), 20);
    }

    #[test]
    fn remove_takes_the_subtree_and_reuses_slots() {
        let mut t = Tree::new();
        t.upsert("/d", dir(1.0));
        for i in 0..5 {
            t.upsert(&format!("/d/f{i}"), file(1, 1.0));
        }
        t.upsert("/d/sub/x", file(1, 1.0));
        t.upsert("/keep", file(7, 1.0));
        let mut removed = Vec::new();
        assert!(t.remove("/d/f2", &mut |p, _, _| removed.push(p.to_string())));
        assert_eq!(removed, ["/d/f2"]);
        // Swap-remove kept every sibling reachable.
        for i in [0, 1, 3, 4] {
            assert!(t.get(&format!("/d/f{i}")).is_some());
        }
        removed.clear();
        t.remove("/d", &mut |p, _, _| removed.push(p.to_string()));
        assert_eq!(removed.len(), 7, "{removed:?}");
        assert_eq!(removed.last().unwrap(), "/d");
        assert_eq!((t.file_count(), t.dir_count(), t.total_size()), (1, 1, 7));
        assert_eq!(t.get("/d/sub/x"), None);
        let before = t.nodes.len();
        t.upsert("/again/x", file(1, 1.0));
        assert_eq!(t.nodes.len(), before, "freed slots are reused");
        assert_eq!(t.path(t.get("/again/x").unwrap()), "/again/x");
    }

    #[test]
    fn type_changes() {
        let mut t = Tree::new();
        t.upsert("/x/y", file(1, 1.0));
        t.upsert("/x", file(3, 2.0));
        assert_eq!(t.get("/x/y"), None);
        assert_eq!((t.file_count(), t.dir_count()), (1, 1));
        t.upsert("/x/z", file(1, 3.0));
        assert!(t.is_dir(t.get("/x").unwrap()));
        assert_eq!((t.file_count(), t.dir_count()), (1, 2));
    }

    /// Runs `f` on a thread with a small stack: recursion over a deep
    /// path would overflow it (and abort the test process).
    pub(crate) fn on_small_stack(f: impl FnOnce() + Send + 'static) {
        std::thread::Builder::new()
            .stack_size(256 * 1024)
            .spawn(f)
            .expect("thread starts")
            .join()
            .expect("no panic");
    }

    #[test]
    fn deep_paths_cost_heap_not_stack() {
        on_small_stack(|| {
            let deep = "/a".repeat(5_000);
            let mut t = Tree::new();
            let (id, new) = t.upsert(&format!("{deep}/f"), file(1, 1.0));
            assert!(new);
            assert_eq!(t.dir_count(), 5_001);
            assert_eq!(t.path(id).len(), deep.len() + 2);
            // A file where a deep directory was: the subtree goes.
            t.upsert("/a/a", file(2, 2.0));
            assert_eq!((t.file_count(), t.dir_count()), (1, 2));
            t.upsert(&format!("{deep}/g"), file(1, 1.0));
            let mut removed = 0;
            assert!(t.remove("/a", &mut |_, _, _| removed += 1));
            assert_eq!(removed, 5_001);
            assert_eq!((t.file_count(), t.dir_count(), t.total_size()), (0, 1, 0));
        });
    }

    #[test]
    fn total_size_saturates_instead_of_overflowing() {
        let mut t = Tree::new();
        t.upsert("/a", file(u64::MAX, 1.0));
        t.upsert("/b", file(u64::MAX, 1.0));
        assert_eq!(t.total_size(), u64::MAX);
        t.remove("/a", &mut |_, _, _| {});
        assert_eq!(t.total_size(), u64::MAX);
        t.remove("/b", &mut |_, _, _| {});
        assert_eq!(t.total_size(), 0);
    }

    #[test]
    fn memory_per_file_is_small() {
        assert!(
            std::mem::size_of::<Node>() <= 80,
            "{}",
            std::mem::size_of::<Node>()
        );
        let mut t = Tree::new();
        for d in 0..100 {
            for f in 0..1000 {
                t.upsert(&format!("/dir{d}/file{f}"), file(f, 1.0));
            }
        }
        let per_file = t.heap_bytes_without_names() / 100_000;
        assert!(per_file < 200, "{per_file} bytes per file");
    }
}
