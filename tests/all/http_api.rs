//! The HTTP layer on a loopback port: public health, API-key roles, JSON
//! errors, graceful shutdown, and the OpenAPI document against the routes
//! really served.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::Value;
use weir_host::auth::Role;
use weir_tests::{TestServer, host_with_examples, secret};

async fn start() -> TestServer {
    TestServer::start(host_with_examples()).await
}

async fn get(server: &TestServer, path: &str, key: Option<Role>) -> (StatusCode, Value) {
    server.send("GET", path, key, None).await
}

#[tokio::test]
async fn healthz_is_public() {
    let s = start().await;
    let (status, body) = get(&s, "/healthz", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["status"], "ok");
}

#[tokio::test]
async fn the_root_is_public_and_names_the_service() {
    let s = start().await;
    let (status, body) = get(&s, "/", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        (body["name"].as_str(), body["openapi"].as_str()),
        (Some("weir"), Some("/openapi.json"))
    );
    assert!(
        body["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{body}"
    );
}

#[tokio::test]
async fn keys_need_a_query_or_admin_key() {
    let s = start().await;
    let (status, body) = get(&s, "/v1/keys", None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        body,
        serde_json::json!({"error": "unauthorized", "detail": "missing X-API-Key header"})
    );
    let resp = reqwest::Client::new()
        .get(format!("{}/v1/keys", s.base))
        .header("X-API-Key", "wrong")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    let (status, body) = get(&s, "/v1/keys", Some(Role::Ingest)).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(body["error"], "forbidden");
    assert!(
        body["detail"].as_str().unwrap().contains("needs `query`"),
        "{body}"
    );
    for role in [Role::Query, Role::Admin] {
        let (status, body) = get(&s, "/v1/keys", Some(role)).await;
        assert_eq!(status, StatusCode::OK);
        let keys: Vec<&str> = body
            .as_array()
            .unwrap()
            .iter()
            .map(|k| k["key"].as_str().unwrap())
            .collect();
        assert_eq!(
            keys,
            [
                "enrich.context",
                "fs.changes",
                "fs.large_files",
                "json.field_equals"
            ]
        );
    }
}

#[tokio::test]
async fn one_key_and_unknown_key() {
    let s = start().await;
    let (status, body) = get(&s, "/v1/keys/fs.large_files", Some(Role::Query)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["params"][0]["name"], "min_size");
    assert_eq!(body["params"][0]["type"], "int");
    let (status, body) = get(&s, "/v1/keys/nope", Some(Role::Query)).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(
        body,
        serde_json::json!({"error": "not_found", "detail": "no key `nope`"})
    );
    let (status, body) = get(&s, "/no/such/route", Some(Role::Admin)).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body["error"], "not_found");
}

#[tokio::test]
async fn plugins_are_admin_only() {
    let s = start().await;
    let (status, _) = get(&s, "/v1/plugins", Some(Role::Query)).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, body) = get(&s, "/v1/plugins", Some(Role::Admin)).await;
    assert_eq!(status, StatusCode::OK);
    let loaded = body["loaded"].as_array().unwrap();
    assert_eq!(loaded.len(), 4);
    assert_eq!(loaded[0]["name"], "enrich");
    assert_eq!(loaded[0]["hash"].as_str().unwrap().len(), 64);
    assert_eq!(body["failed"], serde_json::json!([]));
}

#[tokio::test]
async fn shuts_down_gracefully() {
    let mut s = start().await;
    assert_eq!(get(&s, "/healthz", None).await.0, StatusCode::OK);
    tokio::time::timeout(std::time::Duration::from_secs(5), s.stop())
        .await
        .expect("stops in time");
    assert!(reqwest::get(format!("{}/healthz", s.base)).await.is_err());
}

