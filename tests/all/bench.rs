//! `weir bench`: it starts the `weir` binary as a server of its own, pushes
//! a snapshot as an agent does until READY, and reports figures that hang
//! together (rows, the tree's size, memory), as JSON and as a table.

use std::path::Path;

use weir_host::bench::{BenchArgs, bench};

fn args(files: usize, json: bool) -> BenchArgs {
    BenchArgs {
        files,
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

    // The table names each measure and the machine.
    let mut out = Vec::new();
    bench(&args(500, false), weir, &mut out).unwrap();
    let table = String::from_utf8(out).unwrap();
    for line in [
        "weir bench: 500 files",
        "snapshot ingest to READY",
        "full tree over HTTP",
        "memory per file",
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
