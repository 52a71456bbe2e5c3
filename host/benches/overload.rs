//! Overload soak: the `weir` binary under 64 concurrent keep-alive
//! connections that mix agent pushes, `POST /v1/events` batches, NDJSON
//! streams, views and deliberately bad requests, for a bounded time, on
//! loopback. Prints throughput and p50/p99/max latency per route, the RSS
//! ceiling of the host process, and the answers by status; fails (exit 1)
//! on any 5xx other than 503 with `Retry-After`, on a 4xx to a good
//! request, or when the RSS passes its bound.
//!
//! `cargo bench -p weir-host --bench overload [-- --secs 60 --conns 64
//! --rss-mib 512 --weir PATH]`

use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::sync::Mutex;

const INGEST: &str = "overload-ingest";
const QUERY: &str = "overload-query";

/// What one route saw.
#[derive(Default)]
struct Route {
    latencies_us: Vec<u64>,
    statuses: BTreeMap<u16, u64>,
    /// 503 answers without `Retry-After`.
    bare_503: u64,
    /// 4xx answers to requests that were meant to be good.
    unexpected_4xx: u64,
    /// Stream lines read.
    lines: u64,
}

type Stats = Arc<Mutex<BTreeMap<&'static str, Route>>>;

struct Args {
    secs: u64,
    conns: usize,
    rss_mib: u64,
    weir: String,
}

