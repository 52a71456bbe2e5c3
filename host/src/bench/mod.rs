//! `weir bench`: what a user runs on their own machine to see how fast
//! Weir is, beside fustor-fusion if asked. It starts what it measures
//! itself (`weir serve` from this binary, and with `--against-fustor`
//! fustor-fusion 0.8.17 from a virtualenv it makes from PyPI in the cache
//! directory), runs the same workloads on each (`workload.rs`), and prints
//! a table of figures and ratios, or JSON (`--json`). A progress bar shows
//! on a terminal.

mod fbench;
mod keys;
mod pipeline;
mod server;
mod workload;

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde_json::json;

pub use fbench::{Column, ToolRun};
pub use keys::KeyPaths;
pub use pipeline::PipelineRun;
pub use server::FUSION_VERSION;
pub use workload::Measured;

/// `weir bench` flags.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// Files in the snapshot (1 to 10,000,000).
    #[arg(long, default_value_t = 200_000)]
    pub files: usize,
    /// Events through the key paths and the end-to-end pipeline (1,000 to
    /// 10,000,000).
    #[arg(long, default_value_t = 100_000)]
    pub events: usize,
    /// Also measure fustor-fusion 0.8.17, and run fustor-benchmark 0.8.17
    /// against both servers; each is installed from PyPI into a virtualenv
    /// in the cache directory on first use (needs python3).
    #[arg(long)]
    pub against_fustor: bool,
    /// Where the fustor-fusion virtualenv is kept; default
    /// `$XDG_CACHE_HOME/weir` or `~/.cache/weir`.
    #[arg(long)]
    pub cache_dir: Option<PathBuf>,
    /// Print the results as one JSON object.
    #[arg(long)]
    pub json: bool,
}

/// The results of one `weir bench` run.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Report {
    /// The machine it ran on.
    pub machine: serde_json::Value,
    /// Files in the snapshot.
    pub files: usize,
    /// Weir's figures.
    pub weir: Measured,
    /// fustor-fusion's, with `--against-fustor`.
    pub fusion: Option<Measured>,
    /// The example key as a component and natively, in this process.
    pub keys: KeyPaths,
    /// Events end to end through `weir serve`.
    pub pipeline: PipelineRun,
    /// fustor-benchmark's table for each server, with `--against-fustor`.
    pub tool: Option<ToolTables>,
}

/// fustor-benchmark's `query` against each server, on the same directory.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ToolTables {
    /// Files in the directory.
    pub files: usize,
    pub weir: ToolRun,
    pub fusion: ToolRun,
}

/// Files in the directory fustor-benchmark queries (it walks the whole
/// directory with `find` and `stat` for its OS columns).
const TOOL_FILES: usize = 20_000;

