//! Agent benchmark: the `weir-agent` binary (what `weir agent` runs, without
//! the host's runtime) beside the published `fustor-agent` 0.8.17, both
//! against the same in-process `weir serve`, over the same directory.
//!
//! Run: `cargo bench -p weir-agent --bench agent` (optional argument: number
//! of files, default 200000). The Python agent is found through
//! `WEIR_FUSTOR_AGENT`, or `target/fustor-venv/bin/fustor-agent` (what
//! `.ci/run` installs); without it that half is skipped, said so.
//!
//! For each agent: seconds from its start until the views are READY with
//! every file, its CPU seconds and its peak resident memory (the process
//! alone); then, for `weir-agent`, realtime latency: a file written until it
//! is visible in a view, p50 and p99 over 100 changes.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;
use weir_host::auth::{Keys, Role};
use weir_host::datastore::DatastoreConfig;
use weir_host::runtime::{Host, HostConfig};

const INGEST: &str = "bench-ingest";
const QUERY: &str = "bench-query";

fn make_tree(root: &Path, files: usize) {
    let per_dir = 200;
    for d in 0..files.div_ceil(per_dir) {
        let dir = root.join(format!("p{}/r{}", d / 100, d % 100));
        std::fs::create_dir_all(&dir).unwrap();
        for f in 0..per_dir.min(files - d * per_dir) {
            std::fs::write(dir.join(format!("f{f:04}.dat")), b"0123456789").unwrap();
        }
    }
}

/// CPU seconds and peak RSS (bytes) of process `pid`, read before it ends.
fn usage(pid: u32) -> (f64, u64) {
    let cpu = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            let rest = s.rsplit_once(") ")?.1.to_string();
            let f: Vec<&str> = rest.split_whitespace().collect();
            Some((f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?) / 100.0)
        })
        .unwrap_or(0.0);
    let rss = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        })
        .unwrap_or(0)
        * 1024;
    (cpu, rss)
}

async fn stats(client: &reqwest::Client, base: &str) -> Option<Value> {
    let resp = client
        .get(format!("{base}/api/v1/views/default/stats"))
        .header("X-API-Key", QUERY)
        .send()
        .await
        .ok()?;
    if !resp.status().is_success() {
        return None;
    }
    resp.json().await.ok()
}

