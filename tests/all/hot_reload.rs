//! A running host over a watched plugin directory: plugins copied in are
//! loaded, new versions are swapped in under open subscriptions, broken
//! versions leave the old one running, removed files end their keys.

use std::path::Path;
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};
use weir_host::auth::Role;
use weir_tests::{TestServer, chaos_call, chaos_ok, guest, host_with_plugin_dir};

/// Copies `from` into `dir/name` the atomic way: write beside, rename.
fn install(from: &Path, dir: &Path, name: &str) {
    let tmp = dir.join(format!(".{name}.partial"));
    std::fs::copy(from, &tmp).unwrap();
    std::fs::rename(&tmp, dir.join(name)).unwrap();
}

async fn keys(s: &TestServer) -> Vec<String> {
    let (_, body) = s.get("/v1/keys", Role::Query).await;
    body.as_array()
        .unwrap()
        .iter()
        .map(|k| k["key"].as_str().unwrap().to_string())
        .collect()
}

/// Waits (bounded) until `check` holds for `GET /v1/plugins`.
async fn wait_plugins(s: &TestServer, what: &str, check: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, body) = s.get("/v1/plugins", Role::Admin).await;
        if check(&body) {
            return body;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}: {body}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

async fn watched() -> (tempfile::TempDir, TestServer) {
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start(host_with_plugin_dir(dir.path().to_path_buf())).await;
    s.host.watch_plugins(Duration::from_millis(100));
    (dir, s)
}

fn flaky(n: i64) -> Value {
    json!({"event_type": "test.x", "source": "t", "payload": {"n": n}})
}

#[tokio::test]
async fn a_copied_plugin_is_loaded_within_two_seconds() {
    let (dir, s) = watched().await;
    assert!(keys(&s).await.is_empty());
    let start = Instant::now();
    install(&guest("guest-pipeline"), dir.path(), "flaky.wasm");
    let body = wait_plugins(&s, "the plugin", |b| {
        b["loaded"].as_array().is_some_and(|l| l.len() == 1)
    })
    .await;
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "{:?}",
        start.elapsed()
    );
    let p = &body["loaded"][0];
    assert_eq!(p["name"], "flaky");
    assert_eq!(p["keys"], json!(["test.flaky"]));
    assert_eq!(p["state"], "loaded");
    assert_eq!(p["hash"].as_str().unwrap().len(), 64);
    assert_eq!(keys(&s).await, vec!["test.flaky"]);
}

