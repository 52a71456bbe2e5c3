//! The whole pipeline over HTTP: events `POST`ed to `/v1/events`, through
//! the bus, `matches` and `process` of a key, to a consumer reading the
//! NDJSON stream. The key is `fs-large-files` as a WebAssembly component and
//! the same Rust code linked natively (a [`Runner`] in this file), measured
//! in the same run; prints events per second, the ratio, and the latency
//! from `POST` to consumer at a steady rate.
//!
//! Then durability, in the same run: the same pipeline (wasm key) on a host
//! with a data directory (`--fsync always`) against the ephemeral host, the
//! latency of single-event `POST`s on each, the bytes on disk per event
//! after 1,000,000 events, and the time a host takes to open that log again.
//!
//! Then the cluster: the same pipeline with the bus on a real three-node
//! NATS JetStream cluster (loopback), one host and two, beside the
//! embedded host, in the same run.
//!
//! Run: `cargo bench -p weir-host --bench pipeline` (optional argument:
//! number of events for the throughput run, default 50000).

use std::sync::Arc;
use std::time::{Duration, Instant};

use fs_large_files::LargeFiles;
use serde_json::{Value, json};
use weir_host::auth::{Keys, Role};
use weir_host::bus::Event;
use weir_host::engine::{EngineConfig, Outcome, Params, PluginFault};
use weir_host::registry::{KeyDefinition, Runner};
use weir_host::runtime::{Host, HostConfig};
use weir_sdk::EventKey;

#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

const BATCH: usize = 1000;
const QUERY: &str = "bench-query";
const INGEST: &str = "bench-ingest";

/// A host API that refuses everything (`fs.large_files` never calls it).
struct NoApi;

impl weir_sdk::Api for NoApi {
    fn call(&self, _: &str, _: &str, _: Option<&str>) -> Result<String, weir_sdk::ApiError> {
        Err(weir_sdk::ApiError {
            status: 403,
            message: "no host API in this benchmark".into(),
        })
    }
}

/// `fs-large-files` compiled into the host, as key `native.large_files`
/// (it has no normalize-params, pre-consume or cleanup: the defaults).
struct Native {
    defs: Vec<KeyDefinition>,
}

fn sdk_event(e: &Event) -> weir_sdk::RawEvent {
    weir_sdk::RawEvent::new(&e.new.event_type, &e.new.payload).with_id(&e.new.id)
}

impl Runner for Native {
    fn name(&self) -> &str {
        "native_large_files"
    }
    fn file_label(&self) -> String {
        "native:large_files".into()
    }
    fn definitions(&self) -> &[KeyDefinition] {
        &self.defs
    }
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
    fn matches_batch(
        &self,
        _: &str,
        params: &Params,
        events: &[&Event],
    ) -> Vec<Result<bool, PluginFault>> {
        let p = weir_sdk::Params::from_pairs(params.clone());
        events
            .iter()
            .map(|e| Ok(LargeFiles.matches(&sdk_event(e), &p)))
            .collect()
    }
    fn process_batch(
        &self,
        _: &str,
        params: &Params,
        events: &[&Event],
    ) -> Vec<Result<Outcome, PluginFault>> {
        let p = weir_sdk::Params::from_pairs(params.clone());
        events
            .iter()
            .map(|e| match LargeFiles.process(&NoApi, &sdk_event(e), &p) {
                Ok(weir_sdk::Outcome::Emit(s)) => Ok(Outcome::Emit(s)),
                Ok(weir_sdk::Outcome::Drop) => Ok(Outcome::Drop),
                Err(err) => Err(PluginFault::Failed(err.to_string())),
            })
            .collect()
    }
}

fn event(i: usize) -> Value {
    json!({
        "event_type": "fs.insert",
        "source": "bench",
        "payload": {"path": format!("/data/file-{i:08}.dat"), "size": 1_000_000 + i, "mtime": 1_706_000_000.5, "is_dir": false}
    })
}

/// Index of the event an envelope came from (from its path).
fn index_of(envelope: &Value) -> Option<usize> {
    envelope["data"]["path"]
        .as_str()?
        .strip_prefix("/data/file-")?
        .strip_suffix(".dat")?
        .parse()
        .ok()
}