/// Starts `agent`, waits until the views hold `files` files; the seconds,
/// CPU seconds and peak RSS; the agent is stopped.
async fn until_ready(mut agent: Child, base: &str, files: usize) -> (f64, f64, u64) {
    let client = reqwest::Client::new();
    let start = Instant::now();
    loop {
        if let Some(s) = stats(&client, base).await
            && s["total_files"].as_u64() == Some(files as u64)
        {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(1800),
            "the agent did not finish"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let secs = start.elapsed().as_secs_f64();
    let (cpu, rss) = usage(agent.id());
    stop(&mut agent);
    (secs, cpu, rss)
}

fn stop(agent: &mut Child) {
    let _ = Command::new("kill")
        .args(["-TERM", &agent.id().to_string()])
        .status();
    let deadline = Instant::now() + Duration::from_secs(10);
    while agent.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = agent.kill();
    let _ = agent.wait();
}

/// The `weir-agent` binary as a file server installs it: built alone with
/// its profile (`cargo build --profile agent -p weir-agent`, into
/// `agent-alone` of the target directory), so that the features this
/// bench's dev-dependencies turn on (the whole host) are not linked into it. Falls back to the binary cargo
/// built for this bench, said so.
fn agent_binary() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target"))
        .join("agent-alone");
    let built = Command::new(env!("CARGO"))
        .args([
            "build",
            "--profile",
            "agent",
            "--quiet",
            "-p",
            "weir-agent",
            "--target-dir",
        ])
        .arg(&target)
        .status()
        .is_ok_and(|s| s.success());
    if built {
        return target.join("agent/weir-agent");
    }
    println!("  (could not build weir-agent alone; measuring the bench's build of it)");
    PathBuf::from(env!("CARGO_BIN_EXE_weir-agent"))
}

/// `weir-agent` (`bin`) syncing `root` into the host at `base`.
fn weir_agent(bin: &Path, base: &str, root: &Path, state: &Path, extra: &[&str]) -> Child {
    Command::new(bin)
        .args(extra)
        .args(["--url", base, "--root"])
        .arg(root)
        .arg("--state-dir")
        .arg(state)
        .env("WEIR_INGEST_KEY", INGEST)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

fn fustor_agent() -> Option<PathBuf> {
    std::env::var_os("WEIR_FUSTOR_AGENT")
        .map(PathBuf::from)
        .or_else(|| {
            let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("../../target/fustor-venv/bin/fustor-agent");
            p.exists().then_some(p)
        })
}

fn main() {
    let files: usize = std::env::args()
        .skip(1)
        .find(|a| !a.starts_with('-'))
        .and_then(|a| a.parse().ok())
        .unwrap_or(200_000);
    let work = tempfile::tempdir().unwrap();
    let root = work.path().join("data");
    make_tree(&root, files);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let mut keys = Keys::new();
        keys.insert(INGEST, Role::Ingest, "default");
        keys.insert(QUERY, Role::Query, "default");
        let mut ds = DatastoreConfig::named("default");
        ds.queue_rows = 2_000_000;
        let host = Arc::new(
            Host::new(HostConfig {
                keys,
                datastores: vec![ds],
                ..Default::default()
            })
            .unwrap(),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(weir_host::run(listener, host, std::future::pending()));

        let bin = agent_binary();
        println!(
            "agents: {files} files to READY against weir serve (one run each); weir-agent: {:.1} MB",
            std::fs::metadata(&bin).map_or(0.0, |m| m.len() as f64 / 1e6)
        );
        let weir = weir_agent(&bin, &base, &root, &work.path().join("weir-state"), &[]);
        let (w_secs, w_cpu, w_rss) = until_ready(weir, &base, files).await;
        let threads = weir_agent::default_walk_threads();
        println!(
            "  weir-agent (default, {threads} walk thread(s)): {w_secs:>6.2} s to READY   {w_cpu:>7.2} CPU-s   peak RSS {:>7.1} MiB",
            w_rss as f64 / 1048576.0
        );
        // The parallel walk, with one thread per CPU (or twice the default).
        let more = std::thread::available_parallelism()
            .map_or(2, |n| n.get().min(8))
            .max(threads * 2)
            .to_string();
        let other = weir_agent(
            &bin,
            &base,
            &root,
            &work.path().join("weir-state"),
            &["--walk-threads", &more],
        );
        let (o_secs, o_cpu, o_rss) = until_ready(other, &base, files).await;
        println!(
            "  weir-agent ({more} walk threads):              {o_secs:>6.2} s to READY   {o_cpu:>7.2} CPU-s   peak RSS {:>7.1} MiB",
            o_rss as f64 / 1048576.0
        );
        match fustor_agent() {
            None => println!("  fustor-agent 0.8.17:    skipped (set WEIR_FUSTOR_AGENT or run .ci/run once)"),
            Some(bin) => {
                let home = work.path().join("fustor-home");
                std::fs::create_dir_all(home.join("agent-config")).unwrap();
                std::fs::write(
                    home.join("agent-config/default.yaml"),
                    format!(
                        "sources:\n  data:\n    driver: fs\n    uri: {:?}\nsenders:\n  weir:\n    driver: fusion\n    uri: {base:?}\n    credential:\n      key: {INGEST}\npipes:\n  bench:\n    source: data\n    sender: weir\n",
                        root.display().to_string()
                    ),
                )
                .unwrap();
                let py = Command::new(bin)
                    .arg("start")
                    .current_dir(work.path())
                    .env("FUSTOR_HOME", &home)
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .unwrap();
                let (f_secs, f_cpu, f_rss) = until_ready(py, &base, files).await;
                println!(
                    "  fustor-agent 0.8.17:                         {f_secs:>6.2} s to READY   {f_cpu:>7.2} CPU-s   peak RSS {:>7.1} MiB",
                    f_rss as f64 / 1048576.0
                );
                println!(
                    "  weir-agent: {:.1}x faster to READY, {:.1}x less CPU, {:.1}x less memory",
                    f_secs / w_secs,
                    f_cpu / w_cpu.max(0.01),
                    f_rss as f64 / w_rss.max(1) as f64
                );
            }
        }

        // Realtime latency: a file written until it is visible.
        let mut weir = weir_agent(&bin, &base, &root, &work.path().join("weir-state"), &[]);
        let client = reqwest::Client::new();
        while stats(&client, &base)
            .await
            .and_then(|s| s["total_files"].as_u64())
            != Some(files as u64)
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let mut lat = Vec::new();
        for i in 0..100 {
            let name = format!("late_{i}.txt");
            let start = Instant::now();
            std::fs::write(root.join(&name), b"x").unwrap();
            loop {
                let resp = client
                    .get(format!("{base}/api/v1/views/default/tree?path=/{name}&max_depth=0"))
                    .header("X-API-Key", QUERY)
                    .send()
                    .await
                    .unwrap();
                if resp.status().is_success() {
                    break;
                }
                assert!(start.elapsed() < Duration::from_secs(30), "change not visible");
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            lat.push(start.elapsed());
        }
        stop(&mut weir);
        lat.sort();
        println!(
            "  realtime, weir-agent: a file written until visible in a view, 100 changes: p50 {:.0} ms  p99 {:.0} ms",
            lat[49].as_secs_f64() * 1e3,
            lat[98].as_secs_f64() * 1e3
        );
    });
}
