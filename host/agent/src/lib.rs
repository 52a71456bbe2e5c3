//! `weir agent` (and the `weir-agent` binary): a file-system agent that
//! speaks the Fustor 0.8.17 wire protocol (to `weir serve` and to
//! fustor-fusion alike).
//!
//! One session at a time: it creates one (task id `<agent id>:<pipe>`, the
//! agent id kept in the state directory), heartbeats at the interval the
//! server answers, walks the root and streams the snapshot in batches
//! (memory bounded by a few batches whatever the tree), ends it, and then
//! sends what the file system reports (inotify through `notify`), coalesced.
//! A 419 (session unknown, obsolete or expired) or a lost watch makes it
//! start over with a new session and a new snapshot: nothing is lost
//! silently. Network errors back off with jitter. Rows the server rejects
//! are logged once per reason and dropped, never retried.

pub mod cli;
mod file;
mod realtime;
mod walk;

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use serde_json::{Value, json};

pub use walk::{Filter, default_threads as default_walk_threads};

/// `weir agent` flags.
#[derive(Debug, Clone, clap::Args)]
pub struct AgentArgs {
    /// Base URL of the server (`weir serve` or fustor-fusion).
    #[arg(long, env = "WEIR_URL", default_value = "http://127.0.0.1:7070")]
    pub url: String,
    /// The environment variable that holds the ingest key.
    #[arg(long, default_value = "WEIR_INGEST_KEY")]
    pub key_env: String,
    /// `status`: print what the running agent of this state directory and
    /// pipe last reported, and exit.
    #[command(subcommand)]
    pub command: Option<AgentCommand>,
    /// The directory to sync.
    #[arg(long)]
    pub root: Option<PathBuf>,
    /// A TOML file of several roots, each a pipe of its own (see the
    /// README's "Deploying the agent"); instead of `--root`.
    #[arg(long, conflicts_with = "root")]
    pub config: Option<PathBuf>,
    /// The datastore to sync into, named to `weir serve` in the
    /// `X-Weir-Datastore` header (a host-level ingest key may name any; a
    /// datastore's key only its own). Default: the key's own datastore.
    #[arg(long)]
    pub datastore: Option<String>,
    /// The pipe's name: the task id is `<agent id>:<pipe>`.
    #[arg(long, default_value = "default")]
    pub pipe: String,
    /// Where the agent keeps its id (`agent.id`); default: the user's
    /// state directory (`$XDG_STATE_HOME/weir-agent` or
    /// `~/.local/state/weir-agent`).
    #[arg(long)]
    pub state_dir: Option<PathBuf>,
    /// Rows per request.
    #[arg(long, default_value_t = 1000)]
    pub batch_rows: usize,
    /// Glob of paths (relative to the root, such as `**/*.tmp` or `.git`)
    /// to leave out, with what is below them; repeat for more.
    #[arg(long = "ignore")]
    pub ignore: Vec<String>,
    /// Deepest level below the root to sync (the root is 0).
    #[arg(long)]
    pub max_depth: Option<usize>,
    /// Follow symbolic links (they are synced as links otherwise).
    #[arg(long)]
    pub follow_symlinks: bool,
    /// Seconds between audits (default: what the server answers).
    #[arg(long)]
    pub audit_interval_secs: Option<f64>,
    /// Seconds between sentinel checks (default: what the server answers).
    #[arg(long)]
    pub sentinel_interval_secs: Option<f64>,
    /// File-system signals waiting to be sent, at most (16 to 10,000,000);
    /// beyond, the agent rescans the tree.
    #[arg(long, default_value_t = realtime::QUEUE)]
    pub queue_paths: usize,
    /// Threads that walk the tree (1 to 64; default: half the CPUs, 1 to
    /// 8, leaving the rest to the file server's clients). More can help
    /// on network file systems, where each lookup waits on the server.
    #[arg(long)]
    pub walk_threads: Option<usize>,
}

/// `weir agent` subcommands.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum AgentCommand {
    /// Print the running agent's status (session, rows sent, lag, last
    /// error) from its state directory.
    Status,
}

/// What the agent reports about itself, in `status-PIPE.json` of its state
/// directory (rewritten every few seconds), for `weir agent status`.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct Status {
    /// `<agent id>:<pipe>`.
    pub task_id: String,
    /// The server.
    pub url: String,
    /// The directory synced.
    pub root: String,
    /// `connecting`, `snapshot`, `realtime` or `stopped`.
    pub state: String,
    /// The current session, if any.
    pub session_id: Option<String>,
    /// Sessions made since the start.
    pub sessions: u64,
    /// Rows the server accepted since the start.
    pub rows_sent: u64,
    /// Requests that carried them.
    pub requests: u64,
    /// Milliseconds between the oldest change waiting and now (0: none
    /// waits).
    pub lag_ms: u64,
    /// The last error, if any.
    pub last_error: Option<String>,
    /// Rescans since the start (file-system events were lost).
    #[serde(default)]
    pub rescans: u64,
    /// Directories that cannot be watched now (no permission, the inotify
    /// watch limit); audits list them in full.
    #[serde(default)]
    pub unwatched_dirs: u64,
    /// When this was written, ms since the Unix epoch.
    pub updated_ms: u64,
}

