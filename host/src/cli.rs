//! The `weir` command line: `serve`, `consume`, and the plugin author's and
//! operator's `plugins inspect | validate | test`. [`run`] takes the arguments and the
//! output streams so that tests drive it in-process.

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use serde_json::{Value, json};

use crate::auth::Keys;
use crate::bus::{Event, NewEvent};
use crate::config::{LogFormat, MAX_DEFAULT_MEMORY_MIB, ServerSection};
use crate::engine::manifest::LimitsSection;
use crate::engine::{EngineConfig, Limits, LoadedPlugin, Params};
use crate::pipeline::{self, Trial};
use crate::registry::{KeyDefinition, OutputSchema, RegisteredKey, Runner, params};
use crate::runtime::{Host, HostConfig, PluginLoadError};

/// Weir: a WebAssembly-pluggable event processing host.
#[derive(Debug, Parser)]
#[command(name = "weir", version, about)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the host daemon.
    Serve(Box<ServeArgs>),
    /// Inspect, validate and try plugin components.
    #[command(subcommand)]
    Plugins(PluginsCommand),
    /// Subscribe to a key of a running host and print its events.
    Consume(crate::consume::ConsumeArgs),
    /// Check configuration.
    #[command(subcommand)]
    Config(ConfigCommand),
}

#[derive(Debug, Subcommand)]
enum ConfigCommand {
    /// Validate a `weir.toml` (and the environment variables it names);
    /// exit 0 with a summary, or 1 with what is wrong.
    Check {
        /// The file.
        #[arg(long, env = "WEIR_CONFIG")]
        config: PathBuf,
    },
}

/// Settings of `weir serve`; each also as an environment variable, and
/// (but the config path and the default datastore's two) in `weir.toml`.
#[derive(Debug, Args)]
struct ServeArgs {
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
}

#[derive(Debug, Subcommand)]
enum PluginsCommand {
    /// List the keys of a component with their params, types, defaults and values.
    Inspect {
        /// The component.
        file: PathBuf,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Check a component against every registration rule; exit 1 on any broken rule.
    Validate {
        /// The component.
        file: PathBuf,
    },
    /// Run events through one key like a consumer would see them: one JSON line per event.
    Test(TestArgs),
}

#[derive(Debug, Args)]
struct TestArgs {
    /// The component.
    file: PathBuf,
    /// The key to run.
    #[arg(long)]
    key: String,
    /// A parameter, `name=value`; repeat for more.
    #[arg(long = "param", value_parser = crate::consume::parse_param)]
    params: Vec<(String, String)>,
    /// Newline-delimited JSON events: `{event_id?, event_type, source_time?, source?, correlation_id?, payload}`.
    #[arg(long)]
    events: PathBuf,
    #[command(flatten)]
    limits: LimitsSection,
}

/// Runs the command line `args` (including the program name), writing to
/// `out` and `err`; returns the exit code.
pub fn run(
    args: impl IntoIterator<Item = String>,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> i32 {
    let cli = match Cli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(e) => {
            let _ = if e.use_stderr() {
                write!(err, "{e}")
            } else {
                write!(out, "{e}")
            };
            return if e.use_stderr() { 2 } else { 0 };
        }
    };
    let result = match cli.command {
        Command::Serve(args) => serve(*args),
        Command::Plugins(PluginsCommand::Inspect { file, json }) => inspect(&file, json, out),
        Command::Plugins(PluginsCommand::Validate { file }) => validate(&file, out),
        Command::Plugins(PluginsCommand::Test(args)) => test(&args, out),
        Command::Consume(args) => crate::consume::consume(&args, out, err),
        Command::Config(ConfigCommand::Check { config }) => config_check(&config, out),
    };
    match result {
        Ok(code) => code,
        // A closed pipe (`weir plugins test ... | head`) is a normal end.
        Err(e)
            if e.downcast_ref::<std::io::Error>()
                .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe) =>
        {
            0
        }
        Err(e) => {
            let _ = writeln!(err, "error: {e:#}");
            1
        }
    }
}

