//! Per-instance store state: the empty WASI context, the memory limiter,
//! what the current call is, and the host functions the guest imports.

use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::io::AsyncWrite;
use wasmtime::ResourceLimiter;
use wasmtime::component::ResourceTable;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamError};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use super::MemoryGauge;
use super::bindings::{host, types};
use super::logbudget::{Admit, LogBudget, MAX_LINE_BYTES};
use super::upstream::{self, UpstreamClient};
use super::{CallApi, Caller};

/// Which export is running, for the `matches` API rule and log tags.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Running {
    Idle,
    Describe,
    NormalizeParams,
    Matches,
    Process,
    PreConsume,
    Cleanup,
}

/// What the guest did during one call that the call's result cannot show.
#[derive(Debug, Default, Clone)]
pub(crate) struct CallFlags {
    pub api_in_matches: bool,
    pub memory_exhausted: bool,
}

/// The key the instance is serving, shared with its stdout/stderr sinks so
/// that every line is tagged with it.
#[derive(Debug, Default)]
pub(crate) struct Tag {
    pub key: String,
    /// What the guest wrote to stderr during the current call (a panic
    /// message, usually), bounded.
    pub stderr: String,
}

/// Caps linear memory growth and remembers that it did; keeps the
/// plugin's memory gauge.
pub(crate) struct MemoryLimiter {
    pub limit: usize,
    pub exhausted: bool,
    /// Bytes this instance holds (what the gauge was given).
    held: usize,
    gauge: Arc<MemoryGauge>,
}

impl Drop for MemoryLimiter {
    fn drop(&mut self) {
        self.gauge
            .current
            .fetch_sub(self.held as u64, Ordering::Relaxed);
    }
}

impl ResourceLimiter for MemoryLimiter {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _max: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.limit {
            self.exhausted = true;
            // An error (not `Ok(false)`) traps at once instead of letting the
            // guest's allocator limp on.
            wasmtime::bail!(
                "memory limit of {} bytes exhausted (asked for {desired})",
                self.limit
            );
        }
        // Called for the initial memory too, so `held` is the whole size.
        if desired > self.held {
            self.gauge
                .current
                .fetch_add((desired - self.held) as u64, Ordering::Relaxed);
            self.gauge.peak.fetch_max(desired as u64, Ordering::Relaxed);
            self.held = desired;
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _max: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= 100_000)
    }
}

/// The data of one instance's `Store`.
pub(crate) struct StoreState {
    wasi: WasiCtx,
    table: ResourceTable,
    pub limiter: MemoryLimiter,
    plugin: Arc<str>,
    tag: Arc<Mutex<Tag>>,
    pub running: Running,
    pub flags: CallFlags,
    /// When the current call's deadline passes (upstream waits end by it).
    deadline: Option<Instant>,
    api: Arc<dyn CallApi>,
    upstream: Arc<UpstreamClient>,
    grants: Arc<super::Grants>,
    /// The plugin's log budget (the `log` import, stdout and stderr).
    budget: Arc<LogBudget>,
}

/// `message` cut to [`MAX_LINE_BYTES`] if `budget` admits it now (with a
/// summary line first when lines were dropped); `None` when it is dropped.
fn budgeted<'a>(
    budget: &LogBudget,
    plugin: &str,
    key: &str,
    message: &'a str,
) -> Option<std::borrow::Cow<'a, str>> {
    match budget.admit() {
        Admit::No => return None,
        Admit::AfterDropping(n) => {
            tracing::warn!(target: "weir::plugin", plugin, key, suppressed = n, "log lines of this plugin dropped: over {} lines/s", super::logbudget::LINES_PER_SEC);
        }
        Admit::Yes => {}
    }
    Some(crate::text::clip(message, MAX_LINE_BYTES))
}