struct Stream {
    lines: weir_host::consume::NdjsonLines,
}

impl Stream {
    async fn open(base: &str, key: &str) -> anyhow::Result<Self> {
        let resp = reqwest::Client::new()
            .get(format!("{base}/v1/keys/{key}/stream?min_size=0"))
            .header("X-API-Key", QUERY)
            .header("Accept", "application/x-ndjson")
            .send()
            .await?;
        anyhow::ensure!(resp.status().is_success(), "{}", resp.text().await?);
        let mut s = Self {
            lines: weir_host::consume::NdjsonLines::new(resp),
        };
        let first = s
            .next()
            .await?
            .ok_or_else(|| anyhow::anyhow!("no notice"))?;
        anyhow::ensure!(first["notice"] == "subscribed", "{first}");
        Ok(s)
    }

    async fn next(&mut self) -> anyhow::Result<Option<Value>> {
        match self.lines.next_line().await? {
            Some(line) => Ok(Some(serde_json::from_slice(&line)?)),
            None => Ok(None),
        }
    }
}

async fn post(client: &reqwest::Client, base: &str, events: Vec<Value>) -> anyhow::Result<()> {
    let resp = client
        .post(format!("{base}/v1/events"))
        .header("X-API-Key", INGEST)
        .json(&Value::Array(events))
        .send()
        .await?;
    anyhow::ensure!(resp.status().is_success(), "{}", resp.text().await?);
    Ok(())
}

/// Events per second from the first `POST` to the last envelope; and the
/// events the consumer lost (must be 0 for the number to mean anything).
async fn throughput(base: &str, key: &str, n: usize, offset: usize) -> anyhow::Result<(f64, u64)> {
    let mut stream = Stream::open(base, key).await?;
    let client = reqwest::Client::new();
    let start = Instant::now();
    let reader = tokio::spawn(async move {
        let (mut got, mut lost) = (0usize, 0u64);
        while got + (lost as usize) < n {
            let Some(v) = stream.next().await? else { break };
            if v["notice"] == "gap" {
                lost += v["count"].as_u64().unwrap_or(0);
            } else if v.get("notice").is_none() {
                got += 1;
            }
        }
        anyhow::Ok(lost)
    });
    for chunk in (0..n).collect::<Vec<_>>().chunks(BATCH) {
        post(
            &client,
            base,
            chunk.iter().map(|i| event(offset + i)).collect(),
        )
        .await?;
    }
    let lost = reader.await??;
    Ok((n as f64 / start.elapsed().as_secs_f64(), lost))
}

/// Latency percentiles (p50, p99, max) of `n` events posted one by one at
/// `rate` per second.
async fn latency(
    base: &str,
    key: &str,
    n: usize,
    rate: f64,
    offset: usize,
) -> anyhow::Result<(Duration, Duration, Duration)> {
    let mut stream = Stream::open(base, key).await?;
    let client = reqwest::Client::new();
    let sent: Arc<std::sync::Mutex<Vec<Option<Instant>>>> =
        Arc::new(std::sync::Mutex::new(vec![None; n]));
    let seen = sent.clone();
    let reader = tokio::spawn(async move {
        let mut lat = Vec::with_capacity(n);
        while lat.len() < n {
            let Some(v) = stream.next().await? else { break };
            if let Some(i) = index_of(&v)
                && let Some(t) = seen.lock().unwrap()[i - offset]
            {
                lat.push(t.elapsed());
            }
        }
        anyhow::Ok(lat)
    });
    let period = Duration::from_secs_f64(1.0 / rate);
    let start = Instant::now();
    for i in 0..n {
        let due = start + period * i as u32;
        tokio::time::sleep_until(due.into()).await;
        sent.lock().unwrap()[i] = Some(Instant::now());
        post(&client, base, vec![event(offset + i)]).await?;
    }
    let mut lat = reader.await??;
    lat.sort();
    let pick = |q: f64| lat[((lat.len() as f64 * q) as usize).min(lat.len() - 1)];
    Ok((pick(0.5), pick(0.99), *lat.last().unwrap()))
}

