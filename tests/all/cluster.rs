//! Several hosts on one real NATS JetStream cluster (three `nats-server`
//! nodes on loopback, replicated streams): events published on any host
//! reach consumers on every host, numbered once, deduplicated cluster-wide.

use std::sync::Arc;
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};
use weir_host::auth::Role;
use weir_host::cluster::ClusterConfig;
use weir_host::runtime::Host;
use weir_tests::nats::NatsCluster;
use weir_tests::{
    NdjsonStream, TestServer, accepted_seqs, chaos_call, chaos_ok, guest, snapshot_end, test_config,
};

/// A host with the example plugins on the cluster at `urls` (through
/// `node`'s server first, so that hosts reach the cluster through
/// different nodes).
async fn host_on(urls: &[String], node: usize, name: &str) -> TestServer {
    host_with(urls, node, name, true).await
}

/// [`host_on`], with the hostile guest only if `hostile`.
async fn host_with(urls: &[String], node: usize, name: &str, hostile: bool) -> TestServer {
    let mut urls = urls.to_vec();
    urls.rotate_left(node);
    let mut cluster = ClusterConfig::new(urls);
    cluster.name = name.into();
    // JetStream reserves a stream's byte limit on every replica: a small
    // one, so that parallel test clusters fit on one disk.
    cluster.log.retention_bytes = 64 << 20;
    let host = tokio::task::spawn_blocking(move || {
        let mut config = test_config();
        config.cluster = Some(cluster);
        config.pipeline.quarantine_after = 3;
        Host::new(config)
    })
    .await
    .unwrap()
    .expect("a host on the cluster starts");
    // The hostile guest as plugin `hostile`, granted its state, on every
    // host (plugin state is keyed by plugin name).
    let plugins = tempfile::tempdir().unwrap();
    if hostile {
        std::fs::copy(guest("guest-hostile"), plugins.path().join("hostile.wasm")).unwrap();
        std::fs::write(
            plugins.path().join("hostile.toml"),
            "[capabilities]\napi = [\"GET /v1/state/*\", \"PUT /v1/state/*\", \"DELETE /v1/state/*\"]\n",
        )
        .unwrap();
        host.load_file(&plugins.path().join("hostile.wasm"))
            .expect("the hostile guest registers");
    }
    host.load_file(&guest("guest-pipeline"))
        .expect("the pipeline guest registers");
    TestServer::start(Arc::new(host)).await
}

fn events(from: usize, n: usize) -> Value {
    Value::Array(
        (from..from + n)
            .map(|i| json!({"event_id": format!("e{i}"), "event_type": "log", "source": "t", "payload": {"k": "v", "i": i}}))
            .collect(),
    )
}

/// `(seq, i)` of the next `n` envelopes.
async fn take(stream: &mut NdjsonStream, n: usize) -> Vec<(u64, u64)> {
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let e = stream.envelope().await;
        out.push((e["seq"].as_u64().unwrap(), e["data"]["i"].as_u64().unwrap()));
    }
    out
}

