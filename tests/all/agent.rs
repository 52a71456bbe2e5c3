//! `weir agent` against a real host: its snapshot equals the directory,
//! realtime changes follow, and a session taken over by another agent makes
//! it start over.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};
use weir_host::agent::{AgentConfig, Filter};
use weir_host::auth::Role;
use weir_tests::{SESSION, TestServer, host_with_examples, secret};

/// `path -> (is_dir, size, mtime)` of everything below `root` (`/` rooted).
fn disk(root: &Path) -> BTreeMap<String, (bool, u64, i64)> {
    let mut out = BTreeMap::new();
    for e in walkdir::WalkDir::new(root) {
        let e = e.unwrap();
        let rel = e
            .path()
            .strip_prefix(root)
            .unwrap()
            .to_string_lossy()
            .to_string();
        let m = e.metadata().unwrap();
        let mtime = m
            .modified()
            .unwrap()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as i64;
        // Directories' sizes and mtimes move with their entries: compared
        // by presence only.
        let (size, mtime) = if m.is_dir() { (0, 0) } else { (m.len(), mtime) };
        out.insert(format!("/{rel}"), (m.is_dir(), size, mtime));
    }
    out.insert("/".into(), (true, 0, 0));
    out.remove("");
    out
}

/// The same from the host's tree view of datastore `ds`, when it answers.
async fn tree(s: &TestServer, ds: &str) -> Option<BTreeMap<String, (bool, u64, i64)>> {
    let key = if ds == "default" {
        secret(Role::Query)
    } else {
        secret(Role::Admin)
    };
    let resp = s
        .client
        .get(format!("{}/api/v1/views/{ds}/tree?path=/", s.base))
        .header("X-API-Key", key)
        .send()
        .await
        .ok()?;
    if resp.status() != StatusCode::OK {
        return None;
    }
    let root: Value = resp.json().await.ok()?;
    let mut out = BTreeMap::new();
    let mut stack = vec![root];
    while let Some(node) = stack.pop() {
        let is_dir = node["content_type"] == "directory";
        let (size, mtime) = if is_dir {
            (0, 0)
        } else {
            (
                node["size"].as_u64().unwrap_or(0),
                (node["modified_time"].as_f64().unwrap_or(0.0) * 1000.0) as i64,
            )
        };
        out.insert(
            node["path"].as_str().unwrap_or("?").to_string(),
            (is_dir, size, mtime),
        );
        if let Some(children) = node["children"].as_array() {
            stack.extend(children.iter().cloned());
        }
    }
    Some(out)
}

/// Waits (bounded) until the host's tree equals the directory.
async fn converges(s: &TestServer, root: &Path, what: &str) {
    converges_in(s, "default", root, what).await
}

