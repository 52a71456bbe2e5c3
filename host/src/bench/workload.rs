//! What `weir bench` does to each server, over HTTP as a client would:
//! a snapshot pushed the way an agent pushes it (100 events of 100 rows
//! per request, one keep-alive connection) until the view is READY with
//! every file, the full tree, stats, and the memory the files took.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::{Value, json};

use super::server::{INGEST_KEY, QUERY_KEY, Server, VIEW};

/// Rows per event and events per request, as the agents send them.
const ROWS_PER_EVENT: usize = 100;
const EVENTS_PER_REQUEST: usize = 100;

/// What one server measured.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Measured {
    /// The server (`weir 0.1.0`, `fustor-fusion 0.8.17`).
    pub server: String,
    /// Rows pushed (files and their directories).
    pub rows: usize,
    /// Seconds from the first push until the view was READY with every file.
    pub ingest_secs: f64,
    /// `rows / ingest_secs`.
    pub ingest_rows_per_sec: f64,
    /// Bytes of the full tree (`tree?path=/`).
    pub tree_bytes: usize,
    /// The fastest of three full-tree answers, in seconds.
    pub tree_secs: f64,
    /// `tree_bytes / tree_secs`.
    pub tree_bytes_per_sec: f64,
    /// Mean seconds of one `stats` answer, over 100 in a row.
    pub stats_secs: f64,
    /// Resident bytes per file once READY and settled (growth since start).
    pub bytes_per_file: f64,
    /// The peak resident growth during the ingest over the settled growth.
    pub peak_over_settled: f64,
}

/// The snapshot of `files` files in session `sid`: request bodies, each
/// directory's row before its files', and how many rows in all.
pub fn snapshot(files: usize, sid: &str) -> (Vec<Vec<u8>>, usize) {
    let mut bodies = Vec::new();
    let mut events: Vec<String> = Vec::new();
    let mut rows: Vec<String> = Vec::new();
    let mut count = 0;
    let now = crate::time::now_secs();
    let index = (now * 1000.0) as u64;
    let flush_event = |rows: &mut Vec<String>, events: &mut Vec<String>| {
        if !rows.is_empty() {
            events.push(format!(
                r#"{{"event_type":"update","event_schema":"fs","table":"files","index":{index},"fields":["path","file_name","size","modified_time","created_time","is_directory"],"message_source":"snapshot","rows":[{}]}}"#,
                rows.join(",")
            ));
            rows.clear();
        }
    };
    let body = |events: &[String]| {
        format!(
            r#"{{"session_id":{},"source_type":"snapshot","is_end":false,"events":[{}]}}"#,
            json!(sid),
            events.join(",")
        )
        .into_bytes()
    };
    let mut row = |path: &str, size: u64, dir: bool| {
        let name = path.rsplit('/').next().unwrap_or("");
        rows.push(format!(
            r#"{{"path":"{path}","file_name":"{name}","size":{size},"modified_time":{},"created_time":{},"is_directory":{dir}}}"#,
            now - 86_400.0 + (size % 86_400) as f64 / 7.0,
            now - 86_400.0,
        ));
        count += 1;
        if rows.len() == ROWS_PER_EVENT {
            flush_event(&mut rows, &mut events);
            if events.len() == EVENTS_PER_REQUEST {
                bodies.push(body(&events));
                events.clear();
            }
        }
    };
    row("/", 4096, true);
    for i in 0..files {
        let (proj, run) = (i / 100_000, (i / 1000) % 100);
        if i % 100_000 == 0 {
            row(&format!("/proj_{proj}"), 4096, true);
        }
        if i % 1000 == 0 {
            row(&format!("/proj_{proj}/run_{run}"), 4096, true);
        }
        row(
            &format!("/proj_{proj}/run_{run}/file_{i:07}.dat"),
            (i as u64 * 7919) % 1_000_000,
            false,
        );
    }
    flush_event(&mut rows, &mut events);
    if !events.is_empty() {
        bodies.push(body(&events));
    }
    (bodies, count)
}

/// A client of one server, on one keep-alive connection.
pub struct Client {
    http: reqwest::Client,
    base: String,
}

impl Client {
    pub fn new(server: &Server) -> anyhow::Result<Self> {
        Ok(Self {
            http: reqwest::Client::builder()
                .pool_max_idle_per_host(1)
                .timeout(Duration::from_secs(600))
                .build()?,
            base: server.base.clone(),
        })
    }

