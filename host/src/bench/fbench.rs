//! The seed system's own benchmark tool, `fustor-benchmark` 0.8.17 (from
//! PyPI, in a virtualenv in the cache directory), run by `weir bench
//! --against-fustor` against each server: a real directory is made, synced
//! into a fresh server by `weir agent` (this binary), and the tool's
//! `query` command measures it. Its figures are read from the JSON it
//! writes. The tool is a Python client: its whole-tree column is bound by
//! the client on a small machine, which the report says.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use super::server::{FUSION_VERSION, INGEST_KEY, QUERY_KEY, Server, VIEW};

/// Requests per column, and concurrent workers, given to the tool.
pub const REQUESTS: usize = 100;
pub const CONCURRENCY: usize = 10;
/// The tool's "OS integrity" wait, in seconds (its default is 60).
pub const INTEGRITY_SECS: u32 = 1;

/// One column of the tool's table.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct Column {
    /// Mean latency in milliseconds.
    pub avg: f64,
    pub p50: f64,
    pub p99: f64,
    /// Requests per second over the column's wall time.
    pub qps: f64,
}

/// The tool's table for one server.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct ToolRun {
    /// `find` over the directory: the tool's OS baseline.
    pub os: Column,
    /// `find`, a wait, and `stat` of every file: the tool's OS integrity.
    pub os_integrity: Column,
    /// `GET /`: the network alone.
    pub fusion_dry_net: Column,
    /// The tree view with `dry_run=true`: everything but serializing.
    pub fusion_dry: Column,
    /// The tree view.
    pub fusion: Column,
    /// Files the server reported (`total_files`).
    #[serde(skip_deserializing)]
    pub files: u64,
}

/// The `fustor-benchmark` executable of a virtualenv in `cache`, made on
/// first use.
pub fn tool_bin(cache: &Path) -> anyhow::Result<PathBuf> {
    super::server::venv_bin(cache, "fustor-benchmark", "fustor-benchmark")
}

/// A directory of `files` empty files in `dirs/subdirs`, as the tool's own
/// `generate` lays one out (smaller).
pub fn make_tree(root: &Path, files: usize) -> anyhow::Result<()> {
    for i in 0..files {
        let dir = root.join(format!("dir_{:03}/sub_{:02}", i / 1000, (i / 100) % 10));
        if i % 100 == 0 {
            std::fs::create_dir_all(&dir)
                .with_context(|| format!("cannot make {}", dir.display()))?;
        }
        std::fs::write(dir.join(format!("file_{i:07}.txt")), b"")?;
    }
    Ok(())
}

/// Syncs `data` (of `files` files) into `server` with `weir agent`, then
/// runs the tool against it; `work` is this run's scratch directory (the
/// server's, already made).
pub async fn measure(
    tool: &Path,
    weir: &Path,
    server: &Server,
    data: &Path,
    files: usize,
    work: &Path,
    step: &dyn Fn(&str),
) -> anyhow::Result<ToolRun> {
    use std::os::unix::process::CommandExt;
    step("fustor-benchmark: syncing the directory with weir agent");
    let agent_log = work.join("agent.log");
    let log = std::fs::File::create(&agent_log)?;
    let mut agent = Command::new(weir)
        .arg("agent")
        .arg("--url")
        .arg(&server.base)
        .arg("--root")
        .arg(data)
        .arg("--state-dir")
        .arg(work.join("agent-state"))
        .env("WEIR_INGEST_KEY", INGEST_KEY)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .process_group(0)
        .spawn()
        .context("cannot start weir agent")?;
    let client = super::workload::Client::new(server)?;
    let start = Instant::now();
    let synced = loop {
        if let Some(stats) = client.stats().await?
            && stats["total_files"].as_u64() == Some(files as u64)
        {
            break Ok(());
        }
        if let Some(status) = agent.try_wait()? {
            break Err(anyhow::anyhow!("weir agent exited ({status})"));
        }
        if start.elapsed() > Duration::from_secs(600) {
            break Err(anyhow::anyhow!("not synced after 10 minutes"));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    // The agent stays while the tool runs: a view without a live agent
    // session is not READY, on either server.
    let stop_agent = |agent: &mut std::process::Child| {
        let _ = Command::new("kill")
            .args(["-TERM", "--", &format!("-{}", agent.id())])
            .status();
        let _ = agent.wait();
    };
    if let Err(e) = synced {
        stop_agent(&mut agent);
        bail!(
            "{}: {e}: {}",
            server.label,
            std::fs::read_to_string(&agent_log).unwrap_or_default()
        );
    }

    step("fustor-benchmark: running its query benchmark");
    let out = Command::new(tool)
        .arg("query")
        .arg(data)
        .args(["--fusion-api", &server.base, "--api-key", QUERY_KEY])
        .args(["--view-id", VIEW])
        .args(["-n", &REQUESTS.to_string(), "-c", &CONCURRENCY.to_string()])
        .args(["--integrity-interval", &INTEGRITY_SECS.to_string()])
        .current_dir(work)
        .stdin(Stdio::null())
        .output()
        .context("cannot run fustor-benchmark");
    stop_agent(&mut agent);
    let out = out?;
    let results = work.join("fustor-benchmark-run/results/query-find.json");
    let text = std::fs::read_to_string(&results).map_err(|_| {
        anyhow::anyhow!(
            "fustor-benchmark against {} wrote no results ({}): {}{}",
            server.label,
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })?;
    let value: serde_json::Value = serde_json::from_str(&text)
        .with_context(|| format!("{} is not JSON", results.display()))?;
    let mut run: ToolRun = serde_json::from_value(value.clone())
        .with_context(|| format!("{} has not the columns expected", results.display()))?;
    run.files = value["metadata"]["total_files_in_scope"]
        .as_u64()
        .unwrap_or(0);
    Ok(run)
}

/// The label of the tool, for the report.
pub fn label() -> String {
    format!("fustor-benchmark {FUSION_VERSION}")
}
