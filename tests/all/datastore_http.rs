//! The Fustor agent routes and the views over HTTP on a loopback port, fed
//! with real captured agent traffic (`tests/fixtures/fustor-wire`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};
use weir_host::auth::Role;
use weir_host::datastore::DatastoreConfig;
use weir_host::runtime::{Host, HostConfig};
use weir_tests::{SESSION, TestServer, rows_push, secret, snapshot_end};

type Server = TestServer;

async fn start_with(datastore: DatastoreConfig) -> Server {
    let mut keys = weir_tests::test_keys();
    keys.insert("other-query", Role::Query, "lab");
    let host = Arc::new(
        Host::new(HostConfig {
            keys,
            datastores: vec![datastore, DatastoreConfig::named("lab")],
            engine: weir_tests::test_engine(),
            ..Default::default()
        })
        .unwrap(),
    );
    TestServer::start(host).await
}

async fn start() -> Server {
    start_with(DatastoreConfig::named("default")).await
}

/// Reading the views of `default`.
trait Views {
    /// Views of `default`, waiting (bounded) while the queue drains.
    async fn view(&self, path: &str) -> (StatusCode, Value);

    /// Pushes one `update` row of `source` (`snapshot`, `message`) in
    /// session `sid`; answers the tree view at the row's path after it.
    async fn upsert(&self, sid: &str, source: &str, row: Value) -> (StatusCode, Value) {
        let path = row["path"].as_str().expect("a row path").to_string();
        self.push_row(sid, source, row).await;
        self.view(&format!("tree?path={path}")).await
    }

    /// Pushes one `update` row of `source` in session `sid`.
    async fn push_row(&self, sid: &str, source: &str, row: Value);

    /// Heartbeats session `sid` (an empty body).
    async fn heartbeat(&self, sid: &str) -> (StatusCode, Value);
}

impl Views for TestServer {
    async fn heartbeat(&self, sid: &str) -> (StatusCode, Value) {
        let path = format!("/api/v1/pipe/session/{sid}/heartbeat");
        self.post(&path, Role::Ingest, Some(json!({}))).await
    }

    async fn push_row(&self, sid: &str, source: &str, row: Value) {
        let (status, body) = self.push_rows(sid, source, "update", json!([row])).await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }

    async fn view(&self, path: &str) -> (StatusCode, Value) {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let (status, body) = self
                .get(&format!("/api/v1/views/default/{path}"), Role::Query)
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
    let path = format!("{}/fustor-wire/{name}", weir_tests::FIXTURES);
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
        .post(SESSION, Role::Ingest, Some(json!({"task_id": "a:p"})))
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
    // A dry run is checked like the tree (here: not READY yet).
    let (status, _) = s.view("tree?dry_run=true").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);

    let (status, hb) = s
        .post(
            &format!("/api/v1/pipe/session/{sid}/heartbeat"),
            Role::Ingest,
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
    // Fusion's dry run: checked, not written (fustor-benchmark's column).
    let (status, body) = s.view("tree?path=/&dry_run=true").await;
    assert_eq!(
        (status, body),
        (
            StatusCode::OK,
            json!({"message": "dry-run", "view_id": "default"})
        )
    );
    let resp = s
        .client
        .get(format!("{}/api/v1/views/default/tree?dry_run=true", s.base))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);

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
        .delete(&format!("/api/v1/pipe/session/{sid}"), Role::Ingest)
        .await;
    assert_eq!(
        (status, body["status"].as_str()),
        (StatusCode::OK, Some("terminated"))
    );
    assert_eq!(s.view("stats").await.0, StatusCode::SERVICE_UNAVAILABLE);
    let (status, _) = s.heartbeat(&sid).await;
    assert_eq!(status.as_u16(), 419);
}