/// Runs `weir bench` with `weir` as the `weir` binary to serve.
pub fn bench(args: &BenchArgs, weir: &Path, out: &mut dyn Write) -> anyhow::Result<i32> {
    anyhow::ensure!(
        (1..=10_000_000).contains(&args.files),
        "--files must be 1 to 10000000"
    );
    anyhow::ensure!(
        (1_000..=10_000_000).contains(&args.events),
        "--events must be 1000 to 10000000"
    );
    let work = tempfile::Builder::new()
        .prefix("weir-bench-")
        .tempdir()
        .context("a scratch directory")?;
    let python = if args.against_fustor {
        let cache = match &args.cache_dir {
            Some(dir) => dir.clone(),
            None => cache_dir()?,
        };
        Some((server::fusion_bin(&cache)?, fbench::tool_bin(&cache)?))
    } else {
        None
    };
    let bar = indicatif::ProgressBar::new_spinner();
    bar.enable_steady_tick(std::time::Duration::from_millis(120));
    let step = |server: &str| {
        let bar = bar.clone();
        let server = server.to_string();
        move |what: &str| bar.set_message(format!("{server}: {what}"))
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    // In this process, before any server runs beside it.
    let keys = keys::measure(args.events, &step("weir"))?;
    bar.set_message("weir: starting");
    let (weir_measured, pipeline) = {
        let server = server::Server::weir(weir, &work.path().join("weir"), args.files)?;
        let measured = runtime.block_on(workload::measure(&server, args.files, &step("weir")))?;
        let pipeline = runtime.block_on(pipeline::measure(&server, args.events, &step("weir")))?;
        (measured, pipeline)
    };
    let fusion = match &python {
        None => None,
        Some((bin, _)) => {
            bar.set_message("fustor-fusion: starting");
            let server = server::Server::fusion(bin, &work.path().join("fusion"))?;
            Some(runtime.block_on(workload::measure(
                &server,
                args.files,
                &step("fustor-fusion"),
            ))?)
        }
    };
    let tool = match &python {
        None => None,
        Some((fusion_bin, tool_bin)) => {
            // A real directory, synced by an agent into a fresh server each.
            let files = args.files.min(TOOL_FILES);
            bar.set_message(format!("fustor-benchmark: making {files} files"));
            let data = work.path().join("tool-data");
            fbench::make_tree(&data, files)?;
            // The tool against a fresh server `start`ed in `name`'s own
            // directory (which the server makes).
            let run = |name: &str,
                       start: &dyn Fn(&Path) -> anyhow::Result<server::Server>|
             -> anyhow::Result<ToolRun> {
                let dir = work.path().join(format!("tool-{name}"));
                let server = start(&dir)?;
                runtime.block_on(fbench::measure(
                    tool_bin,
                    weir,
                    &server,
                    &data,
                    files,
                    &dir,
                    &step(name),
                ))
            };
            let weir_run = run("weir", &|dir| server::Server::weir(weir, dir, files))?;
            let fusion_run = run("fustor-fusion", &|dir| {
                server::Server::fusion(fusion_bin, dir)
            })?;
            Some(ToolTables {
                files,
                weir: weir_run,
                fusion: fusion_run,
            })
        }
    };
    bar.finish_and_clear();
    let report = Report {
        machine: machine(),
        files: args.files,
        weir: weir_measured,
        fusion,
        keys,
        pipeline,
        tool,
    };
    if args.json {
        serde_json::to_writer_pretty(&mut *out, &report)?;
        writeln!(out)?;
    } else {
        table(&report, out)?;
    }
    Ok(0)
}

fn cache_dir() -> anyhow::Result<PathBuf> {
    if let Some(dir) = std::env::var_os("XDG_CACHE_HOME").filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(dir).join("weir"));
    }
    let home = std::env::var_os("HOME").context("no cache directory: set --cache-dir or HOME")?;
    Ok(PathBuf::from(home).join(".cache/weir"))
}

