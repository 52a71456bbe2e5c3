//! `weir consume`: a consumer client for a running host. Subscribes to a
//! key's NDJSON stream and writes one envelope per line to stdout (or one
//! file per event into a directory); notices become status lines on stderr.
//!
//! With `--consumer NAME` it is a named consumer: it acknowledges what it
//! has written (after the flush of stdout, after the rename of a file) and,
//! when the connection drops or the host restarts, reconnects and resumes
//! after its last acknowledgement, skipping what it already wrote.

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;
use serde_json::Value;

/// What to consume and where to put it.
#[derive(Debug, Clone, clap::Args)]
pub struct ConsumeArgs {
    /// The key to subscribe to.
    pub key: String,
    /// A key parameter, `name=value`; repeat for more.
    #[arg(long = "param", short = 'p', value_parser = parse_param)]
    pub params: Vec<(String, String)>,
    /// Where to start: `latest` (new events only), `earliest` (everything
    /// the host's history still holds) or a sequence number; with
    /// `--consumer`, where a new name starts.
    #[arg(long, default_value = "latest")]
    pub from: String,
    /// A named consumer: acknowledges each event once written, and resumes
    /// after the last acknowledgement across reconnects and host restarts.
    #[arg(long)]
    pub consumer: Option<String>,
    /// Exit after this many events.
    #[arg(long)]
    pub max_events: Option<u64>,
    /// Write each event to `DIR/SEQ.json` instead of stdout.
    #[arg(long)]
    pub output_dir: Option<PathBuf>,
    /// Base URL of the host; several, comma-separated, for the hosts of a
    /// cluster: a named consumer that loses its host goes on with the next.
    #[arg(long, env = "WEIR_URL", default_value = "http://127.0.0.1:7070")]
    pub url: String,
    /// API key with the query role.
    #[arg(long, env = "WEIR_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
}

/// A `--param name=value` flag as a pair (the value may contain `=`).
pub(crate) fn parse_param(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("`{s}` is not name=value"))
}

/// Runs the consumer; returns the exit code: 0 when the max is reached, the
/// output is closed (EPIPE) or the host ended the stream; 1 on errors.
pub fn consume(
    args: &ConsumeArgs,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> anyhow::Result<i32> {
    if let Some(dir) = &args.output_dir {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create output directory {}", dir.display()))?;
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(stream(args, out, err))
}

/// How far a run got: what it wrote and what the host was told.
#[derive(Default)]
struct Progress {
    /// Events written.
    seen: u64,
    /// The newest sequence number written (replays up to it are skipped).
    written: u64,
    /// The newest sequence number acknowledged.
    acked: u64,
    last_ack: Option<std::time::Instant>,
    /// Which of the URLs is used now.
    host: usize,
}

/// The base URL in use: the `p.host`th of `--url`'s (wrapping around).
fn base_url<'a>(args: &'a ConsumeArgs, p: &Progress) -> &'a str {
    let urls: Vec<&str> = args
        .url
        .split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .collect();
    if urls.is_empty() {
        return &args.url;
    }
    urls[p.host % urls.len()]
}

/// How a connection ended.
enum Outcome {
    /// Done: exit with this code.
    Exit(i32),
    /// The connection failed or dropped: a named consumer reconnects.
    Lost(String),
}

/// Acknowledgements are sent at most this often (and at the end): each one
/// covers everything written before it.
const ACK_EVERY: std::time::Duration = std::time::Duration::from_millis(200);

