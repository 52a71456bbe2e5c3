//! Hostile producers and plugins: events crafted to make a key fail, so as
//! to quarantine it for every consumer.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};
use weir_host::auth::Role;
use weir_tests::{
    TestServer, host_with_pipeline_guest, host_with_pipeline_guest_keys, secret, test_keys,
};

fn flaky(n: i64, mode: &str) -> Value {
    json!({"event_type": "test.x", "source": "t", "payload": {"n": n, "mode": mode}})
}

#[tokio::test]
async fn errors_a_key_returns_for_events_are_dead_letters_not_a_quarantine() {
    let s = TestServer::start(host_with_pipeline_guest()).await;
    let (mut c, _) = s.subscribe("test.flaky", &[]).await;
    // A producer posts 100 events the key refuses (its own `Err`).
    let events: Vec<Value> = (0..100).map(|n| flaky(n, "error")).collect();
    s.publish(Value::Array(events)).await;
    s.publish(flaky(100, "")).await;
    // The next good event is delivered: the key was not quarantined.
    let mut delivered = None;
    while let Some(v) = c.next(Duration::from_secs(10)).await {
        assert_ne!(v["notice"], "quarantined", "{v}");
        if v.get("notice").is_none() {
            delivered = Some(v);
            break;
        }
    }
    let delivered = delivered.expect("the good event is delivered");
    assert_eq!(delivered["data"]["n"], 100);
    let (status, key) = s.get("/v1/keys/test.flaky", Role::Query).await;
    assert_eq!(status, StatusCode::OK);
    assert!(key["quarantine"].is_null(), "{key}");
    // Each refused event is a dead letter with the key's reason.
    let (_, dlq) = s
        .get("/v1/dlq?key=test.flaky&limit=1000", Role::Admin)
        .await;
    let letters = dlq["letters"].as_array().expect("letters");
    assert_eq!(letters.len(), 100);
    assert!(letters.iter().all(|l| l["error_kind"] == "plugin_error"));
    assert!(
        letters[0]["error"]
            .as_str()
            .unwrap_or_default()
            .contains("refused on purpose"),
        "{}",
        letters[0]
    );
}

/// The test keys' host-level admin secret.
const HOST_ADMIN: &str = "test-admin-secret";

#[tokio::test]
async fn a_datastore_admin_sees_and_counts_only_its_own_dead_letters() {
    let mut keys = test_keys();
    keys.insert("default-admin", Role::Admin, "default");
    let s = TestServer::start(host_with_pipeline_guest_keys(keys)).await;
    // One subscription in default's scope (the query key's), one in the
    // host's (the host admin's): each gets its own dead letter per event.
    let (mut scoped, _) = s.subscribe("test.flaky", &[]).await;
    let mut host_wide = s
        .stream_as(&secret(Role::Admin), "test.flaky", &[("sub", "host")])
        .await
        .expect("the host admin subscribes");
    assert_eq!(
        host_wide
            .next(Duration::from_secs(10))
            .await
            .expect("a line")["notice"],
        "subscribed"
    );
    s.publish(Value::Array((0..3).map(|n| flaky(n, "error")).collect()))
        .await;
    let held = |key: &'static str| {
        let s = &s;
        async move {
            let (status, dlq) = s.send_as("GET", "/v1/dlq", Some(key), None).await;
            assert_eq!(status, StatusCode::OK, "{dlq}");
            dlq
        }
    };
    for _ in 0..200 {
        if held(HOST_ADMIN).await["total"] == 6 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(held(HOST_ADMIN).await["total"], 6);
    let own = held("default-admin").await;
    assert_eq!(own["total"], 3, "{own}");
    // Deleting one of its own leaves it two: the host's are not its count.
    let (status, del) = s
        .send_as("DELETE", "/v1/dlq?limit=1", Some("default-admin"), None)
        .await;
    assert_eq!(status, StatusCode::OK, "{del}");
    assert_eq!(
        (del["deleted"].as_u64(), del["remaining"].as_u64()),
        (Some(1), Some(2)),
        "{del}"
    );
    assert_eq!(held(HOST_ADMIN).await["total"], 5);
    drop((scoped.next(Duration::from_millis(1)).await, host_wide));
}

#[tokio::test]
async fn a_dead_letter_replayed_with_no_consumer_attached_stays() {
    let s = TestServer::start(host_with_pipeline_guest()).await;
    let (mut c, _) = s.subscribe("test.flaky", &[]).await;
    s.publish(flaky(1, "error")).await;
    // Wait for the letter, then leave.
    let mut letters = Value::Null;
    for _ in 0..100 {
        let (_, dlq) = s.get("/v1/dlq", Role::Admin).await;
        if dlq["letters"].as_array().is_some_and(|l| !l.is_empty()) {
            letters = dlq;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let id = letters["letters"][0]["id"].clone();
    assert!(id.is_u64(), "{letters}");
    drop(c.next(Duration::from_millis(10)).await);
    drop(c);
    s.wait_subscriptions("no subscription", |subs| {
        subs["subscriptions"]
            .as_array()
            .is_some_and(|a| a.is_empty())
    })
    .await;
    let (status, replay) = s
        .post("/v1/dlq/replay", Role::Admin, Some(json!({"ids": [id]})))
        .await;
    assert_eq!(status, StatusCode::OK, "{replay}");
    assert_eq!(replay["results"][0]["outcome"], "skipped", "{replay}");
    assert!(
        replay["results"][0]["error"]
            .as_str()
            .unwrap()
            .contains("no consumer"),
        "{replay}"
    );
    assert_eq!(replay["remaining"], 1, "the letter was lost: {replay}");
}

#[tokio::test]
async fn nothing_is_accepted_once_shutdown_began() {
    let host = host_with_pipeline_guest();
    assert!(host.pipeline().shutdown(Duration::from_secs(5)).await);
    let event = weir_host::producer::parse_events(flaky(1, "").to_string().as_bytes())
        .unwrap()
        .valid
        .into_iter()
        .map(|(_, e)| e)
        .collect();
    assert!(host.pipeline().try_publish(event).is_err());
}