impl StoreState {
    /// State with no network, environment or arguments, and no filesystem
    /// but the directories `grants` preopens read-only; stdout and stderr go
    /// to `tracing`. Fails when a granted directory cannot be opened.
    pub fn new(
        plugin: Arc<str>,
        memory_limit: usize,
        memory: Arc<MemoryGauge>,
        api: Arc<dyn CallApi>,
        upstream: Arc<UpstreamClient>,
        grants: Arc<super::Grants>,
    ) -> Result<Self, String> {
        let tag = Arc::new(Mutex::new(Tag::default()));
        let budget = LogBudget::of(&plugin);
        let mut builder = WasiCtx::builder();
        builder
            .stdout(LogSink::new(
                plugin.clone(),
                tag.clone(),
                Stream::Stdout,
                budget.clone(),
            ))
            .stderr(LogSink::new(
                plugin.clone(),
                tag.clone(),
                Stream::Stderr,
                budget.clone(),
            ))
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false);
        for d in &grants.dirs {
            builder
                .preopened_dir(&d.host, &d.guest, wasmtime_wasi::FsPerms::ReadOnly)
                .map_err(|e| format!("cannot open {} for the guest: {e}", d.host.display()))?;
        }
        Ok(Self {
            wasi: builder.build(),
            table: ResourceTable::new(),
            limiter: MemoryLimiter {
                limit: memory_limit,
                exhausted: false,
                held: 0,
                gauge: memory,
            },
            plugin,
            tag,
            running: Running::Idle,
            flags: CallFlags::default(),
            deadline: None,
            api,
            upstream,
            grants,
            budget,
        })
    }

    /// Marks the start of a call of `running` for `key`, due within
    /// `deadline`.
    pub fn begin(&mut self, running: Running, key: &str, deadline: Duration) {
        self.running = running;
        self.deadline = Instant::now().checked_add(deadline);
        self.flags = CallFlags::default();
        self.limiter.exhausted = false;
        let mut tag = self.tag.lock().unwrap_or_else(PoisonError::into_inner);
        if tag.key != key {
            tag.key.clear();
            tag.key.push_str(key);
        }
        tag.stderr.clear();
    }

    /// Marks the end of a call; returns what happened during it.
    pub fn end(&mut self) -> CallFlags {
        self.running = Running::Idle;
        self.deadline = None;
        let mut flags = std::mem::take(&mut self.flags);
        flags.memory_exhausted = self.limiter.exhausted;
        flags
    }

    /// What the guest wrote to stderr during the current call, if anything.
    pub fn call_stderr(&self) -> String {
        self.tag
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .stderr
            .clone()
    }

    fn key(&self) -> String {
        self.tag
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .key
            .clone()
    }
}

impl WasiView for StoreState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl types::Host for StoreState {}

impl host::Host for StoreState {
    fn log(&mut self, level: host::LogLevel, message: String) {
        let key = self.key();
        let plugin = &*self.plugin;
        let Some(message) = budgeted(&self.budget, plugin, &key, &message) else {
            return;
        };
        match level {
            host::LogLevel::Trace => {
                tracing::trace!(target: "weir::plugin", plugin, key, "{message}")
            }
            host::LogLevel::Debug => {
                tracing::debug!(target: "weir::plugin", plugin, key, "{message}")
            }
            host::LogLevel::Info => {
                tracing::info!(target: "weir::plugin", plugin, key, "{message}")
            }
            host::LogLevel::Warn => {
                tracing::warn!(target: "weir::plugin", plugin, key, "{message}")
            }
            host::LogLevel::Error => {
                tracing::error!(target: "weir::plugin", plugin, key, "{message}")
            }
        }
    }