/// The status file of `pipe` in `state`.
pub fn status_file(state: &Path, pipe: &str) -> PathBuf {
    state.join(format!("status-{pipe}.json"))
}

/// The state directory `args` name, or the default one.
pub fn state_dir(args: &AgentArgs) -> anyhow::Result<PathBuf> {
    match &args.state_dir {
        Some(d) => Ok(d.clone()),
        None => default_state_dir().context("no state directory: set --state-dir (or HOME)"),
    }
}

/// What a run needs, resolved from the flags.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// Server base URL, without a trailing slash.
    pub url: String,
    /// The ingest key.
    pub key: String,
    /// The directory synced.
    pub root: PathBuf,
    /// `<agent id>:<pipe>`.
    pub task_id: String,
    /// Rows per request (1 to 10,000).
    pub batch_rows: usize,
    /// What is left out.
    pub filter: Filter,
    /// Threads per walk.
    pub walk_threads: usize,
    /// Audit and sentinel intervals that override the server's.
    pub audit_every: Option<Duration>,
    /// See `audit_every`.
    pub sentinel_every: Option<Duration>,
    /// Where the status is written.
    pub status_file: PathBuf,
    /// Signals waiting between the watcher and the sender, at most.
    pub queue_paths: usize,
    /// The datastore named in every request, if any.
    pub datastore: Option<String>,
}

impl AgentConfig {
    /// How this agent's walks go.
    fn walking(&self) -> walk::Walking {
        walk::Walking {
            filter: self.filter.clone(),
            batch: self.batch_rows,
            threads: self.walk_threads,
        }
    }

    /// Resolves `args` (reading the key from the environment through `env`,
    /// and the agent id from the state directory, made on first use).
    pub fn resolve(args: &AgentArgs, env: &dyn Fn(&str) -> Option<String>) -> anyhow::Result<Self> {
        let key = env(&args.key_env)
            .filter(|k| !k.is_empty())
            .with_context(|| format!("no ingest key: set {}", args.key_env))?;
        let root = args
            .root
            .as_ref()
            .context("--root is needed: the directory to sync")?;
        let root = root
            .canonicalize()
            .with_context(|| format!("cannot open the root {}", root.display()))?;
        anyhow::ensure!(
            root.is_dir(),
            "the root {} is not a directory",
            root.display()
        );
        anyhow::ensure!(
            (1..=10_000).contains(&args.batch_rows),
            "--batch-rows must be 1 to 10000"
        );
        anyhow::ensure!(
            !args.pipe.is_empty()
                && args.pipe.len() <= 64
                && args
                    .pipe
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.')),
            "--pipe must be 1 to 64 letters, digits, `-`, `_` or `.`"
        );
        let state = state_dir(args)?;
        let id = agent_id(&state)?;
        Ok(Self {
            url: args.url.trim_end_matches('/').to_string(),
            key,
            root,
            task_id: format!("{id}:{}", args.pipe),
            batch_rows: args.batch_rows,
            filter: Filter::new(&args.ignore, args.max_depth, args.follow_symlinks)?,
            walk_threads: match args.walk_threads {
                Some(n) => {
                    anyhow::ensure!(
                        (1..=walk::MAX_WALK_THREADS).contains(&n),
                        "--walk-threads must be 1 to {}",
                        walk::MAX_WALK_THREADS
                    );
                    n
                }
                None => walk::default_threads(),
            },
            audit_every: interval(args.audit_interval_secs, "--audit-interval-secs")?,
            sentinel_every: interval(args.sentinel_interval_secs, "--sentinel-interval-secs")?,
            datastore: match &args.datastore {
                Some(d) => {
                    anyhow::ensure!(
                        !d.is_empty()
                            && d.len() <= 64
                            && d.bytes()
                                .all(|b| b.is_ascii_alphanumeric()
                                    || matches!(b, b'-' | b'_' | b'.')),
                        "--datastore must be 1 to 64 letters, digits, `-`, `_` or `.`"
                    );
                    Some(d.clone())
                }
                None => None,
            },
            queue_paths: {
                anyhow::ensure!(
                    (16..=10_000_000).contains(&args.queue_paths),
                    "--queue-paths must be 16 to 10000000"
                );
                args.queue_paths
            },
            status_file: status_file(&state, &args.pipe),
        })
    }
}

/// The runs `args` ask for: one per root of `--config`, or the one of
/// `--root`. Says which root is wrong.
pub fn resolve_all(
    args: &AgentArgs,
    env: &dyn Fn(&str) -> Option<String>,
) -> anyhow::Result<Vec<AgentConfig>> {
    let Some(path) = &args.config else {
        return Ok(vec![AgentConfig::resolve(args, env)?]);
    };
    file::roots(args, path)?
        .iter()
        .map(|a| {
            AgentConfig::resolve(a, env)
                .with_context(|| format!("{}: the root of pipe `{}`", path.display(), a.pipe))
        })
        .collect()
}

/// The pipes `args` run (those of `--config`, or `--pipe`), with the state
/// directory of each.
pub fn pipes(args: &AgentArgs) -> anyhow::Result<Vec<(PathBuf, String)>> {
    match &args.config {
        Some(path) => file::roots(args, path)?
            .iter()
            .map(|a| Ok((state_dir(a)?, a.pipe.clone())))
            .collect(),
        None => Ok(vec![(state_dir(args)?, args.pipe.clone())]),
    }
}