async fn stream(
    args: &ConsumeArgs,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> anyhow::Result<i32> {
    let client = reqwest::Client::new();
    let mut progress = Progress::default();
    let mut backoff = std::time::Duration::from_millis(100);
    loop {
        let outcome = connect(&client, args, out, err, &mut progress).await?;
        if matches!(outcome, Outcome::Lost(_)) {
            // The next host (with one URL, the same one again).
            progress.host += 1;
        }
        // Whatever happened, what was written is acknowledged if it can be.
        ack(&client, args, &mut progress, err, true).await;
        match outcome {
            Outcome::Exit(code) => return Ok(code),
            Outcome::Lost(why) if args.consumer.is_some() => {
                writeln!(err, "reconnecting in {} ms: {why}", backoff.as_millis())?;
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(std::time::Duration::from_secs(5));
            }
            Outcome::Lost(why) => {
                writeln!(err, "error: {why}")?;
                return Ok(1);
            }
        }
    }
}

/// Tells the host what a named consumer has written: when `now`, or when
/// [`ACK_EVERY`] has passed since the last acknowledgement.
async fn ack(
    client: &reqwest::Client,
    args: &ConsumeArgs,
    p: &mut Progress,
    err: &mut dyn Write,
    now: bool,
) {
    let Some(name) = &args.consumer else { return };
    if p.written <= p.acked || !(now || p.last_ack.is_none_or(|t| t.elapsed() >= ACK_EVERY)) {
        return;
    }
    let hosts = args
        .url
        .split(',')
        .filter(|u| !u.trim().is_empty())
        .count()
        .max(1);
    p.last_ack = Some(std::time::Instant::now());
    // A host out of reach: the next one takes the acknowledgement (they
    // share the consumer's record), each tried once.
    for _ in 0..hosts {
        let Ok(mut url) = reqwest::Url::parse(base_url(args, p)) else {
            return;
        };
        if let Ok(mut segments) = url.path_segments_mut() {
            segments
                .pop_if_empty()
                .extend(["v1", "consumers", name.as_str(), "ack"]);
        }
        let mut req = client
            .post(url)
            .json(&serde_json::json!({ "seq": p.written }));
        if let Some(key) = &args.api_key {
            req = req.header("X-API-Key", key);
        }
        match req.send().await {
            Ok(resp) if resp.status().is_success() => {
                p.acked = p.written;
                return;
            }
            // Not acknowledged: those events may come again after a
            // reconnect, and are skipped then (or written again by the next
            // run).
            Ok(resp) => {
                let _ = writeln!(err, "acknowledgement refused: {}", resp.status());
                return;
            }
            Err(e) => {
                let _ = writeln!(err, "acknowledgement not sent: {e}");
                p.host += 1;
            }
        }
    }
}

async fn connect(
    client: &reqwest::Client,
    args: &ConsumeArgs,
    out: &mut dyn Write,
    err: &mut dyn Write,
    p: &mut Progress,
) -> anyhow::Result<Outcome> {
    let base = base_url(args, p);
    let mut url = reqwest::Url::parse(base).with_context(|| format!("`{base}` is not a URL"))?;
    url.path_segments_mut()
        .map_err(|()| anyhow::anyhow!("`{base}` cannot be a base URL"))?
        .pop_if_empty()
        .extend(["v1", "keys", args.key.as_str(), "stream"]);
    url.query_pairs_mut()
        .extend_pairs(&args.params)
        .append_pair("from", &args.from);
    if let Some(name) = &args.consumer {
        url.query_pairs_mut().append_pair("consumer", name);
    }
    let mut req = client.get(url).header("Accept", "application/x-ndjson");
    if let Some(key) = &args.api_key {
        req = req.header("X-API-Key", key);
    }
    let resp = match req.send().await {
        Ok(resp) => resp,
        Err(e) => return Ok(Outcome::Lost(format!("cannot reach {base}: {e}"))),
    };
    if !resp.status().is_success() {
        let status = resp.status();
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        let detail = body["detail"].as_str().unwrap_or("no detail");
        if status.is_server_error() {
            return Ok(Outcome::Lost(format!("{status}: {detail}")));
        }
        writeln!(err, "error: {status}: {detail}")?;
        return Ok(Outcome::Exit(1));
    }
    let mut lines = NdjsonLines::new(resp);
    loop {
        let line = match lines.next_line().await {
            Ok(Some(line)) => line,
            Ok(None) => {
                return Ok(Outcome::Lost(
                    "the host closed the stream without ending it".into(),
                ));
            }
            Err(e) => return Ok(Outcome::Lost(format!("stream interrupted: {e}"))),
        };
        let value: Value =
            serde_json::from_slice(&line).context("the host sent a line that is not JSON")?;
        if let Some(kind) = value.get("notice").and_then(Value::as_str) {
            writeln!(err, "{}", status_line(kind, &value))?;
            if kind == "ended" {
                // A host that shuts down ends its streams: a named consumer
                // comes back when it does.
                if args.consumer.is_some() {
                    return Ok(Outcome::Lost("the host ended the stream".into()));
                }
                return Ok(Outcome::Exit(0));
            }
            continue;
        }
        let seq = value["seq"].as_u64().unwrap_or(0);
        if args.consumer.is_some() && seq <= p.written {
            // Sent again after a reconnect: already written.
            continue;
        }
        match write_event(args, &line, &value, out) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => return Ok(Outcome::Exit(0)),
            Err(e) => return Err(e.into()),
        }
        p.seen += 1;
        p.written = p.written.max(seq);
        if args.max_events.is_some_and(|max| p.seen >= max) {
            writeln!(err, "done: {} events", p.seen)?;
            return Ok(Outcome::Exit(0));
        }
        ack(client, args, p, err, false).await;
    }
}

