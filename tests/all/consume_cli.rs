//! `weir consume` against a host on a loopback port, driven in-process.

use std::time::Duration;

use serde_json::{Value, json};
use weir_host::auth::Role;
use weir_tests::{TestServer, host_with_pipeline_guest, secret};

/// Runs `weir consume ARGS` on its own thread (it has its own runtime).
fn consume(args: Vec<String>) -> std::thread::JoinHandle<(i32, String, String)> {
    std::thread::spawn(move || {
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let code = weir_host::cli::run(
            ["weir".to_string(), "consume".to_string()]
                .into_iter()
                .chain(args),
            &mut out,
            &mut err,
        );
        (
            code,
            String::from_utf8(out).unwrap(),
            String::from_utf8(err).unwrap(),
        )
    })
}

fn args(s: &TestServer, rest: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = rest.iter().map(|a| a.to_string()).collect();
    v.extend([
        "--url".into(),
        s.base.clone(),
        "--api-key".into(),
        secret(Role::Query),
    ]);
    v
}

async fn wait_consumers(s: &TestServer, n: usize) {
    s.wait_subscriptions("consumers attached", |b| {
        b["subscriptions"].as_array().map(|subs| {
            subs.iter()
                .map(|x| x["consumers"].as_array().unwrap().len())
                .sum::<usize>()
        }) == Some(n)
    })
    .await;
}

fn flaky(n: i64) -> Value {
    json!({"event_type": "test.x", "source": "cli", "payload": {"n": n}})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prints_envelopes_to_stdout_and_status_to_stderr_until_the_max() {
    let s = TestServer::start(host_with_pipeline_guest()).await;
    let job = consume(args(
        &s,
        &[
            "test.flaky",
            "--param",
            "sub=Cli",
            "--param",
            "min=2",
            "--max-events",
            "3",
        ],
    ));
    wait_consumers(&s, 1).await;
    s.publish(Value::Array((0..10).map(flaky).collect())).await;
    let (code, out, err) = tokio::task::spawn_blocking(move || job.join().unwrap())
        .await
        .unwrap();
    assert_eq!(code, 0, "{err}");
    let lines: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let ns: Vec<i64> = lines
        .iter()
        .map(|e| e["data"]["n"].as_i64().unwrap())
        .collect();
    assert_eq!(ns, vec![2, 3, 4]);
    assert_eq!(lines[0]["data"]["sub"], "cli");
    assert!(
        err.contains("subscribed: key test.flaky subscription default/test.flaky@"),
        "{err}"
    );
    assert!(err.contains("done: 3 events"), "{err}");
    // It left: the subscription is cleaned up.
    wait_consumers(&s, 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_one_file_per_event_from_earliest() {
    let s = TestServer::start(host_with_pipeline_guest()).await;
    s.publish(Value::Array((0..4).map(flaky).collect())).await;
    let dir = tempfile::tempdir().unwrap();
    let out_dir = dir.path().join("events");
    let job = consume(args(
        &s,
        &[
            "test.flaky",
            "--from",
            "earliest",
            "--max-events",
            "4",
            "--output-dir",
            out_dir.to_str().unwrap(),
        ],
    ));
    let (code, out, err) = tokio::task::spawn_blocking(move || job.join().unwrap())
        .await
        .unwrap();
    assert_eq!(code, 0, "{err}");
    assert!(out.is_empty());
    let mut names: Vec<String> = std::fs::read_dir(&out_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names.len(), 4, "{names:?}");
    assert!(
        names
            .iter()
            .all(|n| n.ends_with(".json") && !n.starts_with('.'))
    );
    let first: Value =
        serde_json::from_slice(&std::fs::read(out_dir.join(&names[0])).unwrap()).unwrap();
    assert_eq!(first["data"]["n"], 0);
    assert_eq!(
        names[0],
        format!("{:012}.json", first["seq"].as_u64().unwrap())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_and_unreachable_hosts_are_clear_errors() {
    let s = TestServer::start(host_with_pipeline_guest()).await;
    let (code, _, err) = consume(args(&s, &["fs.large_files"])).join().unwrap();
    assert_eq!(code, 1);
    assert!(
        err.contains("400 Bad Request: param `min_size`: required"),
        "{err}"
    );
    let (code, _, err) = consume(vec![
        "test.flaky".into(),
        "--url".into(),
        s.base.clone(),
        "--api-key".into(),
        "wrong".into(),
    ])
    .join()
    .unwrap();
    assert_eq!(code, 1);
    assert!(err.contains("401"), "{err}");
    let (code, _, err) = consume(vec![
        "test.flaky".into(),
        "--url".into(),
        "http://127.0.0.1:9".into(),
    ])
    .join()
    .unwrap();
    assert_eq!(code, 1);
    assert!(err.contains("cannot reach http://127.0.0.1:9"), "{err}");
    let (code, _, err) = consume(args(&s, &["test.flaky", "--param", "novalue"]))
        .join()
        .unwrap();
    assert_eq!(code, 2);
    assert!(err.contains("`novalue` is not name=value"), "{err}");
    tokio::time::sleep(Duration::from_millis(10)).await;
}