    fn call_api(
        &mut self,
        method: String,
        path: String,
        body: Option<String>,
    ) -> Result<String, host::ApiError> {
        let key = self.key();
        if self.running == Running::Matches {
            self.flags.api_in_matches = true;
            tracing::warn!(target: "weir::plugin", plugin = &*self.plugin, key, %method, %path, "call-api refused: matches may not call the host API");
            return Err(host::ApiError {
                status: 403,
                message: "call-api is not allowed while matches runs; use process".into(),
            });
        }
        // A refusal: logged with plugin and key, answered 403 with `why`
        // and the manifest line that would grant the call.
        let refuse = |why: &str, fix: String| {
            tracing::warn!(target: "weir::plugin", plugin = &*self.plugin, key, %method, %path, "call-api refused: {why}");
            Err(host::ApiError {
                status: 403,
                message: format!("plugin `{}` {why}; {fix}", self.plugin),
            })
        };
        if let Some((name, rest)) = upstream::split(&path) {
            let Some(up) = self.grants.upstreams.iter().find(|u| u.name == name) else {
                return refuse(
                    &format!("has no upstream `{name}`"),
                    format!(
                        "declare it in {}.toml: [[capabilities.upstreams]] name = \"{name}\" base_url = \"...\"",
                        self.plugin
                    ),
                );
            };
            return self
                .upstream
                .call(up, &method, rest, body.as_deref(), self.deadline)
                .inspect_err(|e| tracing::warn!(target: "weir::plugin", plugin = &*self.plugin, key, upstream = name, %method, status = e.status, "upstream call failed: {}", e.message))
                .map_err(|e| host::ApiError {
                    status: e.status,
                    message: e.message,
                });
        }
        if !self.grants.api.allows(&method, &path) {
            return refuse(
                &format!("is not granted `{method} {path}`"),
                format!(
                    "grant it in {}.toml: [capabilities] api = [\"{method} {path}\"]",
                    self.plugin
                ),
            );
        }
        let caller = Caller {
            plugin: &self.plugin,
            key: &key,
        };
        self.api
            .call(&caller, &method, &path, body.as_deref())
            .map_err(|e| host::ApiError {
                status: e.status,
                message: e.message,
            })
    }
}

#[derive(Debug, Clone, Copy)]
enum Stream {
    Stdout,
    Stderr,
}

/// How much of a call's stderr is kept for its fault message.
const MAX_CALL_STDERR: usize = 2048;

/// Longest line kept before it is flushed anyway.
const MAX_LINE: usize = 16 * 1024;

/// A guest's stdout or stderr: lines go to `tracing`, tagged with plugin and key.
#[derive(Clone)]
struct LogSink {
    plugin: Arc<str>,
    tag: Arc<Mutex<Tag>>,
    stream: Stream,
    pending: Arc<Mutex<Vec<u8>>>,
    budget: Arc<LogBudget>,
}

impl LogSink {
    fn new(plugin: Arc<str>, tag: Arc<Mutex<Tag>>, stream: Stream, budget: Arc<LogBudget>) -> Self {
        Self {
            plugin,
            tag,
            stream,
            pending: Arc::default(),
            budget,
        }
    }

    fn write_bytes(&self, bytes: &[u8]) {
        let mut pending = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
        pending.extend_from_slice(bytes);
        while let Some(pos) = pending.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = pending.drain(..=pos).collect();
            self.emit(&line[..line.len() - 1]);
        }
        if pending.len() > MAX_LINE {
            let line = std::mem::take(&mut *pending);
            self.emit(&line);
        }
    }

    fn emit(&self, line: &[u8]) {
        let line = String::from_utf8_lossy(line);
        let mut tag = self.tag.lock().unwrap_or_else(PoisonError::into_inner);
        let plugin = &*self.plugin;
        let key = tag.key.as_str();
        let logged = budgeted(&self.budget, plugin, key, &line);
        match self.stream {
            Stream::Stdout => {
                if let Some(line) = logged {
                    tracing::info!(target: "weir::plugin::stdout", plugin, key, "{line}")
                }
            }
            Stream::Stderr => {
                if let Some(logged) = logged {
                    tracing::warn!(target: "weir::plugin::stderr", plugin, key, "{logged}");
                }
                // Kept for the fault message; Rust's backtrace hint is noise there.
                let line = line.trim();
                if !line.is_empty()
                    && !line.starts_with("note: run with `RUST_BACKTRACE")
                    && tag.stderr.len() < MAX_CALL_STDERR
                {
                    if !tag.stderr.is_empty() {
                        tag.stderr.push_str(" | ");
                    }
                    tag.stderr.push_str(line);
                }
            }
        }
    }
}

impl IsTerminal for LogSink {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for LogSink {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

impl OutputStream for LogSink {
    fn write(&mut self, bytes: Bytes) -> Result<(), StreamError> {
        self.write_bytes(&bytes);
        Ok(())
    }

    fn flush(&mut self) -> Result<(), StreamError> {
        Ok(())
    }

    fn check_write(&mut self) -> Result<usize, StreamError> {
        Ok(64 * 1024)
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for LogSink {
    async fn ready(&mut self) {}
}

impl AsyncWrite for LogSink {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.write_bytes(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}
