//! Datastore benchmark: snapshot ingestion through HTTP, tree serialization
//! and memory per file, each beside a baseline measured in the same run.
//!
//! Run: `cargo bench -p weir-host --bench datastore` (optional argument:
//! number of files for the tree, default 1000000).
//!
//! - ingestion: rows/s through `POST /api/v1/pipe/ingest/{sid}/events` until
//!   applied, beside the same bodies parsed and applied in-process; and in a
//!   cluster (3 NATS nodes, replicas 3, loopback): pushes to host A until
//!   host B's replica is READY, beside the embedded host;
//! - serialization: MB/s of the streamed tree JSON, beside building a
//!   `serde_json::Value` tree from the index and serializing that;
//! - memory: bytes per file of the hash tree (names excluded), beside a
//!   `HashMap<full path, metadata>`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use weir_host::auth::{Keys, Role};
use weir_host::datastore::DatastoreConfig;
use weir_host::index::view::{TreeQuery, check_tree, write_tree};
use weir_host::index::{FsIndex, IndexConfig, Meta, NodeId, Source, Upsert};
use weir_host::rows::{Op, RowLimits, parse_batch};
use weir_host::runtime::{Host, HostConfig};
use weir_host::time::now_secs;

const ROWS_PER_PUSH: usize = 1000;

fn row(i: usize) -> Value {
    json!({"path": format!("/proj_{}/run_{}/file_{i:07}.dat", i / 100_000, (i / 1000) % 100), "file_name": format!("file_{i:07}.dat"),
           "size": i % 65536, "modified_time": 1_700_000_000.0 + i as f64, "created_time": 1_700_000_000.0, "is_directory": false})
}

fn bodies(rows: usize) -> Vec<Vec<u8>> {
    (0..rows.div_ceil(ROWS_PER_PUSH))
        .map(|b| {
            let rows: Vec<Value> = (b * ROWS_PER_PUSH..((b + 1) * ROWS_PER_PUSH).min(rows)).map(row).collect();
            serde_json::to_vec(&json!({"source_type": "snapshot", "events": [{"event_type": "update", "event_schema": "fs", "table": "files", "rows": rows}]}))
                .unwrap()
        })
        .collect()
}

fn ingest_in_process(bodies: &[Vec<u8>]) -> Duration {
    let start = Instant::now();
    let mut ix = FsIndex::new(IndexConfig::default());
    let now = now_secs();
    for body in bodies {
        for op in parse_batch(body, now, &RowLimits::default()).unwrap().ops {
            if let Op::Upsert(source, row) = op {
                ix.upsert(&row, source, now);
            }
        }
    }
    std::hint::black_box(ix.tree().file_count());
    start.elapsed()
}

/// A host for the ingestion bench; on the cluster at `nats`, if given.
fn ingest_host(nats: Option<&[String]>) -> Arc<Host> {
    let mut keys = Keys::new();
    keys.insert("bench-ingest", Role::Ingest, "default");
    keys.insert("bench-query", Role::Query, "default");
    let mut ds = DatastoreConfig::named("default");
    ds.queue_rows = 1_000_000;
    let cluster = nats.map(|urls| {
        let mut c = weir_host::cluster::ClusterConfig::new(urls.to_vec());
        c.name = "bench-ingest".into();
        c.log.retention_bytes = 1 << 30;
        c
    });
    Arc::new(
        Host::new(HostConfig {
            keys,
            datastores: vec![ds],
            cluster,
            ..Default::default()
        })
        .unwrap(),
    )
}

/// Serves `host` on a loopback port; its base URL.
async fn serve(host: Arc<Host>) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(weir_host::run(listener, host, std::future::pending()));
    base
}

