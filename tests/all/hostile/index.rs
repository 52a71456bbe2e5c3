//! Hostile agents against the index: rows that once aborted the process or
//! wedged a datastore, and answers that once had no byte bound. Each test
//! checks that the host stays up, that the other datastore is untouched,
//! and that the bad row is rejected alone with its reason.

use std::sync::Arc;
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};
use weir_host::auth::Role;
use weir_host::datastore::DatastoreConfig;
use weir_host::runtime::{Host, HostConfig};
use weir_tests::{SESSION, TestServer, secret, snapshot_end};

const LAB_INGEST: &str = "hostile-lab-ingest";
const LAB_QUERY: &str = "hostile-lab-query";

/// A host with `default` (configured by `tune`) and `lab`, both served.
async fn start(tune: impl FnOnce(&mut DatastoreConfig)) -> TestServer {
    let mut keys = weir_tests::test_keys();
    keys.insert(LAB_INGEST, Role::Ingest, "lab");
    keys.insert(LAB_QUERY, Role::Query, "lab");
    let mut default = DatastoreConfig::named("default");
    tune(&mut default);
    let host = Host::new(HostConfig {
        keys,
        datastores: vec![default, DatastoreConfig::named("lab")],
        engine: weir_tests::test_engine(),
        ..Default::default()
    })
    .expect("host starts");
    TestServer::start(Arc::new(host)).await
}

