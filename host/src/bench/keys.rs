//! The key paths `weir bench` measures in this process: `matches` and
//! `process` of the example key `fs.large_files` as the WebAssembly
//! component `weir serve` loads (one call per event, and batches), beside
//! the same Rust crate compiled natively into this binary, on the same
//! events, in the same run. The ratio is what a plugin author pays for the
//! sandbox.

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use fs_large_files::LargeFiles;
use weir_sdk::EventKey;

use crate::bus::{Event, NewEvent};
use crate::engine::{EngineConfig, Params, PluginEngine};
use crate::plugin_api::PluginApi;
use crate::registry::Runner;

/// The key measured.
pub const KEY: &str = "fs.large_files";
/// Events per batch call.
pub const BATCH: usize = 1000;
/// Each figure is the best of this many rounds.
const ROUNDS: usize = 3;

/// Events per second of each path, and what they are relative to native.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct KeyPaths {
    /// Events given to `matches` (every one), and to `process` (the ones
    /// `matches` kept).
    pub events: usize,
    pub processed: usize,
    /// `matches`, native Rust.
    pub matches_native: f64,
    /// `matches`, one component call per event.
    pub matches_wasm_single: f64,
    /// `matches-batch`, [`BATCH`] events per call.
    pub matches_wasm_batch: f64,
    /// `process`, native Rust.
    pub process_native: f64,
    /// `process`, one component call per event.
    pub process_wasm_single: f64,
    /// `process-batch`, [`BATCH`] events per call.
    pub process_wasm_batch: f64,
}

/// `n` file-system events, a third of them under `/data/` and a quarter of
/// those at least 1 MB, as an agent's realtime events look.
fn events(n: usize) -> Vec<Event> {
    (0..n)
        .map(|i| {
            let dir = if i % 3 == 0 {
                "/data/projects"
            } else {
                "/home/user/tmp"
            };
            Event {
                seq: i as u64 + 1,
                timestamp_ms: 1_706_000_000_000 + i as u64,
                new: NewEvent {
                    id: format!("ev-{i}"),
                    event_type: if i % 5 == 0 { "fs.update" } else { "fs.insert" }.into(),
                    source: "bench".into(),
                    source_time: None,
                    correlation_id: None,
                    payload: format!(
                        r#"{{"path":"{dir}/file-{i:06}.dat","size":{},"mtime":{}.25,"is_dir":false,"message_source":"realtime"}}"#,
                        (i * 7919) % 4_000_000,
                        1_706_000_000 + i
                    ),
                    scope: None,
                },
            }
        })
        .collect()
}

/// Events per second of `f` over `n` events: the best of [`ROUNDS`], after
/// one warm-up round (instances, caches).
fn rate(n: usize, mut f: impl FnMut() -> anyhow::Result<()>) -> anyhow::Result<f64> {
    f()?;
    let mut best = Duration::MAX;
    for _ in 0..ROUNDS {
        let start = Instant::now();
        f()?;
        best = best.min(start.elapsed());
    }
    Ok(n as f64 / best.as_secs_f64().max(1e-9))
}

/// Measures every path over `n` events; `step` is told what runs.
pub fn measure(n: usize, step: &dyn Fn(&str)) -> anyhow::Result<KeyPaths> {
    step("key paths: compiling fs-large-files");
    let api = Arc::new(PluginApi::new(Default::default(), Default::default()));
    let engine = PluginEngine::new(EngineConfig::default(), api)?;
    let path = std::path::Path::new(crate::EXAMPLE_PLUGIN_DIR).join("fs_large_files.wasm");
    let plugin = engine
        .load_file(&path)
        .with_context(|| format!("cannot load {}", path.display()))?;
    let params: Params = vec![
        ("min_size".into(), "1000000".into()),
        ("path_prefix".into(), "/data/".into()),
    ];
    let owned = events(n);
    let wasm_events: Vec<&Event> = owned.iter().collect();
    let native_events: Vec<weir_sdk::RawEvent> = owned
        .iter()
        .map(|e| weir_sdk::RawEvent::new(&e.new.event_type, &e.new.payload).with_id(&e.new.id))
        .collect();
    let native_params = weir_sdk::Params::from_pairs(params.clone());
    let native_api = weir_sdk::testing::MockApi::new();
    let key = LargeFiles;

    // The same answers from both, or the comparison means nothing.
    let native_answers: Vec<bool> = native_events
        .iter()
        .map(|e| key.matches(e, &native_params))
        .collect();
    let wasm_answers = plugin
        .matches_batch(KEY, &params, &wasm_events)
        .into_iter()
        .collect::<Result<Vec<bool>, _>>()?;
    anyhow::ensure!(
        native_answers == wasm_answers,
        "fs-large-files answers differently as a component and natively"
    );
    let kept: Vec<usize> = (0..n).filter(|&i| native_answers[i]).collect();
    let wasm_kept: Vec<&Event> = kept.iter().map(|&i| &owned[i]).collect();
    let native_kept: Vec<&weir_sdk::RawEvent> = kept.iter().map(|&i| &native_events[i]).collect();
    let m = kept.len().max(1);
    let mut out = KeyPaths {
        events: n,
        processed: kept.len(),
        ..KeyPaths::default()
    };

    step("key paths: matches");
    out.matches_native = rate(n, || {
        for e in &native_events {
            black_box(key.matches(e, &native_params));
        }
        Ok(())
    })?;
    out.matches_wasm_single = rate(n, || {
        for e in &wasm_events {
            black_box(plugin.matches(KEY, &params, e)?);
        }
        Ok(())
    })?;
    out.matches_wasm_batch = rate(n, || {
        for chunk in wasm_events.chunks(BATCH) {
            for answer in plugin.matches_batch(KEY, &params, chunk) {
                black_box(answer?);
            }
        }
        Ok(())
    })?;

    step("key paths: process");
    out.process_native = rate(m, || {
        for e in &native_kept {
            black_box(
                key.process(&native_api, e, &native_params)
                    .map_err(|e| anyhow::anyhow!("native process: {e}"))?,
            );
        }
        Ok(())
    })?;
    out.process_wasm_single = rate(m, || {
        for e in &wasm_kept {
            black_box(plugin.process(KEY, &params, e)?);
        }
        Ok(())
    })?;
    out.process_wasm_batch = rate(m, || {
        for chunk in wasm_kept.chunks(BATCH) {
            for answer in plugin.process_batch(KEY, &params, chunk) {
                black_box(answer?);
            }
        }
        Ok(())
    })?;
    Ok(out)
}