fn main() -> anyhow::Result<()> {
    let n: usize = std::env::args()
        .skip(1)
        .find(|a| !a.starts_with('-'))
        .and_then(|a| a.parse().ok())
        .unwrap_or(50_000);
    let host = Arc::new(bench_host(None)?);
    let mut def = host
        .registry()
        .lookup("fs.large_files")
        .ok_or_else(|| anyhow::anyhow!("fs.large_files is not loaded"))?
        .def
        .as_ref()
        .clone();
    def.key = "native.large_files".into();
    host.register(Arc::new(Native { defs: vec![def] }))
        .map_err(|e| anyhow::anyhow!("{e}"))?;

    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async move {
        let (base, stop, served) = serve(host).await?;

        println!("pipeline: POST /v1/events -> bus -> matches+process -> NDJSON consumer, {n} events, batches of {BATCH}");
        // Warm-up: instances, connections, allocator.
        throughput(&base, "fs.large_files", 5_000, 10_000_000).await?;
        throughput(&base, "native.large_files", 5_000, 11_000_000).await?;
        let (mut wasm, mut native) = (0f64, 0f64);
        let mut lost = 0;
        for round in 0..3 {
            let (w, lw) = throughput(&base, "fs.large_files", n, round * 2 * n).await?;
            let (nv, ln) = throughput(&base, "native.large_files", n, (round * 2 + 1) * n).await?;
            wasm = wasm.max(w);
            native = native.max(nv);
            lost += lw + ln;
        }
        println!("  native key (baseline):  {:>10.0} events/s", native);
        println!("  wasm key:               {:>10.0} events/s   ratio {:.2}x of native", wasm, wasm / native);
        println!("  events lost to slow-consumer drops: {lost}");

        let rate = 500.0;
        let m = 1_000;
        for (label, key, offset) in [("native", "native.large_files", 20_000_000), ("wasm", "fs.large_files", 21_000_000)] {
            let (p50, p99, max) = latency(&base, key, m, rate, offset).await?;
            println!(
                "  latency {label:>6}, {m} events at {rate}/s: p50 {:.2} ms  p99 {:.2} ms  max {:.2} ms",
                p50.as_secs_f64() * 1e3,
                p99.as_secs_f64() * 1e3,
                max.as_secs_f64() * 1e3
            );
        }
        durability(&base, n).await?;
        cluster(&base, n).await?;
        let _ = stop.send(());
        served.await??;
        anyhow::Ok(())
    })
}

/// A host with the example plugins and the bench keys on the NATS cluster
/// at `urls`.
fn cluster_host(urls: Vec<String>) -> anyhow::Result<Host> {
    let mut keys = Keys::new();
    keys.insert(QUERY, Role::Query, "default");
    keys.insert(INGEST, Role::Ingest, "default");
    let mut cluster = weir_host::cluster::ClusterConfig::new(urls);
    cluster.name = "bench".into();
    cluster.log.retention_bytes = 1 << 30;
    Host::new(HostConfig {
        plugin_dir: Some(weir_host::EXAMPLE_PLUGIN_DIR.into()),
        engine: EngineConfig::default(),
        keys,
        cluster: Some(cluster),
        ..HostConfig::default()
    })
}

