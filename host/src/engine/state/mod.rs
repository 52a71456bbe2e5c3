//! Per-instance store state: the empty WASI context, the memory limiter and
//! what the current call is. The host functions the guest imports are in
//! `imports.rs`; the guest's stdout and stderr, as log lines, in
//! `output.rs`.

mod imports;
mod output;

use output::{LogSink, Stream};

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
