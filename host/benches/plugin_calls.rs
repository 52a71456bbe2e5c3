//! Events per second through `matches` and `process` of `fs-large-files`:
//! as a WebAssembly component (single calls and batches) and as the same
//! Rust code compiled natively, measured in the same run; prints ratios.
//!
//! Run: `cargo bench -p weir-host --bench plugin_calls` (optional argument:
//! number of events, default 20000).

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fs_large_files::LargeFiles;
use weir_host::bus::{Event, NewEvent};
use weir_host::engine::{EngineConfig, Params, PluginEngine};
use weir_host::plugin_api::PluginApi;
use weir_host::registry::Runner;
use weir_sdk::EventKey;

const ROUNDS: usize = 5;

fn events(n: usize) -> Vec<Event> {
    (0..n)
        .map(|i| {
            let dir = if i % 3 == 0 { "/data/projects" } else { "/home/user/tmp" };
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

/// Best of `ROUNDS` runs of `f`, which handles `n` events; events per second.
fn measure(n: usize, mut f: impl FnMut()) -> f64 {
    f(); // warm-up: instances, caches
    let mut best = Duration::MAX;
    for _ in 0..ROUNDS {
        let start = Instant::now();
        f();
        best = best.min(start.elapsed());
    }
    n as f64 / best.as_secs_f64()
}

fn main() -> anyhow::Result<()> {
    let n: usize = std::env::args()
        .skip(1)
        .find(|a| !a.starts_with('-'))
        .and_then(|a| a.parse().ok())
        .unwrap_or(20_000);
    let api = Arc::new(PluginApi::new(Default::default(), Default::default()));
    let engine = PluginEngine::new(EngineConfig::default(), api)?;
    let path = std::path::Path::new(weir_host::EXAMPLE_PLUGIN_DIR).join("fs_large_files.wasm");
    let plugin = engine.load_file(&path)?;
    let key = "fs.large_files";
    let params: Params = vec![
        ("min_size".into(), "1000000".into()),
        ("path_prefix".into(), "/data/".into()),
    ];

    let owned = events(n);
    // What the pipeline hands a runner: the bus's events, by reference.
    let wasm_events: Vec<&Event> = owned.iter().collect();
    let native_events: Vec<weir_sdk::RawEvent> = owned
        .iter()
        .map(|e| weir_sdk::RawEvent::new(&e.new.event_type, &e.new.payload).with_id(&e.new.id))
        .collect();
    let native_params = weir_sdk::Params::from_pairs(params.clone());
    let native_api = weir_sdk::testing::MockApi::new();
    let k = LargeFiles;

    // The same answers on both sides, or the comparison means nothing.
    let native_answers: Vec<bool> = native_events
        .iter()
        .map(|e| k.matches(e, &native_params))
        .collect();
    let wasm_answers: Vec<bool> = plugin
        .matches_batch(key, &params, &wasm_events)
        .into_iter()
        .map(|r| r.unwrap())
        .collect();
    assert_eq!(native_answers, wasm_answers);
    let selected: Vec<usize> = (0..n).filter(|&i| native_answers[i]).collect();
    // The selected events on their own, as the pipeline hands `process`
    // the events `matches` kept.
    let kept: Vec<Event> = selected.iter().map(|&i| owned[i].clone()).collect();
    let wasm_selected: Vec<&Event> = kept.iter().collect();
    let native_selected: Vec<&weir_sdk::RawEvent> =
        selected.iter().map(|&i| &native_events[i]).collect();
    let m = wasm_selected.len();

    println!("fs-large-files: {n} events, {m} selected; best of {ROUNDS} rounds");
    println!("{:<34} {:>14} {:>12}", "path", "events/s", "vs native");

    let native_match = measure(n, || {
        for e in &native_events {
            black_box(k.matches(e, &native_params));
        }
    });
    let row = |name: &str, rate: f64, native: f64| {
        println!("{name:<34} {rate:>14.0} {:>11.1}x", native / rate);
    };
    row("matches native", native_match, native_match);
    let single = measure(n, || {
        for e in &wasm_events {
            black_box(plugin.matches(key, &params, e).unwrap());
        }
    });
    row("matches wasm, one call per event", single, native_match);
    for batch in [10, 100, 1000] {
        let rate = measure(n, || {
            for chunk in wasm_events.chunks(batch) {
                black_box(plugin.matches_batch(key, &params, chunk));
            }
        });
        row(
            &format!("matches wasm, batches of {batch}"),
            rate,
            native_match,
        );
    }

    let native_process = measure(m, || {
        for e in &native_selected {
            black_box(k.process(&native_api, e, &native_params).unwrap());
        }
    });
    row("process native", native_process, native_process);
    let single = measure(m, || {
        for e in &wasm_selected {
            black_box(plugin.process(key, &params, e).unwrap());
        }
    });
    row("process wasm, one call per event", single, native_process);
    for batch in [10, 100, 1000] {
        let rate = measure(m, || {
            for chunk in wasm_selected.chunks(batch) {
                black_box(plugin.process_batch(key, &params, chunk));
            }
        });
        row(
            &format!("process wasm, batches of {batch}"),
            rate,
            native_process,
        );
    }
    Ok(())
}
