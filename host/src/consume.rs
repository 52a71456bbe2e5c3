//! `weir consume`: a consumer client for a running host. Subscribes to a
//! key's NDJSON stream and writes one envelope per line to stdout (or one
//! file per event into a directory); notices become status lines on stderr.

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
    /// the host's history still holds) or a sequence number.
    #[arg(long, default_value = "latest")]
    pub from: String,
    /// Exit after this many events.
    #[arg(long)]
    pub max_events: Option<u64>,
    /// Write each event to `DIR/SEQ.json` instead of stdout.
    #[arg(long)]
    pub output_dir: Option<PathBuf>,
    /// Base URL of the host.
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

async fn stream(
    args: &ConsumeArgs,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> anyhow::Result<i32> {
    let mut url =
        reqwest::Url::parse(&args.url).with_context(|| format!("`{}` is not a URL", args.url))?;
    url.path_segments_mut()
        .map_err(|()| anyhow::anyhow!("`{}` cannot be a base URL", args.url))?
        .pop_if_empty()
        .extend(["v1", "keys", args.key.as_str(), "stream"]);
    url.query_pairs_mut()
        .extend_pairs(&args.params)
        .append_pair("from", &args.from);
    let mut req = reqwest::Client::new()
        .get(url)
        .header("Accept", "application/x-ndjson");
    if let Some(key) = &args.api_key {
        req = req.header("X-API-Key", key);
    }
    let resp = req
        .send()
        .await
        .with_context(|| format!("cannot reach {}", args.url))?;
    if !resp.status().is_success() {
        let status = resp.status();
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        let detail = body["detail"].as_str().unwrap_or("no detail");
        writeln!(err, "error: {status}: {detail}")?;
        return Ok(1);
    }
    let mut seen = 0u64;
    let mut lines = NdjsonLines::new(resp);
    while let Some(line) = lines.next_line().await.context("stream interrupted")? {
        let value: Value =
            serde_json::from_slice(&line).context("the host sent a line that is not JSON")?;
        if let Some(kind) = value.get("notice").and_then(Value::as_str) {
            writeln!(err, "{}", status_line(kind, &value))?;
            if kind == "ended" {
                return Ok(0);
            }
            continue;
        }
        match write_event(args, &line, &value, out) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => return Ok(0),
            Err(e) => return Err(e.into()),
        }
        seen += 1;
        if args.max_events.is_some_and(|max| seen >= max) {
            writeln!(err, "done: {seen} events")?;
            return Ok(0);
        }
    }
    writeln!(err, "error: the host closed the stream without ending it")?;
    Ok(1)
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
