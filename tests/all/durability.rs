//! Durability: what a host with a data directory accepted survives a
//! restart and a `kill -9` (real processes), and the data directory is held
//! by one host at a time.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};
use weir_host::auth::Role;
use weir_host::runtime::Host;
use weir_tests::{TestServer, call, chaos_call, chaos_ok, guest, test_config};

use crate::serve_binary::{Served, serve_with};

const KEYS: [(&str, &str); 3] = [
    ("WEIR_ADMIN_KEY", "d-admin"),
    ("WEIR_INGEST_KEY", "d-ingest"),
    ("WEIR_QUERY_KEY", "d-query"),
];

/// A host with the example plugins, the pipeline guest, the hostile guest
/// (granted its state) and a data directory.
fn durable_host(dir: &std::path::Path) -> Arc<Host> {
    let mut config = test_config();
    config.pipeline.quarantine_after = 3;
    config.data_dir = Some(dir.to_path_buf());
    let host = Host::new(config).expect("host starts");
    host.load_file(&guest("guest-pipeline"))
        .expect("the pipeline guest registers");
    let plugins = dir.join("plugins");
    std::fs::create_dir_all(&plugins).unwrap();
    std::fs::copy(guest("guest-hostile"), plugins.join("hostile.wasm")).unwrap();
    std::fs::write(
        plugins.join("hostile.toml"),
        "[capabilities]\napi = [\"GET /v1/state/*\", \"PUT /v1/state/*\"]\n",
    )
    .unwrap();
    host.load_file(&plugins.join("hostile.wasm"))
        .expect("the hostile guest registers");
    Arc::new(host)
}

/// What an admin sees of the state that must survive.
async fn surviving_state(s: &TestServer) -> (Value, Value, Value) {
    let (status, dlq) = s.get("/v1/dlq?limit=100", Role::Admin).await;
    assert_eq!(status, StatusCode::OK, "{dlq}");
    let (status, key) = s.get("/v1/keys/test.flaky", Role::Query).await;
    assert_eq!(status, StatusCode::OK, "{key}");
    // The plugin's own view of its state.
    let state = chaos_call(&s.host, "GET", "/v1/state/kept", None).await;
    (dlq, key["quarantine"].clone(), state)
}