fn serve(args: ServeArgs) -> anyhow::Result<i32> {
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
    };
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async move {
        let host = Arc::new(tokio::task::spawn_blocking(move || Host::new(config)).await??);
        let listener = tokio::net::TcpListener::bind(settings.listen)
            .await
            .with_context(|| format!("cannot listen on {}", settings.listen))?;
        tracing::info!(addr = %listener.local_addr()?, plugins = %settings.plugins.display(), keys = host.registry().len(), "weir serving");
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

fn config_check(path: &Path, out: &mut dyn Write) -> anyhow::Result<i32> {
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
    Ok(0)
}

/// Completes on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}

/// Logs to stderr in `format`, filtered by `filter` (checked already).
fn init_tracing(format: LogFormat, filter: &str) {
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

/// A host with no plugin directory and no keys, for the plugin commands.
fn offline_host(limits: Limits) -> anyhow::Result<Host> {
    Host::new(HostConfig {
        plugin_dir: None,
        engine: EngineConfig {
            limits,
            // One short-lived process: the pool's address-space reservation
            // buys nothing here.
            pooling: false,
            ..EngineConfig::default()
        },
        keys: Keys::new(),
        ..HostConfig::default()
    })
}

fn load(host: &Host, file: &Path) -> anyhow::Result<LoadedPlugin> {
    Ok(host.engine().load_file(file)?)
}

fn inspect(file: &Path, as_json: bool, out: &mut dyn Write) -> anyhow::Result<i32> {
    let host = offline_host(Limits::default())?;
    let plugin = load(&host, file)?;
    if as_json {
        let doc = json!({ "plugin": plugin.name(), "sha256": plugin.hash(), "keys": plugin.definitions() });
        writeln!(out, "{}", serde_json::to_string_pretty(&doc)?)?;
        return Ok(0);
    }
    writeln!(out, "plugin {} (sha256 {})", plugin.name(), plugin.hash())?;
    for def in plugin.definitions() {
        write_definition(out, def)?;
    }
    Ok(0)
}

fn write_definition(out: &mut dyn Write, def: &KeyDefinition) -> std::io::Result<()> {
    writeln!(
        out,
        "\nkey {}{}",
        def.key,
        if def.display_name.is_empty() {
            String::new()
        } else {
            format!(" ({})", def.display_name)
        }
    )?;
    if !def.description.is_empty() {
        writeln!(out, "  {}", def.description)?;
    }
    writeln!(out, "  event type: {}", def.event_type)?;
    let functions: Vec<&str> = def.implements.iter().map(|f| f.as_str()).collect();
    writeln!(
        out,
        "  functions:  {}",
        if functions.is_empty() {
            "none".to_string()
        } else {
            functions.join(", ")
        }
    )?;
    let schema = match &def.schema {
        OutputSchema::Native => "native (payload in the envelope)".to_string(),
        OutputSchema::Custom { json_schema } => format!(
            "custom {}",
            json_schema.split_whitespace().collect::<Vec<_>>().join(" ")
        ),
    };
    writeln!(out, "  schema:     {schema}")?;
    writeln!(
        out,
        "  buffer {} events, {} worker(s)",
        def.effective_buffer_size(),
        def.effective_workers()
    )?;
    for (label, list) in [
        ("scopes", &def.scopes),
        ("auth types", &def.auth_types),
        ("console events", &def.required_console_events),
    ] {
        if !list.is_empty() {
            writeln!(out, "  {label}: {}", list.join(", "))?;
        }
    }
    if def.params.is_empty() {
        writeln!(out, "  params: none")?;
    } else {
        writeln!(out, "  params:")?;
    }
    for p in &def.params {
        let mut flags = vec![if p.required { "required" } else { "optional" }.to_string()];
        if let Some(d) = &p.default {
            flags.push(format!("default `{d}`"));
        }
        if p.subscription_key {
            flags.push("subscription key".into());
        }
        writeln!(
            out,
            "    {} ({}, {}): {}",
            p.name,
            p.ty.as_str(),
            flags.join(", "),
            p.description
        )?;
        for v in &p.values {
            writeln!(out, "      {} - {}", v.value, v.description)?;
        }
    }
    Ok(())
}

fn validate(file: &Path, out: &mut dyn Write) -> anyhow::Result<i32> {
    let host = offline_host(Limits::default())?;
    match host.load_file(file) {
        Ok(keys) => {
            writeln!(
                out,
                "ok: {} defines {} key(s): {}",
                file.display(),
                keys.len(),
                keys.join(", ")
            )?;
            Ok(0)
        }
        Err(PluginLoadError::Rejected(errors)) => {
            for e in &errors {
                writeln!(out, "{e}")?;
            }
            writeln!(out, "invalid: {} rule(s) broken", errors.len())?;
            Ok(1)
        }
        Err(e) => {
            writeln!(out, "{e}")?;
            writeln!(out, "invalid: not loadable")?;
            Ok(1)
        }
    }
}

/// One NDJSON input line.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct InputEvent {
    event_id: Option<String>,
    event_type: String,
    source_time: Option<String>,
    /// Fields of a raw event that a key never sees; accepted so that the
    /// same NDJSON can be posted to the host, and otherwise ignored.
    #[serde(default, rename = "source")]
    _source: Option<String>,
    #[serde(default, rename = "correlation_id")]
    _correlation_id: Option<String>,
    payload: Value,
}

fn test(args: &TestArgs, out: &mut dyn Write) -> anyhow::Result<i32> {
    let host = offline_host(
        args.limits
            .apply(&Limits::default(), MAX_DEFAULT_MEMORY_MIB * 1024 * 1024)
            .map_err(anyhow::Error::msg)?,
    )?;
    let plugin = Arc::new(load(&host, &args.file)?);
    // Registered so that the plugin's own `GET /v1/keys` sees its keys; the
    // rules are reported, not fatal, so that a broken plugin can be tried.
    if let Err(e) = host.register(plugin.clone()) {
        anyhow::bail!("{e}");
    }
    let def = plugin
        .definition(&args.key)
        .with_context(|| {
            let keys: Vec<_> = plugin
                .definitions()
                .iter()
                .map(|d| d.key.as_str())
                .collect();
            format!(
                "{} defines no key `{}` (keys: {})",
                args.file.display(),
                args.key,
                keys.join(", ")
            )
        })?
        .clone();
    let resolved = params::resolve(&def, &args.params)?;
    let normalized = plugin
        .normalize_params(&def.key, &resolved)
        .map_err(|f| anyhow::anyhow!("normalize-params failed ({}): {f}", f.kind()))?;
    params::verify_normalized(&def, &normalized)?;
    let registered = host
        .registry()
        .lookup(&def.key)
        .cloned()
        .context("the key was registered above")?;
    // Like a consumer's subscription: pre-consume before the first event,
    // cleanup after the last.
    let subscription = params::subscription_id(&def, &normalized);
    plugin
        .pre_consume(&def.key, &subscription, &normalized)
        .map_err(|f| anyhow::anyhow!("pre-consume failed ({}): {f}", f.kind()))?;
    let reader = std::io::BufReader::new(
        std::fs::File::open(&args.events)
            .with_context(|| format!("cannot open {}", args.events.display()))?,
    );
    for (index, line) in reader.lines().enumerate() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        let record = run_one(&plugin, &registered, &normalized, index + 1, &line);
        writeln!(out, "{record}")?;
    }
    plugin
        .cleanup(&def.key, &subscription, &normalized)
        .map_err(|f| anyhow::anyhow!("cleanup failed ({}): {f}", f.kind()))?;
    Ok(0)
}