/// Runs every config at once until `shutdown` resolves; the first error
/// is the answer (the others go on until shutdown).
pub async fn run_all(
    configs: Vec<AgentConfig>,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let runs = configs.into_iter().map(|c| {
        let mut stopped = stopped.clone();
        run(c, async move {
            let _ = stopped.wait_for(|s| *s).await;
        })
    });
    let all = futures_util::future::join_all(runs);
    tokio::pin!(all, shutdown);
    let results = tokio::select! {
        results = &mut all => results,
        () = &mut shutdown => {
            let _ = stop.send(true);
            all.await
        }
    };
    results.into_iter().collect::<anyhow::Result<Vec<()>>>()?;
    Ok(())
}

/// An interval flag: 0.1 s to a day.
fn interval(secs: Option<f64>, flag: &str) -> anyhow::Result<Option<Duration>> {
    match secs {
        None => Ok(None),
        Some(s) if (0.1..=86_400.0).contains(&s) => Ok(Some(Duration::from_secs_f64(s))),
        Some(s) => anyhow::bail!("{flag} must be 0.1 to 86400, not {s}"),
    }
}

fn default_state_dir() -> Option<PathBuf> {
    std::env::var_os("XDG_STATE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/state")))
        .map(|d| d.join("weir-agent"))
}

/// The agent's id: read from `state/agent.id`, or made and written there.
fn agent_id(state: &Path) -> anyhow::Result<String> {
    let file = state.join("agent.id");
    if let Ok(id) = std::fs::read_to_string(&file) {
        let id = id.trim();
        if !id.is_empty() && id.len() <= 64 && !id.contains(':') {
            return Ok(id.to_string());
        }
    }
    std::fs::create_dir_all(state)
        .with_context(|| format!("cannot create the state directory {}", state.display()))?;
    let id = uuid::Uuid::new_v4().to_string();
    std::fs::write(&file, format!("{id}\n"))
        .with_context(|| format!("cannot write {}", file.display()))?;
    Ok(id)
}

/// Why a session ended.
#[derive(Debug)]
enum End {
    /// Shut down: the session was deleted.
    Shutdown,
    /// Start over with a new session (and snapshot).
    Again(String),
    /// The server refused a request for good (a 4xx other than 419): the
    /// session is deleted and the next one waits, with growing backoff,
    /// so that a server that refuses everything is not flooded.
    Refused(String),
}

/// The largest server answer the agent reads (a sentinel task lists at
/// most 1,000 paths; anything larger is refused, not buffered).
const MAX_ANSWER_BYTES: usize = 16 << 20;

/// Most on-demand scan commands waiting for the session's work loop (the
/// server keeps at most 100 pending).
const MAX_WAITING_SCANS: usize = 256;

/// The connection to the server: what every request needs.
#[derive(Clone)]
struct Conn {
    http: reqwest::Client,
    /// Base URL, without a trailing slash.
    url: String,
    key: String,
    /// Sent as `X-Weir-Datastore`.
    datastore: Option<String>,
}

/// The session client.
struct Client {
    conn: Conn,
    config: AgentConfig,
    /// What `weir agent status` shows (shared with the writer task).
    status: std::sync::Arc<std::sync::Mutex<Status>>,
    /// Rejection reasons already logged.
    rejections: std::collections::HashSet<String>,
}

/// A `scan` command of a heartbeat answer.
#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
struct ScanCommand {
    path: String,
    #[serde(default = "yes")]
    recursive: bool,
    #[serde(default)]
    job_id: Option<String>,
}

fn yes() -> bool {
    true
}

/// A request body: a value, or JSON already written (a push of walk rows).
enum Body {
    Json(Value),
    Raw(bytes::Bytes),
}

/// The fields of the rows a walk writes (Fusion requires an event's
/// `fields`; the published agent lists its rows' keys).
const WALK_FIELDS: &str =
    r#"["path","file_name","size","modified_time","created_time","is_directory"]"#;

/// The same for an audit walk's rows, which may carry three more.
const AUDIT_FIELDS: &str = r#"["path","file_name","size","modified_time","created_time","is_directory","audit_skipped","parent_mtime","parent_path"]"#;

/// How a request went.
enum Answer {
    Ok(Value),
    /// 419: the session may not act.
    Gone(String),
    /// Network error or 5xx: try again later.
    Retry(String),
    /// Another 4xx: this request will not be taken.
    Refused(String),
}

