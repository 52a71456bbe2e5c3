//! The permission model, route by route: every operation of
//! `/openapi.json` called with no key and with every key (each role of
//! `default`, each role of `lab`, host-level query and admin), against
//! both datastores, and the answer checked against the README's table. Then
//! what scoping means for data: events, dead letters and metrics of one
//! datastore are not another's.

use std::sync::Arc;
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};
use weir_host::auth::{Keys, Role};
use weir_host::datastore::DatastoreConfig;
use weir_host::runtime::{Host, HostConfig};
use weir_tests::{SESSION, TestServer};

/// A key of the table: its secret, role and datastore (`None`: host).
#[derive(Clone, Copy, Debug)]
struct K {
    secret: &'static str,
    role: Role,
    datastore: Option<&'static str>,
}

const KEYS: [K; 8] = [
    K {
        secret: "d-ingest",
        role: Role::Ingest,
        datastore: Some("default"),
    },
    K {
        secret: "d-query",
        role: Role::Query,
        datastore: Some("default"),
    },
    K {
        secret: "d-admin",
        role: Role::Admin,
        datastore: Some("default"),
    },
    K {
        secret: "l-ingest",
        role: Role::Ingest,
        datastore: Some("lab"),
    },
    K {
        secret: "l-query",
        role: Role::Query,
        datastore: Some("lab"),
    },
    K {
        secret: "l-admin",
        role: Role::Admin,
        datastore: Some("lab"),
    },
    K {
        secret: "h-query",
        role: Role::Query,
        datastore: None,
    },
    K {
        secret: "h-admin",
        role: Role::Admin,
        datastore: None,
    },
];

async fn start() -> TestServer {
    let mut keys = Keys::new();
    for k in KEYS {
        match k.datastore {
            Some(d) => keys.insert(k.secret, k.role, d),
            None => keys.insert_host(k.secret, k.role),
        }
    }
    let host = Host::new(HostConfig {
        plugin_dir: Some(weir_host::EXAMPLE_PLUGIN_DIR.into()),
        engine: weir_tests::test_engine(),
        keys,
        datastores: vec![
            DatastoreConfig::named("default"),
            DatastoreConfig::named("lab"),
        ],
        ..Default::default()
    })
    .expect("host starts");
    TestServer::start(Arc::new(host)).await
}

async fn call(
    s: &TestServer,
    key: Option<&str>,
    method: &str,
    path: &str,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let mut req = s
        .client
        .request(
            method.to_ascii_uppercase().parse().unwrap(),
            format!("{}{path}", s.base),
        )
        .timeout(Duration::from_secs(10));
    if let Some(k) = key {
        req = req.header("X-API-Key", k);
    }
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await.expect("an answer");
    let status = resp.status();
    // Streams are not read: only their status matters here.
    if resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|t| t.contains("ndjson") || t.contains("event-stream"))
    {
        return (status, Value::Null);
    }
    let text = resp.text().await.unwrap_or_default();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

/// The next NDJSON line within `wait`.
async fn next(lines: &mut weir_host::consume::NdjsonLines, wait: Duration) -> Option<Value> {
    match tokio::time::timeout(wait, lines.next_line()).await {
        Ok(Ok(Some(line))) => serde_json::from_slice(&line).ok(),
        _ => None,
    }
}

/// What the README's permission table allows `k` on `op` (with `ds` the
/// datastore in the path, if any). `None`: refused (401/403 expected).
fn allowed(k: &K, route: &str, role: Role, ds: Option<&str>) -> bool {
    let role_fits = k.role == Role::Admin || k.role == role;
    if !role_fits {
        return false;
    }
    let host_only = route == "/v1/plugins" || route.ends_with("/resume");
    let own_datastore = route.starts_with("/api/v1/pipe/")
        || route.starts_with("/ingestor-api/")
        || route.starts_with("/views/fs/");
    match (k.datastore, ds) {
        (Some(_), _) if host_only => false,
        (None, _) if own_datastore => false,
        (Some(mine), Some(wanted)) => mine == wanted,
        _ => true,
    }
}

#[tokio::test]
async fn every_route_answers_every_key_as_the_table_says() {
    let s = start().await;
    let (_, doc) = call(&s, None, "GET", "/openapi.json", None).await;
    let mut checked = 0;
    for (route, item) in doc["paths"].as_object().expect("paths") {
        for (method, op) in item.as_object().expect("operations") {
            let role = match op["x-weir-role"].as_str() {
                Some("ingest") => Role::Ingest,
                Some("query") => Role::Query,
                Some("admin") => Role::Admin,
                _ => continue, // public
            };
            let datastores: Vec<Option<&str>> = if route.contains("{datastore}") {
                vec![Some("default"), Some("lab")]
            } else {
                vec![None]
            };
            for ds in datastores {
                let path = route
                    .replace("{datastore}", ds.unwrap_or_default())
                    .replace("{key}", "json.field_equals")
                    .replace("{sid}", "no-such-session");
                let body = (method != "get" && method != "delete").then(|| json!({}));
                let what = format!("{method} {path}");
                let (status, answer) = call(&s, None, method, &path, body.clone()).await;
                assert_eq!(
                    status,
                    StatusCode::UNAUTHORIZED,
                    "{what} without a key: {answer}"
                );
                for k in KEYS {
                    let (status, answer) =
                        call(&s, Some(k.secret), method, &path, body.clone()).await;
                    let refused =
                        status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN;
                    if allowed(&k, route, role, ds) {
                        assert!(!refused, "{what} with {k:?}: refused ({status}) {answer}");
                        // 503 (views not ready) and 502 (a plugin's
                        // refusal) are answers; 500 is a bug.
                        assert_ne!(
                            status,
                            StatusCode::INTERNAL_SERVER_ERROR,
                            "{what} with {k:?}: {answer}"
                        );
                    } else {
                        assert_eq!(status, StatusCode::FORBIDDEN, "{what} with {k:?}: {answer}");
                        assert!(answer["detail"].as_str().is_some(), "{what}: {answer}");
                    }
                    checked += 1;
                }
            }
        }
    }
    assert!(checked > 300, "only {checked} calls");
}

