//! `weir plugins inspect | validate | test`: a component's keys, its
//! registration rules, and events through one key judged as the pipeline
//! judges them, on an offline host (no HTTP, no datastores).

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use clap::{Args, Subcommand};
use serde_json::{Value, json};

use crate::auth::Keys;
use crate::bus::{Event, NewEvent};
use crate::config::MAX_DEFAULT_MEMORY_MIB;
use crate::engine::manifest::LimitsSection;
use crate::engine::{EngineConfig, Limits, LoadedPlugin, Params};
use crate::pipeline::{self, Verdict};
use crate::registry::{KeyDefinition, OutputSchema, RegisteredKey, Runner, params};
use crate::runtime::{Host, HostConfig, PluginLoadError};

#[derive(Debug, Subcommand)]
pub(super) enum PluginsCommand {
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
pub(super) struct TestArgs {
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

pub(super) fn inspect(file: &Path, as_json: bool, out: &mut dyn Write) -> anyhow::Result<i32> {
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

pub(super) fn validate(file: &Path, out: &mut dyn Write) -> anyhow::Result<i32> {
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

pub(super) fn test(args: &TestArgs, out: &mut dyn Write) -> anyhow::Result<i32> {
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
            Verdict::Emit(envelope) => {
                // The key's output as it wrote it (a raw value keeps its
                // key order and number forms).
                #[derive(serde::Deserialize)]
                struct Envelope<'a> {
                    #[serde(borrow)]
                    data: &'a serde_json::value::RawValue,
                }
                match serde_json::from_str::<Envelope>(&envelope) {
                    Ok(e) => json!({ "result": "emitted", "data": e.data }),
                    Err(e) => json!({ "result": "error", "message": format!("envelope: {e}") }),
                }
            }
            Verdict::Filtered => json!({ "result": "dropped", "by": "matches" }),
            Verdict::Dropped => json!({ "result": "dropped", "by": "process" }),
            Verdict::Fault {
                stage,
                kind,
                message,
                ..
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