fn args() -> Args {
    let mut a = Args {
        secs: 60,
        conns: 64,
        rss_mib: 512,
        weir: env!("CARGO_BIN_EXE_weir").to_string(),
    };
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < argv.len() {
        let value = argv.get(i + 1).cloned().unwrap_or_default();
        match argv[i].as_str() {
            "--secs" => a.secs = value.parse().expect("--secs N"),
            "--conns" => a.conns = value.parse().expect("--conns N"),
            "--rss-mib" => a.rss_mib = value.parse().expect("--rss-mib N"),
            "--weir" => a.weir = value,
            _ => {
                i += 1;
                continue;
            }
        }
        i += 2;
    }
    // The host runs in a scratch directory: a relative path would not hold.
    if let Ok(path) = std::fs::canonicalize(&a.weir) {
        a.weir = path.display().to_string();
    }
    a
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

fn start(weir: &str, port: u16, dir: &std::path::Path) -> Child {
    Command::new(weir)
        .args([
            "serve",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--plugins",
            weir_host::EXAMPLE_PLUGIN_DIR,
            "--plugin-poll-ms",
            "0",
            "--ephemeral",
            "--session-timeout-secs",
            "3600",
            "--log",
            "error",
        ])
        .env("WEIR_INGEST_KEY", INGEST)
        .env("WEIR_QUERY_KEY", QUERY)
        .env("WEIR_ADMIN_KEY", "overload-admin")
        .current_dir(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("weir starts")
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

async fn record(
    stats: &Stats,
    route: &'static str,
    started: Instant,
    resp: &reqwest::Response,
    good: bool,
) {
    let status = resp.status().as_u16();
    let mut s = stats.lock().await;
    let r = s.entry(route).or_default();
    r.latencies_us.push(started.elapsed().as_micros() as u64);
    *r.statuses.entry(status).or_default() += 1;
    if status == 503 && resp.headers().get("retry-after").is_none() {
        r.bare_503 += 1;
    }
    if good && (400..500).contains(&status) {
        r.unexpected_4xx += 1;
    }
}

fn rows(n: usize, seed: u64) -> Value {
    Value::Array(
        (0..n)
            .map(|i| {
                json!({"path": format!("/d{}/f{}.log", (seed + i as u64) % 50, (seed * 7 + i as u64) % 1000),
                       "size": (seed + i as u64) * 13 % 5_000_000, "modified_time": 1_700_000_000.0 + seed as f64})
            })
            .collect(),
    )
}

async fn worker(kind: usize, base: String, sid: String, stats: Stats, stop: Arc<AtomicBool>) {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(1)
        .timeout(Duration::from_secs(30))
        .build()
        .expect("a client");
    let mut n: u64 = kind as u64 * 1_000_003;
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        let started = Instant::now();
        match kind % 5 {
            0 => {
                let body = json!({"session_id": sid, "source_type": "message",
                    "events": [{"event_type": "update", "rows": rows(20, n)}]});
                if let Ok(resp) = client
                    .post(format!("{base}/api/v1/pipe/ingest/{sid}/events"))
                    .header("X-API-Key", INGEST)
                    .json(&body)
                    .send()
                    .await
                {
                    record(&stats, "agent push (20 rows)", started, &resp, true).await;
                    let _ = resp.bytes().await;
                }
            }
            1 => {
                let events: Vec<Value> = (0..100)
                    .map(|i| {
                        json!({"event_type": "app.metric", "source": "bench",
                        "payload": {"field": "k", "k": if i % 2 == 0 { "v" } else { "w" }, "n": n}})
                    })
                    .collect();
                if let Ok(resp) = client
                    .post(format!("{base}/v1/events"))
                    .header("X-API-Key", INGEST)
                    .json(&events)
                    .send()
                    .await
                {
                    record(&stats, "POST /v1/events (100)", started, &resp, true).await;
                    let _ = resp.bytes().await;
                }
            }
            2 => {
                let path = match n % 3 {
                    0 => "/api/v1/views/default/tree?path=/&max_depth=1",
                    1 => "/api/v1/views/default/stats",
                    _ => "/api/v1/views/default/search?pattern=*7.log",
                };
                if let Ok(resp) = client
                    .get(format!("{base}{path}"))
                    .header("X-API-Key", QUERY)
                    .send()
                    .await
                {
                    record(&stats, "views", started, &resp, true).await;
                    let _ = resp.bytes().await;
                }
            }
            3 => {
                // Bad input: refused with a 4xx, never a 5xx.
                let resp = match n % 4 {
                    0 => {
                        client
                            .post(format!("{base}/v1/events"))
                            .header("X-API-Key", INGEST)
                            .body("{not json")
                            .send()
                            .await
                    }
                    1 => {
                        client
                            .get(format!("{base}/v1/keys"))
                            .header("X-API-Key", "nobody")
                            .send()
                            .await
                    }
                    2 => {
                        client
                            .post(format!("{base}/api/v1/pipe/ingest/{sid}/events"))
                            .header("X-API-Key", INGEST)
                            .json(
                                &json!({"session_id": sid, "events": [{"event_type": "update",
                            "rows": [{"path": "/a".repeat(5000), "modified_time": 1e12}]}]}),
                            )
                            .send()
                            .await
                    }
                    _ => {
                        client
                            .get(format!(
                                "{base}/api/v1/views/default/search?pattern={}",
                                "*".repeat(300)
                            ))
                            .header("X-API-Key", QUERY)
                            .send()
                            .await
                    }
                };
                if let Ok(resp) = resp {
                    record(&stats, "bad requests", started, &resp, false).await;
                    let _ = resp.bytes().await;
                }
            }
            _ => {
                // A stream read for two seconds, then closed and opened again.
                let resp = client
                    .get(format!(
                        "{base}/v1/keys/json.field_equals/stream?field=k&equals=v"
                    ))
                    .header("X-API-Key", QUERY)
                    .timeout(Duration::from_secs(3600))
                    .send()
                    .await;
                if let Ok(mut resp) = resp {
                    record(&stats, "stream (open)", started, &resp, true).await;
                    let until = Instant::now() + Duration::from_secs(2);
                    let mut lines = 0u64;
                    while Instant::now() < until && !stop.load(Ordering::Relaxed) {
                        match tokio::time::timeout(Duration::from_millis(500), resp.chunk()).await {
                            Ok(Ok(Some(chunk))) => {
                                lines += chunk.iter().filter(|&&b| b == b'\n').count() as u64
                            }
                            Ok(_) => break,
                            Err(_) => {}
                        }
                    }
                    stats.lock().await.entry("stream (open)").or_default().lines += lines;
                }
            }
        }
    }
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let a = args();
    let dir = tempfile_dir();
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let mut child = start(&a.weir, port, &dir);
    let pid = child.id();
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    while client.get(format!("{base}/healthz")).send().await.is_err() {
        assert!(Instant::now() < deadline, "weir did not start");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // An agent session with a complete 1,000-file snapshot.
    let grant: Value = client
        .post(format!("{base}/api/v1/pipe/session/"))
        .header("X-API-Key", INGEST)
        .json(&json!({"task_id": "overload:pipe"}))
        .send()
        .await
        .expect("session")
        .json()
        .await
        .expect("a grant");
    let sid = grant["session_id"]
        .as_str()
        .expect("a session id")
        .to_string();
    let snapshot = json!({"session_id": sid, "source_type": "snapshot", "is_end": true,
        "events": [{"event_type": "update", "rows": rows(1000, 0)}]});
    client
        .post(format!("{base}/api/v1/pipe/ingest/{sid}/events"))
        .header("X-API-Key", INGEST)
        .json(&snapshot)
        .send()
        .await
        .expect("snapshot");
    let rss_start = rss_kib(pid);
    let stats: Stats = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let peak = Arc::new(AtomicU64::new(rss_start));
    let sampler = {
        let (stop, peak) = (stop.clone(), peak.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                peak.fetch_max(rss_kib(pid), Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    println!(
        "overload: {} connections for {} s against {} (RSS at start {} MiB)",
        a.conns,
        a.secs,
        a.weir,
        rss_start / 1024
    );
    let started = Instant::now();
    let workers: Vec<_> = (0..a.conns)
        .map(|k| {
            tokio::spawn(worker(
                k,
                base.clone(),
                sid.clone(),
                stats.clone(),
                stop.clone(),
            ))
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(a.secs)).await;
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        let _ = tokio::time::timeout(Duration::from_secs(40), w).await;
    }
    let _ = sampler.await;
    let elapsed = started.elapsed().as_secs_f64();
    let alive = child.try_wait().ok().flatten().is_none();
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(&dir);

    let stats = stats.lock().await;
    let mut fail = Vec::new();
    println!(
        "{:<24} {:>9} {:>9} {:>9} {:>9} {:>9}  statuses",
        "route", "requests", "req/s", "p50 ms", "p99 ms", "max ms"
    );
    for (route, r) in stats.iter() {
        let mut l = r.latencies_us.clone();
        l.sort_unstable();
        let ms = |us: u64| us as f64 / 1000.0;
        println!(
            "{:<24} {:>9} {:>9.0} {:>9.2} {:>9.2} {:>9.2}  {:?}{}",
            route,
            l.len(),
            l.len() as f64 / elapsed,
            ms(percentile(&l, 0.5)),
            ms(percentile(&l, 0.99)),
            ms(l.last().copied().unwrap_or(0)),
            r.statuses,
            if r.lines > 0 {
                format!(", {} lines read", r.lines)
            } else {
                String::new()
            }
        );
        for (&status, &count) in &r.statuses {
            if status >= 500 && status != 503 {
                fail.push(format!("{route}: {count} answers {status}"));
            }
        }
        if r.bare_503 > 0 {
            fail.push(format!("{route}: {} 503 without Retry-After", r.bare_503));
        }
        if r.unexpected_4xx > 0 {
            fail.push(format!(
                "{route}: {} 4xx to good requests",
                r.unexpected_4xx
            ));
        }
    }
    let peak_mib = peak.load(Ordering::Relaxed) / 1024;
    println!(
        "RSS ceiling: {peak_mib} MiB (bound {} MiB); host alive at the end: {alive}",
        a.rss_mib
    );
    if peak_mib > a.rss_mib {
        fail.push(format!("RSS {peak_mib} MiB over {} MiB", a.rss_mib));
    }
    if !alive {
        fail.push("the host died".into());
    }
    if fail.is_empty() {
        println!("PASS");
    } else {
        println!("FAIL: {}", fail.join("; "));
        std::process::exit(1);
    }
}

/// A scratch directory for the host's working directory.
fn tempfile_dir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("weir-overload-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a scratch directory");
    dir
}