#[tokio::test]
async fn dead_letters_plugin_state_and_quarantine_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let before = {
        let mut s = TestServer::start(durable_host(dir.path())).await;
        // Plugin state, stored by the plugin through the host API.
        let put = chaos_call(
            &s.host,
            "PUT",
            "/v1/state/kept",
            Some(json!({"v": [1, "two"]})),
        )
        .await;
        chaos_ok(&put);
        // Three faults in a row quarantine test.flaky; the next event waits
        // in the dead-letter queue.
        let (flaky, _) = s.subscribe("test.flaky", &[]).await;
        let panics: Vec<Value> = (0..3)
            .map(|n| json!({"event_id": format!("p{n}"), "event_type": "test.x", "source": "t", "payload": {"n": n, "mode": "panic"}}))
            .collect();
        s.publish(Value::Array(panics)).await;
        let deadline = Instant::now() + Duration::from_secs(10);
        while s.host.pipeline().quarantine("test.flaky").is_none() {
            assert!(Instant::now() < deadline, "not quarantined");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        s.publish(
            json!({"event_id": "held", "event_type": "test.x", "source": "t", "payload": {"n": 9}}),
        )
        .await;
        let deadline = Instant::now() + Duration::from_secs(10);
        while s.host.pipeline().dead_letters().len() < 4 {
            assert!(Instant::now() < deadline, "letters missing");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let state = surviving_state(&s).await;
        // One letter deleted, so that deletions are seen to last too.
        let (status, _) = s.delete("/v1/dlq?id=1", Role::Admin).await;
        assert_eq!(status, StatusCode::OK);
        drop(flaky);
        s.stop().await;
        state
    };
    let (dlq, quarantine, state) = before;
    assert_eq!(dlq["letters"].as_array().unwrap().len(), 4, "{dlq}");
    assert_eq!(quarantine["faults"], 3, "{quarantine}");
    assert_eq!(chaos_ok(&state), json!({"v": [1, "two"]}));

    let s = TestServer::start(durable_host(dir.path())).await;
    let (dlq2, quarantine2, state2) = surviving_state(&s).await;
    let ids = |d: &Value| -> Vec<u64> {
        d["letters"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l["id"].as_u64().unwrap())
            .collect()
    };
    assert_eq!(ids(&dlq2), [2, 3, 4], "{dlq2}");
    assert_eq!(
        dlq["letters"].as_array().unwrap()[1..],
        dlq2["letters"].as_array().unwrap()[..],
        "letters are kept whole"
    );
    assert_eq!(quarantine, quarantine2);
    assert_eq!(state, state2);
    // The quarantine still holds: an event for the key waits as a letter,
    // and ids continue after the newest.
    let (mut flaky, _) = s.subscribe("test.flaky", &[]).await;
    let notice = flaky.next(Duration::from_secs(5)).await.unwrap();
    assert_eq!(notice["notice"], "quarantined", "{notice}");
    s.publish(
        json!({"event_id": "after", "event_type": "test.x", "source": "t", "payload": {"n": 10}}),
    )
    .await;
    assert!(flaky.next(Duration::from_millis(500)).await.is_none());
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, d) = s.get("/v1/dlq?limit=100", Role::Admin).await;
        if let Some(l) = d["letters"]
            .as_array()
            .unwrap()
            .iter()
            .find(|l| l["event"]["event_id"] == "after")
        {
            assert_eq!(l["id"], 5, "{l}");
            break;
        }
        assert!(Instant::now() < deadline, "{d}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Resuming lasts across a restart as well.
    let (status, _) = s
        .post("/v1/keys/test.flaky/resume", Role::Admin, None)
        .await;
    assert_eq!(status, StatusCode::OK);
    drop(flaky);
    let mut s = s;
    s.stop().await;
    drop(s);
    let s = TestServer::start(durable_host(dir.path())).await;
    let (_, quarantine3, _) = surviving_state(&s).await;
    assert!(quarantine3.is_null(), "{quarantine3}");
}

fn start(dir: &std::path::Path) -> Served {
    let data = dir.to_str().unwrap();
    serve_with(
        &[
            "--listen",
            "127.0.0.1:0",
            "--log-format",
            "json",
            "--plugin-poll-ms",
            "0",
            "--data-dir",
            data,
        ],
        &KEYS,
    )
}

pub(crate) fn batch(client: usize, n: usize, size: usize) -> Value {
    Value::Array(
        (0..size)
            .map(|i| {
                json!({"event_id": format!("c{client}-{n}-{i}"), "event_type": "load.x", "source": "crash-test", "payload": {"k": "v"}})
            })
            .collect(),
    )
}

/// Every envelope of `json.field_equals` (k = v) from the earliest event,
/// until one with `seq >= last`.
async fn read_log(base: &str, last: u64) -> Vec<(String, u64)> {
    let mut resp = reqwest::Client::new()
        .get(format!(
            "{base}/v1/keys/json.field_equals/stream?field=k&equals=v&from=earliest"
        ))
        .header("X-API-Key", "d-query")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let mut buf = Vec::new();
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let chunk = tokio::time::timeout_at(deadline.into(), resp.chunk())
            .await
            .expect("the replay goes on")
            .unwrap()
            .expect("the stream stays open");
        buf.extend_from_slice(&chunk);
        while let Some(i) = buf.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = buf.drain(..=i).collect();
            let v: Value = serde_json::from_slice(&line).unwrap();
            if v.get("notice").is_some() {
                assert_eq!(v["notice"], "subscribed", "{v}");
                continue;
            }
            let seq = v["seq"].as_u64().unwrap();
            out.push((v["id"].as_str().unwrap().to_string(), seq));
            if seq >= last {
                return out;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn accepted_events_survive_kill_9_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let mut first = start(dir.path());
    let base = format!("http://{}", first.addr);
    let client = reqwest::Client::new();
    // 4 clients, 100,000 events in batches of 250; the host is killed
    // (SIGKILL) once 40,000 are accepted.
    let accepted: Arc<std::sync::Mutex<HashMap<String, u64>>> = Arc::default();
    let last_batch: Arc<std::sync::Mutex<Option<Value>>> = Arc::default();
    let mut tasks = Vec::new();
    for c in 0..4 {
        let (client, base, accepted, last_batch) = (
            client.clone(),
            base.clone(),
            accepted.clone(),
            last_batch.clone(),
        );
        tasks.push(tokio::spawn(async move {
            for n in 0..100 {
                let body = batch(c, n, 250);
                let Ok(resp) = client
                    .post(format!("{base}/v1/events"))
                    .header("X-API-Key", "d-ingest")
                    .json(&body)
                    .send()
                    .await
                else {
                    return;
                };
                let Ok(answer) = resp.json::<Value>().await else {
                    return;
                };
                let mut acc = accepted.lock().unwrap();
                for a in answer["accepted"].as_array().unwrap() {
                    acc.insert(
                        a["event_id"].as_str().unwrap().to_string(),
                        a["seq"].as_u64().unwrap(),
                    );
                }
                *last_batch.lock().unwrap() = Some(body);
            }
        }));
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    while accepted.lock().unwrap().len() < 40_000 {
        assert!(Instant::now() < deadline, "too slow");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    first.child.kill().unwrap(); // SIGKILL
    first.child.wait().unwrap();
    for t in tasks {
        t.await.unwrap();
    }
    let accepted = std::mem::take(&mut *accepted.lock().unwrap());
    assert!(accepted.len() < 100_000, "killed in the middle");
    let max_seq = accepted.values().copied().max().unwrap();

    let mut second = start(dir.path());
    let base = format!("http://{}", second.addr);
    // A retry of an accepted batch: all duplicates.
    let retry = last_batch.lock().unwrap().clone().unwrap();
    let answer = call(
        "POST",
        &format!("{base}/v1/events"),
        "d-ingest",
        Some(&retry),
    )
    .await;
    assert_eq!(
        answer["duplicates"].as_array().unwrap().len(),
        250,
        "{answer}"
    );
    assert!(
        answer["accepted"].as_array().unwrap().is_empty(),
        "{answer}"
    );
    // Publishing goes on with the next number.
    let answer = call("POST", &format!("{base}/v1/events"), "d-ingest", Some(&json!({"event_id": "after-restart", "event_type": "load.x", "source": "t", "payload": {"k": "v"}}))).await;
    let next = answer["accepted"][0]["seq"].as_u64().unwrap();
    assert!(next > max_seq, "{next} after {max_seq}");

    // Every accepted event is in the log, once, with its number.
    let log = read_log(&base, next).await;
    let mut seen: HashMap<&str, u64> = HashMap::new();
    for (id, seq) in &log {
        assert!(seen.insert(id, *seq).is_none(), "{id} twice");
    }
    for (id, seq) in &accepted {
        assert_eq!(seen.get(id.as_str()), Some(seq), "{id} lost or renumbered");
    }
    // Numbers never repeat and the next one follows the newest stored.
    let stored_max = log.iter().map(|(_, s)| *s).filter(|s| *s < next).max();
    assert_eq!(
        Some(next - 1),
        stored_max,
        "no number is skipped or repeated at the restart"
    );
    second.child.kill().unwrap();
    second.child.wait().unwrap();
}

#[test]
fn a_data_directory_is_held_by_one_host() {
    let dir = tempfile::tempdir().unwrap();
    let mut first = start(dir.path());
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_weir"))
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path())
        .envs(KEYS)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("is in use by another weir process"),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!("pid {}", first.child.id())),
        "{stderr}"
    );
    first.child.kill().unwrap();
    first.child.wait().unwrap();
}

/// A small tmpfs mounted for one test, unmounted when dropped.
struct Tmpfs(tempfile::TempDir);

impl Tmpfs {
    fn mount(mib: u32) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "weir-test"])
            .arg(dir.path())
            .output()
            .expect("mount runs");
        assert!(
            out.status.success(),
            "this test mounts a small tmpfs to fill it, which needs root: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Self(dir)
    }

    fn resize(&self, mib: u32) {
        let ok = std::process::Command::new("mount")
            .args(["-o", &format!("remount,size={mib}m")])
            .arg(self.0.path())
            .status()
            .unwrap()
            .success();
        assert!(ok, "remount");
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(self.0.path())
            .status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_answers_503_loses_nothing_accepted_and_recovers() {
    let disk = Tmpfs::mount(8);
    let mut served = start(&disk.0.path().join("data"));
    let base = format!("http://{}", served.addr);
    let client = reqwest::Client::new();
    let post = |n: usize| {
        let client = client.clone();
        let base = base.clone();
        async move {
            let body: Vec<Value> = (0..20)
                .map(|i| json!({"event_id": format!("f{n}-{i}"), "event_type": "load.x", "source": "t", "payload": {"k": "v", "pad": "x".repeat(8000)}}))
                .collect();
            let resp = client
                .post(format!("{base}/v1/events"))
                .header("X-API-Key", "d-ingest")
                .json(&body)
                .send()
                .await
                .unwrap();
            (resp.status(), resp.json::<Value>().await.unwrap())
        }
    };
    let mut accepted = Vec::new();
    let mut refused = None;
    for n in 0..200 {
        let (status, answer) = post(n).await;
        if status == StatusCode::OK {
            for a in answer["accepted"].as_array().unwrap() {
                accepted.push(a["event_id"].as_str().unwrap().to_string());
            }
            continue;
        }
        refused = Some((n, status, answer));
        break;
    }
    let (n, status, answer) = refused.expect("the disk fills up");
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{answer}");
    assert_eq!(answer["error"], "unavailable");
    assert!(
        answer["detail"]
            .as_str()
            .unwrap()
            .contains("the event log cannot store events now"),
        "{answer}"
    );
    assert!(!accepted.is_empty());
    // The host says so, and goes on serving reads.
    let ready = call("GET", &format!("{base}/readyz"), "d-query", None).await;
    assert_eq!(ready["store"]["state"], "failing", "{ready}");
    let metrics = client
        .get(format!("{base}/metrics"))
        .header("X-API-Key", "d-admin")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.contains("weir_store_failing 1"), "{metrics}");
    // Space returns: the same batch (refused whole) is accepted now.
    disk.resize(64);
    let (status, answer) = post(n).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(answer["accepted"].as_array().unwrap().len(), 20, "{answer}");
    let last = answer["accepted"][19]["seq"].as_u64().unwrap();
    // Nothing accepted before was lost.
    let log = read_log(&base, last).await;
    let ids: std::collections::HashSet<&str> = log.iter().map(|(id, _)| id.as_str()).collect();
    for id in &accepted {
        assert!(ids.contains(id.as_str()), "{id} lost");
    }
    served.child.kill().unwrap();
    served.child.wait().unwrap();
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn start_on(dir: &std::path::Path, port: u16) -> Served {
    let listen = format!("127.0.0.1:{port}");
    serve_with(
        &[
            "--listen",
            &listen,
            "--log-format",
            "json",
            "--plugin-poll-ms",
            "0",
            "--data-dir",
            dir.to_str().unwrap(),
        ],
        &KEYS,
    )
}

/// `weir consume` of `json.field_equals` (k = v) as named consumer `c1`
/// from the earliest event, at `urls`, until `n` events are in `out` (one
/// file per sequence number).
pub(crate) fn weir_consume(
    urls: &str,
    api_key: &str,
    n: usize,
    out: &std::path::Path,
) -> std::process::Child {
    std::process::Command::new(env!("CARGO_BIN_EXE_weir"))
        .args([
            "consume",
            "json.field_equals",
            "-p",
            "field=k",
            "-p",
            "equals=v",
        ])
        .args(["--consumer", "c1", "--from", "earliest", "--url", urls])
        .args([
            "--api-key",
            api_key,
            "--max-events",
            &n.to_string(),
            "--output-dir",
        ])
        .arg(out)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap()
}

/// Waits (3 minutes at most) for `consumer` to end: its status and stderr.
pub(crate) async fn finished(
    mut consumer: std::process::Child,
) -> (std::process::ExitStatus, String) {
    tokio::task::spawn_blocking(move || {
        let deadline = Instant::now() + Duration::from_secs(180);
        loop {
            if let Some(status) = consumer.try_wait().unwrap() {
                let mut stderr = String::new();
                std::io::Read::read_to_string(&mut consumer.stderr.take().unwrap(), &mut stderr)
                    .unwrap();
                return (status, stderr);
            }
            assert!(Instant::now() < deadline, "the consumer did not finish");
            std::thread::sleep(Duration::from_millis(20));
        }
    })
    .await
    .unwrap()
}

/// The sequence numbers of the events `weir consume --output-dir` wrote.
pub(crate) fn seqs_in(dir: &std::path::Path) -> Vec<u64> {
    let mut got: Vec<u64> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| {
            let name = e.unwrap().file_name().to_string_lossy().to_string();
            name.strip_suffix(".json")
                .map(|s| s.parse::<u64>().unwrap())
        })
        .collect();
    got.sort_unstable();
    got
}

