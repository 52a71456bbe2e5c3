//! `weir bench`: it starts the `weir` binary as a server of its own, pushes
//! a snapshot as an agent does until READY, runs the example key as a
//! component and natively, pushes events end to end through a key to a
//! consumer, and reports figures that hang together (rows, the tree's
//! size, memory, every path's rate), as JSON and as a table.

use std::path::Path;

use weir_host::bench::{BenchArgs, bench};

fn args(files: usize, json: bool) -> BenchArgs {
    BenchArgs {
        files,
        events: 2000,
        against_fustor: false,
        cache_dir: None,
        json,
    }
}

#[test]
fn weir_bench_measures_a_server_it_starts() {
    let weir = Path::new(env!("CARGO_BIN_EXE_weir"));
    let mut out = Vec::new();
    assert_eq!(bench(&args(3000, true), weir, &mut out).unwrap(), 0);
    let report: serde_json::Value = serde_json::from_slice(&out).unwrap();
    let w = &report["weir"];
    // 3000 files, their 3 run directories, one project and the root.
    assert_eq!(report["files"], 3000);
    assert_eq!(w["rows"], 3005, "{report}");
    assert!(w["server"].as_str().unwrap().starts_with("weir "));
    for field in [
        "ingest_rows_per_sec",
        "tree_bytes_per_sec",
        "stats_secs",
        "tree_secs",
    ] {
        assert!(w[field].as_f64().unwrap() > 0.0, "{field}: {report}");
    }
    // Every row is in the tree: at least its path and metadata.
    assert!(w["tree_bytes"].as_u64().unwrap() > 3005 * 80, "{report}");
    assert!(w["bytes_per_file"].as_f64().is_some());
    assert_eq!(report["fusion"], serde_json::Value::Null);
    assert!(report["machine"]["cpus"].as_u64().unwrap() >= 1);

    // The key paths: every event through matches, a quarter of those under
    // /data/ kept for process (the bench checks both sides agree).
    let k = &report["keys"];
    assert_eq!(k["events"], 2000, "{report}");
    let kept = k["processed"].as_u64().unwrap();
    assert!(kept > 0 && kept < 2000, "{report}");
    for field in [
        "matches_native",
        "matches_wasm_single",
        "matches_wasm_batch",
        "process_native",
        "process_wasm_single",
        "process_wasm_batch",
    ] {
        assert!(k[field].as_f64().unwrap() > 0.0, "{field}: {report}");
    }
    // The pipeline delivered every event to its consumer (or said which it
    // lost).
    let p = &report["pipeline"];
    assert_eq!(p["events"], 2000, "{report}");
    assert!(p["events_per_sec"].as_f64().unwrap() > 0.0, "{report}");
    assert!(p["lost"].as_u64().is_some(), "{report}");
    assert_eq!(report["tool"], serde_json::Value::Null);

    // The table names each measure and the machine.
    let mut out = Vec::new();
    bench(&args(500, false), weir, &mut out).unwrap();
    let table = String::from_utf8(out).unwrap();
    for line in [
        "weir bench: 500 files",
        "snapshot ingest to READY",
        "full tree over HTTP",
        "memory per file",
        "matches, wasm, batches of 1000",
        "process, native",
        "end to end: POST batches of 1000 -> fs.large_files (wasm)",
    ] {
        assert!(table.contains(line), "{line}: {table}");
    }
}

#[test]
fn weir_bench_names_a_bad_size() {
    let err = bench(&args(0, false), Path::new("/nonexistent"), &mut Vec::new())
        .unwrap_err()
        .to_string();
    assert!(err.contains("--files must be 1 to 10000000"), "{err}");
}

#[test]
fn weir_bench_names_a_bad_event_count() {
    let mut a = args(10, false);
    a.events = 10;
    let err = bench(&a, Path::new("/nonexistent"), &mut Vec::new())
        .unwrap_err()
        .to_string();
    assert!(err.contains("--events must be 1000 to 10000000"), "{err}");
}