/// The body of `resp`, at most `cap` bytes.
async fn read_capped(mut resp: reqwest::Response, cap: usize) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(|e| e.to_string())? {
        if out.len() + chunk.len() > cap {
            return Err(format!("the answer is larger than {cap} bytes"));
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

impl Conn {
    async fn request(&self, method: reqwest::Method, path: &str, body: Option<&Body>) -> Answer {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.url))
            .header("X-API-Key", &self.key)
            .timeout(Duration::from_secs(60));
        if let Some(d) = &self.datastore {
            req = req.header("X-Weir-Datastore", d);
        }
        match body {
            Some(Body::Json(v)) => {
                req = req
                    .header(reqwest::header::CONTENT_TYPE, "application/json")
                    .body(serde_json::to_vec(v).unwrap_or_default())
            }
            Some(Body::Raw(b)) => {
                req = req
                    .header(reqwest::header::CONTENT_TYPE, "application/json")
                    .body(b.clone())
            }
            None => {}
        }
        match req.send().await {
            Err(e) => Answer::Retry(format!("cannot reach {}: {e}", self.url)),
            Ok(resp) => {
                let status = resp.status();
                let body: Value = match read_capped(resp, MAX_ANSWER_BYTES).await {
                    Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or(Value::Null),
                    Err(why) => return Answer::Retry(format!("{status}: {why}")),
                };
                if status.is_success() {
                    Answer::Ok(body)
                } else if status.as_u16() == 419 || status.as_u16() == 404 {
                    Answer::Gone(format!("{status}: {}", detail(&body)))
                } else if status.is_server_error() || status.as_u16() == 429 {
                    Answer::Retry(format!("{status}: {}", detail(&body)))
                } else {
                    // 4xx: the server refuses this request for good; the
                    // session starts over rather than looping on it.
                    Answer::Refused(format!("refused, {status}: {}", detail(&body)))
                }
            }
        }
    }
}

impl Client {
    async fn request(&self, method: reqwest::Method, path: &str, body: Option<&Body>) -> Answer {
        self.conn.request(method, path, body).await
    }