pub(crate) fn files_in(dir: &std::path::Path) -> usize {
    std::fs::read_dir(dir).map_or(0, |d| {
        d.filter_map(Result::ok)
            .filter(|e| e.file_name().to_string_lossy().ends_with(".json"))
            .count()
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_named_consumer_gets_every_event_across_two_host_kills() {
    const N: usize = 30_000;
    let data = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut host = start_on(data.path(), port);
    let base = format!("http://127.0.0.1:{port}");
    let mut seqs = Vec::new();
    for n in 0..N / 1000 {
        let answer = call(
            "POST",
            &format!("{base}/v1/events"),
            "d-ingest",
            Some(&batch(9, n, 1000)),
        )
        .await;
        for a in answer["accepted"].as_array().unwrap() {
            seqs.push(a["seq"].as_u64().unwrap());
        }
    }
    assert_eq!(seqs.len(), N);
    let consumer = weir_consume(&base, "d-query", N, out.path());
    // Two kills (SIGKILL) while the consumer is delivering.
    for at in [N / 10, N / 3] {
        let deadline = Instant::now() + Duration::from_secs(120);
        while files_in(out.path()) < at {
            assert!(Instant::now() < deadline, "delivery stalled");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        host.child.kill().unwrap();
        host.child.wait().unwrap();
        let written = files_in(out.path());
        assert!(written < N, "killed during delivery ({written} of {N})");
        tokio::time::sleep(Duration::from_millis(300)).await;
        host = start_on(data.path(), port);
    }
    let status = finished(consumer).await;
    assert!(status.0.success(), "{}", status.1);
    assert!(status.1.contains("reconnecting"), "{}", status.1);
    // Every event exactly once (one file per sequence number), no gaps.
    let got = seqs_in(out.path());
    assert_eq!(got, seqs, "every event once, none missing");
    // The host knows where c1 is.
    let listed = call("GET", &format!("{base}/v1/consumers"), "d-query", None).await;
    let c1 = &listed["consumers"][0];
    assert_eq!(c1["name"], "c1", "{listed}");
    assert_eq!(c1["acked_seq"], *seqs.last().unwrap(), "{listed}");
    assert_eq!(c1["lag"], 0, "{listed}");
    host.child.kill().unwrap();
    host.child.wait().unwrap();
}

#[tokio::test]
async fn named_consumers_over_http_resume_after_their_acknowledgement() {
    let s = TestServer::start(weir_tests::host_with_examples()).await;
    let q = [
        ("field", "k"),
        ("equals", "v"),
        ("consumer", "c1"),
        ("from", "earliest"),
    ];
    let (mut c, first) = s.subscribe("json.field_equals", &q).await;
    assert_eq!(first["consumer"], "c1", "{first}");
    let events: Vec<Value> = (0..3)
        .map(|i| json!({"event_id": format!("n{i}"), "event_type": "x", "source": "t", "payload": {"k": "v"}}))
        .collect();
    s.publish(Value::Array(events)).await;
    let mut seqs = Vec::new();
    for _ in 0..3 {
        seqs.push(c.envelope().await["seq"].as_u64().unwrap());
    }
    let (status, acked) = s
        .post(
            "/v1/consumers/c1/ack",
            Role::Query,
            Some(json!({"seq": seqs[1]})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{acked}");
    assert_eq!(acked["acked_seq"], seqs[1]);
    assert_eq!(acked["lag"], 1);
    assert_eq!(acked["connected"], 1);
    // Refusals name the problem.
    let (status, body) = s
        .post(
            "/v1/consumers/c1/ack",
            Role::Query,
            Some(json!({"seq": 999_999})),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let (status, body) = s
        .post(
            "/v1/consumers/nobody/ack",
            Role::Query,
            Some(json!({"seq": 1})),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    let (status, body) = s
        .post("/v1/consumers/c1/ack", Role::Query, Some(json!({"sq": 1})))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let other = [("field", "k"), ("equals", "w"), ("consumer", "c1")];
    let (status, body) = s.stream("json.field_equals", &other).await.err().unwrap();
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(body["error"], "conflict");
    assert!(
        body["detail"].as_str().unwrap().contains("delete it first"),
        "{body}"
    );
    let bad = [("field", "k"), ("equals", "v"), ("consumer", "no spaces")];
    let (status, _) = s.stream("json.field_equals", &bad).await.err().unwrap();
    assert_eq!(status, StatusCode::BAD_REQUEST);
    // Reconnected, it resumes after its acknowledgement (the third event
    // comes again: it was delivered, not acknowledged).
    drop(c);
    let (mut c, first) = s.subscribe("json.field_equals", &q).await;
    assert_eq!(first["from"], (seqs[1] + 1).to_string(), "{first}");
    assert_eq!(c.envelope().await["seq"], seqs[2]);
    drop(c);
    let (_, listed) = s.get("/v1/consumers", Role::Query).await;
    assert_eq!(
        listed["consumers"][0]["key"], "json.field_equals",
        "{listed}"
    );
    assert_eq!(listed["consumers"][0]["params"]["equals"], "v", "{listed}");
    // Only an admin deletes; then the name is free.
    let (status, _) = s.delete("/v1/consumers/c1", Role::Query).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, body) = s
        .delete("/v1/consumers/c1?datastore=default", Role::Admin)
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (_, listed) = s.get("/v1/consumers", Role::Query).await;
    assert_eq!(listed["consumers"], json!([]), "{listed}");
    let (status, _) = s
        .delete("/v1/consumers/c1?datastore=default", Role::Admin)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn datastore_changes_are_in_the_log_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    {
        let mut s = TestServer::start(durable_host(dir.path())).await;
        let sid = s.create_session().await;
        let rows = json!([
            {"path": "/kept/a.bin", "size": 5_000_000, "modified_time": 1_700_000_000.0},
            {"path": "/kept/b.txt", "size": 3, "modified_time": 1_700_000_000.0}
        ]);
        let (status, body) = s.push(&sid, weir_tests::snapshot_end(rows)).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let deadline = Instant::now() + Duration::from_secs(10);
        while s.host.pipeline().bus().stats().last_seq < 2 {
            assert!(Instant::now() < deadline, "changes not published");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        s.stop().await;
    }
    // The index is gone with the process (the agent sends a snapshot
    // again), but its changes, as events, are in the log.
    let s = TestServer::start(durable_host(dir.path())).await;
    let (mut changes, _) = s.subscribe("fs.changes", &[("from", "earliest")]).await;
    let mut paths = Vec::new();
    for _ in 0..2 {
        let e = changes.envelope().await;
        assert_eq!(e["event_type"], "fs.insert", "{e}");
        assert_eq!(e["source"], "datastore/default", "{e}");
        paths.push(e["data"]["path"].as_str().unwrap().to_string());
    }
    paths.sort();
    assert_eq!(paths, ["/kept/a.bin", "/kept/b.txt"]);
}