/// The recorded on-demand scan exchange of fustor-fusion (`ex_12` to
/// `ex_14`, `ondemand_tree_response.txt`, `ondemand_jobs.txt`), played
/// against Weir: a view client asks, the heartbeat hands the command out
/// once, the agent's rows and `job_complete` end the job.
#[tokio::test]
async fn on_demand_scans_are_asked_handed_out_once_and_completed() {
    let s = start().await;
    let (_, grant) = s
        .post(SESSION, Role::Ingest, Some(json!({"task_id": "a:p"})))
        .await;
    let sid = grant["session_id"].as_str().unwrap().to_string();
    assert_eq!(
        s.push(&sid, capture("ex_03_snapshot_batch.json")).await.0,
        StatusCode::OK
    );
    let (status, jobs) = s.view("jobs").await;
    assert_eq!((status, jobs), (StatusCode::OK, json!({"jobs": []})));
    let (status, tree) = s.view("tree?path=/proj_2/run_0&max_depth=0").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        (tree["job_id"].clone(), tree["job_pending"].clone()),
        (Value::Null, json!(false))
    );

    // Asked: the tree as it is now, with the job.
    let (status, tree) = s
        .view("tree?path=/proj_2/run_0&max_depth=0&on_demand_scan=true")
        .await;
    assert_eq!(status, StatusCode::OK, "{tree}");
    assert_eq!(tree["path"], "/proj_2/run_0");
    assert_eq!(tree["job_pending"], true);
    let job = tree["job_id"].as_str().unwrap().to_string();
    assert_eq!(job.len(), 8);
    // Asked again while pending: the same job. A file under it: covered.
    let (_, again) = s
        .view("tree?path=/proj_2/run_0&max_depth=0&on_demand_scan=true")
        .await;
    assert_eq!(again["job_id"], job.as_str());
    let (_, file) = s.view("tree?path=/proj_2/run_0/file_006.txt").await;
    assert_eq!(
        (file["job_id"].as_str(), file["job_pending"].as_bool()),
        (Some(job.as_str()), Some(true))
    );
    let (_, listed) = s.view(&format!("jobs/{job}")).await;
    assert_eq!(listed["status"], "PENDING");
    assert_eq!(listed["view_id"], "default");
    assert_eq!(
        listed["progress"],
        json!({"completed_pipes": 0, "total_pipes": 1, "percentage": 0.0})
    );

    // The next heartbeat carries the command (ex_12's shape), once.
    let (status, hb) = s.heartbeat(&sid).await;
    assert_eq!(status, StatusCode::OK);
    let cmds = hb["commands"].as_array().unwrap();
    assert_eq!(cmds.len(), 1, "{hb}");
    assert_eq!(
        (
            cmds[0]["type"].as_str(),
            cmds[0]["path"].as_str(),
            cmds[0]["recursive"].as_bool(),
            cmds[0]["job_id"].as_str()
        ),
        (
            Some("scan"),
            Some("/proj_2/run_0"),
            Some(true),
            Some(job.as_str())
        )
    );
    assert!(cmds[0]["created_at"].as_f64().unwrap() > 1.7e9);
    assert_eq!(s.heartbeat(&sid).await.1["commands"], json!([]));

    // The agent's rows (ex_13, one of them changed) and its job_complete (ex_14).
    let mut rows = capture("ex_13_on_demand_job_batch.json");
    rows["events"][0]["rows"][1]["size"] = json!(12345);
    // Newer than the snapshot's row: scan rows are arbitrated like snapshot rows.
    rows["events"][0]["rows"][1]["modified_time"] = json!(1_795_414_300.5);
    let (status, receipt) = s.push(&sid, rows).await;
    assert_eq!(status, StatusCode::OK, "{receipt}");
    let mut done = capture("ex_14_job_complete.json");
    done["metadata"]["job_id"] = json!(job);
    let (status, answer) = s.push(&sid, done).await;
    assert_eq!(
        (status, answer),
        (
            StatusCode::OK,
            json!({"status": "ok", "phase": "job_complete"})
        )
    );
    // Completed once applied, after the scan's rows (the queue drains
    // asynchronously).
    let deadline = Instant::now() + Duration::from_secs(5);
    let listed = loop {
        let (_, listed) = s.view(&format!("jobs/{job}")).await;
        if listed["status"] == "COMPLETED" || Instant::now() > deadline {
            break listed;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert_eq!(listed["status"], "COMPLETED", "{listed}");
    assert_eq!(listed["progress"]["percentage"], 100.0);
    assert!(listed["completed_at"].as_f64().unwrap() >= listed["created_at"].as_f64().unwrap());
    let (_, file) = s.view("tree?path=/proj_2/run_0/file_006.txt").await;
    assert_eq!(file["size"], 12345, "the scan's row is applied");
    assert_eq!(
        (file["job_id"].clone(), file["job_pending"].clone()),
        (Value::Null, json!(false))
    );

    // A path not in the index: the job is made and said pending.
    let (status, missing) = s.view("tree?path=/not/yet&on_demand_scan=true").await;
    assert_eq!(status, StatusCode::OK, "{missing}");
    assert_eq!(missing["job_pending"], true);
    let pending = missing["job_id"].as_str().unwrap().to_string();
    // Bad job_complete metadata is named; unknown jobs are 404.
    let bad = json!({"events": [], "source_type": "job_complete", "metadata": {"job_id": 5}});
    let (status, body) = s.push(&sid, bad).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        body["detail"].as_str().unwrap().contains("metadata.job_id"),
        "{body}"
    );
    let (status, body) = s.view("jobs/nope").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(
        body["detail"].as_str().unwrap().contains("`nope`"),
        "{body}"
    );
    let resp = s
        .client
        .get(format!("{}/api/v1/views/default/jobs", s.base))
        .header("X-API-Key", "other-query")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::FORBIDDEN, "scoped by datastore");
    let (status, _) = s.get("/api/v1/views/default/jobs", Role::Ingest).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "scoped by role");

    // A new session: the old session's pending job fails, and says why.
    let (_, grant) = s
        .post(SESSION, Role::Ingest, Some(json!({"task_id": "a:p"})))
        .await;
    assert_ne!(grant["session_id"].as_str().unwrap(), sid);
    let (status, failed) = s
        .get(
            &format!("/api/v1/views/default/jobs/{pending}"),
            Role::Query,
        )
        .await;
    assert_eq!(
        status,
        StatusCode::OK,
        "jobs answer while the views are not READY"
    );
    assert_eq!(failed["status"], "FAILED");
    assert!(
        failed["error"].as_str().unwrap().contains("session ended"),
        "{failed}"
    );
    assert_eq!(
        s.get("/api/v1/views/default/jobs", Role::Query).await.1["jobs"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
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
    let (status, body) = s.heartbeat(&old).await;
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
        json!([{"event": 0, "row": 1, "reason": "`size` is not an integer from 0 to 9223372036854775807"}])
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
        .post(SESSION, Role::Ingest, Some(json!({"agent": 1})))
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
    // X-Weir-Datastore names the datastore of the agent routes: any for a
    // host-level key, only its own for a datastore's key.
    let named = |key: String, ds: &'static str| {
        s.client
            .post(format!("{}{SESSION}", s.base))
            .header("X-API-Key", key)
            .header("X-Weir-Datastore", ds)
            .json(&json!({"task_id": "a:p"}))
            .send()
    };
    let resp = named(secret(Role::Admin), "lab").await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let lab_sid = resp.json::<Value>().await.unwrap()["session_id"].clone();
    let resp = named(secret(Role::Ingest), "lab").await.unwrap();
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    let resp = named(secret(Role::Ingest), "default").await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK, "its own datastore, named");
    let resp = named(secret(Role::Admin), "nope").await.unwrap();
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    let (_, sessions) = s.get("/api/v1/views/lab/stats", Role::Admin).await;
    assert!(
        sessions.to_string().contains("snapshot"),
        "lab has a session: {sessions} {lab_sid}"
    );
    let (status, _) = s
        .send("POST", SESSION, None, Some(json!({"task_id": "a:p"})))
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _) = s
        .post(SESSION, Role::Query, Some(json!({"task_id": "a:p"})))
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _) = s.get("/api/v1/views/default/stats", Role::Ingest).await;
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
    let (status, body) = s.heartbeat(&sid).await;
    assert_eq!(
        (status.as_u16(), body["error"].as_str()),
        (419, Some("session_expired"))
    );
}