/// The same pipeline with the bus on a real 3-node JetStream cluster
/// (replicas 3, loopback): one host, then two (POSTs to one, consumers on
/// both), beside the embedded host at `embedded`.
async fn cluster(embedded: &str, n: usize) -> anyhow::Result<()> {
    let nats = weir_tests::nats::NatsCluster::start().await;
    let urls = nats.urls.clone();
    let a = tokio::task::spawn_blocking({
        let urls = urls.clone();
        move || cluster_host(urls)
    })
    .await??;
    let b = tokio::task::spawn_blocking(move || cluster_host(urls)).await??;
    let (on_a, stop_a, served_a) = serve(Arc::new(a)).await?;
    let (on_b, stop_b, served_b) = serve(Arc::new(b)).await?;
    println!("cluster: the wasm pipeline with the bus on 3 NATS nodes (replicas 3), {n} events");
    throughput(&on_a, "fs.large_files", 5_000, 50_000_000).await?;
    let (mut e, mut one, mut two) = (0f64, 0f64, 0f64);
    let mut spent = (0f64, 0f64, 0f64);
    for round in 0..3 {
        let offset = 51_000_000 + round * 4 * n;
        e = e.max(throughput(embedded, "fs.large_files", n, offset).await?.0);
        // Where the time goes: CPU seconds of the NATS nodes and of this
        // process (the host and the client) over the one-host run.
        let (nats_before, me_before) = (cpu_secs(&nats.pids()), cpu_secs(&[std::process::id()]));
        let started = Instant::now();
        one = one.max(throughput(&on_a, "fs.large_files", n, offset + n).await?.0);
        spent = (
            cpu_secs(&nats.pids()) - nats_before,
            cpu_secs(&[std::process::id()]) - me_before,
            started.elapsed().as_secs_f64(),
        );
        // Two hosts: POSTs to A, one consumer on A and one on B; the time
        // until both have every event.
        // B's `latest` is the newest event it has seen (refreshed every
        // second): wait a refresh, so that its feed starts after the events
        // above.
        tokio::time::sleep(Duration::from_millis(1100)).await;
        let other = Stream::open(&on_b, "fs.large_files").await?;
        let start = Instant::now();
        let (r1, r2) = tokio::join!(
            throughput(&on_a, "fs.large_files", n, offset + 2 * n),
            drain_only(other, n)
        );
        r1?;
        r2?;
        two = two.max(n as f64 / start.elapsed().as_secs_f64());
    }
    println!("  embedded, 1 host (baseline): {e:>10.0} events/s");
    println!(
        "  JetStream, 1 host:           {one:>10.0} events/s   ratio {:.2}",
        one / e
    );
    println!(
        "  JetStream, 2 hosts:          {two:>10.0} events/s   ratio {:.2} (every event to a consumer on each host)",
        two / e
    );
    let (nats_cpu, me_cpu, wall) = spent;
    println!(
        "  where the time goes (last 1-host run, {wall:.2} s wall on {} cores): NATS nodes {nats_cpu:.2} CPU-s ({:.0}%), host + client {me_cpu:.2} CPU-s ({:.0}%), {:.0}% of the machine busy",
        std::thread::available_parallelism().map_or(1, |c| c.get()),
        100.0 * nats_cpu / (nats_cpu + me_cpu),
        100.0 * me_cpu / (nats_cpu + me_cpu),
        100.0 * (nats_cpu + me_cpu)
            / (wall * std::thread::available_parallelism().map_or(1, |c| c.get()) as f64)
    );
    let _ = stop_a.send(());
    let _ = stop_b.send(());
    served_a.await??;
    served_b.await??;
    Ok(())
}

/// CPU seconds (user + system) the processes `pids` have used so far.
fn cpu_secs(pids: &[u32]) -> f64 {
    // Clock ticks per second: 100 on Linux.
    pids.iter()
        .filter_map(|pid| std::fs::read_to_string(format!("/proc/{pid}/stat")).ok())
        .filter_map(|stat| {
            // Fields after the command name (which may hold spaces).
            let rest = stat.rsplit_once(") ")?.1;
            let f: Vec<&str> = rest.split_whitespace().collect();
            Some(f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?)
        })
        .sum::<f64>()
        / 100.0
}

/// Reads `n` envelopes from `stream` (events posted elsewhere).
async fn drain_only(mut stream: Stream, n: usize) -> anyhow::Result<()> {
    let mut got = 0;
    while got < n {
        let Some(v) = stream.next().await? else {
            anyhow::bail!("the stream ended after {got} events");
        };
        if v.get("notice").is_none() {
            got += 1;
        }
    }
    Ok(())
}

/// A host with the example plugins and the bench keys; durable when given
/// a data directory.
fn bench_host(data_dir: Option<std::path::PathBuf>) -> anyhow::Result<Host> {
    let mut keys = Keys::new();
    keys.insert(QUERY, Role::Query, "default");
    keys.insert(INGEST, Role::Ingest, "default");
    Host::new(HostConfig {
        plugin_dir: Some(weir_host::EXAMPLE_PLUGIN_DIR.into()),
        engine: EngineConfig::default(),
        keys,
        data_dir,
        ..HostConfig::default()
    })
}

type Served = tokio::task::JoinHandle<anyhow::Result<()>>;

