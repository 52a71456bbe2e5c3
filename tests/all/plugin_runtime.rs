//! The plugin engine against real components: the example plugins and the
//! hostile guest. Every fault asserts its exact kind, and that the host keeps
//! serving well-behaved keys afterwards.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use weir_host::engine::{FaultKind, Outcome, PluginFault};
use weir_host::registry::RegisteredKey;
use weir_tests::{event, guest, host_with_examples, params, refs};

fn key(host: &weir_host::runtime::Host, name: &str) -> RegisteredKey {
    host.registry()
        .lookup(name)
        .cloned()
        .unwrap_or_else(|| panic!("key {name} registered"))
}

fn chaos(action: &str) -> weir_host::bus::Event {
    event(
        &format!("ev-{action}"),
        "test.chaos",
        json!({ "do": action }),
    )
}

/// A host with the examples and the hostile guest.
fn hostile_host() -> (Arc<weir_host::runtime::Host>, RegisteredKey) {
    let host = host_with_examples();
    host.load_file(&guest("guest-hostile"))
        .expect("hostile guest registers");
    let k = key(&host, "hostile.chaos");
    (host, k)
}

/// The example key still answers correctly.
fn assert_large_files_serves(host: &weir_host::runtime::Host) {
    let k = key(host, "fs.large_files");
    let p = params(&[("min_size", "100")]);
    let ev = event(
        "ok",
        "fs.insert",
        json!({"path": "/d/big", "size": 2048, "mtime": 1.0}),
    );
    assert_eq!(k.plugin.matches(&k.def.key, &p, &ev), Ok(true));
    let out = k
        .plugin
        .process(&k.def.key, &p, &ev)
        .expect("process works");
    let Outcome::Emit(json) = out else {
        panic!("emitted")
    };
    assert_eq!(
        serde_json::from_str::<Value>(&json).unwrap()["human_size"],
        "2.0 KiB"
    );
}

#[test]
fn example_plugins_load_and_register_sorted() {
    let host = host_with_examples();
    assert!(
        host.failed_plugins().is_empty(),
        "{:?}",
        host.failed_plugins()
    );
    let keys: Vec<String> = host.registry().list().map(|k| k.def.key.clone()).collect();
    assert_eq!(
        keys,
        [
            "enrich.context",
            "fs.changes",
            "fs.large_files",
            "json.field_equals"
        ]
    );
    let def = &key(&host, "fs.large_files").def;
    assert_eq!(def.event_type, "fs.*");
    assert!(def.param("min_size").unwrap().required);
    assert!(def.param("path_prefix").unwrap().subscription_key);
}

#[test]
fn fs_large_files_single_and_batch() {
    let host = host_with_examples();
    let k = key(&host, "fs.large_files");
    let p = params(&[("min_size", "1000"), ("path_prefix", "/data/")]);
    let events = vec![
        event(
            "1",
            "fs.insert",
            json!({"path": "/data/a", "size": 5000, "mtime": 2.5}),
        ),
        event("2", "fs.insert", json!({"path": "/data/b", "size": 10})),
        event("3", "fs.update", json!({"path": "/tmp/c", "size": 5000})),
        event("4", "fs.delete", json!({"path": "/data/a"})),
    ];
    let single: Vec<bool> = events
        .iter()
        .map(|e| k.plugin.matches(&k.def.key, &p, e).unwrap())
        .collect();
    assert_eq!(single, [true, false, false, false]);
    let batch: Vec<bool> = k
        .plugin
        .matches_batch(&k.def.key, &p, &refs(&events))
        .into_iter()
        .map(Result::unwrap)
        .collect();
    assert_eq!(batch, single);
    let out = k.plugin.process_batch(&k.def.key, &p, &refs(&events[..1]));
    assert_eq!(
        out,
        vec![Ok(Outcome::Emit(
            r#"{"path":"/data/a","size":5000,"mtime":2.5,"human_size":"4.9 KiB"}"#.into()
        ))]
    );
}