/// CPUs, their model and the memory of this machine, from `/proc`.
fn machine() -> serde_json::Value {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, m)| m.trim().to_string());
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem = meminfo
        .lines()
        .find(|l| l.starts_with("MemTotal:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map(|kib| kib * 1024);
    json!({
        "cpus": std::thread::available_parallelism().map_or(1, |n| n.get()),
        "cpu_model": model,
        "memory_bytes": mem,
        "os": std::env::consts::OS,
        "arch": std::env::consts::ARCH,
    })
}

/// The report as a table: one row per measure, a column per server, and
/// Weir's ratio to fustor-fusion (above 1: Weir is better).
fn table(r: &Report, out: &mut dyn Write) -> anyhow::Result<()> {
    let m = &r.machine;
    writeln!(
        out,
        "weir bench: {} files ({} rows); {} CPUs ({}), {:.1} GiB",
        r.files,
        r.weir.rows,
        m["cpus"],
        m["cpu_model"].as_str().unwrap_or("unknown model"),
        m["memory_bytes"].as_f64().unwrap_or(0.0) / (1u64 << 30) as f64
    )?;
    // (name, value, unit, higher is better)
    type Row = (&'static str, fn(&Measured) -> f64, &'static str, bool);
    let rows: [Row; 5] = [
        (
            "snapshot ingest to READY",
            |x| x.ingest_rows_per_sec / 1e3,
            "k rows/s",
            true,
        ),
        (
            "full tree over HTTP",
            |x| x.tree_bytes_per_sec / 1e6,
            "MB/s",
            true,
        ),
        ("stats, one answer", |x| x.stats_secs * 1e6, "µs", false),
        ("memory per file", |x| x.bytes_per_file, "B", false),
        (
            "peak over settled memory",
            |x| x.peak_over_settled,
            "x",
            false,
        ),
    ];
    let fusion_label = format!("fustor-fusion {FUSION_VERSION}");
    writeln!(
        out,
        "{:<28} {:>16} {:>22} {:>10}",
        "measure",
        r.weir.server,
        if r.fusion.is_some() {
            fusion_label.as_str()
        } else {
            ""
        },
        if r.fusion.is_some() { "weir vs it" } else { "" }
    )?;
    for (name, value, unit, higher_better) in rows {
        let w = value(&r.weir);
        write!(out, "{name:<28} {:>16}", format!("{w:.1} {unit}"))?;
        if let Some(f) = &r.fusion {
            let f = value(f);
            let ratio = if higher_better { w / f } else { f / w };
            write!(out, " {:>22} {:>9.1}x", format!("{f:.1} {unit}"), ratio)?;
        }
        writeln!(out)?;
    }
    writeln!(
        out,
        "full tree: {:.1} MB in {:.0} ms (weir){}",
        r.weir.tree_bytes as f64 / 1e6,
        r.weir.tree_secs * 1e3,
        r.fusion.as_ref().map_or(String::new(), |f| format!(
            ", {:.1} MB in {:.0} ms (fustor-fusion)",
            f.tree_bytes as f64 / 1e6,
            f.tree_secs * 1e3
        ))
    )?;
    keys_table(r, out)?;
    if let Some(t) = &r.tool {
        tool_table(t, out)?;
    }
    Ok(())
}

/// The key paths and the pipeline.
fn keys_table(r: &Report, out: &mut dyn Write) -> anyhow::Result<()> {
    let k = &r.keys;
    writeln!(
        out,
        "\nkey {}: {} events, {} kept for process; its component against the same Rust compiled natively, in this process",
        keys::KEY,
        k.events,
        k.processed
    )?;
    writeln!(
        out,
        "{:<34} {:>14} {:>12} {:>10}",
        "path", "events/s", "per event", "vs native"
    )?;
    let rows = [
        ("matches, native", k.matches_native, k.matches_native),
        (
            "matches, wasm, one call each",
            k.matches_wasm_single,
            k.matches_native,
        ),
        (
            "matches, wasm, batches of 1000",
            k.matches_wasm_batch,
            k.matches_native,
        ),
        ("process, native", k.process_native, k.process_native),
        (
            "process, wasm, one call each",
            k.process_wasm_single,
            k.process_native,
        ),
        (
            "process, wasm, batches of 1000",
            k.process_wasm_batch,
            k.process_native,
        ),
    ];
    for (name, rate, native) in rows {
        writeln!(
            out,
            "{name:<34} {:>14} {:>12} {:>9.1}x",
            format!("{:.0}", rate),
            format!("{:.0} ns", 1e9 / rate.max(1e-9)),
            native / rate.max(1e-9)
        )?;
    }
    let p = &r.pipeline;
    writeln!(
        out,
        "end to end: POST batches of {} -> {} (wasm) -> one NDJSON consumer: {:.0} events/s over {} events ({} lost)",
        pipeline::BATCH,
        keys::KEY,
        p.events_per_sec,
        p.events,
        p.lost
    )?;
    Ok(())
}

/// fustor-benchmark's columns for both servers.
fn tool_table(t: &ToolTables, out: &mut dyn Write) -> anyhow::Result<()> {
    writeln!(
        out,
        "\n{} query: {} files synced by weir agent, {} requests per column, {} workers",
        fbench::label(),
        t.files,
        fbench::REQUESTS,
        fbench::CONCURRENCY
    )?;
    writeln!(
        out,
        "{:<28} {:>24} {:>24}",
        "column (mean latency, QPS)",
        "weir",
        format!("fustor-fusion {FUSION_VERSION}")
    )?;
    type Pick = fn(&ToolRun) -> &Column;
    let rows: [(&str, Pick); 5] = [
        ("OS baseline (find)", |r| &r.os),
        ("OS integrity (find, stat)", |r| &r.os_integrity),
        ("dry-net (GET /)", |r| &r.fusion_dry_net),
        ("dry-run (tree, dry_run)", |r| &r.fusion_dry),
        ("API (tree)", |r| &r.fusion),
    ];
    for (name, pick) in rows {
        let cell = |c: &Column| format!("{:.2} ms, {:.1}", c.avg, c.qps);
        writeln!(
            out,
            "{name:<28} {:>24} {:>24}",
            cell(pick(&t.weir)),
            cell(pick(&t.fusion))
        )?;
    }
    writeln!(
        out,
        "(the tool is a Python client, {} workers on this machine: its columns measure the client as much as the server; the OS columns do not involve a server)",
        fbench::CONCURRENCY
    )?;
    Ok(())
}