    async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        key: &str,
        body: Option<Vec<u8>>,
    ) -> anyhow::Result<(u16, bytes::Bytes)> {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.base))
            .header("X-API-Key", key);
        if let Some(body) = body {
            req = req.header("content-type", "application/json").body(body);
        }
        let resp = req
            .send()
            .await
            .with_context(|| format!("{} {path}", self.base))?;
        let status = resp.status().as_u16();
        Ok((status, resp.bytes().await?))
    }

    /// `GET path`: the status, and the body's length and first bytes. The
    /// body is read chunk by chunk as it arrives and not kept (as `curl -o
    /// /dev/null` would), so that the client's copying does not count as
    /// the server's time.
    async fn count(&self, path: &str, key: &str) -> anyhow::Result<(u16, usize, Vec<u8>)> {
        let mut resp = self
            .http
            .get(format!("{}{path}", self.base))
            .header("X-API-Key", key)
            .send()
            .await
            .with_context(|| format!("{} {path}", self.base))?;
        let status = resp.status().as_u16();
        let (mut len, mut head) = (0, Vec::new());
        while let Some(chunk) = resp.chunk().await? {
            if head.len() < 300 {
                head.extend_from_slice(&chunk[..chunk.len().min(300 - head.len())]);
            }
            len += chunk.len();
        }
        Ok((status, len, head))
    }

    /// `stats` of the view, once it answers 200.
    pub(super) async fn stats(&self) -> anyhow::Result<Option<Value>> {
        let (status, body) = self
            .send(
                reqwest::Method::GET,
                &format!("/api/v1/views/{VIEW}/stats"),
                QUERY_KEY,
                None,
            )
            .await?;
        Ok((status == 200)
            .then(|| serde_json::from_slice(&body).ok())
            .flatten())
    }
}

/// Runs every workload on `server` with `files` files; `step` is told what
/// is being done.
pub async fn measure(
    server: &Server,
    files: usize,
    step: &dyn Fn(&str),
) -> anyhow::Result<Measured> {
    let client = Client::new(server)?;
    let mut out = Measured {
        server: server.label.clone(),
        ..Default::default()
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (before, _) = server.memory();

    // The snapshot.
    step("snapshot: making the session and the rows");
    let (status, grant) = client
        .send(
            reqwest::Method::POST,
            "/api/v1/pipe/session/",
            INGEST_KEY,
            Some(
                json!({"task_id": "weir-bench:bench", "source_type": "fs", "client_info": {"source_uri": null}})
                    .to_string()
                    .into_bytes(),
            ),
        )
        .await?;
    let grant: Value = serde_json::from_slice(&grant).unwrap_or_default();
    let Some(sid) = grant["session_id"].as_str().filter(|_| status == 200) else {
        bail!("{}: no session ({status} {grant})", server.label);
    };
    let push_path = format!("/api/v1/pipe/ingest/{sid}/events");
    let (bodies, rows) = snapshot(files, sid);
    out.rows = rows;
    server.reset_peak();
    step(&format!("snapshot: pushing {rows} rows"));
    let start = Instant::now();
    for body in bodies {
        loop {
            let (status, answer) = client
                .send(
                    reqwest::Method::POST,
                    &push_path,
                    INGEST_KEY,
                    Some(body.clone()),
                )
                .await?;
            match status {
                200 => break,
                // A full queue: wait as an agent does.
                503 => tokio::time::sleep(Duration::from_millis(5)).await,
                _ => bail!(
                    "{}: a push answered {status}: {}",
                    server.label,
                    String::from_utf8_lossy(&answer)
                ),
            }
        }
    }
    let end = json!({"session_id": sid, "source_type": "snapshot", "is_end": true, "events": []});
    client
        .send(
            reqwest::Method::POST,
            &push_path,
            INGEST_KEY,
            Some(end.to_string().into_bytes()),
        )
        .await?;
    step("snapshot: waiting for READY");
    loop {
        if let Some(stats) = client.stats().await?
            && stats["total_files"].as_u64() == Some(files as u64)
        {
            break;
        }
        if start.elapsed() > Duration::from_secs(3600) {
            bail!(
                "{}: not READY with {files} files after an hour",
                server.label
            );
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    out.ingest_secs = start.elapsed().as_secs_f64();
    out.ingest_rows_per_sec = rows as f64 / out.ingest_secs;

    // Memory, settled.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (after, peak) = server.memory();
    let grown = after.saturating_sub(before) as f64;
    out.bytes_per_file = grown / files.max(1) as f64;
    out.peak_over_settled = if grown > 0.0 {
        peak.saturating_sub(before) as f64 / grown
    } else {
        0.0
    };

    // The full tree, best of three.
    step("full tree");
    let tree = format!("/api/v1/views/{VIEW}/tree?path=/");
    let mut best = f64::MAX;
    for _ in 0..3 {
        let start = Instant::now();
        let (status, len, head) = client.count(&tree, QUERY_KEY).await?;
        let secs = start.elapsed().as_secs_f64();
        if status != 200 {
            bail!(
                "{}: the full tree answered {status}: {}",
                server.label,
                String::from_utf8_lossy(&head)
            );
        }
        out.tree_bytes = len;
        best = best.min(secs);
    }
    out.tree_secs = best;
    out.tree_bytes_per_sec = out.tree_bytes as f64 / best;

    // Stats, one after another.
    step("stats");
    let start = Instant::now();
    for _ in 0..100 {
        client.stats().await?.context("stats stopped answering")?;
    }
    out.stats_secs = start.elapsed().as_secs_f64() / 100.0;

    // The session goes.
    let _ = client
        .send(
            reqwest::Method::DELETE,
            &format!("/api/v1/pipe/session/{sid}"),
            INGEST_KEY,
            None,
        )
        .await;
    Ok(out)
}