/// One line of `--events` through the key, judged as the pipeline judges
/// a consumer's events; the record `weir plugins test` prints.
fn run_one(
    plugin: &LoadedPlugin,
    key: &RegisteredKey,
    params: &Params,
    line_no: usize,
    line: &str,
) -> Value {
    let input: InputEvent = match serde_json::from_str(line) {
        Ok(e) => e,
        Err(e) => {
            return json!({ "line": line_no, "result": "error", "kind": "bad_event", "message": e.to_string() });
        }
    };
    let event_id = input.event_id.unwrap_or_else(|| format!("line-{line_no}"));
    let def = &key.def;
    let fields = if !def.accepts_event_type(&input.event_type) {
        json!({ "result": "dropped", "by": "event_type", "message": format!("`{}` does not match `{}`", input.event_type, def.event_type) })
    } else {
        let event = Event {
            seq: 0,
            timestamp_ms: crate::time::now_ms(),
            new: NewEvent {
                id: event_id.clone(),
                event_type: input.event_type,
                source: "weir plugins test".into(),
                source_time: input.source_time,
                correlation_id: None,
                payload: input.payload.to_string(),
                scope: None,
            },
        };
        match pipeline::trial(plugin, &def.key, params, &key.output, event) {
            Trial::Emitted(data) => json!({ "result": "emitted", "data": data }),
            Trial::Filtered => json!({ "result": "dropped", "by": "matches" }),
            Trial::Dropped => json!({ "result": "dropped", "by": "process" }),
            Trial::Fault {
                stage,
                kind,
                message,
            } => {
                json!({ "result": "error", "stage": stage.as_str(), "kind": kind, "message": message })
            }
        }
    };
    let mut record = json!({ "line": line_no, "event_id": event_id });
    if let (Value::Object(target), Value::Object(extra)) = (&mut record, fields) {
        target.extend(extra);
    }
    record
}