    /// Pushes `rows` (`(event_type, row)`) of `source` in session `sid`;
    /// waits out 503s and network errors (bounded backoff), so rows are
    /// never dropped for a busy server.
    async fn push(
        &mut self,
        sid: &str,
        source: &str,
        rows: Vec<(&'static str, Value)>,
        is_end: bool,
    ) -> Result<(), End> {
        let now_ms = weir_core::time::now_ms();
        // Consecutive rows of one kind form one event.
        let mut events: Vec<Value> = Vec::new();
        let message_source = if source == "message" {
            "realtime"
        } else {
            source
        };
        let count = rows.len();
        for (kind, row) in rows {
            let same = events
                .last()
                .is_some_and(|e: &Value| e["event_type"] == kind);
            if !same {
                events.push(
                    json!({"event_type": kind, "event_schema": "fs", "table": "files",
                    "index": now_ms, "message_source": message_source, "fields": [], "rows": []}),
                );
            }
            let Some(event) = events.last_mut() else {
                continue;
            };
            // `fields`: the keys of the event's rows, in first-seen order.
            if let (Some(keys), Value::Array(fields)) = (row.as_object(), &mut event["fields"]) {
                for k in keys.keys() {
                    if !fields.iter().any(|f| f == k) {
                        fields.push(json!(k));
                    }
                }
            }
            if let Value::Array(list) = &mut event["rows"] {
                list.push(row);
            }
        }
        let body =
            json!({"session_id": sid, "source_type": source, "is_end": is_end, "events": events});
        self.send_push(sid, Body::Json(body), count, now_ms).await
    }

    /// Pushes the walk rows `rows` of `source` (`snapshot`, `audit`,
    /// `on_demand_job`) in session `sid`, as one `update` event written
    /// around the rows' JSON.
    async fn push_rows(
        &mut self,
        sid: &str,
        source: &str,
        rows: walk::Rows,
        is_end: bool,
    ) -> Result<(), End> {
        let now_ms = weir_core::time::now_ms();
        let mut body = Vec::with_capacity(rows.json.len() + 512);
        body.extend_from_slice(b"{\"session_id\":");
        walk::json_str(&mut body, sid);
        body.extend_from_slice(b",\"source_type\":");
        walk::json_str(&mut body, source);
        body.extend_from_slice(if is_end {
            b",\"is_end\":true,\"events\":["
        } else {
            b",\"is_end\":false,\"events\":["
        });
        if rows.n > 0 {
            let fields = if source == "audit" {
                AUDIT_FIELDS
            } else {
                WALK_FIELDS
            };
            body.extend_from_slice(b"{\"event_type\":\"update\",\"event_schema\":\"fs\",\"table\":\"files\",\"index\":");
            body.extend_from_slice(now_ms.to_string().as_bytes());
            body.extend_from_slice(b",\"message_source\":");
            walk::json_str(&mut body, source);
            body.extend_from_slice(b",\"fields\":");
            body.extend_from_slice(fields.as_bytes());
            body.extend_from_slice(b",\"rows\":[");
            body.extend_from_slice(&rows.json);
            body.extend_from_slice(b"]}");
        }
        body.extend_from_slice(b"]}");
        self.send_push(sid, Body::Raw(body.into()), rows.n, now_ms)
            .await
    }

    /// Sends push `body` of `count` rows (made at `now_ms`); waits out 503s
    /// and network errors.
    async fn send_push(
        &mut self,
        sid: &str,
        body: Body,
        count: usize,
        now_ms: u64,
    ) -> Result<(), End> {
        let path = format!("/api/v1/pipe/ingest/{sid}/events");
        let mut backoff = Backoff::new();
        loop {
            match self
                .request(reqwest::Method::POST, &path, Some(&body))
                .await
            {
                Answer::Ok(answer) => {
                    self.report(|s| {
                        s.rows_sent += count as u64;
                        s.requests += 1;
                        s.lag_ms = weir_core::time::now_ms().saturating_sub(now_ms);
                    });
                    self.log_rejections(&answer);
                    return Ok(());
                }
                Answer::Gone(why) => return Err(End::Again(why)),
                Answer::Refused(why) => return Err(End::Refused(why)),
                Answer::Retry(why) => backoff.wait(&why).await,
            }
        }
    }

    /// One audit cycle: `audit/start`, the audit walk (directories whose
    /// mtime did not move since the last audit are skipped), an empty
    /// `is_end` batch, `audit/end`. Answers the updated mtime cache.
    async fn audit(&mut self, sid: &str, cache: walk::MtimeCache) -> Result<walk::MtimeCache, End> {
        self.signal("/api/v1/pipe/consistency/audit/start").await?;
        let (mut rows, done) = walk::audit(self.config.root.clone(), self.config.walking(), cache);
        let mut n = 0usize;
        while let Some(batch) = rows.recv().await {
            n += batch.n;
            self.push_rows(sid, "audit", batch, false).await?;
        }
        self.push_rows(sid, "audit", walk::Rows::default(), true)
            .await?;
        self.signal("/api/v1/pipe/consistency/audit/end").await?;
        tracing::debug!(rows = n, "audit sent");
        Ok(done.await.unwrap_or_default())
    }

    /// An on-demand scan the server asked for: the rows of `cmd.path` (a
    /// delete row when it is gone), then `job_complete`. A path that is not
    /// a clean path below the root, or that the filter leaves out, is
    /// reported complete with no rows.
    async fn scan_job(&mut self, sid: &str, cmd: &ScanCommand) -> Result<(), End> {
        let rel = cmd.path.strip_prefix('/').unwrap_or("\0");
        let clean = cmd.path == "/"
            || (!rel.contains('\0')
                && !rel
                    .split('/')
                    .any(|c| c.is_empty() || c == "." || c == ".."));
        let local = self.config.root.join(rel);
        let started = std::time::Instant::now();
        let mut n = 0usize;
        if !clean {
            tracing::warn!(path = %weir_core::text::echo(&cmd.path), "an on-demand scan of a path that is not clean is answered without rows");
        } else if self.config.filter.skips(rel, walk::depth(&cmd.path)) {
            tracing::info!(path = %cmd.path, "an on-demand scan of an ignored path is answered without rows");
        } else {
            match std::fs::symlink_metadata(&local) {
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    n = 1;
                    let gone = vec![(
                        "delete",
                        json!({"path": cmd.path, "file_name": rel.rsplit('/').next()}),
                    )];
                    self.push(sid, "on_demand_job", gone, false).await?;
                }
                Err(e) => tracing::warn!(path = %cmd.path, "on-demand scan: {e}"),
                Ok(_) => {
                    let mut rows = walk::scan(
                        self.config.root.clone(),
                        local,
                        cmd.recursive,
                        self.config.walking(),
                    );
                    while let Some(batch) = rows.recv().await {
                        n += batch.n;
                        self.push_rows(sid, "on_demand_job", batch, false).await?;
                    }
                }
            }
        }
        let mut metadata = json!({"scan_path": cmd.path});
        if let Some(id) = &cmd.job_id {
            metadata["job_id"] = json!(id);
        }
        let body = json!({"session_id": sid, "events": [], "source_type": "job_complete",
            "is_end": false, "metadata": metadata});
        self.send_push(sid, Body::Json(body), 0, weir_core::time::now_ms())
            .await?;
        tracing::info!(job = ?cmd.job_id, path = %weir_core::text::echo(&cmd.path), rows = n, secs = started.elapsed().as_secs_f64(), "on-demand scan done");
        Ok(())
    }

    /// Asks for the sentinel's tasks and answers what the file system says
    /// of each path.
    async fn sentinel(&mut self) -> Result<(), End> {
        let tasks = self
            .signal_get("/api/v1/pipe/consistency/sentinel/tasks")
            .await?;
        let Some(paths) = tasks["paths"].as_array() else {
            return Ok(());
        };
        let mut updates = Vec::new();
        for p in paths.iter().filter_map(Value::as_str).take(10_000) {
            let local = self.config.root.join(p.trim_start_matches('/'));
            // Only paths below the root (no `..` from a hostile server).
            if p.split('/').any(|c| c == "..") {
                continue;
            }
            updates.push(match std::fs::symlink_metadata(&local) {
                Ok(m) => {
                    let r = walk::row(p, &m);
                    json!({"path": p, "mtime": r["modified_time"], "size": r["size"], "status": "exists"})
                }
                Err(_) => json!({"path": p, "status": "missing"}),
            });
        }
        if updates.is_empty() {
            return Ok(());
        }
        let body = json!({"type": "suspect_update", "updates": updates});
        self.signal_with(
            "/api/v1/pipe/consistency/sentinel/feedback",
            reqwest::Method::POST,
            Some(&Body::Json(body)),
        )
        .await
        .map(|_| ())
    }