/// Sends with a literal key.
async fn send_as(
    s: &TestServer,
    key: &str,
    method: &str,
    path: &str,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let mut req = s
        .client
        .request(method.parse().unwrap(), format!("{}{path}", s.base))
        .header("X-API-Key", key);
    if let Some(body) = body {
        req = req.json(&body);
    }
    let resp = req.send().await.expect("the host answers");
    let status = resp.status();
    let text = resp.text().await.unwrap_or_default();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

/// `lab` gets a session and a complete one-file snapshot.
async fn lab_ready(s: &TestServer) {
    let (status, grant) = send_as(
        s,
        LAB_INGEST,
        "POST",
        SESSION,
        Some(json!({"task_id": "lab-agent:pipe"})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{grant}");
    let sid = grant["session_id"].as_str().unwrap().to_string();
    let mut body = snapshot_end(json!([{"path": "/lab.txt", "size": 1, "modified_time": 1.0}]));
    body["session_id"] = json!(sid);
    let (status, answer) = send_as(
        s,
        LAB_INGEST,
        "POST",
        &format!("/api/v1/pipe/ingest/{sid}/events"),
        Some(body),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
}

/// A view, waiting (bounded) while queued changes are applied.
async fn view(s: &TestServer, key: &str, datastore: &str, what: &str) -> (StatusCode, Value) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let answer = send_as(
            s,
            key,
            "GET",
            &format!("/api/v1/views/{datastore}/{what}"),
            None,
        )
        .await;
        let applying = answer.1["detail"]
            .as_str()
            .unwrap_or("")
            .contains("applying");
        if answer.0 == StatusCode::SERVICE_UNAVAILABLE && applying && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        }
        return answer;
    }
}

/// The host is up and `lab` still answers its one file.
async fn others_unaffected(s: &TestServer) {
    let (status, _) = s.send("GET", "/healthz", None, None).await;
    assert_eq!(status, StatusCode::OK);
    let (status, stats) = view(s, LAB_QUERY, "lab", "stats").await;
    assert_eq!(status, StatusCode::OK, "{stats}");
    assert_eq!(stats["total_files"], 1);
}

/// The stats of `default`, which must answer.
async fn default_stats(s: &TestServer) -> Value {
    let (status, stats) = view(s, &secret(Role::Query), "default", "stats").await;
    assert_eq!(status, StatusCode::OK, "{stats}");
    stats
}

/// The reasons of the rejected rows of a push answer.
fn reasons(answer: &Value) -> Vec<String> {
    answer["rejected"]
        .as_array()
        .map(|r| {
            r.iter()
                .map(|r| r["reason"].as_str().unwrap_or_default().to_string())
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test]
async fn a_path_of_100000_segments_is_rejected_alone_and_the_host_stays_up() {
    let s = start(|_| {}).await;
    lab_ready(&s).await;
    let sid = s.create_session().await;
    let deep = "/a".repeat(100_000);
    let (status, answer) = s
        .push(
            &sid,
            snapshot_end(json!([
                {"path": deep, "modified_time": 1},
                {"path": "/fine.txt", "size": 3, "modified_time": 1},
            ])),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(answer["count"], 1);
    let first = reasons(&answer);
    assert_eq!(first.len(), 1, "{first:?}");
    assert!(first[0].contains("longer than 4096 bytes"), "{}", first[0]);
    assert!(
        first[0].len() < 400,
        "the reason echoes {} bytes",
        first[0].len()
    );
    // The same path as a realtime delete, and deep but short enough rows.
    let (status, answer) = s
        .push_rows(&sid, "message", "delete", json!([{"path": deep}]))
        .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    let too_deep = "/d".repeat(300);
    let (_, answer) = s
        .push_rows(
            &sid,
            "message",
            "update",
            json!([{"path": too_deep, "modified_time": 1}]),
        )
        .await;
    assert!(
        reasons(&answer)[0].contains("deeper than 256 levels"),
        "{answer}"
    );
    let stats = default_stats(&s).await;
    assert_eq!(stats["total_files"], 1);
    others_unaffected(&s).await;
}

#[tokio::test]
async fn times_past_the_year_9999_are_rejected_and_the_datastore_does_not_wedge() {
    let s = start(|_| {}).await;
    lab_ready(&s).await;
    let sid = s.create_session().await;
    let (status, answer) = s
        .push(
            &sid,
            snapshot_end(json!([
                {"path": "/future.txt", "modified_time": 1e12},
                {"path": "/ctime.txt", "modified_time": 1, "created_time": -1},
                {"path": "/ok.txt", "modified_time": 1},
            ])),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    let reasons = reasons(&answer);
    assert_eq!(reasons.len(), 2, "{reasons:?}");
    assert!(
        reasons[0].contains("`modified_time` 1000000000000.0 is outside"),
        "{reasons:?}"
    );
    assert!(
        reasons[1].contains("`created_time` -1.0 is outside"),
        "{reasons:?}"
    );
    // The datastore applies, becomes READY and keeps taking pushes.
    let stats = default_stats(&s).await;
    assert_eq!(stats["total_files"], 1);
    assert_eq!(stats["apply_panics"], 0);
    let (status, _) = s
        .push_rows(
            &sid,
            "message",
            "update",
            json!([{"path": "/next.txt", "modified_time": 2}]),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    // Sentinel feedback is checked the same way.
    let (status, answer) = s
        .post(
            "/api/v1/pipe/consistency/sentinel/feedback",
            Role::Ingest,
            Some(json!({"updates": [{"path": "/ok.txt", "status": "exists", "mtime": 1e12}]})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert!(
        answer["rejected"][0]["reason"]
            .as_str()
            .unwrap()
            .contains("is outside"),
        "{answer}"
    );
    let stats = default_stats(&s).await;
    assert_eq!(stats["total_files"], 2);
    others_unaffected(&s).await;
}

#[tokio::test]
async fn sentinel_feedback_cannot_delete_what_is_not_suspect() {
    let s = start(|_| {}).await;
    lab_ready(&s).await;
    let sid = s.create_session().await;
    let (status, _) = s
        .push(
            &sid,
            snapshot_end(json!([{"path": "/keep.txt", "modified_time": 1}])),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, answer) = s
        .post(
            "/api/v1/pipe/consistency/sentinel/feedback",
            Role::Ingest,
            Some(json!({"updates": [{"path": "/keep.txt", "status": "missing"}]})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    let stats = default_stats(&s).await;
    assert_eq!(
        stats["total_files"], 1,
        "a file that was never suspect was deleted"
    );
    assert_eq!(stats["evictions"]["feedback_ignored"], 1);
    others_unaffected(&s).await;
}

#[tokio::test]
async fn view_answers_are_bounded_by_bytes() {
    let s = start(|c| c.max_tree_bytes = 16 * 1024).await;
    lab_ready(&s).await;
    let sid = s.create_session().await;
    // 100 files with 200-byte names: few items, many bytes.
    let rows: Vec<Value> = (0..100)
        .map(|i| json!({"path": format!("/{i:03}{}", "n".repeat(200)), "modified_time": 1}))
        .collect();
    let (status, _) = s.push(&sid, snapshot_end(Value::Array(rows))).await;
    assert_eq!(status, StatusCode::OK);
    let (status, answer) = view(&s, &secret(Role::Query), "default", "tree?path=/").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
    assert!(
        answer["detail"]
            .as_str()
            .unwrap()
            .contains("more than 16384 bytes"),
        "{answer}"
    );
    let (status, answer) = view(&s, &secret(Role::Query), "default", "search?pattern=n").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
    // Asking for less works.
    let (status, answer) = view(
        &s,
        &secret(Role::Query),
        "default",
        "tree?path=/&only_path=true&max_depth=0",
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    others_unaffected(&s).await;
}

#[tokio::test]
async fn a_megabyte_task_id_is_refused_naming_the_bound() {
    let s = start(|_| {}).await;
    lab_ready(&s).await;
    let (status, answer) = s
        .post(
            SESSION,
            Role::Ingest,
            Some(json!({"task_id": "t".repeat(1 << 20)})),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
    assert!(
        answer["detail"]
            .as_str()
            .unwrap()
            .contains("longer than 1024 bytes"),
        "{answer}"
    );
    assert!(answer.to_string().len() < 1024);
    others_unaffected(&s).await;
}