/// Waits (bounded) until the tree of datastore `ds` equals the directory.
async fn converges_in(s: &TestServer, ds: &str, root: &Path, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let want = disk(root);
        let got = tree(s, ds).await;
        if got.as_ref() == Some(&want) {
            return;
        }
        if Instant::now() > deadline {
            let got = got.unwrap_or_default();
            let missing: Vec<_> = want
                .keys()
                .filter(|k| !got.contains_key(*k))
                .take(5)
                .collect();
            let extra: Vec<_> = got
                .keys()
                .filter(|k| !want.contains_key(*k))
                .take(5)
                .collect();
            let differ: Vec<_> = want
                .iter()
                .filter(|(k, v)| got.get(*k).is_some_and(|g| g != *v))
                .take(5)
                .collect();
            panic!("{what}: missing {missing:?}, extra {extra:?}, differ {differ:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_agent_syncs_a_directory_follows_it_and_starts_over_when_taken_over() {
    let s = TestServer::start(host_with_examples()).await;
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().canonicalize().unwrap();
    for d in 0..20 {
        let sub = root.join(format!("proj_{}/run_{}", d / 5, d % 5));
        std::fs::create_dir_all(&sub).unwrap();
        for f in 0..100 {
            std::fs::write(
                sub.join(format!("file_{f:03}.dat")),
                vec![b'x'; (d * 100 + f) % 997],
            )
            .unwrap();
        }
    }
    std::fs::write(root.join("skip.tmp"), b"left out").unwrap();
    let state = tempfile::tempdir().unwrap();
    let args = agent_args(&s, &root, state.path(), 0.5);
    let key = secret(Role::Ingest);
    let config = AgentConfig::resolve(&args, &|_| Some(key.clone())).unwrap();
    // The agent id is kept: a second resolve gives the same task id.
    assert_eq!(
        AgentConfig::resolve(&args, &|_| Some(key.clone()))
            .unwrap()
            .task_id,
        config.task_id
    );
    assert!(config.task_id.ends_with(":test"));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let agent = tokio::spawn(weir_host::agent::run(config, async move {
        let _ = stopped.await;
    }));

    std::fs::remove_file(root.join("skip.tmp")).unwrap();
    converges(&s, &root, "the snapshot").await;

    // Realtime: create, modify, delete, mkdir with a file, rename, rmtree.
    std::fs::write(root.join("proj_0/run_0/created.txt"), b"new").unwrap();
    std::fs::write(
        root.join("proj_1/run_1/file_001.dat"),
        b"changed, longer than before",
    )
    .unwrap();
    std::fs::remove_file(root.join("proj_0/run_3/file_003.dat")).unwrap();
    std::fs::create_dir(root.join("fresh")).unwrap();
    std::fs::write(root.join("fresh/inner.txt"), b"inside").unwrap();
    std::fs::rename(
        root.join("proj_2/run_2/file_002.dat"),
        root.join("proj_2/run_2/renamed.dat"),
    )
    .unwrap();
    std::fs::remove_dir_all(root.join("proj_3/run_4")).unwrap();
    std::fs::write(root.join("ignored.tmp"), b"left out").unwrap();
    std::fs::remove_file(root.join("ignored.tmp")).unwrap();
    converges(&s, &root, "realtime changes").await;

    // Audits run (every half second here) and keep the tree right.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, stats) = s.get("/api/v1/views/default/stats", Role::Query).await;
        if stats["audit_cycle_count"].as_u64().unwrap_or(0) >= 2 {
            break;
        }
        assert!(Instant::now() < deadline, "no audit cycles: {stats}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    converges(&s, &root, "after audits").await;

    // `weir agent status` reads what the running agent reports.
    let status = |state: &Path| {
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let args = [
            "weir",
            "agent",
            "--state-dir",
            state.to_str().unwrap(),
            "--pipe",
            "test",
            "status",
        ];
        let code = weir_host::cli::run(args.map(String::from), &mut out, &mut err);
        (
            code,
            String::from_utf8(out).unwrap(),
            String::from_utf8(err).unwrap(),
        )
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    let shown = loop {
        let (code, out, err) = status(state.path());
        if code == 0 && out.contains("\"realtime\"") {
            break out;
        }
        assert!(Instant::now() < deadline, "{code} {out} {err}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let shown: Value = serde_json::from_str(&shown).unwrap();
    assert!(shown["rows_sent"].as_u64().unwrap() > 2000, "{shown}");
    assert_eq!(shown["sessions"], 1, "{shown}");
    let (code, _, err) = status(&state.path().join("nowhere"));
    assert_eq!(code, 1);
    assert!(err.contains("is the agent running"), "{err}");

    // Another agent takes the datastore over: this one is refused (419),
    // starts over with a new session and a new snapshot, and wins it back.
    let (status, grant) = s
        .post(
            SESSION,
            Role::Ingest,
            Some(json!({"task_id": "other:pipe"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{grant}");
    let other = grant["session_id"].as_str().unwrap().to_string();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, _) = s
            .post(
                &format!("{SESSION}{other}/heartbeat"),
                Role::Ingest,
                Some(json!({})),
            )
            .await;
        if status.as_u16() == 419 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the agent did not take its datastore back"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    std::fs::write(root.join("after.txt"), b"after the takeover").unwrap();
    converges(&s, &root, "after the takeover").await;

    // Stopping deletes the session: the views wait for an agent.
    let _ = stop.send(());
    agent.await.unwrap().unwrap();
    let (status, body) = s.get("/api/v1/views/default/stats", Role::Query).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    let _: Value = body;
}

/// The arguments of a test agent over `root` against `s`, keeping its id in
/// `state`; audits and sentinel checks every `every` seconds.
fn agent_args(
    s: &TestServer,
    root: &Path,
    state: &Path,
    every: f64,
) -> weir_host::agent::AgentArgs {
    weir_host::agent::AgentArgs {
        command: None,
        url: s.base.clone(),
        key_env: "KEY".into(),
        root: Some(root.to_path_buf()),
        config: None,
        datastore: None,
        pipe: "test".into(),
        state_dir: Some(state.to_path_buf()),
        batch_rows: 250,
        ignore: vec!["*.tmp".into()],
        max_depth: None,
        follow_symlinks: false,
        audit_interval_secs: Some(every),
        sentinel_interval_secs: Some(every),
        queue_paths: 100_000,
        // More threads than these machines have CPUs: the walks share work.
        walk_threads: Some(3),
    }
}

/// The tree view at `path`.
async fn at(s: &TestServer, path: &str) -> (StatusCode, Value) {
    s.get(
        &format!("/api/v1/views/default/tree?path={path}"),
        Role::Query,
    )
    .await
}

/// Asks for an on-demand scan of `path` and waits (bounded) until the
/// agent completes it; answers the job.
async fn scan_job(s: &TestServer, path: &str) -> Value {
    let (status, tree) = s
        .get(
            &format!("/api/v1/views/default/tree?path={path}&on_demand_scan=true"),
            Role::Query,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{tree}");
    assert_eq!(tree["job_pending"], true, "{tree}");
    let id = tree["job_id"].as_str().unwrap().to_string();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (_, job) = s
            .get(&format!("/api/v1/views/default/jobs/{id}"), Role::Query)
            .await;
        if job["status"] == "COMPLETED" {
            return job;
        }
        assert!(
            Instant::now() < deadline,
            "the agent did not complete {path}: {job}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Pushes realtime rows into the agent's session that the file system
/// does not back (so that only a scan can set them right), then asks for
/// on-demand scans: a recursive one of a directory, and one of a path that
/// is gone, which the agent answers with a delete.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_agent_answers_on_demand_scans() {
    let mut config = weir_tests::test_config();
    let mut ds = weir_host::datastore::DatastoreConfig::named("default");
    // Heartbeats every second, so that commands go out quickly.
    ds.sessions.timeout = Duration::from_secs(3);
    config.datastores = vec![ds];
    let s = TestServer::start(std::sync::Arc::new(
        weir_host::runtime::Host::new(config).unwrap(),
    ))
    .await;
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().canonicalize().unwrap();
    std::fs::create_dir_all(root.join("d/sub")).unwrap();
    std::fs::write(root.join("d/f"), b"ten bytes!").unwrap();
    std::fs::write(root.join("d/sub/g"), b"g").unwrap();
    let state = tempfile::tempdir().unwrap();
    let key = secret(Role::Ingest);
    let config = AgentConfig::resolve(&agent_args(&s, &root, state.path(), 3600.0), &|_| {
        Some(key.clone())
    })
    .unwrap();
    let status_file = config.status_file.clone();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let agent = tokio::spawn(weir_host::agent::run(config, async move {
        let _ = stopped.await;
    }));
    converges(&s, &root, "the snapshot").await;
    let deadline = Instant::now() + Duration::from_secs(10);
    let sid = loop {
        let shown: Value = std::fs::read(&status_file)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        if let Some(sid) = shown["session_id"].as_str() {
            break sid.to_string();
        }
        assert!(Instant::now() < deadline, "no session in the status file");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let old = |path: &str, size: u64| json!({"path": path, "size": size, "modified_time": 1.0, "is_directory": false});
    let (status, body) = s
        .push_rows(
            &sid,
            "message",
            "update",
            json!([old("/d/f", 999), old("/d/sub/ghost", 5)]),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let size = |t: &Value| t["size"].as_u64();
    let deadline = Instant::now() + Duration::from_secs(10);
    while size(&at(&s, "/d/f").await.1) != Some(999) {
        assert!(Instant::now() < deadline, "the stale row did not land");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // A recursive scan of /d sets /d/f right; the ghost is not on disk, so
    // no row of the walk names it.
    scan_job(&s, "/d").await;
    assert_eq!(size(&at(&s, "/d/f").await.1), Some(10));
    assert_eq!(at(&s, "/d/sub/ghost").await.0, StatusCode::OK);
    // A scan of the ghost itself: the agent finds it gone and deletes it.
    scan_job(&s, "/d/sub/ghost").await;
    assert_eq!(at(&s, "/d/sub/ghost").await.0, StatusCode::NOT_FOUND);
    converges(&s, &root, "after the scans").await;
    let _ = stop.send(());
    agent.await.unwrap().unwrap();
}

/// The status the agent of `state` last wrote.
fn agent_status(state: &Path) -> Value {
    std::fs::read(state.join("status-test.json"))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
}

/// Faults: the queue between the watcher and the sender overflows (16
/// signals at most, then a burst of thousands) and the agent rescans
/// within its session; files deleted while the snapshot walks. (An
/// unreadable subtree needs an agent that is not root: see
/// `tests/interop/weir_agent.py`.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_agent_rescans_when_events_are_lost_and_survives_a_changing_tree() {
    let s = TestServer::start(host_with_examples()).await;
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().canonicalize().unwrap();
    for d in 0..10 {
        std::fs::create_dir_all(root.join(format!("d{d}"))).unwrap();
        for f in 0..500 {
            std::fs::write(root.join(format!("d{d}/f{f}")), b"x").unwrap();
        }
    }
    let state = tempfile::tempdir().unwrap();
    let mut args = agent_args(&s, &root, state.path(), 3600.0);
    args.queue_paths = 16;
    let key = secret(Role::Ingest);
    let config = AgentConfig::resolve(&args, &|_| Some(key.clone())).unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let agent = tokio::spawn(weir_host::agent::run(config, async move {
        let _ = stopped.await;
    }));
    // Deleted while the snapshot may be walking: whatever the timing, the
    // tree ends up without them.
    for d in 0..10 {
        for f in (0..500).step_by(3) {
            std::fs::remove_file(root.join(format!("d{d}/f{f}"))).unwrap();
        }
    }
    converges(&s, &root, "deleted during the snapshot").await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while agent_status(state.path())["state"] != "realtime" {
        assert!(Instant::now() < deadline, "{}", agent_status(state.path()));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let sessions = agent_status(state.path())["sessions"].clone();

    // A burst far larger than the queue: new directories with files,
    // rewrites and deletions. Events are lost; the rescan finds them.
    for d in 0..20 {
        let sub = root.join(format!("burst{d}/inner"));
        std::fs::create_dir_all(&sub).unwrap();
        for f in 0..200 {
            std::fs::write(sub.join(format!("n{f}")), vec![b'y'; f]).unwrap();
        }
    }
    for f in (1..500).step_by(3) {
        std::fs::write(root.join(format!("d0/f{f}")), b"rewritten").unwrap();
    }
    std::fs::remove_dir_all(root.join("d9")).unwrap();
    converges(&s, &root, "after the burst").await;
    // The status file is rewritten every 2 s.
    let deadline = Instant::now() + Duration::from_secs(10);
    let shown = loop {
        let shown = agent_status(state.path());
        if shown["rescans"].as_u64().unwrap_or(0) >= 1 {
            break shown;
        }
        assert!(Instant::now() < deadline, "no rescan: {shown}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(shown["sessions"], sessions, "the session went on: {shown}");
    // The new directories are watched: a later change in one is followed.
    std::fs::write(root.join("burst7/inner/later"), b"later").unwrap();
    converges(&s, &root, "a change in a directory made during the burst").await;
    let _ = stop.send(());
    agent.await.unwrap().unwrap();
}

/// `weir agent --config FILE` with two roots: one into the key's own
/// datastore, one into `lab` named with `datastore` (a host-level key).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_config_file_syncs_several_roots_into_their_datastores() {
    let mut config = weir_tests::test_config();
    config.datastores = vec![
        weir_host::datastore::DatastoreConfig::named("default"),
        weir_host::datastore::DatastoreConfig::named("lab"),
    ];
    let s = TestServer::start(std::sync::Arc::new(
        weir_host::runtime::Host::new(config).unwrap(),
    ))
    .await;
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let roots: Vec<_> = dirs
        .iter()
        .map(|d| d.path().canonicalize().unwrap())
        .collect();
    for (i, root) in roots.iter().enumerate() {
        for f in 0..50 {
            std::fs::write(root.join(format!("r{i}-{f}")), vec![b'z'; f]).unwrap();
        }
    }
    let state = tempfile::tempdir().unwrap();
    let file = state.path().join("agent.toml");
    std::fs::write(
        &file,
        format!(
            "url = {url:?}\nkey_env = \"INGEST\"\nbatch_rows = 20\n\n\
             [[roots]]\npath = {a:?}\npipe = \"one\"\n\n\
             [[roots]]\npath = {b:?}\npipe = \"two\"\ndatastore = \"lab\"\nkey_env = \"ADMIN\"\nwalk_threads = 5\n",
            url = s.base,
            a = roots[0].display().to_string(),
            b = roots[1].display().to_string(),
        ),
    )
    .unwrap();
    let mut args = agent_args(&s, &roots[0], state.path(), 3600.0);
    args.root = None;
    args.config = Some(file.clone());
    let env = |k: &str| match k {
        "INGEST" | "KEY" => Some(secret(Role::Ingest)),
        "ADMIN" => Some(secret(Role::Admin)),
        _ => None,
    };
    let configs = weir_host::agent::resolve_all(&args, &env).unwrap();
    assert_eq!(configs.len(), 2);
    assert_eq!(configs[1].datastore.as_deref(), Some("lab"));
    assert_eq!((configs[0].walk_threads, configs[1].walk_threads), (3, 5));
    assert!(configs[0].task_id.ends_with(":one") && configs[1].task_id.ends_with(":two"));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let agent = tokio::spawn(weir_host::agent::run_all(configs, async move {
        let _ = stopped.await;
    }));
    converges_in(&s, "default", &roots[0], "the first root").await;
    converges_in(&s, "lab", &roots[1], "the second root, in lab").await;
    std::fs::write(roots[1].join("later"), b"later").unwrap();
    converges_in(&s, "lab", &roots[1], "a change in the second root").await;
    let _ = stop.send(());
    agent.await.unwrap().unwrap();

    // Mistakes are named with their root.
    for (text, says) in [
        (
            "[[roots]]\npath = \"/\"\npipe = \"a\"\n[[roots]]\npath = \"/\"\npipe = \"a\"\n",
            "pipe `a` is given twice",
        ),
        ("roots = []\n", "lists no [[roots]]"),
        (
            "[[roots]]\npath = \"/\"\npipe = \"a\"\nbogus = 1\n",
            "unknown field `bogus`",
        ),
        (
            "[[roots]]\npath = \"/nowhere/at/all\"\npipe = \"a\"\n",
            "the root of pipe `a`",
        ),
        (
            "[[roots]]\npath = \"/\"\npipe = \"a\"\ndatastore = \"no way\"\n",
            "--datastore must be",
        ),
    ] {
        std::fs::write(&file, text).unwrap();
        let err = format!(
            "{:#}",
            weir_host::agent::resolve_all(&args, &env).unwrap_err()
        );
        assert!(err.contains(says), "{text}: {err}");
    }
}

/// A server that takes sessions but refuses every push (as fustor-fusion
/// refuses an event without `fields`): the agent backs off between
/// sessions and deletes each one it leaves, rather than making ten a
/// second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_refuses_every_push_is_not_flooded() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let made = std::sync::Arc::new(AtomicUsize::new(0));
    let deleted = std::sync::Arc::new(AtomicUsize::new(0));
    let (m, d) = (made.clone(), deleted.clone());
    let app = axum::Router::new()
        .route(
            "/api/v1/pipe/session/",
            axum::routing::post(move || {
                let n = m.fetch_add(1, Ordering::SeqCst);
                async move {
                    axum::Json(json!({"session_id": format!("s{n}"), "role": "leader",
                        "session_timeout_seconds": 30, "audit_interval_sec": 600.0,
                        "sentinel_interval_sec": 600.0, "message": "ok"}))
                }
            }),
        )
        .route(
            "/api/v1/pipe/session/{sid}/heartbeat",
            axum::routing::post(|| async { axum::Json(json!({"status": "ok", "commands": []})) }),
        )
        .route(
            "/api/v1/pipe/session/{sid}",
            axum::routing::delete(move || {
                d.fetch_add(1, Ordering::SeqCst);
                async { axum::Json(json!({"status": "terminated"})) }
            }),
        )
        .route(
            "/api/v1/pipe/ingest/{sid}/events",
            axum::routing::post(|| async {
                (
                    StatusCode::UNPROCESSABLE_ENTITY,
                    axum::Json(json!({"detail": "events.0.fields: Field required"})),
                )
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("f"), b"x").unwrap();
    let state = tempfile::tempdir().unwrap();
    let s = TestServer::start(host_with_examples()).await;
    let mut args = agent_args(&s, dir.path(), state.path(), 3600.0);
    args.url = base;
    let config = AgentConfig::resolve(&args, &|_| Some("k".into())).unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let agent = tokio::spawn(weir_host::agent::run(config, async move {
        let _ = stopped.await;
    }));
    tokio::time::sleep(Duration::from_secs(3)).await;
    let _ = stop.send(());
    agent.await.unwrap().unwrap();
    let (made, deleted) = (made.load(Ordering::SeqCst), deleted.load(Ordering::SeqCst));
    // Backoff from 0.2 s, doubling: about five sessions in 3 s.
    assert!((2..=8).contains(&made), "{made} sessions in 3 s");
    assert!(deleted + 1 >= made, "{deleted} of {made} sessions deleted");
    let shown = agent_status(state.path());
    assert!(
        shown["last_error"]
            .as_str()
            .unwrap_or("")
            .contains("Field required"),
        "{shown}"
    );
}

#[test]
fn a_bad_setting_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let mut args = weir_host::agent::AgentArgs {
        command: None,
        url: "http://127.0.0.1:1".into(),
        key_env: "NO_SUCH_KEY".into(),
        root: Some(dir.path().to_path_buf()),
        config: None,
        datastore: None,
        pipe: "p".into(),
        state_dir: Some(dir.path().join("state")),
        batch_rows: 100,
        ignore: vec![],
        max_depth: None,
        follow_symlinks: false,
        audit_interval_secs: None,
        sentinel_interval_secs: Some(0.0),
        queue_paths: 100_000,
        walk_threads: None,
    };
    let err = AgentConfig::resolve(&args, &|_| Some("k".into()))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("--sentinel-interval-secs must be 0.1 to 86400, not 0"),
        "{err}"
    );
    args.sentinel_interval_secs = None;
    let err = AgentConfig::resolve(&args, &|_| None)
        .unwrap_err()
        .to_string();
    assert!(err.contains("set NO_SUCH_KEY"), "{err}");
    args.root = Some(dir.path().join("missing"));
    let err = AgentConfig::resolve(&args, &|_| Some("k".into()))
        .unwrap_err()
        .to_string();
    assert!(err.contains("cannot open the root"), "{err}");
    args.root = Some(dir.path().to_path_buf());
    args.ignore = vec!["[".into()];
    let err = format!(
        "{:#}",
        AgentConfig::resolve(&args, &|_| Some("k".into())).unwrap_err()
    );
    assert!(err.contains("--ignore `[`"), "{err}");
    args.ignore = vec![];
    args.queue_paths = 3;
    let err = AgentConfig::resolve(&args, &|_| Some("k".into()))
        .unwrap_err()
        .to_string();
    assert!(err.contains("--queue-paths must be 16 to"), "{err}");
    args.queue_paths = 100;
    args.walk_threads = Some(0);
    let err = AgentConfig::resolve(&args, &|_| Some("k".into()))
        .unwrap_err()
        .to_string();
    assert!(err.contains("--walk-threads must be 1 to 64"), "{err}");
    let _ = Filter::new(&[], None, false).unwrap();
}