#[tokio::test]
async fn a_new_version_is_swapped_in_under_open_subscriptions_without_loss_or_repeat() {
    let (dir, s) = watched().await;
    install(&guest("guest-pipeline"), dir.path(), "flaky.wasm");
    let v1 = wait_plugins(&s, "v1", |b| {
        b["loaded"].as_array().is_some_and(|l| l.len() == 1)
    })
    .await;
    let (mut main, _) = s.subscribe("test.flaky", &[]).await;
    let (mut legacy, _) = s.subscribe("test.flaky", &[("sub", "legacy")]).await;

    // Events flow while the file is replaced.
    let publisher = {
        let base = s.base.clone();
        tokio::spawn(async move {
            let client = reqwest::Client::new();
            for n in 0..300 {
                let resp = client
                    .post(format!("{base}/v1/events"))
                    .header("X-API-Key", weir_tests::secret(Role::Ingest))
                    .json(&flaky(n))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(resp.status(), StatusCode::OK);
                tokio::time::sleep(Duration::from_millis(3)).await;
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(150)).await;
    install(&guest("guest-pipeline-v2"), dir.path(), "flaky.wasm");
    let v2 = wait_plugins(&s, "v2", |b| {
        b["loaded"][0]["hash"] != v1["loaded"][0]["hash"]
    })
    .await;
    assert_eq!(v2["failed"], json!([]));
    publisher.await.unwrap();

    let mut seen = Vec::new();
    let mut versions = Vec::new();
    while let Some(v) = main.next(Duration::from_millis(500)).await {
        assert!(v.get("notice").is_none(), "{v}");
        seen.push(v["data"]["n"].as_i64().unwrap());
        versions.push(v["data"]["version"].as_i64().unwrap());
    }
    assert_eq!(
        seen,
        (0..300).collect::<Vec<_>>(),
        "every event once, in order"
    );
    assert_eq!(versions.first(), Some(&1));
    assert_eq!(versions.last(), Some(&2));
    assert!(
        versions.windows(2).all(|w| w[0] <= w[1]),
        "never back to the old version"
    );

    // The consumer whose params v2 refuses was ended with that reason.
    let rest = legacy.drain(Duration::from_millis(300)).await;
    let end = rest.last().expect("an end notice");
    assert_eq!(end["notice"], "ended", "{rest:?}");
    assert!(
        end["reason"]
            .as_str()
            .unwrap()
            .contains("`legacy` is no longer supported"),
        "{end}"
    );
    // Its subscription was cleaned up; the other one lives on.
    s.wait_subscriptions("legacy gone", |b| {
        b["subscriptions"].as_array().unwrap().len() == 1
    })
    .await;

    // An unchanged rewrite does nothing.
    let loaded_at = v2["loaded"][0]["loaded_at_ms"].clone();
    install(&guest("guest-pipeline-v2"), dir.path(), "flaky.wasm");
    tokio::time::sleep(Duration::from_millis(400)).await;
    let (_, now) = s.get("/v1/plugins", Role::Admin).await;
    assert_eq!(now["loaded"][0]["loaded_at_ms"], loaded_at);
    drop(main);
}

#[tokio::test]
async fn a_broken_version_leaves_the_old_one_running_and_says_why() {
    let (dir, s) = watched().await;
    install(&guest("guest-pipeline"), dir.path(), "flaky.wasm");
    let v1 = wait_plugins(&s, "v1", |b| {
        b["loaded"].as_array().is_some_and(|l| l.len() == 1)
    })
    .await;
    let (mut c, _) = s.subscribe("test.flaky", &[]).await;
    let junk = dir.path().join("junk");
    std::fs::write(&junk, b"\0asm\x0d\0\x01\0 not really").unwrap();
    std::fs::rename(&junk, dir.path().join("flaky.wasm")).unwrap();
    let body = wait_plugins(&s, "the failure", |b| {
        b["failed"].as_array().is_some_and(|f| !f.is_empty())
    })
    .await;
    let f = &body["failed"][0];
    assert!(f["file"].as_str().unwrap().ends_with("flaky.wasm"));
    assert!(
        f["errors"][0]
            .as_str()
            .unwrap()
            .contains("not a loadable weir:plugin component"),
        "{f}"
    );
    assert_eq!(f["running_hash"], v1["loaded"][0]["hash"]);
    assert_eq!(body["loaded"][0]["hash"], v1["loaded"][0]["hash"]);
    // The old version still serves the open subscription.
    s.publish(flaky(7)).await;
    let e = c.envelope().await;
    assert_eq!(
        (e["data"]["n"].as_i64(), e["data"]["version"].as_i64()),
        (Some(7), Some(1))
    );
    // A good file again clears the failure.
    install(&guest("guest-pipeline-v2"), dir.path(), "flaky.wasm");
    wait_plugins(&s, "recovery", |b| {
        b["failed"] == json!([]) && b["loaded"][0]["hash"] != v1["loaded"][0]["hash"]
    })
    .await;
}

#[tokio::test]
async fn a_removed_file_ends_its_subscriptions_and_runs_cleanup() {
    let (dir, s) = watched().await;
    install(&guest("guest-pipeline"), dir.path(), "flaky.wasm");
    wait_plugins(&s, "v1", |b| {
        b["loaded"].as_array().is_some_and(|l| l.len() == 1)
    })
    .await;
    let (mut c, _) = s.subscribe("test.flaky", &[("sub", "x")]).await;
    std::fs::remove_file(dir.path().join("flaky.wasm")).unwrap();
    let end = c.next(Duration::from_secs(5)).await.expect("an end notice");
    assert_eq!(end["notice"], "ended");
    assert!(
        end["reason"].as_str().unwrap().contains("was deleted"),
        "{end}"
    );
    assert!(
        c.next(Duration::from_secs(2)).await.is_none(),
        "the stream closes"
    );
    let subs = s
        .wait_subscriptions("cleanup", |b| b["cleanup_runs"] == 1)
        .await;
    assert_eq!(subs["subscriptions"], json!([]));
    assert!(keys(&s).await.is_empty());
    let (status, _) = s.get("/v1/keys/test.flaky", Role::Query).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn a_file_still_being_written_is_not_loaded_until_it_settles() {
    let dir = tempfile::tempdir().unwrap();
    let host = host_with_plugin_dir(dir.path().to_path_buf());
    let bytes = std::fs::read(guest("guest-pipeline")).unwrap();
    let path = dir.path().join("slow.wasm");
    std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
    assert!(host.reload_plugins().await.is_empty(), "first sight: wait");
    use std::io::Write;
    std::fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .unwrap()
        .write_all(&bytes[bytes.len() / 2..])
        .unwrap();
    assert!(
        host.reload_plugins().await.is_empty(),
        "it grew: still being written"
    );
    let changes = host.reload_plugins().await;
    assert!(
        matches!(&changes[..], [weir_host::runtime::PluginChange::Loaded { keys, .. }] if keys == &["test.flaky"]),
        "{changes:?}"
    );
    assert!(
        host.failed_plugins().is_empty(),
        "the half file was never tried"
    );
}

#[tokio::test]
async fn a_manifest_sets_limits_and_reloads_its_plugin_when_it_changes() {
    let (dir, s) = watched().await;
    std::fs::write(
        dir.path().join("flaky.toml"),
        "[limits]\ncall_deadline_ms = 700\nmemory_mib = 16\n",
    )
    .unwrap();
    install(&guest("guest-pipeline"), dir.path(), "flaky.wasm");
    let first = wait_plugins(&s, "the plugin", |b| {
        b["loaded"].as_array().is_some_and(|l| l.len() == 1)
    })
    .await;
    let p = &first["loaded"][0];
    assert_eq!(p["limits"]["call_deadline_ms"], 700);
    assert_eq!(p["limits"]["memory_mib"], 16);
    assert_eq!(p["limits"]["matches_deadline_ms"], 50, "the test default");
    assert!(
        p["version"]
            .as_str()
            .unwrap()
            .starts_with(p["hash"].as_str().unwrap())
    );

    // The same component, a new manifest: reloaded with the new limits.
    let tmp = dir.path().join("flaky.toml.partial");
    std::fs::write(&tmp, "[limits]\ncall_deadline_ms = 900\n").unwrap();
    std::fs::rename(&tmp, dir.path().join("flaky.toml")).unwrap();
    let second = wait_plugins(&s, "the new limits", |b| {
        b["loaded"][0]["limits"]["call_deadline_ms"] == 900
    })
    .await;
    assert_eq!(second["loaded"][0]["hash"], p["hash"]);
    assert_ne!(second["loaded"][0]["version"], p["version"]);

    // A bad manifest is refused, naming the field; the plugin keeps running.
    std::fs::write(&tmp, "[limits]\nmemory_mib = 0\n").unwrap();
    std::fs::rename(&tmp, dir.path().join("flaky.toml")).unwrap();
    let failed = wait_plugins(&s, "the refusal", |b| {
        b["failed"].as_array().is_some_and(|f| !f.is_empty())
    })
    .await;
    assert!(
        failed["failed"][0]["errors"][0]
            .as_str()
            .unwrap()
            .contains("limits.memory_mib = 0: must be from 1 to"),
        "{failed}"
    );
    assert_eq!(failed["loaded"][0]["limits"]["call_deadline_ms"], 900);
    std::fs::write(&tmp, "[capabilities]\nhosts = 1\n").unwrap();
    std::fs::rename(&tmp, dir.path().join("flaky.toml")).unwrap();
    wait_plugins(&s, "unknown field refused", |b| {
        b["failed"][0]["errors"][0]
            .as_str()
            .is_some_and(|e| e.contains("unknown field `hosts`"))
    })
    .await;
}

#[tokio::test]
async fn host_api_routes_are_granted_by_the_manifest_only() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(guest("guest-hostile"), dir.path().join("hostile.wasm")).unwrap();
    std::fs::copy(
        weir_tests::example("enrich"),
        dir.path().join("enrich.wasm"),
    )
    .unwrap();
    let host = host_with_plugin_dir(dir.path().to_path_buf());
    let chaos = host.registry().lookup("hostile.chaos").cloned().unwrap();
    let api = weir_tests::event("e", "x", json!({"do": "api"}));
    // No manifest: nothing granted; the guest gets a clear refusal.
    let fault = chaos
        .plugin
        .process(&chaos.def.key, &vec![], &api)
        .unwrap_err();
    assert!(
        fault
            .to_string()
            .contains("plugin `hostile` is not granted `POST /v1/echo`; grant it in hostile.toml"),
        "{fault}"
    );
    // Without its grants, enrich cannot record its subscription: refused.
    let s = TestServer::start(host.clone()).await;
    let (status, body) = match s.stream("enrich.context", &[("tag", "a")]).await {
        Err(e) => e,
        Ok(_) => panic!("accepted"),
    };
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert!(
        body["detail"]
            .as_str()
            .unwrap()
            .contains("is not granted `PUT /v1/state/tag-a`"),
        "{body}"
    );

    // Granted: the same call works.
    std::fs::write(
        dir.path().join("hostile.toml"),
        "[capabilities]\napi = [\"POST /v1/echo\"]\n",
    )
    .unwrap();
    let changes = {
        host.reload_plugins().await;
        host.reload_plugins().await
    };
    assert!(
        matches!(
            &changes[..],
            [weir_host::runtime::PluginChange::Replaced { .. }]
        ),
        "{changes:?}"
    );
    let chaos = host.registry().lookup("hostile.chaos").cloned().unwrap();
    let out = chaos.plugin.process(&chaos.def.key, &vec![], &api).unwrap();
    assert!(
        matches!(out, weir_host::engine::Outcome::Emit(ref s) if s.contains("/v1/echo")),
        "{out:?}"
    );
    // A route outside the grant is still refused.
    let mut other = api.clone();
    other.new.payload = json!({"do": "match_api"}).to_string();
    assert!(
        chaos
            .plugin
            .matches(&chaos.def.key, &vec![], &other)
            .is_err(),
        "matches may never call"
    );
}

#[tokio::test]
async fn manifest_limits_bind_the_plugin_calls() {
    let dir = tempfile::tempdir().unwrap();
    let wasm = dir.path().join("hostile.wasm");
    std::fs::copy(guest("guest-hostile"), &wasm).unwrap();
    std::fs::write(
        dir.path().join("hostile.toml"),
        "[limits]\ncall_deadline_ms = 30\n",
    )
    .unwrap();
    let host = host_with_plugin_dir(dir.path().to_path_buf());
    let k = host
        .registry()
        .lookup("hostile.chaos")
        .cloned()
        .expect("loaded");
    let started = Instant::now();
    let fault = k
        .plugin
        .process(
            &k.def.key,
            &vec![],
            &weir_tests::event("e", "x", json!({"do": "loop"})),
        )
        .unwrap_err();
    assert_eq!(fault.to_string(), "deadline of 30 ms exceeded");
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn a_granted_directory_is_readable_in_the_guest_and_nothing_else_is() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(guest("guest-hostile"), dir.path().join("hostile.wasm")).unwrap();
    std::fs::create_dir(dir.path().join("reference")).unwrap();
    std::fs::write(dir.path().join("reference/data.txt"), "42").unwrap();
    // Plugin calls run on blocking threads, as the pipeline runs them (WASI
    // file access blocks on the runtime).
    async fn probe(host: &std::sync::Arc<weir_host::runtime::Host>) -> Value {
        let k = host.registry().lookup("hostile.chaos").cloned().unwrap();
        let out = tokio::task::spawn_blocking(move || {
            k.plugin.process(
                &k.def.key,
                &vec![],
                &weir_tests::event("p", "x", json!({"do": "probe"})),
            )
        })
        .await
        .unwrap()
        .unwrap();
        match out {
            weir_host::engine::Outcome::Emit(s) => serde_json::from_str(&s).unwrap(),
            other => panic!("{other:?}"),
        }
    }
    // No manifest: no filesystem at all.
    let host = host_with_plugin_dir(dir.path().to_path_buf());
    let seen = probe(&host).await;
    assert_ne!(seen["fs_root"], "readable", "{seen}");

    // `reference` granted as the guest's `/`: readable; the host's /etc is not.
    std::fs::write(
        dir.path().join("hostile.toml"),
        "[[capabilities.dirs]]\nhost = \"reference\"\nguest = \"/\"\n",
    )
    .unwrap();
    host.reload_plugins().await;
    host.reload_plugins().await;
    let seen = probe(&host).await;
    assert_eq!(seen["fs_root"], "readable", "{seen}");
    assert_ne!(seen["fs_etc"], "readable", "{seen}");

    // A directory that does not exist is refused, naming the field.
    std::fs::write(
        dir.path().join("hostile.toml"),
        "[[capabilities.dirs]]\nhost = \"missing\"\nguest = \"/data\"\n",
    )
    .unwrap();
    host.reload_plugins().await;
    host.reload_plugins().await;
    let failed = host.failed_plugins();
    assert!(
        failed[0].errors[0].contains("capabilities.dirs[0].host")
            && failed[0].errors[0].contains("not a directory"),
        "{failed:?}"
    );
}

#[tokio::test]
async fn datastore_views_are_host_api_routes_granted_one_by_one() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(guest("guest-hostile"), dir.path().join("hostile.wasm")).unwrap();
    std::fs::write(
        dir.path().join("hostile.toml"),
        "[capabilities]\napi = [\"GET /v1/datastores\", \"GET /v1/datastores/*/tree\", \"GET /v1/datastores/default/stats\"]\n",
    )
    .unwrap();
    let host = host_with_plugin_dir(dir.path().to_path_buf());
    let s = TestServer::start(host.clone()).await;
    // Before the agent's snapshot: the views are not ready.
    let early = chaos_call(&host, "GET", "/v1/datastores/default/tree", None).await;
    assert_eq!(early["status"], 503, "{early}");
    assert_eq!(
        chaos_ok(&chaos_call(&host, "GET", "/v1/datastores", None).await),
        json!([{"name": "default", "ready": false}])
    );

    let sid = s.create_session().await;
    let rows = json!([
        {"path": "/d", "is_dir": true, "modified_time": 1.0},
        {"path": "/d/a.txt", "size": 3, "modified_time": 1.0},
        {"path": "/d/b.log", "size": 5, "modified_time": 1.0},
    ]);
    let (status, _) = s.push(&sid, weir_tests::snapshot_end(rows)).await;
    assert_eq!(status, StatusCode::OK);
    let deadline = Instant::now() + Duration::from_secs(5);
    let tree = loop {
        let got = chaos_call(
            &host,
            "GET",
            "/v1/datastores/default/tree?path=/d&only_path=true",
            None,
        )
        .await;
        if got.get("ok").is_some() || Instant::now() > deadline {
            break chaos_ok(&got);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let names: Vec<&str> = tree["children"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["a.txt", "b.log"], "{tree}");
    let stats = chaos_ok(&chaos_call(&host, "GET", "/v1/datastores/default/stats", None).await);
    assert_eq!(stats["total_files"], 2, "{stats}");

    // Bad requests are named; search is not granted.
    let missing = chaos_call(&host, "GET", "/v1/datastores/default/tree?path=/nope", None).await;
    assert_eq!(
        (missing["status"].as_u64(), missing["message"].as_str()),
        (Some(404), Some("path `/nope` is not in the index"))
    );
    let bad = chaos_call(&host, "GET", "/v1/datastores/default/tree?depth=2", None).await;
    assert_eq!(bad["status"], 400, "{bad}");
    assert!(
        bad["message"]
            .as_str()
            .unwrap()
            .contains("unknown field `depth`"),
        "{bad}"
    );
    let unknown = chaos_call(&host, "GET", "/v1/datastores/other/tree", None).await;
    assert_eq!(unknown["status"], 404, "{unknown}");
    let search = chaos_call(
        &host,
        "GET",
        "/v1/datastores/default/search?pattern=*.txt",
        None,
    )
    .await;
    assert_eq!(search["status"], 403, "{search}");
    assert!(
        search["message"]
            .as_str()
            .unwrap()
            .contains("not granted `GET /v1/datastores/default/search?pattern=*.txt`"),
        "{search}"
    );
}