#[test]
fn json_field_filter_native_schema_passes_payload() {
    let host = host_with_examples();
    let k = key(&host, "json.field_equals");
    let p = params(&[("field", "new_status"), ("equals", "ACTIVE")]);
    let ev = event(
        "d1",
        "deal.status.changed",
        json!({"deal_id": "deal-123", "old_status": "PENDING", "new_status": "ACTIVE"}),
    );
    assert_eq!(k.plugin.matches(&k.def.key, &p, &ev), Ok(true));
    // No process function: the payload is delivered as it is.
    assert_eq!(
        k.plugin.process(&k.def.key, &p, &ev),
        Ok(Outcome::Emit(ev.new.payload.clone()))
    );
    let other = event(
        "d2",
        "deal.status.changed",
        json!({"deal_id": "deal-9", "new_status": "FAILED"}),
    );
    assert_eq!(k.plugin.matches(&k.def.key, &p, &other), Ok(false));
}

#[test]
fn fs_changes_normalizes_params() {
    let host = host_with_examples();
    let k = key(&host, "fs.changes");
    let normalized = k
        .plugin
        .normalize_params(
            &k.def.key,
            &params(&[("extensions", " .PDF, txt"), ("kinds", "Insert")]),
        )
        .unwrap();
    assert_eq!(
        normalized,
        params(&[("extensions", "pdf,txt"), ("kinds", "insert")])
    );
    let ev = event(
        "1",
        "fs.insert",
        json!({"path": "/x/Report.pdf", "size": 3}),
    );
    assert_eq!(k.plugin.matches(&k.def.key, &normalized, &ev), Ok(true));
}

#[test]
fn enrich_calls_the_host_api_in_pre_consume_process_and_cleanup() {
    let host = host_with_examples();
    let k = key(&host, "enrich.context");
    let p = k
        .plugin
        .normalize_params(&k.def.key, &params(&[("tag", " Ops ")]))
        .unwrap();
    assert_eq!(p, params(&[("tag", "ops")]));
    k.plugin.pre_consume(&k.def.key, "sub-1", &p).unwrap();
    assert_eq!(
        host.host_api().state_of("enrich", "tag-ops"),
        Some(json!({"subscription_id": "sub-1", "tag": "ops"}))
    );
    let Outcome::Emit(out) = k
        .plugin
        .process(&k.def.key, &p, &event("e1", "x.y", json!({"n": 1})))
        .unwrap()
    else {
        panic!("emitted")
    };
    let out: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        out["enrichment"]["subscription"]["subscription_id"],
        "sub-1"
    );
    assert_eq!(out["enrichment"]["host_keys"].as_array().unwrap().len(), 4);
    assert_eq!(out["payload"], json!({"n": 1}));
    k.plugin.cleanup(&k.def.key, "sub-1", &p).unwrap();
    assert_eq!(host.host_api().state_of("enrich", "tag-ops"), None);
    // A bad tag is refused by normalize-params with the plugin's message.
    let err = k
        .plugin
        .normalize_params(&k.def.key, &params(&[("tag", "a/b")]))
        .unwrap_err();
    assert_eq!(err.kind(), FaultKind::PluginError);
    assert!(err.to_string().contains("must be letters"), "{err}");
}

