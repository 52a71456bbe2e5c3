//! `weir serve`: the settings (flags over `weir.toml` over defaults), the
//! host and its HTTP layer wired together, logs, signals and a bounded
//! wind-down; and `weir config check`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Args;

use crate::auth::Keys;
use crate::config::{LogFormat, ServerSection};
use crate::engine::EngineConfig;
use crate::engine::manifest::LimitsSection;
use crate::runtime::{Host, HostConfig};

/// Settings of `weir serve`; each also as an environment variable, and
/// (but the config path and the default datastore's two) in `weir.toml`.
#[derive(Debug, Args)]
pub(super) struct ServeArgs {
    /// Configuration file: server, default limits, datastores and their API
    /// keys, events. Flags and environment win over it.
    #[arg(long, env = "WEIR_CONFIG")]
    config: Option<PathBuf>,
    #[command(flatten)]
    server: ServerSection,
    #[command(flatten)]
    limits: LimitsSection,
    /// Seconds without heartbeat or push before an agent session of the
    /// `default` datastore expires and its views answer 503 [default: 30].
    #[arg(long, env = "WEIR_SESSION_TIMEOUT_SECS")]
    session_timeout_secs: Option<u64>,
    /// Most rows waiting in the `default` datastore's ingestion queue;
    /// pushes beyond get 503 [default: 100000].
    #[arg(long, env = "WEIR_QUEUE_ROWS")]
    queue_rows: Option<usize>,
    #[command(flatten)]
    events: crate::config::EventsSection,
    #[command(flatten)]
    cluster: crate::config::ClusterSection,
}

pub(super) fn serve(args: ServeArgs) -> anyhow::Result<i32> {
    let file = match &args.config {
        Some(path) => crate::config::load(path)?,
        None => crate::config::FileConfig::default(),
    };
    let label = args
        .config
        .as_ref()
        .map_or("(no config file)".to_string(), |p| p.display().to_string());
    let settings = crate::config::serve_settings(
        &args.server.or(&file.server),
        &args.limits.or(&file.limits),
        &label,
    )?;
    init_tracing(settings.log_format, &settings.log);
    let (mut datastores, mut keys) = file.resolve(&label, &|var| std::env::var(var).ok())?;
    let (default_keys, generated) = Keys::for_default_datastore(|var| std::env::var(var).ok())
        .map_err(|e| anyhow::anyhow!("{label}: {e}"))?;
    keys.try_extend(default_keys)
        .map_err(|e| anyhow::anyhow!("{label}: {e}"))?;
    for g in &generated {
        // Printed once so that the operator can use them; set the
        // environment variable to keep a key across restarts.
        let place = if g.role == crate::auth::Role::Admin {
            "the host (every datastore, plugins, quarantine)"
        } else {
            "datastore `default`"
        };
        eprintln!(
            "generated {} key for {place}: {}  (set {} to choose it)",
            g.role,
            g.secret,
            g.role.env_var()
        );
    }
    if args.session_timeout_secs == Some(0) || args.queue_rows == Some(0) {
        anyhow::bail!("--session-timeout-secs and --queue-rows must be at least 1");
    }
    if let Some(default) = datastores.iter_mut().find(|d| d.name == "default") {
        if let Some(secs) = args.session_timeout_secs {
            default.sessions.timeout = Duration::from_secs(secs);
        }
        if let Some(rows) = args.queue_rows {
            default.queue_rows = rows;
        }
    }
    let (bus, pipeline) = args.events.or(&file.events).resolve(&label)?;
    let cluster = args
        .cluster
        .or(&file.cluster)
        .resolve(&label, &bus, &|var| std::env::var(var).ok())?;
    let config = HostConfig {
        plugin_dir: Some(settings.plugins.clone()),
        engine: EngineConfig {
            limits: settings.limits.clone(),
            cache_dir: settings.compile_cache.clone(),
            ..EngineConfig::default()
        },
        keys,
        datastores,
        bus,
        pipeline,
        // A cluster keeps what it shares in JetStream: no data directory
        // (two hosts on one machine must not contend for the default one).
        data_dir: settings.data_dir.clone().filter(|_| cluster.is_none()),
        cluster,
    };
    let data = match &config.cluster {
        Some(c) => format!("JetStream (cluster {})", c.name),
        None => config
            .data_dir
            .as_ref()
            .map_or("ephemeral".to_string(), |d| d.display().to_string()),
    };
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async move {
        let host = Arc::new(tokio::task::spawn_blocking(move || Host::new(config)).await??);
        let listener = tokio::net::TcpListener::bind(settings.listen)
            .await
            .with_context(|| format!("cannot listen on {}", settings.listen))?;
        tracing::info!(addr = %listener.local_addr()?, plugins = %settings.plugins.display(), data = %data, keys = host.registry().len(), "weir serving");
        let watcher = settings.plugin_poll.map(|every| host.watch_plugins(every));
        // `run` drains the queues (nothing accepted is lost) and ends the
        // subscriptions before it returns.
        crate::http::run_with(listener, host, shutdown_signal(), settings.server).await?;
        if let Some(w) = watcher {
            w.abort();
        }
        tracing::info!("weir stopped");
        anyhow::Ok(0)
    })
}

