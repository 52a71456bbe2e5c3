//! The Fustor agent routes and the views over HTTP on a loopback port, fed
//! with real captured agent traffic (`tests/fixtures/fustor-wire`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};
use weir_host::auth::{Keys, Role};
use weir_host::datastore::DatastoreConfig;
use weir_host::host::{Host, HostConfig};
use weir_tests::secret;

struct Server {
    base: String,
    client: reqwest::Client,
}

async fn start_with(datastore: DatastoreConfig) -> Server {
    let mut keys = Keys::new();
    for role in Role::ALL {
        keys.insert(&secret(role), role, "default");
    }
    keys.insert("other-query", Role::Query, "lab");
    let host = Arc::new(
        Host::new(HostConfig {
            keys,
            datastores: vec![datastore, DatastoreConfig::named("lab")],
            ..Default::default()
        })
        .unwrap(),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(weir_host::run(listener, host, std::future::pending()));
    Server {
        base,
        client: reqwest::Client::new(),
    }
}

async fn start() -> Server {
    start_with(DatastoreConfig::named("default")).await
}

impl Server {
    async fn send(
        &self,
        method: &str,
        path: &str,
        role: Option<Role>,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let url = format!("{}{path}", self.base);
        let mut req = self.client.request(method.parse().unwrap(), url);
        if let Some(role) = role {
            req = req.header("X-API-Key", secret(role));
        }
        if let Some(body) = body {
            req = req.json(&body);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status();
        let text = resp.text().await.unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    async fn create_session(&self) -> String {
        let (status, body) = self
            .send(
                "POST",
                "/api/v1/pipe/session/",
                Some(Role::Ingest),
                Some(json!({"task_id": "agent-1:pipe", "source_type": "fs"})),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        body["session_id"].as_str().unwrap().to_string()
    }

    async fn push(&self, sid: &str, mut body: Value) -> (StatusCode, Value) {
        body["session_id"] = json!(sid);
        self.send(
            "POST",
            &format!("/api/v1/pipe/ingest/{sid}/events"),
            Some(Role::Ingest),
            Some(body),
        )
        .await
    }

    /// Views of `default`, waiting (bounded) while the queue drains.
    async fn view(&self, path: &str) -> (StatusCode, Value) {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let (status, body) = self
                .send(
                    "GET",
                    &format!("/api/v1/views/default/{path}"),
                    Some(Role::Query),
                    None,
                )
                .await;
            if status == StatusCode::SERVICE_UNAVAILABLE
                && body["detail"].as_str().unwrap_or("").contains("applying")
                && Instant::now() < deadline
            {
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
            return (status, body);
        }
    }
}

fn capture(name: &str) -> Value {
    let path = format!("{}/fixtures/fustor-wire/{name}", env!("CARGO_MANIFEST_DIR"));
    let v: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    v["request"]["body"].clone()
}

#[tokio::test]
async fn agent_session_snapshot_and_views() {
    let s = start().await;
    // No agent yet: views answer 503 with a reason and Retry-After.
    let resp = s
        .client
        .get(format!("{}/api/v1/views/default/tree", s.base))
        .header("X-API-Key", secret(Role::Query))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(resp.headers()["retry-after"], "2");
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"], "not_ready");
    assert!(
        body["detail"]
            .as_str()
            .unwrap()
            .contains("no live agent session"),
        "{body}"
    );

    let (status, grant) = s
        .send(
            "POST",
            "/api/v1/pipe/session/",
            Some(Role::Ingest),
            Some(json!({"task_id": "a:p"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(grant["role"], "leader");
    assert_eq!(grant["session_timeout_seconds"], 30);
    let sid = grant["session_id"].as_str().unwrap().to_string();
    let (status, body) = s.view("stats").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        body["detail"].as_str().unwrap().contains("snapshot"),
        "{body}"
    );

    let (status, hb) = s
        .send(
            "POST",
            &format!("/api/v1/pipe/session/{sid}/heartbeat"),
            Some(Role::Ingest),
            Some(json!({"can_realtime": false})),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(hb["commands"], json!([]));

    // The real agent's snapshot: 327 rows, the last batch with is_end.
    let (status, receipt) = s.push(&sid, capture("ex_03_snapshot_batch.json")).await;
    assert_eq!(status, StatusCode::OK, "{receipt}");
    assert_eq!(receipt["count"], 327);
    assert_eq!(receipt["rejected"], json!([]));
    let (status, stats) = s.view("stats").await;
    assert_eq!(status, StatusCode::OK, "{stats}");
    assert_eq!(
        (
            stats["total_files"].as_u64(),
            stats["total_directories"].as_u64()
        ),
        (Some(301), Some(26))
    );

    let (status, tree) = s.view("tree?path=/proj_0&max_depth=1").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(tree["path"], "/proj_0");
    assert!(
        tree["children"]
            .as_array()
            .unwrap()
            .iter()
            .all(|c| c.get("children").is_none())
    );
    let (status, tree) = s.view("tree?path=/&max_depth=0").await;
    assert_eq!(status, StatusCode::OK);
    assert!(tree.get("children").is_none());
    let (status, body) = s.view("tree?path=/nope").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body["error"], "not_found");

    // Realtime: the captured mkdir/append/delete/rename batch, then rmtree.
    let (status, _) = s
        .push(
            &sid,
            capture("ex_06_realtime_mkdir_append_delete_rename.json"),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (_, tree) = s.view("tree?path=/new_dir").await;
    assert_eq!(tree["content_type"], "directory");
    let (status, _) = s.view("tree?path=/proj_2/run_2/file_005.txt").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = s.push(&sid, capture("ex_07_realtime_rmtree.json")).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = s.view("tree?path=/proj_3/run_3/file_007.txt").await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // Delete: views go back to 503.
    let (status, body) = s
        .send(
            "DELETE",
            &format!("/api/v1/pipe/session/{sid}"),
            Some(Role::Ingest),
            None,
        )
        .await;
    assert_eq!(
        (status, body["status"].as_str()),
        (StatusCode::OK, Some("terminated"))
    );
    assert_eq!(s.view("stats").await.0, StatusCode::SERVICE_UNAVAILABLE);
    let (status, _) = s
        .send(
            "POST",
            &format!("/api/v1/pipe/session/{sid}/heartbeat"),
            Some(Role::Ingest),
            Some(json!({})),
        )
        .await;
    assert_eq!(status.as_u16(), 419);
}

#[tokio::test]
async fn last_agent_wins() {
    let s = start().await;
    let old = s.create_session().await;
    let snapshot = json!({"source_type": "snapshot", "is_end": true, "events": [
        {"event_type": "update", "rows": [{"path": "/a", "size": 1, "modified_time": 1.0}]}]});
    assert_eq!(s.push(&old, snapshot.clone()).await.0, StatusCode::OK);
    assert_eq!(s.view("stats").await.0, StatusCode::OK);
    let new = s.create_session().await;
    // The old session is refused at once with 419, on heartbeat and push.
    let (status, body) = s
        .send(
            "POST",
            &format!("/api/v1/pipe/session/{old}/heartbeat"),
            Some(Role::Ingest),
            Some(json!({})),
        )
        .await;
    assert_eq!(status.as_u16(), 419);
    assert_eq!(body["error"], "session_obsolete");
    assert_eq!(s.push(&old, snapshot.clone()).await.0.as_u16(), 419);
    // Views wait for the new session's snapshot.
    assert_eq!(s.view("stats").await.0, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(s.push(&new, snapshot).await.0, StatusCode::OK);
    let (status, stats) = s.view("stats").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(stats["total_files"], 1);
}

#[tokio::test]
async fn bad_rows_are_reported_and_bad_bodies_refused() {
    let s = start().await;
    let sid = s.create_session().await;
    let (status, receipt) = s
        .push(&sid, json!({"source_type": "snapshot", "is_end": true, "events": [{"event_type": "update", "rows": [
            {"path": "/good", "size": 1, "modified_time": 1.0},
            {"path": "/bad", "size": "big", "modified_time": 1.0}
        ]}]}))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(receipt["count"], 1);
    assert_eq!(
        receipt["rejected"],
        json!([{"event": 0, "row": 1, "reason": "`size` is not a non-negative integer"}])
    );
    let (_, stats) = s.view("stats").await;
    assert_eq!(stats["total_files"], 1);
    assert_eq!(stats["rows_rejected"], 1);

    let resp = s
        .client
        .post(format!("{}/api/v1/pipe/ingest/{sid}/events", s.base))
        .header("X-API-Key", secret(Role::Ingest))
        .body("not json")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    let body: Value = resp.json().await.unwrap();
    assert!(
        body["detail"]
            .as_str()
            .unwrap()
            .starts_with("body is not JSON"),
        "{body}"
    );
    let (status, body) = s
        .send(
            "POST",
            "/api/v1/pipe/session/",
            Some(Role::Ingest),
            Some(json!({"agent": 1})),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        body["detail"].as_str().unwrap().contains("task_id"),
        "{body}"
    );
    let (status, _) = s.push("unknown-session", json!({"events": []})).await;
    assert_eq!(status.as_u16(), 419);
}

#[tokio::test]
async fn keys_are_checked_for_role_and_datastore() {
    let s = start().await;
    let (status, _) = s
        .send(
            "POST",
            "/api/v1/pipe/session/",
            None,
            Some(json!({"task_id": "a:p"})),
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _) = s
        .send(
            "POST",
            "/api/v1/pipe/session/",
            Some(Role::Query),
            Some(json!({"task_id": "a:p"})),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _) = s
        .send(
            "GET",
            "/api/v1/views/default/stats",
            Some(Role::Ingest),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    // A query key of another datastore may not read this one.
    let resp = s
        .client
        .get(format!("{}/api/v1/views/default/stats", s.base))
        .header("X-API-Key", "other-query")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    let resp = s
        .client
        .get(format!("{}/api/v1/views/lab/stats", s.base))
        .header("X-API-Key", "other-query")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
}

#[tokio::test]
async fn heartbeat_timeout_turns_views_unavailable() {
    let mut config = DatastoreConfig::named("default");
    config.sessions.timeout = Duration::from_millis(600);
    let s = start_with(config).await;
    let sid = s.create_session().await;
    let snapshot = json!({"source_type": "snapshot", "is_end": true, "events": [
        {"event_type": "update", "rows": [{"path": "/a", "size": 1, "modified_time": 1.0}]}]});
    assert_eq!(s.push(&sid, snapshot).await.0, StatusCode::OK);
    assert_eq!(s.view("stats").await.0, StatusCode::OK);
    // Pushes keep the session alive like heartbeats do.
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let (status, _) = s
            .push(&sid, json!({"source_type": "message", "events": []}))
            .await;
        assert_eq!(status, StatusCode::OK);
    }
    assert_eq!(s.view("stats").await.0, StatusCode::OK);
    tokio::time::sleep(Duration::from_millis(800)).await;
    let (status, body) = s.view("stats").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        body["detail"]
            .as_str()
            .unwrap()
            .contains("no live agent session"),
        "{body}"
    );
    let (status, body) = s
        .send(
            "POST",
            &format!("/api/v1/pipe/session/{sid}/heartbeat"),
            Some(Role::Ingest),
            Some(json!({})),
        )
        .await;
    assert_eq!(
        (status.as_u16(), body["error"].as_str()),
        (419, Some("session_expired"))
    );
}