const SAME: [(&str, &str); 2] = [("field", "k"), ("equals", "v")];

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn events_published_on_one_host_reach_every_host_once_in_one_order() {
    let nats = NatsCluster::start().await;
    let a = host_on(&nats.urls, 0, "t1").await;
    let b = host_on(&nats.urls, 1, "t1").await;
    let c = host_on(&nats.urls, 2, "t1").await;
    let (mut on_b, _) = b.subscribe("json.field_equals", &SAME).await;
    let (mut on_c, _) = c.subscribe("json.field_equals", &SAME).await;

    let answer = a.publish(events(0, 100)).await;
    let seqs = accepted_seqs(&answer);
    assert_eq!(seqs.len(), 100, "{answer}");
    let got_b = take(&mut on_b, 100).await;
    let got_c = take(&mut on_c, 100).await;
    assert_eq!(got_b, got_c, "the same events in the same order on B and C");
    assert_eq!(got_b.iter().map(|(s, _)| *s).collect::<Vec<_>>(), seqs);
    assert_eq!(
        got_b.iter().map(|(_, i)| *i).collect::<Vec<_>>(),
        (0..100).collect::<Vec<_>>()
    );

    // The cluster is the dedup filter: a retry on another host is a
    // duplicate; new events on B continue the numbering.
    let retry = b.publish(events(90, 20)).await;
    assert_eq!(retry["duplicates"].as_array().unwrap().len(), 10, "{retry}");
    let fresh = retry["accepted"].as_array().unwrap();
    assert_eq!(fresh.len(), 10, "{retry}");
    assert!(fresh[0]["seq"].as_u64().unwrap() > *seqs.last().unwrap());
    assert_eq!(
        take(&mut on_c, 10)
            .await
            .iter()
            .map(|(_, i)| *i)
            .collect::<Vec<_>>(),
        (100..110).collect::<Vec<_>>()
    );

    // A replay from any host reads the same numbers.
    let (mut replay, _) = c
        .subscribe(
            "json.field_equals",
            &[SAME[0], SAME[1], ("from", "earliest")],
        )
        .await;
    let again = take(&mut replay, 110).await;
    assert_eq!(&again[..100], &got_b[..]);
    let (mut from_seq, first) = a
        .subscribe(
            "json.field_equals",
            &[SAME[0], SAME[1], ("from", &seqs[50].to_string())],
        )
        .await;
    assert_eq!(first["from"], seqs[50].to_string());
    assert_eq!(take(&mut from_seq, 1).await[0], got_b[50]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn losing_a_nats_node_loses_no_accepted_event() {
    let mut nats = NatsCluster::start().await;
    let a = host_on(&nats.urls, 0, "t2").await;
    let b = host_on(&nats.urls, 1, "t2").await;
    let (mut on_b, _) = b.subscribe("json.field_equals", &SAME).await;
    let mut accepted = Vec::new();
    let mut refused = 0;
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    for round in 0..20 {
        if round == 5 {
            // A node dies mid-run; a stream with 3 replicas goes on with 2
            // (after a new leader is elected, if it led).
            nats.kill(2);
        }
        loop {
            let (status, answer) = a
                .send(
                    "POST",
                    "/v1/events",
                    Some(Role::Ingest),
                    Some(events(round * 100, 100)),
                )
                .await;
            if status == StatusCode::OK {
                for e in answer["accepted"].as_array().unwrap() {
                    accepted.push(e["seq"].as_u64().unwrap());
                }
                break;
            }
            // Refused whole meanwhile, with the reason: never `accepted`.
            assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{answer}");
            assert!(
                answer["detail"].as_str().unwrap().contains("NATS"),
                "{answer}"
            );
            refused += 1;
            assert!(
                std::time::Instant::now() < deadline,
                "publishing did not recover"
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
    // Every round was accepted in the end (retries of a refused round find
    // what JetStream stored as duplicates).
    assert!(accepted.len() <= 2000 && accepted.len() >= 1900usize.saturating_sub(refused * 100));
    // Every accepted event reaches B (whose feed makes its consumer again
    // if that lived on the dead node: measured 8 to 45 s here), within a
    // bound.
    let mut missing: std::collections::HashSet<u64> = accepted.iter().copied().collect();
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while !missing.is_empty() {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let Some(e) = on_b.next(left).await else {
            let mut m: Vec<_> = missing.into_iter().collect();
            m.sort_unstable();
            panic!(
                "{} accepted events never delivered, from {:?}",
                m.len(),
                &m[..m.len().min(5)]
            );
        };
        if let Some(seq) = e["seq"].as_u64() {
            missing.remove(&seq);
        }
    }
    nats.restart(2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn plugin_state_written_on_one_host_is_read_on_another() {
    let nats = NatsCluster::start().await;
    let a = host_on(&nats.urls, 0, "t3").await;
    let b = host_on(&nats.urls, 1, "t3").await;
    let missing = chaos_call(&b.host, "GET", "/v1/state/shared", None).await;
    assert_eq!(missing["status"], 404, "{missing}");
    chaos_ok(
        &chaos_call(
            &a.host,
            "PUT",
            "/v1/state/shared",
            Some(json!({"by": "a", "n": 1})),
        )
        .await,
    );
    let read = chaos_ok(&chaos_call(&b.host, "GET", "/v1/state/shared", None).await);
    assert_eq!(read, json!({"by": "a", "n": 1}));
    assert_eq!(
        b.host.host_api().state_of("hostile", "shared"),
        Some(json!({"by": "a", "n": 1}))
    );
    let deleted = chaos_ok(&chaos_call(&b.host, "DELETE", "/v1/state/shared", None).await);
    assert_eq!(deleted["deleted"], true);
    let gone = chaos_call(&a.host, "GET", "/v1/state/shared", None).await;
    assert_eq!(gone["status"], 404, "{gone}");
}

#[test]
fn an_unreachable_nats_or_a_bad_setting_is_a_clear_error_at_start() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("nats://127.0.0.1:{port}");
    let serve = |extra: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_weir"))
            .args(["serve", "--listen", "127.0.0.1:0", "--ephemeral"])
            .args(extra)
            .output()
            .unwrap()
    };
    let out = serve(&["--nats", &url]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("cannot reach NATS at {url}")),
        "{stderr}"
    );
    let out = serve(&["--nats", &url, "--nats-replicas", "7"]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("cluster.nats_replicas must be 1 to 5, not 7"),
        "{stderr}"
    );
    let out = serve(&["--nats", &url, "--cluster-name", "no spaces"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("cluster name `no spaces` must be"),
        "{stderr}"
    );
}

/// `GET path` on `s` as `role` until `check` holds (30 s at most); the
/// last answer.
async fn wait_get(
    s: &TestServer,
    path: &str,
    role: Role,
    what: &str,
    check: impl Fn(StatusCode, &Value) -> bool,
) -> Value {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (status, body) = s.get(path, role).await;
        if check(status, &body) {
            return body;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{what}: {status} {body}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Key `test.flaky` on `s` once `check` holds.
async fn wait_key(s: &TestServer, what: &str, check: impl Fn(&Value) -> bool) {
    wait_get(s, "/v1/keys/test.flaky", Role::Query, what, |_, v| check(v)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_quarantine_set_on_one_host_shows_and_lifts_on_another() {
    let nats = NatsCluster::start().await;
    let a = host_on(&nats.urls, 0, "t4").await;
    let b = host_on(&nats.urls, 1, "t4").await;
    let (_flaky, _) = a.subscribe("test.flaky", &[]).await;
    let panics: Vec<Value> = (0..3)
        .map(|n| json!({"event_id": format!("p{n}"), "event_type": "test.x", "source": "t", "payload": {"n": n, "mode": "panic"}}))
        .collect();
    a.publish(Value::Array(panics)).await;
    wait_key(&a, "quarantined on A", |k| k["quarantine"]["faults"] == 3).await;
    wait_key(&b, "the quarantine shows on B", |k| {
        k["quarantine"]["faults"] == 3
    })
    .await;
    let (status, body) = b
        .post("/v1/keys/test.flaky/resume", Role::Admin, None)
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["resumed"], true, "{body}");
    wait_key(&a, "lifted on A by B's resume", |k| {
        k["quarantine"].is_null()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weir_serve_on_a_cluster_serves_and_stops_cleanly_on_sigterm() {
    let nats = NatsCluster::start().await;
    let urls = nats.urls.join(",");
    let mut served = crate::serve_binary::serve_with(
        &[
            "--listen",
            "127.0.0.1:0",
            "--log-format",
            "json",
            "--plugin-poll-ms",
            "0",
            "--nats",
            &urls,
            "--cluster-name",
            "t6",
            "--retention-bytes",
            "67108864",
        ],
        &[("WEIR_INGEST_KEY", "c-ingest")],
    );
    let event = json!({"event_id": "x", "event_type": "t", "source": "s", "payload": {}});
    let url = format!("http://{}/v1/events", served.addr);
    let answer = weir_tests::call("POST", &url, "c-ingest", Some(&event)).await;
    assert_eq!(accepted_seqs(&answer).len(), 1, "{answer}");
    let pid = served.child.id().to_string();
    assert!(
        std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let status = tokio::task::spawn_blocking(move || served.child.wait().unwrap())
        .await
        .unwrap();
    assert_eq!(status.code(), Some(0), "a clean stop");
}

/// The `default` datastore's stats on `s` once `check` holds.
async fn wait_stats(
    s: &TestServer,
    what: &str,
    check: impl Fn(StatusCode, &Value) -> bool,
) -> Value {
    wait_get(s, "/api/v1/views/default/stats", Role::Query, what, check).await
}

fn files(from: usize, n: usize) -> Value {
    Value::Array(
        (from..from + n)
            .map(|i| json!({"path": format!("/d{}/f{i}.dat", i % 7), "size": i, "modified_time": 1_700_000_000.0 + i as f64, "is_directory": false}))
            .collect(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_datastore_pushed_through_any_host_is_served_by_every_host() {
    let nats = NatsCluster::start().await;
    let a = host_on(&nats.urls, 0, "ds").await;
    let b = host_on(&nats.urls, 1, "ds").await;
    let (mut changes_b, _) = b.subscribe("fs.changes", &[("kinds", "insert")]).await;

    // A session made on A pushes through A and through B, in one order.
    let sid = a.create_session().await;
    let (status, body) = b.get("/api/v1/views/default/stats", Role::Query).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(
        body["detail"].as_str().unwrap().contains("snapshot"),
        "{body}"
    );
    let (status, body) = a.push_rows(&sid, "snapshot", "update", files(0, 300)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = b.push(&sid, snapshot_end(files(300, 200))).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    for host in [&a, &b] {
        let stats = wait_stats(host, "the snapshot on every host", |s, v| {
            s == StatusCode::OK && v["total_files"] == 500
        })
        .await;
        assert_eq!(stats["total_directories"], 8, "{stats}");
    }
    let (_, tree_a) = a
        .get("/api/v1/views/default/tree?path=/", Role::Query)
        .await;
    let (_, tree_b) = b
        .get("/api/v1/views/default/tree?path=/", Role::Query)
        .await;
    assert_eq!(tree_a, tree_b);

    // Each applied change is one event on the bus, however many hosts
    // apply it.
    let inserts = changes_b.drain(Duration::from_secs(3)).await;
    assert_eq!(
        inserts
            .iter()
            .filter(|e| e["data"]["is_dir"] == false)
            .count(),
        500,
        "one fs.insert per file"
    );

    // A host that starts late builds its replica from the log.
    let c = host_on(&nats.urls, 2, "ds").await;
    let stats = wait_stats(&c, "the late host's replica", |s, v| {
        s == StatusCode::OK && v["total_files"] == 500
    })
    .await;
    assert_eq!(stats["total_size"], (0..500).sum::<u64>());

    // Realtime rows through C reach A.
    let (status, body) = c
        .push_rows(&sid, "message", "delete", json!([{"path": "/d0/f0.dat"}]))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    wait_stats(&a, "a realtime delete", |s, v| {
        s == StatusCode::OK && v["total_files"] == 499
    })
    .await;

    // An on-demand scan asked for on A goes out in a heartbeat answer of
    // B (once), and its job_complete through C completes it on every host.
    let (status, tree) = a
        .get(
            "/api/v1/views/default/tree?path=/d1&max_depth=0&on_demand_scan=true",
            Role::Query,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{tree}");
    let job = tree["job_id"].as_str().unwrap().to_string();
    let heartbeat = format!("{}{sid}/heartbeat", weir_tests::SESSION);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (status, hb) = b.post(&heartbeat, Role::Ingest, None).await;
        assert_eq!(status, StatusCode::OK, "{hb}");
        if let Some(cmd) = hb["commands"].as_array().and_then(|c| c.first()) {
            assert_eq!(
                (cmd["job_id"].as_str(), cmd["path"].as_str()),
                (Some(job.as_str()), Some("/d1"))
            );
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "B never handed the scan out"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        b.post(&heartbeat, Role::Ingest, None).await.1["commands"],
        json!([])
    );
    let done = json!({"events": [], "source_type": "job_complete", "metadata": {"job_id": job, "scan_path": "/d1"}});
    let (status, body) = c.push(&sid, done).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    for host in [&a, &b, &c] {
        wait_get(
            host,
            &format!("/api/v1/views/default/jobs/{job}"),
            Role::Query,
            "the job completed",
            |_, v| v["status"] == "COMPLETED",
        )
        .await;
    }

    // Last agent wins cluster-wide: a session made on B makes A's session
    // obsolete everywhere, and every view waits for the new snapshot.
    let sid2 = b.create_session().await;
    for host in [&a, &b, &c] {
        let (status, body) = host.push_rows(&sid, "message", "update", files(0, 1)).await;
        assert_eq!(status.as_u16(), 419, "{body}");
        let (status, _) = host
            .post(
                &format!("{}{sid}/heartbeat", weir_tests::SESSION),
                Role::Ingest,
                None,
            )
            .await;
        assert_eq!(status.as_u16(), 419);
    }
    wait_stats(&c, "the new session's snapshot pending", |s, _| {
        s == StatusCode::SERVICE_UNAVAILABLE
    })
    .await;
    // One push larger than a NATS message (1 MiB) travels in parts.
    let big = snapshot_end(files(0, 20_000));
    assert!(big.to_string().len() > 1 << 20);
    let (status, body) = a.push(&sid2, big).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    for host in [&a, &b, &c] {
        wait_stats(host, "the second snapshot", |s, v| {
            s == StatusCode::OK && v["total_files"] == 20_000
        })
        .await;
    }

    // The session ended on C: no view answers anywhere.
    let (status, _) = c
        .delete(&format!("{}{sid2}", weir_tests::SESSION), Role::Ingest)
        .await;
    assert_eq!(status, StatusCode::OK);
    for host in [&a, &b, &c] {
        let stats = wait_stats(host, "no session", |s, _| {
            s == StatusCode::SERVICE_UNAVAILABLE
        })
        .await;
        assert!(
            stats.to_string().contains("no live agent session"),
            "{stats}"
        );
    }
}

/// `(pre-consumes, cleanups)` summed over `hosts`, once `check` holds.
async fn wait_lifecycle(hosts: &[&TestServer], what: &str, want: (u64, u64)) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let got = hosts.iter().fold((0, 0), |(p, c), h| {
            let (hp, hc) = h.host.pipeline().lifecycle_counts();
            (p + hp, c + hc)
        });
        if got == want {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{what}: {got:?}, not {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_subscription_starts_once_and_ends_once_across_hosts() {
    let nats = NatsCluster::start().await;
    let a = host_on(&nats.urls, 0, "t6").await;
    let b = host_on(&nats.urls, 1, "t6").await;
    let c = host_on(&nats.urls, 2, "t6").await;
    let tag = [("tag", "ops")];
    // The first consumer anywhere runs pre-consume (on A); the second, on
    // B, joins the running subscription.
    let (mut on_a, first) = a.subscribe("enrich.context", &tag).await;
    let (mut on_b, again) = b.subscribe("enrich.context", &tag).await;
    assert_eq!(first["subscription_id"], again["subscription_id"]);
    wait_lifecycle(&[&a, &b, &c], "one pre-consume cluster-wide", (1, 0)).await;
    assert_eq!(a.host.pipeline().lifecycle_counts(), (1, 0));

    // Published on C; processed on A and on B. B's process reads the
    // registration A's pre-consume wrote.
    let answer = c.publish(events(0, 3)).await;
    assert_eq!(accepted_seqs(&answer).len(), 3, "{answer}");
    let from_a: Vec<Value> = envelopes(&mut on_a, 3).await;
    let from_b: Vec<Value> = envelopes(&mut on_b, 3).await;
    for (ea, eb) in from_a.iter().zip(&from_b) {
        assert_eq!(ea["seq"], eb["seq"], "the same order on both hosts");
        assert_eq!(
            eb["data"]["enrichment"]["subscription"]["subscription_id"], first["subscription_id"],
            "{eb}"
        );
    }

    // A leaves: B still consumes, so no cleanup and the state stays.
    drop(on_a);
    let _ = c.publish(events(3, 1)).await;
    let e = on_b.envelope().await;
    assert_eq!(e["data"]["enrichment"]["subscription"]["tag"], "ops", "{e}");
    wait_lifecycle(&[&a, &b, &c], "no cleanup while B consumes", (1, 0)).await;
    // B leaves too: one cleanup, on B, and the registration is gone.
    drop(on_b);
    let _ = c.publish(events(4, 1)).await;
    wait_lifecycle(&[&a, &b, &c], "one cleanup after the last consumer", (1, 1)).await;
    assert_eq!(b.host.pipeline().lifecycle_counts(), (0, 1));
    assert_eq!(c.host.host_api().state_of("enrich", "tag-ops"), None);

    // Anew: the next consumer anywhere starts it again.
    let (_on_c, _) = c.subscribe("enrich.context", &tag).await;
    wait_lifecycle(&[&a, &b, &c], "a new start", (2, 1)).await;
    assert!(c.host.host_api().state_of("enrich", "tag-ops").is_some());
}

/// The next `n` envelopes of `stream`.
async fn envelopes(stream: &mut NdjsonStream, n: usize) -> Vec<Value> {
    let mut out = Vec::new();
    while out.len() < n {
        out.push(stream.envelope().await);
    }
    out
}

/// `GET /v1/dlq` on `s` once its `total` is `want`.
async fn wait_dlq(s: &TestServer, want: u64) -> Value {
    wait_get(s, "/v1/dlq", Role::Admin, "dead letters", |status, dlq| {
        status == StatusCode::OK && dlq["total"] == want
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dead_letters_raised_on_one_host_are_replayed_from_another() {
    let nats = NatsCluster::start().await;
    let a = host_on(&nats.urls, 0, "t7").await;
    let b = host_on(&nats.urls, 1, "t7").await;
    let (_on_a, sub) = a.subscribe("test.flaky", &[]).await;
    a.publish(json!([{"event_id": "f-once", "event_type": "test.x", "source": "t", "payload": {"n": 4, "mode": "once"}}]))
        .await;
    let dlq = wait_dlq(&b, 1).await;
    let letter = &dlq["letters"][0];
    assert_eq!(letter["subscription_id"], sub["subscription_id"]);
    assert_eq!(letter["event"]["event_id"], "f-once");

    // Replayed on B, to B's consumer of the same subscription: the second
    // attempt succeeds (the plugin's state, shared, says it failed once).
    let (mut on_b, _) = b.subscribe("test.flaky", &[]).await;
    let (status, replay) = b.post("/v1/dlq/replay", Role::Admin, Some(json!({}))).await;
    assert_eq!(status, StatusCode::OK, "{replay}");
    assert_eq!(replay["results"][0]["outcome"], "delivered", "{replay}");
    assert_eq!(replay["results"][0]["id"], letter["id"]);
    let env = on_b.envelope().await;
    assert_eq!(
        (env["id"].as_str(), env["data"]["retried"].as_bool()),
        (Some("f-once"), Some(true))
    );
    wait_dlq(&a, 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_named_consumer_resumes_on_another_host_after_its_acknowledgement() {
    let nats = NatsCluster::start().await;
    let a = host_on(&nats.urls, 0, "t8").await;
    let b = host_on(&nats.urls, 1, "t8").await;
    let named = [SAME[0], SAME[1], ("consumer", "billing")];
    let (mut on_a, _) = a.subscribe("json.field_equals", &named).await;
    let seqs = accepted_seqs(&a.publish(events(0, 10)).await);
    let got = take(&mut on_a, 10).await;
    assert_eq!(got.iter().map(|(s, _)| *s).collect::<Vec<_>>(), seqs);
    let (status, ack) = a
        .post(
            "/v1/consumers/billing/ack",
            Role::Query,
            Some(json!({"seq": seqs[5]})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{ack}");
    drop(on_a);
    // The same name on B resumes after the acknowledgement: events 6..10,
    // then what comes next.
    let (mut on_b, _) = b.subscribe("json.field_equals", &named).await;
    b.publish(events(10, 2)).await;
    let resumed = take(&mut on_b, 6).await;
    assert_eq!(
        resumed.iter().map(|(_, i)| *i).collect::<Vec<_>>(),
        vec![6, 7, 8, 9, 10, 11]
    );
    let (_, list) = b.get("/v1/consumers", Role::Query).await;
    assert_eq!(list["consumers"][0]["acked_seq"], seqs[5], "{list}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hosts_show_each_other_and_ride_out_nats_going_away() {
    let mut nats = NatsCluster::start().await;
    let a = host_on(&nats.urls, 0, "t9").await;
    let b = host_with(&nats.urls, 1, "t9", false).await;

    // Every live host, its plugins, and the skew: B lacks `hostile`.
    // Plugins loaded after the start show at the next announcement.
    let plugins = wait_get(&b, "/v1/plugins", Role::Admin, "two hosts", |status, p| {
        status == StatusCode::OK
            && p["cluster"]["hosts"].as_array().map(Vec::len) == Some(2)
            && p["cluster"]["skew"].as_array().map(Vec::len) == Some(1)
    })
    .await;
    let cluster = plugins["cluster"].clone();
    let (_, ready_a) = a.get("/readyz", Role::Query).await;
    assert_eq!(ready_a["cluster"]["state"], "connected", "{ready_a}");
    let host_a = ready_a["cluster"]["host_id"].clone();
    let skew = cluster["skew"].as_array().unwrap();
    assert_eq!(skew.len(), 1, "{cluster}");
    assert_eq!(skew[0]["plugin"], "hostile");
    assert_eq!(skew[0]["missing_on"], json!([cluster["host_id"]]));
    assert_eq!(
        skew[0]["versions"]
            .as_object()
            .unwrap()
            .values()
            .next()
            .unwrap(),
        &json!([host_a])
    );

    // A datastore served on B, then NATS goes away entirely.
    let sid = a.create_session().await;
    let (status, body) = a.push(&sid, snapshot_end(files(0, 5))).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    wait_stats(&b, "the snapshot on B", |s, v| {
        s == StatusCode::OK && v["total_files"] == 5
    })
    .await;
    for i in 0..3 {
        nats.kill(i);
    }
    wait_get(
        &a,
        "/readyz",
        Role::Query,
        "NATS out of reach",
        |_, ready| ready["cluster"]["state"] == "unreachable",
    )
    .await;
    // Publishing says why it cannot; nothing is called accepted.
    let (status, body) = a
        .send("POST", "/v1/events", Some(Role::Ingest), Some(events(0, 1)))
        .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(body["detail"].as_str().unwrap().contains("NATS"), "{body}");
    let (status, body) = a.push_rows(&sid, "message", "update", files(5, 1)).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    // Views serve what was applied.
    let (status, stats) = b.get("/api/v1/views/default/stats", Role::Query).await;
    assert_eq!(
        (status, stats["total_files"].as_u64()),
        (StatusCode::OK, Some(5)),
        "{stats}"
    );

    // NATS comes back: the hosts reconnect by themselves.
    for i in 0..3 {
        nats.restart(i);
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let (status, body) = a
            .send("POST", "/v1/events", Some(Role::Ingest), Some(events(1, 1)))
            .await;
        if status == StatusCode::OK {
            assert_eq!(accepted_seqs(&body).len(), 1, "{body}");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{status} {body}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let (_, ready) = b.get("/readyz", Role::Query).await;
    assert_eq!(ready["cluster"]["state"], "connected", "{ready}");
}

/// `weir serve` on the cluster at `urls`, its data in memory.
fn serve_on(urls: &[String], name: &str) -> crate::serve_binary::Served {
    crate::serve_binary::serve_with(
        &[
            "--listen",
            "127.0.0.1:0",
            "--log-format",
            "json",
            "--plugin-poll-ms",
            "0",
            "--nats",
            &urls.join(","),
            "--cluster-name",
            name,
            "--retention-bytes",
            "67108864",
        ],
        &[
            ("WEIR_INGEST_KEY", "c-ingest"),
            ("WEIR_QUERY_KEY", "c-query"),
        ],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_named_consumer_whose_host_dies_resumes_on_another_with_no_gap() {
    const N: usize = 20_000;
    let nats = NatsCluster::start().await;
    let mut b = serve_on(&nats.urls, "t10");
    let c = serve_on(&nats.urls, "t10");
    let (base_b, base_c) = (format!("http://{}", b.addr), format!("http://{}", c.addr));
    let mut seqs = Vec::new();
    let publish = |n: usize| {
        let url = format!("{base_c}/v1/events");
        async move {
            let answer = weir_tests::call(
                "POST",
                &url,
                "c-ingest",
                Some(&crate::durability::batch(1, n, 1000)),
            )
            .await;
            accepted_seqs(&answer)
        }
    };
    // Half now, half after B is gone (the consumer must fetch those from C).
    for n in 0..N / 2000 {
        seqs.extend(publish(n).await);
    }
    let out = tempfile::tempdir().unwrap();
    // The consumer knows both hosts and starts on B.
    let consumer =
        crate::durability::weir_consume(&format!("{base_b},{base_c}"), "c-query", N, out.path());
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while crate::durability::files_in(out.path()) < N / 4 {
        assert!(std::time::Instant::now() < deadline, "delivery stalled");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    b.child.kill().unwrap();
    b.child.wait().unwrap();
    let written = crate::durability::files_in(out.path());
    assert!(written < N, "B died during delivery ({written} of {N})");
    for n in N / 2000..N / 1000 {
        seqs.extend(publish(n).await);
    }
    assert_eq!(seqs.len(), N);
    let (status, stderr) = crate::durability::finished(consumer).await;
    assert!(status.success(), "{stderr}");
    assert!(stderr.contains("reconnecting"), "{stderr}");
    let got = crate::durability::seqs_in(out.path());
    assert_eq!(got, seqs, "every event once, none missing");
    let listed = weir_tests::call("GET", &format!("{base_c}/v1/consumers"), "c-query", None).await;
    assert_eq!(
        listed["consumers"][0]["acked_seq"],
        *seqs.last().unwrap(),
        "{listed}"
    );
    drop(c);
}
