//! The HTTP layer on a loopback port: public health, API-key roles, JSON
//! errors, graceful shutdown.

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