/// The NATS side alone: `bodies` published to a stream with 3 replicas,
/// awaiting each acknowledgement before the next publish (as an agent's
/// pushes go), then all published before any acknowledgement is awaited.
async fn raw_jetstream(urls: &[String], bodies: &[Vec<u8>]) -> (Duration, Duration) {
    use async_nats::jetstream;
    let client = async_nats::connect(urls[0].as_str()).await.unwrap();
    let js = jetstream::new(client);
    js.create_stream(jetstream::stream::Config {
        name: "bench-raw".into(),
        subjects: vec!["bench-raw.>".into()],
        num_replicas: 3,
        max_bytes: 1 << 30,
        ..Default::default()
    })
    .await
    .unwrap();
    let start = Instant::now();
    for body in bodies {
        js.publish("bench-raw.one", body.clone().into())
            .await
            .unwrap()
            .await
            .unwrap();
    }
    let one = start.elapsed();
    let start = Instant::now();
    let mut acks = Vec::new();
    for body in bodies {
        acks.push(
            js.publish("bench-raw.all", body.clone().into())
                .await
                .unwrap(),
        );
    }
    for ack in acks {
        ack.await.unwrap();
    }
    (one, start.elapsed())
}

/// Pushes `bodies` (a snapshot of `rows` rows) to the host at `base` until
/// the host at `views` is READY with every row.
async fn ingest_http(bodies: &[Vec<u8>], rows: usize, base: &str, views: &str) -> Duration {
    let client = reqwest::Client::new();
    let grant: Value = client
        .post(format!("{base}/api/v1/pipe/session/"))
        .header("X-API-Key", "bench-ingest")
        .json(&json!({"task_id": "bench:1"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let sid = grant["session_id"].as_str().unwrap().to_string();
    let url = format!("{base}/api/v1/pipe/ingest/{sid}/events");
    let start = Instant::now();
    for body in bodies {
        loop {
            let resp = client
                .post(&url)
                .header("X-API-Key", "bench-ingest")
                .header("content-type", "application/json")
                .body(body.clone())
                .send()
                .await
                .unwrap();
            if resp.status().is_success() {
                break;
            }
            assert_eq!(resp.status(), 503, "{}", resp.text().await.unwrap());
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    if std::env::var_os("WEIR_BENCH_VERBOSE").is_some() {
        eprintln!("  (pushes answered after {:?})", start.elapsed());
    }
    let end = json!({"session_id": sid, "source_type": "snapshot", "is_end": true, "events": []});
    client
        .post(&url)
        .header("X-API-Key", "bench-ingest")
        .json(&end)
        .send()
        .await
        .unwrap();
    loop {
        let resp = client
            .get(format!("{views}/api/v1/views/default/stats"))
            .header("X-API-Key", "bench-query")
            .send()
            .await
            .unwrap();
        if resp.status().is_success() {
            let stats: Value = resp.json().await.unwrap();
            assert_eq!(stats["total_files"].as_u64(), Some(rows as u64));
            break;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    start.elapsed()
}

fn value_tree(ix: &FsIndex, id: NodeId) -> Value {
    let t = ix.tree();
    let m = t.meta(id);
    let mut node = json!({"name": t.name(id), "content_type": if m.is_dir { "directory" } else { "file" }, "path": t.path(id),
        "size": m.size, "modified_time": m.mtime, "created_time": m.ctime, "integrity_suspect": false});
    if m.is_dir {
        node["children"] =
            Value::Array(t.children(id).iter().map(|&c| value_tree(ix, c)).collect());
    }
    node
}

fn main() {
    let files: usize = std::env::args()
        .skip(1)
        .find(|a| !a.starts_with('-'))
        .and_then(|a| a.parse().ok())
        .unwrap_or(1_000_000);

    // Ingestion (200k rows through HTTP).
    let ingest_rows = 200_000.min(files);
    let bodies = bodies(ingest_rows);
    let core = ingest_in_process(&bodies);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let http = runtime.block_on(async {
        let base = serve(ingest_host(None)).await;
        ingest_http(&bodies, ingest_rows, &base, &base).await
    });
    let rate = |d: Duration| ingest_rows as f64 / d.as_secs_f64();
    println!("snapshot ingestion, {ingest_rows} rows in pushes of {ROWS_PER_PUSH}:");
    println!("  through HTTP until applied  {:>12.0} rows/s", rate(http));
    println!(
        "  parse + apply in process    {:>12.0} rows/s   (HTTP at {:.2}x of it)",
        rate(core),
        rate(http) / rate(core)
    );
    // The cluster: pushes to A, until B's replica is READY.
    let (one, two, (raw_one, raw_pipelined)) = runtime.block_on(async {
        let nats = weir_tests::nats::NatsCluster::start().await;
        let urls = nats.urls.clone();
        let a = tokio::task::spawn_blocking({
            let urls = urls.clone();
            move || ingest_host(Some(&urls))
        })
        .await
        .unwrap();
        let b = tokio::task::spawn_blocking(move || ingest_host(Some(&urls)))
            .await
            .unwrap();
        let (a, b) = (serve(a).await, serve(b).await);
        let one = ingest_http(&bodies, ingest_rows, &a, &a).await;
        let two = ingest_http(&bodies, ingest_rows, &a, &b).await;
        let raw = raw_jetstream(&nats.urls, &bodies).await;
        (one, two, raw)
    });
    println!(
        "  JetStream, ready on A        {:>12.0} rows/s   ({:.2}x of the embedded host)",
        rate(one),
        rate(one) / rate(http)
    );
    println!(
        "  JetStream, pushed to A, ready on B {:>6.0} rows/s   ({:.2}x of the embedded host)",
        rate(two),
        rate(two) / rate(http)
    );
    println!(
        "  the same bodies straight to a replicated stream, one ack at a time {:>8.0} rows/s; all in flight {:>8.0} rows/s",
        rate(raw_one),
        rate(raw_pipelined)
    );

    // The big tree.
    let mut ix = FsIndex::new(IndexConfig::default());
    let build = Instant::now();
    let now = now_secs();
    let mut names = 0usize;
    for i in 0..files {
        let path = format!(
            "/proj_{}/run_{}/file_{i:07}.dat",
            i / 100_000,
            (i / 1000) % 100
        );
        names += path.rsplit('/').next().unwrap().len();
        let meta = Meta {
            is_dir: false,
            size: (i % 65536) as u64,
            mtime: 1_700_000_000.0 + i as f64,
            ctime: 1_700_000_000.0,
        };
        ix.upsert(
            &Upsert {
                path,
                meta,
                is_atomic_write: None,
                audit_skipped: false,
                parent_mtime: None,
            },
            Source::Snapshot,
            now,
        );
    }
    let build = build.elapsed();
    println!(
        "index of {files} files built in process at {:.0} rows/s",
        files as f64 / build.as_secs_f64()
    );

    // Memory per file.
    let tree_bytes = ix.tree().heap_bytes_without_names();
    let per_file = tree_bytes as f64 / files as f64;
    let mut naive: HashMap<String, Meta> = HashMap::with_capacity(files);
    let mut naive_paths = 0usize;
    let mut stack = vec![weir_host::index::ROOT];
    while let Some(id) = stack.pop() {
        stack.extend_from_slice(ix.tree().children(id));
        let path = ix.tree().path(id);
        naive_paths += path.capacity();
        naive.insert(path, ix.tree().meta(id));
    }
    // hashbrown: one control byte per bucket, (String, Meta) per bucket.
    let naive_bytes = naive.capacity() * (1 + std::mem::size_of::<(String, Meta)>()) + naive_paths;
    let naive_per_file = (naive_bytes - names) as f64 / files as f64;
    println!("memory per file beyond its name:");
    println!("  hash tree                    {per_file:>8.1} bytes");
    println!(
        "  HashMap<full path, meta>     {naive_per_file:>8.1} bytes   (hash tree at {:.2}x of it)",
        per_file / naive_per_file
    );
    drop(naive);

    // Serialization of the whole tree.
    let q = TreeQuery {
        path: "/".into(),
        recursive: true,
        max_depth: None,
        only_path: false,
    };
    let root = check_tree(&ix, &q, usize::MAX).unwrap();
    let mut out = Vec::new();
    let start = Instant::now();
    write_tree(&ix, &q, root, now, &mut out).unwrap();
    let streamed = start.elapsed();
    let mb = out.len() as f64 / 1e6;
    let start = Instant::now();
    let baseline = serde_json::to_vec(&value_tree(&ix, root)).unwrap();
    let via_value = start.elapsed();
    println!("tree of {files} files ({mb:.0} MB of JSON):");
    println!(
        "  streamed from the index      {:>8.0} MB/s",
        mb / streamed.as_secs_f64()
    );
    println!(
        "  via a serde_json::Value tree {:>8.0} MB/s   (streamed at {:.2}x of it)",
        baseline.len() as f64 / 1e6 / via_value.as_secs_f64(),
        via_value.as_secs_f64() / streamed.as_secs_f64()
    );
}
