//! `weir agent --config FILE`: several roots from one TOML file, each a
//! pipe of its own (its own session, task id `<agent id>:<pipe>`, status
//! file), optionally into a datastore of its own. Settings at the top are
//! the defaults of every root; flags on the command line are the defaults
//! of the file's top.
//!
//! ```toml
//! url = "http://weir.example:7070"
//! key_env = "WEIR_INGEST_KEY"
//! state_dir = "/var/lib/weir-agent"
//!
//! [[roots]]
//! path = "/srv/projects"
//! pipe = "projects"
//! datastore = "projects"      # with a host-level ingest key
//! ignore = ["**/*.tmp", ".git"]
//!
//! [[roots]]
//! path = "/srv/scratch"
//! pipe = "scratch"
//! max_depth = 6
//! ```

use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::Deserialize;

use super::AgentArgs;

/// Most roots one file may list.
pub const MAX_ROOTS: usize = 64;

/// Largest agent config file read.
const MAX_FILE_BYTES: u64 = 1 << 20;

/// Settings a root may set, and the file's top may default.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Shared {
    url: Option<String>,
    key_env: Option<String>,
    datastore: Option<String>,
    batch_rows: Option<usize>,
    ignore: Option<Vec<String>>,
    max_depth: Option<usize>,
    follow_symlinks: Option<bool>,
    audit_interval_secs: Option<f64>,
    sentinel_interval_secs: Option<f64>,
    queue_paths: Option<usize>,
    walk_threads: Option<usize>,
}

/// One `[[roots]]` entry.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Root {
    path: PathBuf,
    pipe: String,
    #[serde(flatten)]
    shared: Shared,
}

/// The file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    state_dir: Option<PathBuf>,
    #[serde(flatten)]
    shared: Shared,
    roots: Vec<Root>,
}

/// The arguments of every root of the file at `path`, each the command
/// line's `args` with the file's top and then the root's own settings laid
/// over them. Says which root is wrong, and why.
pub fn roots(args: &AgentArgs, path: &Path) -> anyhow::Result<Vec<AgentArgs>> {
    let len = std::fs::metadata(path)
        .with_context(|| format!("cannot read the agent config {}", path.display()))?
        .len();
    anyhow::ensure!(
        len <= MAX_FILE_BYTES,
        "the agent config {} is larger than 1 MiB",
        path.display()
    );
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the agent config {}", path.display()))?;
    let file: File =
        toml::from_str(&text).with_context(|| format!("agent config {}", path.display()))?;
    anyhow::ensure!(
        !file.roots.is_empty(),
        "the agent config {} lists no [[roots]]",
        path.display()
    );
    anyhow::ensure!(
        file.roots.len() <= MAX_ROOTS,
        "the agent config {} lists {} roots; at most {MAX_ROOTS}",
        path.display(),
        file.roots.len()
    );
    let mut top = args.clone();
    top.config = None;
    if let Some(d) = file.state_dir {
        top.state_dir = Some(d);
    }
    lay(&mut top, file.shared);
    let mut out: Vec<AgentArgs> = Vec::new();
    for (i, root) in file.roots.into_iter().enumerate() {
        anyhow::ensure!(
            !out.iter().any(|a| a.pipe == root.pipe),
            "roots[{i}]: pipe `{}` is given twice (each root needs its own)",
            root.pipe
        );
        let mut a = top.clone();
        a.root = Some(root.path);
        a.pipe = root.pipe;
        lay(&mut a, root.shared);
        out.push(a);
    }
    Ok(out)
}

/// Lays the settings `s` gives over `a`.
fn lay(a: &mut AgentArgs, s: Shared) {
    let Shared {
        url,
        key_env,
        datastore,
        batch_rows,
        ignore,
        max_depth,
        follow_symlinks,
        audit_interval_secs,
        sentinel_interval_secs,
        queue_paths,
        walk_threads,
    } = s;
    a.url = url.unwrap_or(std::mem::take(&mut a.url));
    a.key_env = key_env.unwrap_or(std::mem::take(&mut a.key_env));
    a.datastore = datastore.or(a.datastore.take());
    a.batch_rows = batch_rows.unwrap_or(a.batch_rows);
    a.ignore = ignore.unwrap_or(std::mem::take(&mut a.ignore));
    a.max_depth = max_depth.or(a.max_depth);
    a.follow_symlinks = follow_symlinks.unwrap_or(a.follow_symlinks);
    a.audit_interval_secs = audit_interval_secs.or(a.audit_interval_secs);
    a.sentinel_interval_secs = sentinel_interval_secs.or(a.sentinel_interval_secs);
    a.queue_paths = queue_paths.unwrap_or(a.queue_paths);
    a.walk_threads = walk_threads.or(a.walk_threads);
}