/// Serves `host` on a loopback port: its base URL, the stop switch, the task.
async fn serve(
    host: Arc<Host>,
) -> anyhow::Result<(String, tokio::sync::oneshot::Sender<()>, Served)> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let served = tokio::spawn(weir_host::run(listener, host, async move {
        let _ = stopped.await;
    }));
    Ok((base, stop, served))
}

/// The durable host against the ephemeral one at `ephemeral`.
async fn durability(ephemeral: &str, n: usize) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let host = Arc::new(bench_host(Some(dir.path().to_path_buf()))?);
    let (durable, stop, served) = serve(host.clone()).await?;
    println!(
        "durability: the wasm pipeline with a data directory (fsync always) vs ephemeral, {n} events"
    );
    throughput(&durable, "fs.large_files", 5_000, 30_000_000).await?;
    let (mut d, mut e) = (0f64, 0f64);
    for round in 0..3 {
        e = e.max(
            throughput(ephemeral, "fs.large_files", n, 31_000_000 + round * 2 * n)
                .await?
                .0,
        );
        d = d.max(
            throughput(&durable, "fs.large_files", n, 32_000_000 + round * 2 * n)
                .await?
                .0,
        );
    }
    println!("  ephemeral (baseline):   {e:>10.0} events/s");
    println!(
        "  durable:                {d:>10.0} events/s   ratio {:.2} of ephemeral (goal >= 0.50)",
        d / e
    );
    let client = reqwest::Client::new();
    for (label, base) in [("ephemeral", ephemeral), ("durable", durable.as_str())] {
        let mut took = Vec::with_capacity(1000);
        for i in 0..1000 {
            let t = Instant::now();
            post(&client, base, vec![event(40_000_000 + i)]).await?;
            took.push(t.elapsed());
        }
        took.sort();
        println!(
            "  single-event POST, {label:>9}: p50 {:.2} ms  p99 {:.2} ms",
            took[500].as_secs_f64() * 1e3,
            took[990].as_secs_f64() * 1e3
        );
    }
    // 1,000,000 events straight into the bus (batches of 1000), then the
    // size of the store and the time to open it again.
    let events = 1_000_000;
    let h = host.clone();
    let t = Instant::now();
    tokio::task::spawn_blocking(move || {
        for b in 0..events / BATCH {
            let batch = (0..BATCH)
                .map(|i| weir_host::bus::NewEvent {
                    id: format!("bulk-{b}-{i}"),
                    event_type: "fs.insert".into(),
                    source: "bench".into(),
                    source_time: None,
                    correlation_id: None,
                    payload: event(b * BATCH + i)["payload"].to_string(),
                    scope: Some("default".into()),
                })
                .collect();
            h.pipeline()
                .publish(batch)
                .map_err(|e| anyhow::anyhow!("{e}"))?;
        }
        anyhow::Ok(())
    })
    .await??;
    let wrote = t.elapsed();
    let store = host.store().expect("durable").clone();
    let file_bytes = std::fs::metadata(store.file())?.len();
    let total = host.pipeline().bus().stats().last_seq;
    println!(
        "  bulk: {events} events into the log in {:.1} s ({:.0} events/s, batches of {BATCH})",
        wrote.as_secs_f64(),
        events as f64 / wrote.as_secs_f64()
    );
    println!(
        "  on disk: {:.0} bytes per event (file {} MiB for {total} events; records {:.0} bytes per event)",
        file_bytes as f64 / total as f64,
        file_bytes >> 20,
        store.log_bytes() as f64 / total as f64
    );
    // Stopping the server shuts the host down (and closes its store).
    let _ = stop.send(());
    served.await??;
    drop(store);
    drop(host);
    let t = Instant::now();
    let reopened = tokio::task::spawn_blocking({
        let dir = dir.path().to_path_buf();
        // No plugins: the time is the store's and the bus's alone.
        move || {
            Host::new(HostConfig {
                data_dir: Some(dir),
                ..HostConfig::default()
            })
        }
    })
    .await??;
    println!(
        "  restart: the host opens a log of {} events in {:.2} s (integrity check, numbering, dedup window)",
        reopened.pipeline().bus().stats().last_seq,
        t.elapsed().as_secs_f64()
    );
    Ok(())
}