    async fn signal(&self, path: &str) -> Result<Value, End> {
        self.signal_with(path, reqwest::Method::POST, None).await
    }

    async fn signal_get(&self, path: &str) -> Result<Value, End> {
        self.signal_with(path, reqwest::Method::GET, None).await
    }

    /// A request that waits out a busy server (bounded backoff).
    async fn signal_with(
        &self,
        path: &str,
        method: reqwest::Method,
        body: Option<&Body>,
    ) -> Result<Value, End> {
        let mut backoff = Backoff::new();
        loop {
            match self.request(method.clone(), path, body).await {
                Answer::Ok(v) => return Ok(v),
                Answer::Gone(why) => return Err(End::Again(why)),
                Answer::Refused(why) => return Err(End::Refused(why)),
                Answer::Retry(why) => {
                    self.report(|s| s.last_error = Some(why.clone()));
                    backoff.wait(&why).await
                }
            }
        }
    }

    /// Updates the status.
    fn report(&self, f: impl FnOnce(&mut Status)) {
        f(&mut self
            .status
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner));
    }

    /// Logs each new rejection reason once; the rows are dropped.
    fn log_rejections(&mut self, answer: &Value) {
        let Some(list) = answer["rejected"].as_array() else {
            return;
        };
        for r in list {
            let reason = r["reason"].as_str().unwrap_or("no reason").to_string();
            if self.rejections.len() < 1000 && self.rejections.insert(reason.clone()) {
                tracing::warn!(rejected = %r, "the server rejected a row (dropped; this reason is logged once): {reason}");
            }
        }
    }
}

fn detail(body: &Value) -> String {
    body["detail"]
        .as_str()
        .map(str::to_string)
        .unwrap_or_else(|| weir_core::text::clip(&body.to_string(), 200).into_owned())
}

/// Exponential backoff with jitter, 0.2 s to 30 s.
struct Backoff(Duration);

impl Backoff {
    fn new() -> Self {
        Self(Duration::from_millis(200))
    }

    async fn wait(&mut self, why: &str) {
        let jitter = rand::random::<f64>() * 0.5 + 0.75;
        let d = self.0.mul_f64(jitter);
        tracing::warn!("{why}; retrying in {} ms", d.as_millis());
        tokio::time::sleep(d).await;
        self.0 = (self.0 * 2).min(Duration::from_secs(30));
    }
}

/// Runs the agent until `shutdown` resolves.
pub async fn run(
    config: AgentConfig,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    let status = std::sync::Arc::new(std::sync::Mutex::new(Status {
        task_id: config.task_id.clone(),
        url: config.url.clone(),
        root: config.root.display().to_string(),
        state: "connecting".into(),
        ..Status::default()
    }));
    let writer = tokio::spawn(write_status(status.clone(), config.status_file.clone()));
    let mut client = Client {
        conn: Conn {
            http: reqwest::Client::new(),
            url: config.url.clone(),
            key: config.key.clone(),
            datastore: config.datastore.clone(),
        },
        config,
        status,
        rejections: Default::default(),
    };
    let result = run_sessions(&mut client, shutdown).await;
    writer.abort();
    client.report(|s| s.state = "stopped".into());
    let text = serde_json::to_vec_pretty(
        &*client
            .status
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner),
    )?;
    let _ = std::fs::write(&client.config.status_file, text);
    result
}