/// The lines of an NDJSON response as they arrive (empty lines skipped).
pub struct NdjsonLines {
    resp: reqwest::Response,
    pending: Vec<u8>,
}

impl NdjsonLines {
    /// Reads `resp` line by line.
    pub fn new(resp: reqwest::Response) -> Self {
        Self {
            resp,
            pending: Vec::new(),
        }
    }

    /// The next line, without its newline; `None` at the end of the body.
    /// Cancel-safe: a dropped call loses nothing already received.
    pub async fn next_line(&mut self) -> reqwest::Result<Option<Vec<u8>>> {
        loop {
            while let Some(nl) = self.pending.iter().position(|&b| b == b'\n') {
                let mut line: Vec<u8> = self.pending.drain(..=nl).collect();
                line.pop();
                if !line.is_empty() {
                    return Ok(Some(line));
                }
            }
            match self.resp.chunk().await? {
                Some(chunk) => self.pending.extend_from_slice(chunk.as_ref()),
                None => return Ok(None),
            }
        }
    }
}

fn write_event(
    args: &ConsumeArgs,
    line: &[u8],
    value: &Value,
    out: &mut dyn Write,
) -> std::io::Result<()> {
    match &args.output_dir {
        None => {
            out.write_all(line)?;
            out.write_all(b"\n")?;
            out.flush()
        }
        Some(dir) => {
            let seq = value["seq"].as_u64().unwrap_or(0);
            // Written beside, then renamed: a reader never sees half a file.
            let name = format!("{seq:012}.json");
            let tmp = dir.join(format!(".{name}.tmp"));
            std::fs::write(&tmp, line)?;
            std::fs::rename(&tmp, dir.join(name))
        }
    }
}

fn status_line(kind: &str, v: &Value) -> String {
    let s = |f: &str| match &v[f] {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    };
    match kind {
        "subscribed" => format!(
            "subscribed: key {} subscription {} params {} from {}",
            s("key"),
            s("subscription_id"),
            v["params"],
            s("from")
        ),
        "gap" => format!(
            "gap: {} events skipped (seq {}..={}, {})",
            s("count"),
            s("first_seq"),
            s("last_seq"),
            s("reason")
        ),
        "quarantined" => format!(
            "quarantined: key {} after {} consecutive faults; last: {}",
            s("key"),
            s("faults"),
            s("last_error")
        ),
        "resumed" => format!("resumed: key {}", s("key")),
        "ended" => format!("ended: {}", s("reason")),
        other => format!("{other}: {v}"),
    }
}