/// Calls `process` with one misbehaviour and checks the fault kind, that
/// the faulting instance was recycled, and that everything else still works.
fn assert_process_fault(action: &str, expected: FaultKind) -> PluginFault {
    let (host, k) = hostile_host();
    let created = counters(&k).instances.load(Relaxed);
    let fault = k
        .plugin
        .process(&k.def.key, &vec![], &chaos(action))
        .unwrap_err();
    assert_eq!(fault.kind(), expected, "{action}: {fault}");
    // The same plugin serves the next call on a fresh instance...
    let ok = k
        .plugin
        .process(&k.def.key, &vec![], &chaos("echo"))
        .unwrap();
    assert_eq!(ok, Outcome::Emit(r#"{"do":"echo"}"#.into()));
    let recycled = counters(&k).instances.load(Relaxed) > created;
    assert_eq!(recycled, fault.recycles_instance(), "{action}");
    // ...and other plugins never noticed.
    assert_large_files_serves(&host);
    fault
}

#[test]
fn infinite_loop_hits_the_deadline() {
    let start = Instant::now();
    let fault = assert_process_fault("loop", FaultKind::Deadline);
    assert_eq!(fault, PluginFault::Deadline(Duration::from_millis(500)));
    assert!(start.elapsed() < Duration::from_secs(10));
}

#[test]
fn unbounded_allocation_hits_the_memory_cap() {
    let fault = assert_process_fault("alloc", FaultKind::Memory);
    assert_eq!(
        fault,
        PluginFault::MemoryExhausted {
            limit: 32 * 1024 * 1024
        }
    );
}

#[test]
fn the_memory_gauge_follows_live_instances() {
    let (_host, k) = hostile_host();
    let memory = || {
        let m = &counters(&k).memory;
        (m.current.load(Relaxed), m.peak.load(Relaxed))
    };
    k.plugin
        .process(&k.def.key, &vec![], &chaos("echo"))
        .unwrap();
    // One idle instance holds its memory.
    let (idle, _) = memory();
    assert!(idle > 0 && idle < 8 << 20, "{idle}");
    // The hoarding instance grows to the cap, faults and is dropped: its
    // memory is given back, its peak stays.
    k.plugin
        .process(&k.def.key, &vec![], &chaos("alloc"))
        .unwrap_err();
    let (after, peak) = memory();
    assert!(peak > 24 << 20 && peak <= 32 << 20, "{peak}");
    assert!(after <= idle, "{after} > {idle}");
}

#[test]
fn panic_is_a_trap_with_the_guest_message() {
    let fault = assert_process_fault("panic", FaultKind::Trap);
    assert!(
        fault.to_string().contains("process panicked on purpose"),
        "{fault}"
    );
}

#[test]
fn huge_output_is_refused() {
    let fault = assert_process_fault("huge", FaultKind::OutputTooLarge);
    assert!(
        matches!(fault, PluginFault::OutputTooLarge { limit: 1048576, size } if size > 4 << 20)
    );
}

#[test]
fn invalid_json_output_is_malformed() {
    assert_process_fault("bad_json", FaultKind::Malformed);
}

#[test]
fn plugin_error_keeps_the_instance() {
    let fault = assert_process_fault("error", FaultKind::PluginError);
    assert_eq!(fault, PluginFault::Failed("refused on purpose".into()));
}

#[test]
fn call_api_inside_matches_is_refused_and_faults() {
    let (host, k) = hostile_host();
    let fault = k
        .plugin
        .matches(&k.def.key, &vec![], &chaos("match_api"))
        .unwrap_err();
    assert_eq!(fault, PluginFault::ApiInMatches);
    assert_eq!(
        k.plugin.matches(&k.def.key, &vec![], &chaos("echo")),
        Ok(true)
    );
    // The same call from process is allowed and answered by the host.
    let Outcome::Emit(out) = k
        .plugin
        .process(&k.def.key, &vec![], &chaos("api"))
        .unwrap()
    else {
        panic!()
    };
    let out: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        out,
        json!({"method": "POST", "path": "/v1/echo", "body": {"n": 1}, "plugin": "guest_hostile", "key": "hostile.chaos"})
    );
    assert_large_files_serves(&host);
}

#[test]
fn matches_has_its_own_short_deadline() {
    let (host, k) = hostile_host();
    let start = Instant::now();
    let fault = k
        .plugin
        .matches(&k.def.key, &vec![], &chaos("match_loop"))
        .unwrap_err();
    assert_eq!(fault, PluginFault::Deadline(Duration::from_millis(50)));
    assert!(
        start.elapsed() < Duration::from_millis(400),
        "{:?}",
        start.elapsed()
    );
    assert_large_files_serves(&host);
}

#[test]
fn deadline_is_reset_on_every_call() {
    // Many cheap matches calls over three times the matches deadline: none may
    // fault, which they would if the deadline accumulated across calls.
    let host = host_with_examples();
    let k = key(&host, "fs.large_files");
    let p = params(&[("min_size", "1")]);
    let ev = event("1", "fs.insert", json!({"path": "/a", "size": 5}));
    let start = Instant::now();
    let mut calls = 0;
    while start.elapsed() < Duration::from_millis(150) {
        assert_eq!(k.plugin.matches(&k.def.key, &p, &ev), Ok(true));
        std::thread::sleep(Duration::from_millis(1));
        calls += 1;
    }
    assert!(calls > 20);
    assert_eq!(counters(&k).faults.load(Relaxed), 0);
}

#[test]
fn batch_faults_are_pinned_on_their_events() {
    let (_host, k) = hostile_host();
    let events = [
        chaos("a"),
        chaos("panic"),
        chaos("drop"),
        chaos("error"),
        chaos("b"),
    ];
    let results = k.plugin.process_batch(&k.def.key, &vec![], &refs(&events));
    assert_eq!(results.len(), 5);
    assert_eq!(results[0], Ok(Outcome::Emit(r#"{"do":"a"}"#.into())));
    assert_eq!(results[1].as_ref().unwrap_err().kind(), FaultKind::Trap);
    assert_eq!(results[2], Ok(Outcome::Drop));
    assert_eq!(
        results[3],
        Err(PluginFault::Failed("refused on purpose".into()))
    );
    assert_eq!(results[4], Ok(Outcome::Emit(r#"{"do":"b"}"#.into())));

    let events = [
        chaos("x"),
        chaos("match_api"),
        chaos("skip"),
        chaos("match_panic"),
    ];
    let results = k.plugin.matches_batch(&k.def.key, &vec![], &refs(&events));
    assert_eq!(results[0], Ok(true));
    assert_eq!(results[1], Err(PluginFault::ApiInMatches));
    assert_eq!(results[2], Ok(false));
    assert_eq!(results[3].as_ref().unwrap_err().kind(), FaultKind::Trap);
}

#[test]
fn a_batch_with_an_oversized_output_faults_only_that_event() {
    let (_host, k) = hostile_host();
    let results = k
        .plugin
        .process_batch(&k.def.key, &vec![], &[&chaos("a"), &chaos("huge")]);
    assert_eq!(results[0], Ok(Outcome::Emit(r#"{"do":"a"}"#.into())));
    assert_eq!(
        results[1].as_ref().unwrap_err().kind(),
        FaultKind::OutputTooLarge
    );
}

#[test]
fn sandbox_grants_no_filesystem_environment_arguments_or_network() {
    let (_host, k) = hostile_host();
    let Outcome::Emit(out) = k
        .plugin
        .process(&k.def.key, &vec![], &chaos("probe"))
        .unwrap()
    else {
        panic!()
    };
    let out: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(out["env"], 0, "{out}");
    assert_eq!(out["args"], 0, "{out}");
    assert_ne!(out["fs_root"], "readable", "{out}");
    assert_ne!(out["fs_etc"], "readable", "{out}");
    assert_ne!(out["net"], "connected", "{out}");
}

/// Collects what `tracing` writes, as JSON lines.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn guest_stdout_stderr_and_log_go_to_tracing_tagged_with_plugin_and_key() {
    let (_host, k) = hostile_host();
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .json()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || writer.clone())
        .finish();
    tracing::subscriber::with_default(subscriber, || {
        k.plugin
            .process(&k.def.key, &vec![], &chaos("stdout"))
            .unwrap();
    });
    let text = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    for message in [
        "hello from the guest's stdout",
        "hello from the guest's stderr",
        "hello from the log import",
    ] {
        let line = lines
            .iter()
            .find(|l| l["fields"]["message"] == message)
            .unwrap_or_else(|| panic!("no log line {message:?} in {text}"));
        assert_eq!(line["fields"]["plugin"], "guest_hostile");
        assert_eq!(line["fields"]["key"], "hostile.chaos");
    }
}

#[test]
fn failing_pre_consume_is_a_plugin_error() {
    let (_host, k) = hostile_host();
    let err = k
        .plugin
        .pre_consume(&k.def.key, "s1", &params(&[("a", "1")]))
        .unwrap_err();
    assert_eq!(
        err,
        PluginFault::Failed("pre-consume refuses 1 params".into())
    );
    // cleanup is not declared by the key: the host does not call it.
    assert_eq!(k.plugin.cleanup(&k.def.key, "s1", &vec![]), Ok(()));
}

#[test]
fn concurrent_calls_share_the_instance_pool() {
    let host = host_with_examples();
    let k = key(&host, "fs.large_files");
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let k = k.clone();
            std::thread::spawn(move || {
                let p = params(&[("min_size", "10")]);
                for i in 0..200 {
                    let ev = event(
                        &format!("{t}-{i}"),
                        "fs.insert",
                        json!({"path": "/a", "size": i}),
                    );
                    assert_eq!(k.plugin.matches(&k.def.key, &p, &ev), Ok(i >= 10));
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(counters(&k).faults.load(Relaxed), 0);
    assert!(counters(&k).instances.load(Relaxed) <= 5);
}

#[test]
fn a_broken_file_in_the_plugin_directory_does_not_stop_the_host() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        weir_tests::example("fs-large-files"),
        dir.path().join("good.wasm"),
    )
    .unwrap();
    std::fs::write(dir.path().join("broken.wasm"), b"\0asm garbage").unwrap();
    std::fs::write(dir.path().join("notes.txt"), b"not a plugin").unwrap();
    let host = weir_host::runtime::Host::new(weir_host::runtime::HostConfig {
        plugin_dir: Some(dir.path().to_path_buf()),
        ..Default::default()
    })
    .unwrap();
    let failed = host.failed_plugins();
    assert_eq!(failed.len(), 1);
    assert!(failed[0].file.ends_with("broken.wasm"));
    assert!(
        failed[0].errors[0].contains("not a loadable weir:plugin component"),
        "{:?}",
        failed[0]
    );
    assert_eq!(host.registry().len(), 1);
    assert_large_files_serves(&host);
}

#[test]
fn compiled_cache_is_reused() {
    let cache = tempfile::tempdir().unwrap();
    let config = || weir_host::engine::EngineConfig {
        cache_dir: Some(cache.path().to_path_buf()),
        ..Default::default()
    };
    let api: Arc<dyn weir_host::engine::CallApi> = Arc::new(weir_host::plugin_api::PluginApi::new(
        Default::default(),
        Default::default(),
    ));
    let engine = weir_host::engine::PluginEngine::new(config(), api.clone()).unwrap();
    let first = engine
        .load_file(&weir_tests::example("fs-large-files"))
        .unwrap();
    let entries: Vec<_> = std::fs::read_dir(cache.path()).unwrap().collect();
    assert_eq!(entries.len(), 1);
    assert!(
        entries[0]
            .as_ref()
            .unwrap()
            .file_name()
            .to_string_lossy()
            .starts_with(first.hash())
    );
    // A second engine loads from the cache and behaves the same.
    let engine = weir_host::engine::PluginEngine::new(config(), api).unwrap();
    let second = engine
        .load_file(&weir_tests::example("fs-large-files"))
        .unwrap();
    assert_eq!(second.definitions(), first.definitions());
}

/// The call counters of a key's wasm plugin.
fn counters(k: &weir_host::registry::RegisteredKey) -> &weir_host::engine::Counters {
    weir_host::engine::as_plugin(&*k.plugin)
        .expect("a wasm plugin")
        .counters()
}

#[test]
fn a_plugin_flooding_its_log_is_cut_to_its_budget_and_counted() {
    // Its own plugin name (file name), so that its budget is not shared
    // with the other tests' hostile plugin.
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(guest("guest-hostile"), dir.path().join("flooder.wasm")).unwrap();
    let host = weir_tests::host_with_plugin_dir(dir.path().to_path_buf());
    let k = host.registry().lookup("hostile.chaos").cloned().unwrap();
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .json()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || writer.clone())
        .finish();
    tracing::subscriber::with_default(subscriber, || {
        for _ in 0..3 {
            k.plugin
                .process(&k.def.key, &vec![], &chaos("log_flood"))
                .unwrap();
        }
        // A second later, the next line comes with a summary of the drops.
        std::thread::sleep(std::time::Duration::from_millis(1100));
        k.plugin
            .process(&k.def.key, &vec![], &chaos("stdout"))
            .unwrap();
    });
    let all = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    // The plugin's own lines (wasmtime's trace spans are this capture's
    // artifact: the host logs at info).
    let plugin: Vec<&str> = all
        .lines()
        .filter(|l| l.contains("\"target\":\"weir::plugin"))
        .collect();
    let bytes: usize = plugin.iter().map(|l| l.len()).sum();
    // 63,000 lines of 1 KiB were written (65 MB); a few hundred reach the log.
    assert!(bytes < 2 << 20, "{bytes} bytes of plugin log");
    assert!(plugin.len() < 1_000, "{} lines", plugin.len());
    assert!(
        plugin
            .iter()
            .any(|l| l.contains("log lines of this plugin dropped")),
        "no summary line"
    );
    let suppressed = weir_host::engine::logbudget::LogBudget::of("flooder").suppressed();
    assert!(suppressed > 60_000, "{suppressed} suppressed");
}
