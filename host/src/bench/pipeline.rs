//! The end-to-end pipeline `weir bench` measures on the `weir serve` it
//! started: events `POST`ed to `/v1/events` in batches of 1000 on one
//! keep-alive connection, through the bus, `matches` and `process` of the
//! WebAssembly key `fs.large_files`, to one consumer reading the NDJSON
//! stream. The client prepares every body before the clock starts and
//! counts envelopes without parsing them, so the figure is the server's.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use super::keys::KEY;
use super::server::{INGEST_KEY, QUERY_KEY, Server};

/// Events per `POST`.
pub const BATCH: usize = 1000;

/// What the pipeline measured.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct PipelineRun {
    /// Events posted (each one selected by the key).
    pub events: usize,
    /// Events per second from the first `POST` until the consumer had the
    /// last envelope.
    pub events_per_sec: f64,
    /// Events the consumer was told it lost (a slow-consumer gap); 0 for
    /// the figure to mean anything.
    pub lost: u64,
}

/// Request bodies for events `from..from + n`, [`BATCH`] per body. Every
/// event is a file of at least 1 MB under `/data/`, so the key keeps all.
fn bodies(from: usize, n: usize) -> Vec<Vec<u8>> {
    (from..from + n)
        .collect::<Vec<_>>()
        .chunks(BATCH)
        .map(|chunk| {
            let events: Vec<String> = chunk
                .iter()
                .map(|i| {
                    format!(
                        r#"{{"event_type":"fs.insert","source":"weir-bench","payload":{{"path":"/data/file-{i:08}.dat","size":{},"mtime":1706000000.5,"is_dir":false}}}}"#,
                        1_000_000 + i
                    )
                })
                .collect();
            format!("[{}]", events.join(",")).into_bytes()
        })
        .collect()
}

/// One run of `n` events numbered from `from`.
async fn run(
    http: &reqwest::Client,
    base: &str,
    from: usize,
    n: usize,
) -> anyhow::Result<(f64, u64)> {
    let resp = http
        .get(format!("{base}/v1/keys/{KEY}/stream?min_size=0"))
        .header("X-API-Key", QUERY_KEY)
        .header("Accept", "application/x-ndjson")
        .send()
        .await
        .context("subscribing")?;
    if !resp.status().is_success() {
        bail!(
            "subscribing to {KEY} answered {}: {}",
            resp.status(),
            resp.text().await.unwrap_or_default()
        );
    }
    let mut lines = crate::consume::NdjsonLines::new(resp);
    let first = lines
        .next_line()
        .await?
        .context("the stream ended at once")?;
    anyhow::ensure!(
        first.windows(12).any(|w| w == b"\"subscribed\""),
        "the stream did not start with its subscribed notice: {}",
        String::from_utf8_lossy(&first)
    );
    let bodies = bodies(from, n);
    let start = Instant::now();
    let reader = async move {
        let (mut got, mut lost) = (0usize, 0u64);
        while got + (lost as usize) < n {
            let Some(line) = lines.next_line().await? else {
                bail!("the stream ended after {got} of {n} envelopes");
            };
            // Envelopes are counted unparsed; only notices are read.
            if line.starts_with(b"{\"notice\"") {
                let notice: serde_json::Value = serde_json::from_slice(&line)?;
                if notice["notice"] == "gap" {
                    lost += notice["count"].as_u64().unwrap_or(0);
                }
            } else {
                got += 1;
            }
        }
        anyhow::Ok(lost)
    };
    let writer = async {
        for body in bodies {
            let resp = http
                .post(format!("{base}/v1/events"))
                .header("X-API-Key", INGEST_KEY)
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await?;
            if !resp.status().is_success() {
                bail!(
                    "POST /v1/events answered {}: {}",
                    resp.status(),
                    resp.text().await.unwrap_or_default()
                );
            }
            resp.bytes().await?;
        }
        anyhow::Ok(())
    };
    let (lost, ()) = tokio::time::timeout(Duration::from_secs(600), async {
        tokio::try_join!(reader, writer)
    })
    .await
    .context("the pipeline did not deliver within 10 minutes")??;
    Ok((n as f64 / start.elapsed().as_secs_f64(), lost))
}

/// The best of three runs of `n` events, after a warm-up.
pub async fn measure(
    server: &Server,
    n: usize,
    step: &dyn Fn(&str),
) -> anyhow::Result<PipelineRun> {
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(2)
        .build()?;
    step("pipeline: warming up");
    run(&http, &server.base, 0, n.min(5_000)).await?;
    let mut out = PipelineRun {
        events: n,
        ..PipelineRun::default()
    };
    for round in 0..3 {
        step(&format!("pipeline: {n} events, round {} of 3", round + 1));
        let (rate, lost) = run(&http, &server.base, (round + 1) * n, n).await?;
        out.events_per_sec = out.events_per_sec.max(rate);
        out.lost += lost;
    }
    Ok(out)
}