#[tokio::test]
async fn readyz_is_public_and_turns_503_when_shutting_down() {
    let s = start().await;
    let (status, body) = s.send("GET", "/readyz", None, None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["status"], "ready");
    assert_eq!(body["keys"], 4);
    assert_eq!(body["failed_plugins"], 0);
    assert!(body.get("datastores").is_some());
    s.host
        .pipeline()
        .shutdown(std::time::Duration::from_secs(1))
        .await;
    let (status, body) = s.send("GET", "/readyz", None, None).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["error"], "unavailable");
}

#[tokio::test]
async fn a_bearer_token_works_like_x_api_key() {
    let s = start().await;
    let resp = reqwest::Client::new()
        .get(format!("{}/v1/keys", s.base))
        .header("Authorization", format!("Bearer {}", secret(Role::Query)))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let resp = reqwest::Client::new()
        .get(format!("{}/v1/keys", s.base))
        .header("Authorization", "Bearer nope")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
}

/// Paths clients count on: each must be in `/openapi.json`.
const KNOWN_PATHS: [&str; 41] = [
    "/",
    "/healthz",
    "/readyz",
    "/openapi.json",
    "/metrics",
    "/v1/keys",
    "/v1/keys/{key}",
    "/v1/keys/{key}/stream",
    "/v1/keys/{key}/resume",
    "/v1/events",
    "/v1/subscriptions",
    "/v1/consumers",
    "/v1/consumers/{name}/ack",
    "/v1/consumers/{name}",
    "/v1/dlq",
    "/v1/dlq/replay",
    "/v1/plugins",
    "/v1/datastores/{datastore}/alarm",
    "/api/v1/pipe/session/",
    "/api/v1/pipe/session",
    "/api/v1/pipe/session/{sid}/heartbeat",
    "/api/v1/pipe/session/{sid}",
    "/api/v1/pipe/ingest/{sid}/events",
    "/api/v1/pipe/consistency/audit/start",
    "/api/v1/pipe/consistency/audit/end",
    "/api/v1/pipe/consistency/sentinel/tasks",
    "/api/v1/pipe/consistency/sentinel/feedback",
    "/api/v1/views/{datastore}/tree",
    "/api/v1/views/{datastore}/stats",
    "/api/v1/views/{datastore}/search",
    "/api/v1/views/{datastore}/suspect-list",
    "/api/v1/views/{datastore}/blind-spots",
    "/api/v1/views/{datastore}/jobs",
    "/api/v1/views/{datastore}/jobs/{job_id}",
    "/ingestor-api/v1/sessions/",
    "/ingestor-api/v1/sessions/{sid}/heartbeat",
    "/ingestor-api/v1/sessions/{sid}",
    "/ingestor-api/v1/events/",
    "/ingestor-api/v1/consistency/alarm",
    "/views/fs/tree",
    "/views/fs/stats",
];

#[tokio::test]
async fn openapi_json_is_public_and_describes_the_routes() {
    let s = start().await;
    let (status, doc) = get(&s, "/openapi.json", None).await;
    assert_eq!(status, StatusCode::OK, "{doc}");
    let version = doc["openapi"].as_str().expect("an OpenAPI version");
    assert!(version.starts_with("3.1."), "OpenAPI {version}");
    assert_eq!(doc["info"]["title"], "Weir");
    assert_eq!(doc["info"]["version"], env!("CARGO_PKG_VERSION"));
    let paths = doc["paths"].as_object().expect("paths");
    for path in KNOWN_PATHS {
        assert!(paths.contains_key(path), "`{path}` is not documented");
    }
    let stream = &paths["/v1/keys/{key}/stream"]["get"]["responses"]["200"]["content"];
    assert!(stream.get("text/event-stream").is_some(), "{stream}");
    assert!(stream.get("application/x-ndjson").is_some(), "{stream}");
    let metrics = &paths["/metrics"]["get"]["responses"]["200"]["content"];
    assert!(
        metrics
            .as_object()
            .is_some_and(|c| c.keys().all(|t| t.starts_with("text/plain"))),
        "{metrics}"
    );
    let schemes = &doc["components"]["securitySchemes"];
    assert_eq!(schemes["api_key"]["name"], "X-API-Key", "{schemes}");
    assert_eq!(schemes["bearer"]["scheme"], "bearer", "{schemes}");
}