pub(super) fn config_check(path: &Path, out: &mut dyn Write) -> anyhow::Result<i32> {
    let file = crate::config::load(path)?;
    let label = path.display().to_string();
    let (datastores, mut keys) = file.resolve(&label, &|var| std::env::var(var).ok())?;
    // The keys `weir serve` would add from WEIR_*_KEY must not reuse a
    // secret either (generated ones cannot).
    let (default_keys, _) = Keys::for_default_datastore(|var| std::env::var(var).ok())
        .map_err(|e| anyhow::anyhow!("{label}: {e}"))?;
    keys.try_extend(default_keys)
        .map_err(|e| anyhow::anyhow!("{label}: {e}"))?;
    let (bus, pipeline) = file.events.resolve(&label)?;
    let serve = crate::config::serve_settings(&file.server, &file.limits, &label)?;
    writeln!(out, "{label}: ok")?;
    writeln!(
        out,
        "  server: listen {}, plugins {}, poll {}, log {} ({}), compile cache {}",
        serve.listen,
        serve.plugins.display(),
        serve.plugin_poll.map_or("never".to_string(), |d| format!(
            "every {} ms",
            d.as_millis()
        )),
        match serve.log_format {
            LogFormat::Text => "text",
            LogFormat::Json => "json",
        },
        serve.log,
        serve
            .compile_cache
            .as_ref()
            .map_or("none".to_string(), |p| p.display().to_string()),
    )?;
    let l = &serve.limits;
    writeln!(
        out,
        "  limits: memory {} MiB, matches {} ms, calls {} ms, output {} KiB",
        l.memory_bytes >> 20,
        l.matches_deadline.as_millis(),
        l.call_deadline.as_millis(),
        l.max_output_bytes >> 10
    )?;
    for d in &datastores {
        writeln!(
            out,
            "  datastore {}: session timeout {} s, queue {} rows, {} key(s)",
            d.name,
            d.sessions.timeout.as_secs(),
            d.queue_rows,
            keys.count_for(&d.name)
        )?;
    }
    writeln!(
        out,
        "  events: dedup {} ids for {} s, history {} events / {} bytes, slow-consumer wait {} ms, quarantine after {}, {} dead letters / {} bytes, {} event types by name",
        bus.dedup_size,
        bus.dedup_ttl.as_secs(),
        bus.history_events,
        bus.history_bytes,
        bus.slow_consumer_wait.as_millis(),
        pipeline.quarantine_after,
        pipeline.dlq_capacity,
        pipeline.dlq_bytes,
        pipeline.max_event_types
    )?;
    let log = &bus.log;
    writeln!(
        out,
        "  durability: {}, fsync {}, retention {} events / {} bytes / {}",
        serve
            .data_dir
            .as_ref()
            .map_or("ephemeral (memory only)".to_string(), |d| format!(
                "data directory {}",
                d.display()
            )),
        match log.fsync {
            crate::store::Fsync::Always => "always".to_string(),
            crate::store::Fsync::Interval(d) => format!("every {} ms", d.as_millis()),
        },
        log.retention_events,
        log.retention_bytes,
        log.retention_age
            .map_or("any age".to_string(), |a| format!("{} s", a.as_secs())),
    )?;
    Ok(0)
}

/// Completes on Ctrl-C or SIGTERM (the agent's, shared).
pub use weir_agent::cli::shutdown_signal;

/// Logs to stderr in `format`, filtered by `filter` (checked already).
pub(super) fn init_tracing(format: LogFormat, filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}