#[tokio::test]
async fn a_datastore_sees_its_own_changes_and_events_only() {
    let s = start().await;
    // lab's query key streams fs.changes; lab and default both change.
    let resp = s
        .client
        .get(format!("{}/v1/keys/fs.changes/stream", s.base))
        .header("X-API-Key", "l-query")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let mut lab = weir_host::consume::NdjsonLines::new(resp);
    let first = next(&mut lab, Duration::from_secs(5)).await.unwrap();
    assert_eq!(first["notice"], "subscribed", "{first}");
    assert!(
        first["subscription_id"]
            .as_str()
            .unwrap()
            .starts_with("lab/"),
        "{first}"
    );
    for (key, ds, file) in [
        ("d-ingest", "default", "/secret-of-default.txt"),
        ("l-ingest", "lab", "/lab.txt"),
    ] {
        let (status, grant) = call(
            &s,
            Some(key),
            "POST",
            SESSION,
            Some(json!({"task_id": format!("{ds}:p")})),
        )
        .await;
        assert_eq!(status, 200, "{grant}");
        let sid = grant["session_id"].as_str().unwrap();
        let push = json!({"session_id": sid, "source_type": "snapshot", "is_end": true,
            "events": [{"event_type": "update", "rows": [{"path": file, "size": 1, "modified_time": 1}]}]});
        let (status, answer) = call(
            &s,
            Some(key),
            "POST",
            &format!("/api/v1/pipe/ingest/{sid}/events"),
            Some(push),
        )
        .await;
        assert_eq!(status, 200, "{answer}");
    }
    // Generic events: lab's own, default's, and a forged datastore source.
    let (status, answer) = call(&s, Some("d-ingest"), "POST", "/v1/events", Some(json!([
        {"event_type": "fs.insert", "source": "datastore/lab", "payload": {"path": "/forged.txt"}},
        {"event_type": "fs.insert", "source": "app", "payload": {"path": "/default-event.txt"}},
    ]))).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["rejected"][0]["index"], 0, "{answer}");
    assert!(
        answer["rejected"][0]["reason"]
            .as_str()
            .unwrap()
            .contains("reserved"),
        "{answer}"
    );
    let (status, _) = call(
        &s,
        Some("l-ingest"),
        "POST",
        "/v1/events",
        Some(json!(
            {"event_type": "fs.insert", "source": "app", "payload": {"path": "/lab-event.txt"}}
        )),
    )
    .await;
    assert_eq!(status, 200);
    let mut seen = Vec::new();
    while let Some(v) = next(&mut lab, Duration::from_millis(1500)).await {
        if let Some(p) = v["data"]["path"].as_str() {
            seen.push(p.to_string());
        }
    }
    assert!(seen.contains(&"/lab.txt".to_string()), "{seen:?}");
    assert!(seen.contains(&"/lab-event.txt".to_string()), "{seen:?}");
    assert!(
        seen.iter()
            .all(|p| !p.contains("default") && !p.contains("forged")),
        "lab saw another datastore's events: {seen:?}"
    );
    // Metrics: lab's key sees lab's series, no default's.
    let (status, text) = call(&s, Some("l-query"), "GET", "/metrics", None).await;
    assert_eq!(status, 200);
    let text = text.as_str().unwrap_or_default().to_string();
    assert!(text.contains("datastore=\"lab\""), "{text}");
    assert!(
        !text.contains("datastore=\"default\""),
        "lab's metrics show default"
    );
    let (_, all) = call(&s, Some("h-query"), "GET", "/metrics", None).await;
    assert!(
        all.as_str()
            .unwrap_or_default()
            .contains("datastore=\"default\"")
    );
    // Dead letters and plugins: a datastore's admin sees its own, not the
    // host's.
    let (status, _) = call(&s, Some("l-admin"), "GET", "/v1/plugins", None).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, letters) = call(&s, Some("l-admin"), "GET", "/v1/dlq", None).await;
    assert_eq!(status, 200);
    assert!(
        letters["letters"]
            .as_array()
            .unwrap()
            .iter()
            .all(|l| l["subscription_id"]
                .as_str()
                .unwrap_or_default()
                .starts_with("lab/")),
        "{letters}"
    );
}