/// Writes the status file every 2 s.
async fn write_status(status: std::sync::Arc<std::sync::Mutex<Status>>, file: PathBuf) {
    loop {
        let text = {
            let mut s = status
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            s.updated_ms = weir_core::time::now_ms();
            serde_json::to_vec_pretty(&*s).unwrap_or_default()
        };
        // Written whole, then renamed: a reader never sees half a file.
        let tmp = file.with_extension("json.tmp");
        if std::fs::write(&tmp, text)
            .and_then(|()| std::fs::rename(&tmp, &file))
            .is_err()
        {
            tracing::warn!(file = %file.display(), "cannot write the status file");
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

/// Sessions, one after the other, until `shutdown`.
async fn run_sessions(
    client: &mut Client,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    tokio::pin!(shutdown);
    let mut backoff = Backoff::new();
    // Grows while sessions end in refusals; reset by a session that lasts.
    let mut refusals = Backoff::new();
    loop {
        let session = tokio::select! {
            () = &mut shutdown => return Ok(()),
            s = create_session(client) => s,
        };
        let (sid, timing) = match session {
            Ok(s) => s,
            Err(why) => {
                client.report(|s| {
                    s.state = "connecting".into();
                    s.last_error = Some(why.clone());
                });
                tokio::select! {
                    () = &mut shutdown => return Ok(()),
                    () = backoff.wait(&why) => continue,
                }
            }
        };
        backoff = Backoff::new();
        tracing::info!(session = %sid, "session created");
        client.report(|s| {
            s.session_id = Some(sid.clone());
            s.sessions += 1;
            s.state = "snapshot".into();
        });
        let began = std::time::Instant::now();
        let ended = tokio::select! {
            () = &mut shutdown => End::Shutdown,
            end = serve_session(client, &sid, timing) => end,
        };
        if began.elapsed() > Duration::from_secs(60) {
            refusals = Backoff::new();
        }
        match ended {
            End::Shutdown => {
                let path = format!("/api/v1/pipe/session/{sid}");
                let _ = client.request(reqwest::Method::DELETE, &path, None).await;
                let (rows, requests) = {
                    let s = client
                        .status
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner);
                    (s.rows_sent, s.requests)
                };
                tracing::info!(rows, requests, "agent stopped; session deleted");
                return Ok(());
            }
            End::Again(why) => {
                tracing::warn!(session = %sid, "starting over with a new session: {why}");
                client.report(|s| {
                    s.state = "connecting".into();
                    s.session_id = None;
                    s.last_error = Some(why.clone());
                });
            }
            End::Refused(why) => {
                // The session is left behind: end it rather than let it
                // expire, then wait before the next.
                let path = format!("/api/v1/pipe/session/{sid}");
                let _ = client.request(reqwest::Method::DELETE, &path, None).await;
                client.report(|s| {
                    s.state = "connecting".into();
                    s.session_id = None;
                    s.last_error = Some(why.clone());
                });
                let why = format!(
                    "the server refused a request of session {sid}: {why}; starting over with a new session"
                );
                tokio::select! {
                    () = &mut shutdown => return Ok(()),
                    () = refusals.wait(&why) => {}
                }
            }
        }
    }
}

/// A walk's progress: a spinner with the count and the rate on a
/// terminal, a log line every 5 s otherwise.
struct Progress {
    what: &'static str,
    bar: Option<indicatif::ProgressBar>,
    entries: u64,
    started: std::time::Instant,
    logged: std::time::Instant,
}

impl Progress {
    fn new(what: &'static str) -> Self {
        use std::io::IsTerminal;
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = indicatif::ProgressBar::new_spinner();
            if let Ok(style) = indicatif::ProgressStyle::with_template(
                "{spinner} {msg}: {human_pos} entries ({per_sec}, {elapsed})",
            ) {
                bar.set_style(style);
            }
            bar.set_message(what);
            bar.enable_steady_tick(Duration::from_millis(200));
            bar
        });
        let now = std::time::Instant::now();
        Self {
            what,
            bar,
            entries: 0,
            started: now,
            logged: now,
        }
    }

    fn add(&mut self, n: usize) {
        self.entries += n as u64;
        match &self.bar {
            Some(bar) => bar.set_position(self.entries),
            None if self.logged.elapsed() >= Duration::from_secs(5) => {
                self.logged = std::time::Instant::now();
                let secs = self.started.elapsed().as_secs_f64();
                tracing::info!(
                    entries = self.entries,
                    per_sec = (self.entries as f64 / secs.max(1e-3)) as u64,
                    "{} in progress",
                    self.what
                );
            }
            None => {}
        }
    }

    /// Clears the spinner; the seconds taken.
    fn finish(self) -> f64 {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
        self.started.elapsed().as_secs_f64()
    }
}

/// The intervals of a session.
#[derive(Debug, Clone, Copy)]
struct Timing {
    heartbeat: Duration,
    audit: Duration,
    sentinel: Duration,
}

/// Creates a session; its id and intervals.
async fn create_session(client: &Client) -> Result<(String, Timing), String> {
    let body = json!({"task_id": client.config.task_id, "source_type": "fs",
        "client_info": {"source_uri": client.config.root.display().to_string(), "agent": "weir-agent"}});
    match client
        .request(
            reqwest::Method::POST,
            "/api/v1/pipe/session/",
            Some(&Body::Json(body)),
        )
        .await
    {
        Answer::Ok(grant) => {
            let sid = grant["session_id"]
                .as_str()
                .ok_or("the session answer has no session_id")?
                .to_string();
            let secs = |field: &str, default: f64| {
                Duration::from_secs_f64(
                    grant[field]
                        .as_f64()
                        .unwrap_or(default)
                        .clamp(0.5, 86_400.0),
                )
            };
            let timeout = grant["session_timeout_seconds"].as_f64().unwrap_or(30.0);
            let c = &client.config;
            Ok((
                sid,
                Timing {
                    heartbeat: Duration::from_secs_f64((timeout / 3.0).clamp(0.5, 60.0)),
                    audit: c
                        .audit_every
                        .unwrap_or_else(|| secs("audit_interval_sec", 600.0)),
                    sentinel: c
                        .sentinel_every
                        .unwrap_or_else(|| secs("sentinel_interval_sec", 120.0)),
                },
            ))
        }
        Answer::Gone(why) | Answer::Retry(why) | Answer::Refused(why) => {
            Err(format!("cannot create a session: {why}"))
        }
    }
}