/// A plausible value for a path parameter.
fn plausible(param: &str) -> &'static str {
    match param {
        "key" => "fs.large_files",
        "sid" => "no-such-session",
        "datastore" => "default",
        "name" => "no-such-consumer",
        "job_id" => "no-such-job",
        other => panic!("no plausible value for path parameter `{other}`: add one"),
    }
}

/// `template` with its `{param}`s replaced by plausible values.
fn concrete(template: &str) -> String {
    template
        .split('/')
        .map(
            |segment| match segment.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
                Some(param) => plausible(param),
                None => segment,
            },
        )
        .collect::<Vec<_>>()
        .join("/")
}

/// Sends `method path` (with the key of `role`, if any, and no body) and
/// reads the status; the body only if it ends soon (a stream does not).
async fn probe(
    s: &TestServer,
    method: &str,
    path: &str,
    role: Option<Role>,
) -> (StatusCode, Option<Value>) {
    let method = method.to_ascii_uppercase().parse().expect("an HTTP method");
    let mut req = s.client.request(method, format!("{}{path}", s.base));
    if let Some(role) = role {
        req = req.header("X-API-Key", secret(role));
    }
    let resp = tokio::time::timeout(Duration::from_secs(10), req.send())
        .await
        .expect("the answer's head comes in time")
        .expect("the request is answered");
    let status = resp.status();
    let body = match tokio::time::timeout(Duration::from_millis(500), resp.bytes()).await {
        Ok(Ok(bytes)) => serde_json::from_slice(&bytes).ok(),
        _ => None,
    };
    (status, body)
}

/// Every operation of the document is really served, and secured as
/// documented: without a key it answers 401 unless it has no security;
/// with an admin key it is never the router's fallback 404 (`no such
/// route`) nor a 405. The converse, a route served but not documented,
/// cannot exist by construction: the router is built from the same
/// `#[utoipa::path]` annotations as the document (`OpenApiRouter` and
/// `routes!` in `weir_host::http`), never with a plain `.route(...)`.
#[tokio::test]
async fn every_documented_operation_is_served_and_secured_as_documented() {
    let s = start().await;
    let (status, doc) = get(&s, "/openapi.json", None).await;
    assert_eq!(status, StatusCode::OK);
    let mut probed = 0;
    for (template, item) in doc["paths"].as_object().expect("paths") {
        let path = concrete(template);
        for (method, op) in item.as_object().expect("a path item") {
            let what = format!("{} {template}", method.to_ascii_uppercase());
            let public = match op.get("security") {
                None => true,
                Some(requirements) => requirements.as_array().is_some_and(|r| {
                    r.is_empty()
                        || r.iter()
                            .any(|x| x.as_object().is_some_and(|o| o.is_empty()))
                }),
            };
            let (status, body) = probe(&s, method, &path, None).await;
            if public {
                assert_ne!(
                    status,
                    StatusCode::UNAUTHORIZED,
                    "{what} is public: {body:?}"
                );
            } else {
                assert_eq!(
                    status,
                    StatusCode::UNAUTHORIZED,
                    "{what} without a key: {body:?}"
                );
                let body = body.expect("a JSON error");
                assert_eq!(body["error"], "unauthorized", "{what}: {body}");
            }
            let (status, body) = probe(&s, method, &path, Some(Role::Admin)).await;
            assert_ne!(
                status,
                StatusCode::METHOD_NOT_ALLOWED,
                "{what} is not served"
            );
            let fallback = status == StatusCode::NOT_FOUND
                && body
                    .as_ref()
                    .is_some_and(|b| b["detail"] == "no such route");
            assert!(!fallback, "{what} is not served: {body:?}");
            probed += 1;
        }
    }
    assert!(probed >= 36, "only {probed} operations documented");
}