#[tokio::test]
async fn sentinel_suspects_blind_spots_and_search() {
    let s = start().await;
    let sid = s.create_session().await;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let snapshot = json!({"source_type": "snapshot", "is_end": true, "events": [{"event_type": "update", "rows": [
        {"path": "/logs", "size": 4096, "modified_time": 1.0, "is_directory": true},
        {"path": "/logs/app.log", "size": 10, "modified_time": 1.0},
        {"path": "/logs/old.log", "size": 10, "modified_time": 1.0},
        {"path": "/data.csv", "size": 5, "modified_time": 1.0}
    ]}]});
    assert_eq!(s.push(&sid, snapshot).await.0, StatusCode::OK);
    let (_, tasks) = s
        .get("/api/v1/pipe/consistency/sentinel/tasks", Role::Ingest)
        .await;
    assert_eq!(tasks, json!({}));
    // A write in progress makes the file suspect; the sentinel is asked to check it.
    let (status, _) = s
        .push(&sid, json!({"source_type": "message", "events": [{"event_type": "update", "message_source": "realtime", "rows": [
            {"path": "/logs/app.log", "size": 20, "modified_time": now, "is_atomic_write": false}]}]}))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(s.view("stats").await.1["suspect_file_count"], 1);
    let (_, tasks) = s
        .get("/api/v1/pipe/consistency/sentinel/tasks", Role::Ingest)
        .await;
    assert_eq!(
        tasks,
        json!({"type": "suspect_check", "paths": ["/logs/app.log"], "view_id": "default"})
    );
    let (_, list) = s.view("suspect-list").await;
    assert_eq!(list[0]["path"], "/logs/app.log");
    let (_, tree) = s.view("tree?path=/logs/app.log").await;
    assert_eq!(tree["integrity_suspect"], true);
    // Feedback: the file vanished.
    let (status, body) = s
        .post(
            "/api/v1/pipe/consistency/sentinel/feedback",
            Role::Ingest,
            Some(json!({"type": "suspect_update", "updates": [
            {"path": "/logs/app.log", "status": "missing"}, {"path": "/x", "status": "weird"}]})),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["drivers_updated"], 1);
    assert_eq!(
        body["rejected"][0]["reason"],
        "status `weird` is not exists or missing"
    );
    assert_eq!(
        s.view("tree?path=/logs/app.log").await.0,
        StatusCode::NOT_FOUND
    );

    // An audit that lists /logs in full without old.log deletes it as a blind spot,
    // and a new file it finds is a blind-spot addition.
    assert_eq!(
        s.post("/api/v1/pipe/consistency/audit/start", Role::Ingest, None)
            .await
            .1["status"],
        "audit_started"
    );
    let audit = json!({"source_type": "audit", "events": [{"event_type": "update", "rows": [
        {"path": "/logs", "size": 4096, "modified_time": 2.0, "is_directory": true},
        {"path": "/logs/new.log", "size": 1, "modified_time": 2.0, "parent_mtime": 2.0}]}]});
    assert_eq!(s.push(&sid, audit).await.0, StatusCode::OK);
    assert_eq!(
        s.post("/api/v1/pipe/consistency/audit/end", Role::Ingest, None)
            .await
            .1["status"],
        "audit_ended"
    );
    let (_, spots) = s.view("blind-spots").await;
    assert_eq!(
        spots,
        // Additions as nodes, as fustor-fusion lists them; deletions as paths.
        json!({"additions_count": 1, "additions": [{"name": "new.log", "content_type": "file",
            "path": "/logs/new.log", "size": 1, "modified_time": 2.0, "created_time": 2.0,
            "integrity_suspect": false}], "additions_truncated": false,
            "deletion_count": 1, "deletions": ["/logs/old.log"], "deletions_truncated": false})
    );
    let (_, stats) = s.view("stats").await;
    assert_eq!(
        (
            stats["audit_cycle_count"].as_u64(),
            stats["has_blind_spot"].as_bool()
        ),
        (Some(1), Some(true))
    );

    let (status, found) = s.view("search?pattern=*.log").await;
    assert_eq!(status, StatusCode::OK);
    let paths: Vec<&str> = found
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["path"].as_str().unwrap())
        .collect();
    assert_eq!(paths, ["/logs/new.log"]);
    let (_, found) = s.view("search?pattern=data").await;
    assert_eq!(found[0]["path"], "/data.csv");
}