/// One session's life: heartbeats beside the snapshot and then realtime.
async fn serve_session(client: &mut Client, sid: &str, timing: Timing) -> End {
    // The watch starts before the walk, so that nothing changed during the
    // snapshot is missed (the server's arbitration orders the two).
    // Watching walks the tree's directories: off the runtime's workers.
    let (root, filter, queue) = (
        client.config.root.clone(),
        client.config.filter.clone(),
        client.config.queue_paths,
    );
    let watched = tokio::task::spawn_blocking(move || realtime::watch(&root, filter, queue)).await;
    let mut changes = match watched {
        Ok(Ok(w)) => w,
        Ok(Err(e)) => {
            return End::Again(format!(
                "cannot watch {}: {e}",
                client.config.root.display()
            ));
        }
        Err(e) => return End::Again(format!("the watch setup failed: {e}")),
    };
    let unwatched = changes.unwatched_count() as u64;
    client.report(|s| s.unwatched_dirs = unwatched);
    let (scan_tx, mut scans) = tokio::sync::mpsc::channel(MAX_WAITING_SCANS);
    let heartbeat = heartbeats(
        client.conn.clone(),
        sid.to_string(),
        timing.heartbeat,
        scan_tx,
    );
    tokio::pin!(heartbeat);
    let work = async {
        let mut progress = Progress::new("snapshot");
        let mut walk = walk::snapshot(client.config.root.clone(), client.config.walking());
        let mut files = 0u64;
        while let Some(batch) = walk.recv().await {
            files += batch.n as u64;
            progress.add(batch.n);
            client.push_rows(sid, "snapshot", batch, false).await?;
        }
        client
            .push_rows(sid, "snapshot", walk::Rows::default(), true)
            .await?;
        tracing::info!(entries = files, secs = progress.finish(), "snapshot sent");
        client.report(|s| s.state = "realtime".into());
        let mut cache = walk::MtimeCache::new();
        let mut audit =
            tokio::time::interval_at(tokio::time::Instant::now() + timing.audit, timing.audit);
        let mut sentinel = tokio::time::interval_at(
            tokio::time::Instant::now() + timing.sentinel,
            timing.sentinel,
        );
        for tick in [&mut audit, &mut sentinel] {
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        }
        loop {
            // Reading changes is cancel-safe: what it gathered waits in it.
            tokio::select! {
                next = changes.next(client.config.batch_rows) => match next {
                    realtime::Next::Rows(rows) => client.push(sid, "message", rows, false).await?,
                    realtime::Next::Rescan(why) => {
                        // A full audit: every directory listed, so what
                        // was missed (deletions too) is set right.
                        tracing::warn!("file-system events were lost ({why}); rescanning");
                        client.report(|s| s.rescans += 1);
                        cache = client.audit(sid, walk::MtimeCache::new()).await?;
                    }
                    realtime::Next::Lost(why) => return Err::<(), End>(End::Again(why)),
                },
                _ = audit.tick() => {
                    // Directories that are not watched are listed in full.
                    match changes.unwatched() {
                        Some(dirs) => dirs.iter().for_each(|d| { cache.remove(d); }),
                        None => cache.clear(),
                    }
                    let unwatched = changes.unwatched_count() as u64;
                    client.report(|s| s.unwatched_dirs = unwatched);
                    cache = client.audit(sid, std::mem::take(&mut cache)).await?;
                }
                _ = sentinel.tick() => client.sentinel().await?,
                Some(cmd) = scans.recv() => client.scan_job(sid, &cmd).await?,
            }
        }
    };
    tokio::select! {
        end = work => end.err().unwrap_or(End::Again("the session ended".into())),
        end = &mut heartbeat => end,
    }
}

/// Heartbeats every `every` until the server refuses the session; the
/// `scan` commands of the answers go to `scans` (each job once, even when
/// several hosts of a cluster hand it out).
async fn heartbeats(
    conn: Conn,
    sid: String,
    every: Duration,
    scans: tokio::sync::mpsc::Sender<ScanCommand>,
) -> End {
    let path = format!("/api/v1/pipe/session/{sid}/heartbeat");
    let mut seen = std::collections::HashSet::new();
    loop {
        match conn
            .request(
                reqwest::Method::POST,
                &path,
                Some(&Body::Json(json!({"can_realtime": true}))),
            )
            .await
        {
            Answer::Gone(why) => return End::Again(why),
            Answer::Refused(why) => return End::Refused(why),
            Answer::Retry(why) => tracing::warn!("heartbeat: {why}"),
            Answer::Ok(answer) => {
                for cmd in scan_commands(&answer) {
                    if seen.len() >= 10_000 {
                        seen.clear();
                    }
                    if cmd
                        .job_id
                        .as_ref()
                        .is_some_and(|id| !seen.insert(id.clone()))
                    {
                        continue;
                    }
                    if scans.try_send(cmd.clone()).is_err() {
                        tracing::warn!(job = ?cmd.job_id, path = %weir_core::text::echo(&cmd.path), "too many on-demand scans waiting; this one is dropped (the server fails it in time)");
                    }
                }
            }
        }
        tokio::time::sleep(every).await;
    }
}

/// The `scan` commands of a heartbeat answer (others are logged and
/// left).
fn scan_commands(answer: &Value) -> Vec<ScanCommand> {
    let Some(list) = answer["commands"].as_array() else {
        return Vec::new();
    };
    list.iter()
        .take(MAX_WAITING_SCANS)
        .filter_map(|c| {
            if c["type"] != "scan" {
                tracing::warn!(command = %weir_core::text::clip(&c.to_string(), 200), "unknown server command ignored");
                return None;
            }
            serde_json::from_value(c.clone())
                .map_err(|e| tracing::warn!("a scan command that cannot be read is ignored: {e}"))
                .ok()
        })
        .collect()
}