#[tokio::test]
async fn seed_routes_share_the_core() {
    let s = start().await;
    let (status, grant) = s
        .post(
            "/ingestor-api/v1/sessions/",
            Role::Ingest,
            Some(json!({"task_id": "seed:1"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let sid = grant["session_id"].as_str().unwrap().to_string();
    let (status, _) = s.get("/views/fs/stats", Role::Query).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    // The seed's naming: file_path, is_dir, is_snapshot_end, session id in the body.
    let push = json!({"session_id": sid, "source_type": "snapshot", "is_snapshot_end": true, "events": [
        {"event_type": "insert", "rows": [{"file_path": "/research/file.txt", "size": 10240, "modified_time": 1706000123.0, "created_time": 1706000100.0, "is_dir": false}]}]});
    let (status, receipt) = s
        .post("/ingestor-api/v1/events/", Role::Ingest, Some(push))
        .await;
    assert_eq!(status, StatusCode::OK, "{receipt}");
    let deadline = Instant::now() + Duration::from_secs(5);
    let stats = loop {
        let (status, stats) = s.get("/views/fs/stats", Role::Query).await;
        if status == StatusCode::OK || Instant::now() > deadline {
            break stats;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert_eq!(
        (
            stats["total_files"].as_u64(),
            stats["total_directories"].as_u64()
        ),
        (Some(1), Some(2))
    );
    assert!(stats.get("last_event_latency_ms").is_some());
    let (status, tree) = s
        .get("/views/fs/tree?path=/research&only_path=true", Role::Query)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        tree["children"][0],
        json!({"name": "file.txt", "content_type": "file", "path": "/research/file.txt"})
    );
    let (status, _) = s
        .post(
            &format!("/ingestor-api/v1/sessions/{sid}/heartbeat"),
            Role::Ingest,
            Some(json!({})),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, body) = s
        .post(
            "/ingestor-api/v1/events/",
            Role::Ingest,
            Some(json!({"events": []})),
        )
        .await;
    assert_eq!(
        (status, body["detail"].as_str()),
        (
            StatusCode::BAD_REQUEST,
            Some("the push has no `session_id`")
        )
    );

    // A consistency alarm locks the views until the next complete snapshot.
    let (status, _) = s
        .post("/ingestor-api/v1/consistency/alarm", Role::Ingest, None)
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, body) = s.get("/views/fs/tree", Role::Query).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        body["detail"]
            .as_str()
            .unwrap()
            .contains("consistency alarm"),
        "{body}"
    );
    let snapshot = json!({"session_id": sid, "source_type": "snapshot", "is_snapshot_end": true, "events": []});
    s.post("/ingestor-api/v1/events/", Role::Ingest, Some(snapshot))
        .await;
    assert_eq!(s.view("stats").await.0, StatusCode::OK);
    let (status, _) = s
        .post("/v1/datastores/default/alarm", Role::Query, None)
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _) = s
        .post("/v1/datastores/default/alarm", Role::Admin, None)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(s.view("stats").await.0, StatusCode::SERVICE_UNAVAILABLE);
}

#[tokio::test]
async fn a_full_queue_answers_503_with_retry_after_and_loses_nothing_accepted() {
    let mut config = DatastoreConfig::named("default");
    config.queue_rows = 2_000;
    let s = start_with(config).await;
    let sid = s.create_session().await;
    // A reader holds the index for a while, so the apply thread cannot drain
    // the queue: it fills up deterministically.
    let ds = s.host.datastore("default").unwrap().clone();
    let (held_tx, held_rx) = std::sync::mpsc::channel();
    let holder = std::thread::spawn(move || {
        ds.read_index(|_| {
            held_tx.send(()).unwrap();
            std::thread::sleep(Duration::from_millis(1500));
        })
    });
    held_rx.recv().unwrap();
    let mut accepted = 0u64;
    let mut refused = 0;
    for b in 0..10 {
        let rows: Vec<Value> = (0..500)
            .map(|i| json!({"path": format!("/b{b}/f{i}"), "size": 1, "modified_time": 1.0}))
            .collect();
        let body = json!({"session_id": sid, "source_type": "snapshot", "events": [{"event_type": "update", "rows": rows}]});
        let resp = s
            .client
            .post(format!("{}/api/v1/pipe/ingest/{sid}/events", s.base))
            .header("X-API-Key", secret(Role::Ingest))
            .json(&body)
            .send()
            .await
            .unwrap();
        match resp.status() {
            StatusCode::OK => {
                accepted += resp.json::<Value>().await.unwrap()["count"]
                    .as_u64()
                    .unwrap()
            }
            StatusCode::SERVICE_UNAVAILABLE => {
                assert_eq!(resp.headers()["retry-after"], "2");
                let body: Value = resp.json().await.unwrap();
                assert_eq!(body["error"], "busy");
                assert!(body["detail"].as_str().unwrap().contains("queue"), "{body}");
                refused += 1;
            }
            other => panic!("{other}"),
        }
    }
    // 2000 rows of room: four pushes of 500 (the first may already be taken
    // by the blocked apply thread), the rest refused whole.
    assert!(accepted <= 2_500, "{accepted}");
    assert!(refused >= 5, "{refused}");
    holder.join().unwrap();
    let end = json!({"session_id": sid, "source_type": "snapshot", "is_end": true, "events": []});
    loop {
        let (status, _) = s.push(&sid, end.clone()).await;
        if status == StatusCode::OK {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (status, stats) = s.view("stats").await;
    assert_eq!(status, StatusCode::OK);
    // Every accepted row is in the index, whatever was refused.
    assert_eq!(stats["total_files"].as_u64(), Some(accepted));
}

#[tokio::test]
async fn arbitration_rules_through_http() {
    let s = start().await;
    let sid = s.create_session().await;
    let old = 1_000_000.0;
    let snapshot = rows_push(
        "snapshot",
        "update",
        json!([
            {"path": "/d", "size": 4096, "modified_time": old, "is_directory": true},
            {"path": "/d/keep", "size": 1, "modified_time": old},
            {"path": "/d/stale", "size": 1, "modified_time": old},
            {"path": "/d/gone", "size": 1, "modified_time": old}
        ]),
    );
    assert_eq!(s.push(&sid, snapshot).await.0, StatusCode::OK);
    assert_eq!(
        s.push(&sid, snapshot_end(json!([]))).await.0,
        StatusCode::OK
    );
    let size = |tree: &Value| tree["size"].as_u64();

    // Realtime delete tombstones the path: an older snapshot row cannot bring it back...
    assert_eq!(
        s.push_rows(&sid, "message", "delete", json!([{"path": "/d/gone"}]))
            .await
            .0,
        StatusCode::OK
    );
    let row = json!({"path": "/d/gone", "size": 9, "modified_time": old});
    assert_eq!(
        s.upsert(&sid, "snapshot", row).await.0,
        StatusCode::NOT_FOUND
    );
    // ...but a realtime upsert always can.
    let row = json!({"path": "/d/gone", "size": 7, "modified_time": old});
    assert_eq!(size(&s.upsert(&sid, "message", row).await.1), Some(7));

    // Snapshot rows with the same or an older mtime are ignored; newer ones applied.
    let row = json!({"path": "/d/keep", "size": 5, "modified_time": old});
    assert_eq!(size(&s.upsert(&sid, "snapshot", row).await.1), Some(1));
    let row = json!({"path": "/d/keep", "size": 5, "modified_time": old + 1.0});
    assert_eq!(size(&s.upsert(&sid, "snapshot", row).await.1), Some(5));

    // A snapshot delete of a node changed after the scan observed it is ignored.
    let mut late = rows_push("snapshot", "delete", json!([{"path": "/d/keep"}]));
    late["events"][0]["index"] = json!((old - 10.0) * 1000.0);
    s.push(&sid, late).await;
    assert_eq!(s.view("tree?path=/d/keep").await.0, StatusCode::OK);

    // A realtime write in progress is suspect; the atomic close clears it.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let row = json!({"path": "/d/hot", "size": 1, "modified_time": now, "is_atomic_write": false});
    assert_eq!(
        s.upsert(&sid, "message", row).await.1["integrity_suspect"],
        true
    );
    let row = json!({"path": "/d/hot", "size": 2, "modified_time": old, "is_atomic_write": true});
    assert_eq!(
        s.upsert(&sid, "message", row).await.1["integrity_suspect"],
        false
    );

    // Audit: a new file under a parent that changed since the agent listed it
    // is stale (the agent's parent_path is absolute: it is not used);
    // /d/stale was not listed and is deleted at audit end unless tombstoned
    // or touched by realtime since the audit began.
    let audit = rows_push(
        "audit",
        "update",
        json!([
            {"path": "/d", "size": 4096, "modified_time": old + 5.0, "is_directory": true},
            {"path": "/d/keep", "size": 5, "modified_time": old + 1.0},
            {"path": "/d/gone", "size": 7, "modified_time": old},
            {"path": "/d/hot", "size": 2, "modified_time": old},
            {"path": "/d/late_for_parent", "size": 1, "modified_time": old, "parent_path": "/abs/disk/d", "parent_mtime": old + 1.0}
        ]),
    );
    assert_eq!(s.push(&sid, audit).await.0, StatusCode::OK);
    s.post("/api/v1/pipe/consistency/audit/end", Role::Ingest, None)
        .await;
    assert_eq!(
        s.view("tree?path=/d/late_for_parent").await.0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(s.view("tree?path=/d/stale").await.0, StatusCode::NOT_FOUND);
    let (_, spots) = s.view("blind-spots").await;
    assert_eq!(spots["deletions"], json!(["/d/stale"]));
    for kept in ["/d/keep", "/d/gone", "/d/hot"] {
        assert_eq!(
            s.view(&format!("tree?path={kept}")).await.0,
            StatusCode::OK,
            "{kept}"
        );
    }
}

#[tokio::test]
async fn oversized_bodies_are_413_json() {
    let s = start().await;
    let big = "x".repeat(5 * 1024 * 1024);
    let resp = s
        .client
        .post(format!("{}/api/v1/pipe/session/", s.base))
        .header("X-API-Key", secret(Role::Ingest))
        .header("content-type", "application/json")
        .body(format!("{{\"task_id\": \"{big}\"}}"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"], "too_large");
}

/// The tree is sent as it is written (chunks of 1 MiB) when its byte bound
/// fits `max_tree_bytes`, and written whole first when it does not: either
/// way the answer is the same JSON, with the job fields on the root, and a
/// tree over the limit is a 400 naming it, never a cut answer.
#[tokio::test]
async fn large_trees_stream_and_the_byte_limit_holds() {
    let mut ds = DatastoreConfig::named("default");
    ds.max_tree_bytes = 8 << 20;
    let s = start_with(ds).await;
    let (_, grant) = s
        .post(SESSION, Role::Ingest, Some(json!({"task_id": "a:p"})))
        .await;
    let sid = grant["session_id"].as_str().unwrap().to_string();
    // 12,000 files with long names: about 4.4 MB of tree, 5 chunks.
    let name = "n".repeat(100);
    let rows: Vec<Value> = (0..12_000)
        .map(|i| json!({"path": format!("/d{}/{name}{i}", i % 7), "size": i, "modified_time": 1.5e9 + i as f64}))
        .collect();
    for chunk in rows.chunks(4000) {
        let (status, body) = s
            .push(&sid, rows_push("snapshot", "update", json!(chunk)))
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    assert_eq!(
        s.push(&sid, snapshot_end(json!([]))).await.0,
        StatusCode::OK
    );
    let (status, tree) = s.view("tree?path=/").await;
    assert_eq!(status, StatusCode::OK, "{}", tree["detail"]);
    let files: usize = tree["children"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["children"].as_array().unwrap().len())
        .sum();
    assert_eq!(files, 12_000);
    assert_eq!(
        (tree["job_id"].clone(), tree["job_pending"].clone()),
        (Value::Null, json!(false))
    );

    // Over the limit: refused before any byte, naming it.
    let long = "x".repeat(245);
    let rows: Vec<Value> = (0..14_000)
        .map(|i| json!({"path": format!("/big/{long}{i}"), "size": i, "modified_time": 1.5e9}))
        .collect();
    for chunk in rows.chunks(4000) {
        let (status, body) = s
            .push(&sid, rows_push("message", "update", json!(chunk)))
            .await;
        assert_eq!((status, &body["rejected"]), (StatusCode::OK, &json!([])));
    }
    // Realtime rows are applied a moment after they are accepted.
    let deadline = Instant::now() + Duration::from_secs(10);
    while s.view("stats").await.1["total_files"] != 26_000 {
        assert!(Instant::now() < deadline, "the rows were not applied");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (status, body) = s.view("tree?path=/").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{}", body["detail"]);
    assert!(
        body["detail"].as_str().unwrap().contains("8388608 bytes"),
        "{}",
        body["detail"]
    );
    // Within the limit by its bytes, though not by its bound (only_path
    // leaves the metadata out): written whole, then sent.
    let (status, tree) = s.view("tree?path=/big&only_path=true").await;
    assert_eq!(status, StatusCode::OK, "{}", tree["detail"]);
    assert_eq!(tree["children"].as_array().unwrap().len(), 14_000);
}
