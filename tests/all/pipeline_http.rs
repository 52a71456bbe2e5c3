//! The event pipeline end to end over HTTP, with the real example plugins
//! and the `test.flaky` guest: events in, params, subscriptions and their
//! lifecycle, ordering, drops, history, dead letters, quarantine, fs changes.

use std::collections::BTreeSet;
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};
use weir_host::auth::Role;
use weir_tests::{NdjsonStream, TestServer, host_with_pipeline_guest, snapshot_end};

const QUIET: Duration = Duration::from_millis(400);

async fn server() -> TestServer {
    TestServer::start(host_with_pipeline_guest()).await
}

fn flaky(n: i64, mode: &str) -> Value {
    json!({"event_type": "test.x", "source": "t", "payload": {"n": n, "mode": mode}})
}

/// Envelopes until quiet; notices are returned apart.
async fn collect(s: &mut NdjsonStream) -> (Vec<Value>, Vec<Value>) {
    s.drain(QUIET)
        .await
        .into_iter()
        .partition(|v| v.get("notice").is_none())
}

#[tokio::test]
async fn events_are_accepted_rejected_and_deduplicated() {
    let s = server().await;
    let body = s
        .publish(json!([
            {"event_id": "a", "event_type": "test.x", "source": "t", "payload": {"n": 1}},
            {"event_id": "a", "event_type": "test.x", "source": "t", "payload": {"n": 1}},
            {"event_id": "b", "event_type": "test x", "source": "t", "payload": {}},
            {"event_type": "test.x", "source": "t", "payload": {}, "correlation_id": "c-1"}
        ]))
        .await;
    assert_eq!(body["accepted"].as_array().unwrap().len(), 2, "{body}");
    assert_eq!(body["accepted"][0]["event_id"], "a");
    assert_eq!(body["accepted"][1]["index"], 3);
    assert_eq!(body["accepted"][1]["event_id"].as_str().unwrap().len(), 36);
    let (s0, s1) = (
        body["accepted"][0]["seq"].as_u64().unwrap(),
        body["accepted"][1]["seq"].as_u64().unwrap(),
    );
    assert_eq!(s1, s0 + 1);
    assert_eq!(body["duplicates"], json!([{"index": 1, "event_id": "a"}]));
    assert_eq!(body["rejected"][0]["index"], 2);
    assert!(
        body["rejected"][0]["reason"]
            .as_str()
            .unwrap()
            .contains("event_type"),
        "{body}"
    );

    // A later request with a seen id is a duplicate too (a safe retry).
    let again = s
        .publish(json!({"event_id": "a", "event_type": "test.x", "source": "t", "payload": {}}))
        .await;
    assert_eq!(again["duplicates"][0]["event_id"], "a");
    assert_eq!(again["accepted"], json!([]));

    // Nothing usable: 422 with every reason.
    let (status, body) = s
        .post(
            "/v1/events",
            Role::Ingest,
            Some(json!([{"event_type": "x"}, 5])),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["error"], "rejected");
    assert_eq!(body["rejected"].as_array().unwrap().len(), 2);
    assert!(
        body["detail"]
            .as_str()
            .unwrap()
            .contains("`source` is required")
    );

    let (status, body) = s.post("/v1/events", Role::Ingest, Some(json!("x"))).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let (status, _) = s.post("/v1/events", Role::Query, Some(flaky(1, ""))).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn bad_params_are_400_naming_the_param() {
    let s = server().await;
    let err = |r: Result<NdjsonStream, (StatusCode, Value)>| match r {
        Err(e) => e,
        Ok(_) => panic!("subscription accepted"),
    };
    let (status, body) = err(s.stream("fs.large_files", &[]).await);
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"], "invalid_param");
    assert!(
        body["detail"]
            .as_str()
            .unwrap()
            .starts_with("param `min_size`: required int parameter is missing"),
        "{body}"
    );
    let (_, body) = err(s.stream("fs.large_files", &[("min_size", "big")]).await);
    assert_eq!(body["detail"], "param `min_size`: `big` is not an integer");
    let (_, body) = err(s
        .stream("fs.large_files", &[("min_size", "1"), ("colour", "red")])
        .await);
    assert!(
        body["detail"]
            .as_str()
            .unwrap()
            .contains("param `colour`: unknown parameter of key `fs.large_files` (known: min_size"),
        "{body}"
    );
    // Listed values are checked after the key's own normalization.
    let (_, body) = err(s.stream("fs.changes", &[("extensions", "pdf,exe")]).await);
    assert!(
        body["detail"]
            .as_str()
            .unwrap()
            .contains("`exe` is not one of"),
        "{body}"
    );
    // normalize-params itself refusing.
    let (status, body) = err(s.stream("test.flaky", &[("sub", "a/b")]).await);
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        body["detail"]
            .as_str()
            .unwrap()
            .contains("may not contain '/'"),
        "{body}"
    );
    let (status, body) = err(s.stream("test.flaky", &[("from", "yesterday")]).await);
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body["detail"].as_str().unwrap().contains("param `from`"));
    let (status, _) = err(s.stream("no.such.key", &[]).await);
    assert_eq!(status, StatusCode::NOT_FOUND);

    let resp = s
        .client
        .get(format!("{}/v1/keys/test.flaky/stream", s.base))
        .header("X-API-Key", weir_tests::secret(Role::Query))
        .header("Accept", "text/html")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::NOT_ACCEPTABLE);
    let resp = s
        .client
        .get(format!("{}/v1/keys/test.flaky/stream", s.base))
        .header("X-API-Key", weir_tests::secret(Role::Ingest))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn normalization_and_subscription_identity() {
    let s = server().await;
    let (_a, a) = s.subscribe("test.flaky", &[("sub", " Ops ")]).await;
    assert_eq!(a["params"], json!({"sub": "ops", "min": "0"}));
    assert_eq!(a["buffer_size"], 16);
    assert_eq!(a["workers"], 2);
    let id = a["subscription_id"].as_str().unwrap();
    // A datastore key's subscriptions are its datastore's.
    assert!(id.starts_with("default/test.flaky@"), "{id}");
    // Same subscription-key value after normalization, other non-key param.
    let (_b, b) = s
        .subscribe("test.flaky", &[("sub", "OPS"), ("min", "5")])
        .await;
    assert_eq!(b["subscription_id"], id);
    let (_c, c) = s.subscribe("test.flaky", &[("sub", "dev")]).await;
    assert_ne!(c["subscription_id"], id);
    // A key without subscription-key params: the key itself.
    let (_d, d) = s.subscribe("fs.large_files", &[("min_size", "1")]).await;
    assert_eq!(d["subscription_id"], "default/fs.large_files");

    let subs = s
        .wait_subscriptions("three subscriptions", |b| {
            b["subscriptions"].as_array().is_some_and(|a| a.len() == 3)
        })
        .await;
    let ops = subs["subscriptions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["subscription_id"] == id)
        .unwrap();
    assert_eq!(ops["consumers"].as_array().unwrap().len(), 2);
    assert_eq!(ops["phase"], "active");
}

#[tokio::test]
async fn pre_consume_once_per_subscription_cleanup_when_the_last_consumer_leaves() {
    let s = server().await;
    let state = |tag: &str| {
        s.host
            .host_api()
            .state_of("enrich", &format!("tag-{tag}"))
            .is_some()
    };
    let (a1, first) = s.subscribe("enrich.context", &[("tag", "alpha")]).await;
    let (a2, _) = s.subscribe("enrich.context", &[("tag", " ALPHA")]).await;
    let (a3, _) = s.subscribe("enrich.context", &[("tag", "alpha")]).await;
    let (b1, other) = s.subscribe("enrich.context", &[("tag", "beta")]).await;
    assert_ne!(first["subscription_id"], other["subscription_id"]);
    let counts = |b: &Value| {
        (
            b["pre_consume_runs"].as_u64().unwrap(),
            b["cleanup_runs"].as_u64().unwrap(),
        )
    };
    let (_, body) = s.get("/v1/subscriptions", Role::Admin).await;
    assert_eq!(
        counts(&body),
        (2, 0),
        "one pre-consume per subscription: {body}"
    );
    assert!(state("alpha") && state("beta"));

    // The key's output carries its pre-consume record.
    s.publish(json!({"event_type": "any.thing", "source": "t", "payload": {"k": 1}}))
        .await;
    let mut a1 = a1;
    let env = a1.envelope().await;
    assert_eq!(env["data"]["enrichment"]["tag"], "alpha");
    assert_eq!(
        env["data"]["enrichment"]["subscription"]["subscription_id"],
        first["subscription_id"]
    );

    drop(a1);
    drop(a2);
    let body = s
        .wait_subscriptions("two alpha consumers gone", |b| {
            b["subscriptions"].as_array().unwrap().iter().any(|x| {
                x["subscription_id"] == first["subscription_id"]
                    && x["consumers"].as_array().unwrap().len() == 1
            })
        })
        .await;
    assert_eq!(
        counts(&body),
        (2, 0),
        "no cleanup while one consumer remains"
    );
    assert!(state("alpha"));
    drop(a3);
    let body = s
        .wait_subscriptions("alpha cleaned up", |b| counts(b).1 == 1)
        .await;
    assert_eq!(body["subscriptions"].as_array().unwrap().len(), 1);
    assert!(!state("alpha") && state("beta"));

    // A newcomer after the cleanup runs pre-consume again.
    let (_a4, _) = s.subscribe("enrich.context", &[("tag", "alpha")]).await;
    let (_, body) = s.get("/v1/subscriptions", Role::Admin).await;
    assert_eq!(counts(&body), (3, 1));
    drop(b1);
    s.wait_subscriptions("beta cleaned up", |b| counts(b).1 == 2)
        .await;
    assert!(!state("beta") && state("alpha"));
}

#[tokio::test]
async fn a_failing_pre_consume_refuses_the_subscription_with_its_error() {
    let s = server().await;
    let (status, body) = match s.stream("test.flaky", &[("sub", "Refuse")]).await {
        Err(e) => e,
        Ok(_) => panic!("accepted"),
    };
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{body}");
    assert_eq!(body["error"], "pre_consume_failed");
    assert!(
        body["detail"]
            .as_str()
            .unwrap()
            .contains("refused on purpose"),
        "{body}"
    );
    let (_, subs) = s.get("/v1/subscriptions", Role::Admin).await;
    assert_eq!(subs["subscriptions"], json!([]), "nothing left behind");
    // The hostile key refuses every subscription the same way.
    let (status, body) = match s.stream("hostile.chaos", &[]).await {
        Err(e) => e,
        Ok(_) => panic!("accepted"),
    };
    assert_eq!(status, StatusCode::NOT_FOUND, "not loaded here: {body}");
}

#[tokio::test]
async fn match_then_process_in_bus_order_with_parallel_workers() {
    let s = server().await;
    let (mut c, sub) = s.subscribe("test.flaky", &[("min", "5")]).await;
    let events: Vec<Value> = (0..200)
        .map(|n| flaky(n, if n % 7 == 0 { "drop" } else { "" }))
        .collect();
    let answer = s.publish(Value::Array(events)).await;
    let first_seq = answer["accepted"][0]["seq"].as_u64().unwrap();
    let (envs, notices) = collect(&mut c).await;
    assert!(notices.is_empty(), "{notices:?}");
    let ns: Vec<i64> = envs
        .iter()
        .map(|e| e["data"]["n"].as_i64().unwrap())
        .collect();
    let want: Vec<i64> = (5..200).filter(|n| n % 7 != 0).collect();
    assert_eq!(
        ns, want,
        "filtered by matches, dropped by process, in order"
    );
    let e = &envs[0];
    assert_eq!(e["key"], "test.flaky");
    assert_eq!(e["subscription_id"], sub["subscription_id"]);
    assert_eq!(e["seq"].as_u64().unwrap(), first_seq + 5);
    assert_eq!(e["event_type"], "test.x");
    assert_eq!(e["source"], "t");
    assert_eq!(e["source_time"], Value::Null);
    assert!(e["timestamp"].as_str().unwrap().ends_with('Z'));
    assert_eq!(e["id"].as_str().unwrap().len(), 36);
    assert_eq!(e["data"]["sub"], "main");
    let (_, subs) = s.get("/v1/subscriptions", Role::Admin).await;
    let counts = &subs["subscriptions"][0]["consumers"][0];
    for (field, n) in [
        ("received", 200),
        ("matched", 195),
        ("filtered", 5),
        ("dropped_by_key", 28),
        ("delivered", 167),
    ] {
        assert_eq!(counts[field], n, "{field}: {counts}");
    }
}

#[tokio::test]
async fn native_schema_delivers_the_payload_as_is() {
    let s = server().await;
    let (mut c, _) = s
        .subscribe(
            "json.field_equals",
            &[("field", "level"), ("equals", "error")],
        )
        .await;
    s.publish(json!([
        {"event_id": "n1", "event_type": "log", "source": "app", "source_time": "2026-11-23T10:00:00Z", "payload": {"level": "info"}},
        {"event_id": "n2", "event_type": "log", "source": "app", "source_time": "2026-11-23T10:00:01Z", "payload": {"level": "error", "msg": "disk"}}
    ]))
    .await;
    let e = c.envelope().await;
    assert_eq!(e["id"], "n2");
    assert_eq!(e["data"], json!({"level": "error", "msg": "disk"}));
    assert_eq!(e["source_time"], "2026-11-23T10:00:01Z");
    assert!(c.next(QUIET).await.is_none());
}

#[tokio::test]
async fn a_slow_consumer_loses_the_oldest_and_sees_the_gap() {
    let s = server().await;
    let (mut c, _) = s.subscribe("test.flaky", &[]).await;
    // Far more than the key's buffer (16) plus what sockets hold: 8 KiB
    // envelopes, 4000 of them, while the consumer reads nothing.
    let pad = "p".repeat(8 * 1024);
    let total = 4000;
    for chunk in 0..(total / 500) {
        let events: Vec<Value> = (0..500)
            .map(|i| json!({"event_type": "test.x", "source": "t", "payload": {"n": chunk * 500 + i, "pad": pad}}))
            .collect();
        s.publish(Value::Array(events)).await;
    }
    let mut delivered = Vec::new();
    let mut dropped = 0;
    let mut gaps = 0;
    while let Some(v) = c.next(Duration::from_secs(2)).await {
        if v["notice"] == "gap" {
            assert_eq!(v["reason"], "buffer_overflow");
            assert!(v["first_seq"].as_u64() <= v["last_seq"].as_u64());
            dropped += v["count"].as_u64().unwrap();
            gaps += 1;
        } else {
            assert!(v.get("notice").is_none(), "{v}");
            delivered.push(v["seq"].as_u64().unwrap());
        }
    }
    assert!(
        dropped > 0 && gaps > 0,
        "the consumer was slower than its buffer"
    );
    assert_eq!(
        delivered.len() as u64 + dropped,
        total as u64,
        "every event delivered or counted"
    );
    assert!(delivered.windows(2).all(|w| w[0] < w[1]), "in order");
    assert!(
        delivered.windows(2).any(|w| w[1] > w[0] + 1),
        "the drop shows as a gap in sequence numbers"
    );
    // The newest events survive drop-oldest.
    let last = s.host.pipeline().bus().stats().last_seq;
    assert_eq!(*delivered.last().unwrap(), last);
    let subs = s
        .wait_subscriptions("overflow counted", |b| {
            b["subscriptions"][0]["consumers"][0]["overflow_dropped"].as_u64() == Some(dropped)
        })
        .await;
    assert_eq!(
        subs["subscriptions"][0]["consumers"][0]["delivered"],
        delivered.len()
    );
}

#[tokio::test]
async fn replay_from_earliest_or_a_sequence_number_then_live() {
    let s = server().await;
    let answer = s
        .publish(Value::Array((0..6).map(|n| flaky(n, "")).collect()))
        .await;
    let seqs = weir_tests::accepted_seqs(&answer);
    let (mut all, note) = s.subscribe("test.flaky", &[("from", "earliest")]).await;
    assert_eq!(note["from"], "earliest");
    let (mut part, _) = s
        .subscribe(
            "test.flaky",
            &[("from", &seqs[4].to_string()), ("sub", "b")],
        )
        .await;
    let (mut live, _) = s.subscribe("test.flaky", &[("sub", "c")]).await;
    s.publish(flaky(100, "")).await;
    let ns = |envs: Vec<Value>| -> Vec<i64> {
        envs.iter()
            .map(|e| e["data"]["n"].as_i64().unwrap())
            .collect()
    };
    assert_eq!(ns(collect(&mut all).await.0), vec![0, 1, 2, 3, 4, 5, 100]);
    assert_eq!(ns(collect(&mut part).await.0), vec![4, 5, 100]);
    assert_eq!(ns(collect(&mut live).await.0), vec![100]);
}

#[tokio::test]
async fn faults_become_dead_letters_that_replay_and_delete() {
    let s = server().await;
    let (mut c, sub) = s.subscribe("test.flaky", &[]).await;
    s.publish(json!([
        {"event_id": "f-err", "event_type": "test.x", "source": "t", "payload": {"n": 1, "mode": "error"}},
        {"event_id": "f-inv", "event_type": "test.x", "source": "t", "payload": {"n": 2, "mode": "invalid"}},
        {"event_id": "f-pan", "event_type": "test.x", "source": "t", "payload": {"n": 3, "mode": "panic"}},
        {"event_id": "f-once", "event_type": "test.x", "source": "t", "payload": {"n": 4, "mode": "once"}},
        {"event_id": "ok", "event_type": "test.x", "source": "t", "payload": {"n": 5}}
    ]))
    .await;
    let (envs, _) = collect(&mut c).await;
    assert_eq!(envs.len(), 1, "only the good event: {envs:?}");
    assert_eq!(envs[0]["id"], "ok");

    let (status, _) = s.get("/v1/dlq", Role::Query).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, dlq) = s.get("/v1/dlq", Role::Admin).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(dlq["total"], 4, "{dlq}");
    let letters = dlq["letters"].as_array().unwrap();
    let by_event = |id: &str| {
        letters
            .iter()
            .find(|l| l["event"]["event_id"] == id)
            .unwrap()
    };
    assert_eq!(by_event("f-err")["error_kind"], "plugin_error");
    assert!(
        by_event("f-err")["error"]
            .as_str()
            .unwrap()
            .contains("refused on purpose")
    );
    assert_eq!(by_event("f-inv")["error_kind"], "invalid_output");
    assert!(
        by_event("f-inv")["error"].as_str().unwrap().contains("/n"),
        "names the bad field: {}",
        by_event("f-inv")
    );
    assert_eq!(by_event("f-pan")["error_kind"], "trap");
    assert!(
        by_event("f-pan")["error"]
            .as_str()
            .unwrap()
            .contains("panicked on purpose")
    );
    let once = by_event("f-once");
    assert_eq!(once["key"], "test.flaky");
    assert_eq!(once["subscription_id"], sub["subscription_id"]);
    assert_eq!(once["attempts"], 1);
    assert_eq!(once["params"], json!({"sub": "main", "min": "0"}));
    assert_eq!(once["event"]["payload"], json!({"n": 4, "mode": "once"}));

    // Replay all: the `once` event now succeeds and reaches the consumer;
    // the others fail again and stay with one more attempt.
    let (status, replay) = s.post("/v1/dlq/replay", Role::Admin, Some(json!({}))).await;
    assert_eq!(status, StatusCode::OK, "{replay}");
    let results = replay["results"].as_array().unwrap();
    let delivered: Vec<&Value> = results
        .iter()
        .filter(|r| r["outcome"] == "delivered")
        .collect();
    assert_eq!(delivered.len(), 1, "{replay}");
    assert_eq!(delivered[0]["delivered_to"], 1);
    assert_eq!(delivered[0]["id"], once["id"]);
    assert_eq!(
        results.iter().filter(|r| r["outcome"] == "failed").count(),
        3
    );
    assert_eq!(replay["remaining"], 3);
    let env = c.envelope().await;
    assert_eq!(
        (env["id"].as_str(), env["data"]["retried"].as_bool()),
        (Some("f-once"), Some(true))
    );
    let (_, dlq) = s.get("/v1/dlq?key=test.flaky&limit=10", Role::Admin).await;
    assert!(
        dlq["letters"]
            .as_array()
            .unwrap()
            .iter()
            .all(|l| l["attempts"] == 2),
        "{dlq}"
    );

    let first = dlq["letters"][0]["id"].as_u64().unwrap();
    let (_, del) = s.delete(&format!("/v1/dlq?id={first}"), Role::Admin).await;
    assert_eq!(
        (del["deleted"].as_u64(), del["remaining"].as_u64()),
        (Some(1), Some(2))
    );
    let (_, del) = s.delete("/v1/dlq?limit=1", Role::Admin).await;
    assert_eq!(
        (del["deleted"].as_u64(), del["remaining"].as_u64()),
        (Some(1), Some(1))
    );
    let (_, del) = s.delete("/v1/dlq", Role::Admin).await;
    assert_eq!(del["deleted"], 1);
    let (status, bad) = s.delete("/v1/dlq?id=x", Role::Admin).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}");
}

#[tokio::test]
async fn a_key_faulting_20_times_in_a_row_is_quarantined_until_resumed() {
    let s = server().await;
    let (mut c, _) = s.subscribe("test.flaky", &[]).await;
    // 19 traps, one success, 19 traps: no quarantine (not in a row).
    let mut events: Vec<Value> = (0..19).map(|n| flaky(n, "panic")).collect();
    events.push(flaky(19, ""));
    events.extend((20..39).map(|n| flaky(n, "panic")));
    s.publish(Value::Array(events)).await;
    let (envs, notices) = collect(&mut c).await;
    assert_eq!((envs.len(), notices.len()), (1, 0), "{notices:?}");
    // The 20th consecutive fault trips it.
    s.publish(flaky(39, "panic")).await;
    let n = c.next(Duration::from_secs(5)).await.unwrap();
    assert_eq!(n["notice"], "quarantined", "{n}");
    assert_eq!(n["faults"], 20);
    assert!(
        n["last_error"]
            .as_str()
            .unwrap()
            .contains("panicked on purpose")
    );
    let (_, key) = s.get("/v1/keys/test.flaky", Role::Query).await;
    assert_eq!(key["quarantine"]["faults"], 20);

    // Quarantined: not called; events wait in the dead-letter queue.
    s.publish(
        json!({"event_id": "held", "event_type": "test.x", "source": "t", "payload": {"n": 40}}),
    )
    .await;
    assert!(c.next(QUIET).await.is_none());
    let (_, dlq) = s.get("/v1/dlq?limit=10000", Role::Admin).await;
    let held = dlq["letters"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["event"]["event_id"] == "held")
        .expect("held event kept")
        .clone();
    assert_eq!(
        (held["error_kind"].as_str(), held["attempts"].as_u64()),
        (Some("quarantined"), Some(0))
    );
    let (_, r) = s
        .post(
            "/v1/dlq/replay",
            Role::Admin,
            Some(json!({"ids": [held["id"]]})),
        )
        .await;
    assert_eq!(r["results"][0]["outcome"], "skipped", "{r}");

    let (status, _) = s
        .post("/v1/keys/test.flaky/resume", Role::Query, None)
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, body) = s
        .post("/v1/keys/test.flaky/resume", Role::Admin, None)
        .await;
    assert_eq!(
        (status, body["resumed"].as_bool()),
        (StatusCode::OK, Some(true))
    );
    assert_eq!(
        c.next(Duration::from_secs(5)).await.unwrap()["notice"],
        "resumed"
    );
    s.publish(flaky(41, "")).await;
    assert_eq!(c.envelope().await["data"]["n"], 41);
    let (_, r) = s
        .post(
            "/v1/dlq/replay",
            Role::Admin,
            Some(json!({"ids": [held["id"]]})),
        )
        .await;
    assert_eq!(r["results"][0]["outcome"], "delivered", "{r}");
    assert_eq!(c.envelope().await["id"], "held");
    let (status, _) = s.post("/v1/keys/nope/resume", Role::Admin, None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn fs_changes_from_an_agent_push_reach_a_large_files_subscriber() {
    let s = server().await;
    let (mut big, _) = s
        .subscribe(
            "fs.large_files",
            &[("min_size", "1000"), ("path_prefix", "/data")],
        )
        .await;
    let (mut changes, _) = s.subscribe("fs.changes", &[]).await;
    let sid = s.create_session().await;
    let rows = json!([
        {"path": "/data", "size": 4096, "modified_time": 1_700_000_000.0, "is_directory": true},
        {"path": "/data/small.txt", "size": 10, "modified_time": 1_700_000_000.0},
        {"path": "/data/big.bin", "size": 5_000_000, "modified_time": 1_700_000_000.0},
        {"path": "/other/big.bin", "size": 5_000_000, "modified_time": 1_700_000_000.0}
    ]);
    let (status, body) = s.push(&sid, snapshot_end(rows)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let e = big.envelope().await;
    assert_eq!(e["event_type"], "fs.insert");
    assert_eq!(e["source"], "datastore/default");
    assert_eq!(e["data"]["path"], "/data/big.bin");
    assert_eq!(e["data"]["size"], 5_000_000);
    assert_eq!(e["data"]["human_size"], "4.8 MiB");
    assert!(
        e["source_time"]
            .as_str()
            .unwrap()
            .starts_with("2023-11-14T22:13:20")
    );
    assert!(
        big.next(QUIET).await.is_none(),
        "only the big file under /data"
    );

    // A realtime delete follows as fs.delete.
    s.push_rows(
        &sid,
        "message",
        "delete",
        json!([{"path": "/data/small.txt"}]),
    )
    .await;
    let (envs, _) = collect(&mut changes).await;
    let kinds: BTreeSet<(String, String)> = envs
        .iter()
        .map(|e| {
            (
                e["event_type"].as_str().unwrap().to_string(),
                e["data"]["path"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert!(
        kinds.contains(&("fs.insert".into(), "/data/big.bin".into())),
        "{kinds:?}"
    );
    assert!(
        kinds.contains(&("fs.delete".into(), "/data/small.txt".into())),
        "{kinds:?}"
    );
}

#[tokio::test]
async fn sse_frames_with_ids_and_resume_after_last_event_id() {
    let s = server().await;
    let open = |last: Option<u64>| {
        let mut req = s
            .client
            .get(format!("{}/v1/keys/test.flaky/stream", s.base))
            .header("X-API-Key", weir_tests::secret(Role::Query))
            .header("Accept", "text/event-stream");
        if let Some(id) = last {
            req = req.header("Last-Event-ID", id.to_string());
        }
        req.send()
    };
    let mut resp = open(None).await.unwrap();
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let answer = s
        .publish(Value::Array((0..3).map(|n| flaky(n, "")).collect()))
        .await;
    let seqs = weir_tests::accepted_seqs(&answer);
    let mut text = String::new();
    while text.matches("\n\n").count() < 4 {
        let chunk = tokio::time::timeout(Duration::from_secs(5), resp.chunk())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        text.push_str(std::str::from_utf8(&chunk).unwrap());
    }
    let frames: Vec<&str> = text.split("\n\n").filter(|f| !f.is_empty()).collect();
    assert!(
        frames[0].starts_with("event: subscribed\ndata: {"),
        "{}",
        frames[0]
    );
    assert!(
        frames[1].contains(&format!("id: {}\n", seqs[0])),
        "{}",
        frames[1]
    );
    drop(resp);

    // Reconnecting with the last id seen resumes right after it.
    let mut resp = open(Some(seqs[0])).await.unwrap();
    let mut text = String::new();
    while text.matches("\n\n").count() < 3 {
        let chunk = tokio::time::timeout(Duration::from_secs(5), resp.chunk())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        text.push_str(std::str::from_utf8(&chunk).unwrap());
    }
    assert!(text.contains(&format!("id: {}\n", seqs[1])), "{text}");
    assert!(!text.contains(&format!("id: {}\n", seqs[0])), "{text}");
}

#[tokio::test]
async fn shutdown_ends_streams_with_a_reason_and_runs_cleanups() {
    let mut s = server().await;
    let (mut c, _) = s.subscribe("enrich.context", &[("tag", "bye")]).await;
    assert!(s.host.host_api().state_of("enrich", "tag-bye").is_some());
    let host = s.host.clone();
    s.stop().await;
    let rest = c.drain(Duration::from_secs(5)).await;
    let last = rest.last().expect("an end notice");
    assert_eq!(last["notice"], "ended", "{rest:?}");
    assert_eq!(last["reason"], "the host is shutting down");
    let refused = host
        .pipeline()
        .subscribe(weir_host::pipeline::SubscribeRequest {
            key: "test.flaky".into(),
            params: vec![],
            from: weir_host::bus::StartAt::Latest,
            scope: None,
            consumer: None,
        })
        .await;
    assert!(
        matches!(refused, Err(weir_host::pipeline::SubscribeError::Closed)),
        "no new subscription after shutdown"
    );
    assert!(
        host.host_api().state_of("enrich", "tag-bye").is_none(),
        "cleanup ran"
    );
}

/// The value of one sample line of a Prometheus text page.
fn sample(page: &str, series: &str) -> Option<f64> {
    page.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

#[tokio::test]
async fn metrics_are_present_and_move_with_traffic() {
    let s = server().await;
    let scrape = || async {
        let resp = s
            .client
            .get(format!("{}/metrics", s.base))
            .header(
                "Authorization",
                format!("Bearer {}", weir_tests::secret(Role::Query)),
            )
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        assert!(
            resp.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with("text/plain; version=0.0.4")
        );
        resp.text().await.unwrap()
    };
    let before = scrape().await;
    for family in [
        "# TYPE weir_plugin_calls_total counter",
        "# TYPE weir_key_call_duration_seconds histogram",
        "# TYPE weir_datastore_queue_rows gauge",
        "# TYPE weir_bus_published_total counter",
    ] {
        assert!(before.contains(family), "{family} missing:\n{before}");
    }
    assert_eq!(
        sample(&before, "weir_datastore_sessions{datastore=\"default\"}"),
        Some(0.0)
    );
    let published = sample(&before, "weir_bus_published_total").unwrap();

    let (mut c, sub) = s.subscribe("test.flaky", &[]).await;
    s.publish(Value::Array(vec![
        flaky(1, ""),
        flaky(2, "error"),
        flaky(3, ""),
    ]))
    .await;
    assert_eq!(collect(&mut c).await.0.len(), 2);
    let after = scrape().await;
    let k = |rest: &str| {
        sample(
            &after,
            &format!("weir_key_events_total{{key=\"test.flaky\",outcome=\"{rest}\"}}"),
        )
    };
    assert_eq!(k("received"), Some(3.0));
    assert_eq!(k("matched"), Some(3.0));
    assert_eq!(k("emitted"), Some(2.0));
    assert_eq!(
        sample(
            &after,
            "weir_key_faults_total{key=\"test.flaky\",kind=\"plugin_error\"}"
        ),
        Some(1.0)
    );
    assert!(
        sample(
            &after,
            "weir_key_call_duration_seconds_count{key=\"test.flaky\",function=\"process_batch\"}"
        )
        .unwrap()
            >= 1.0
    );
    assert_eq!(
        sample(&after, "weir_bus_published_total"),
        Some(published + 3.0)
    );
    assert_eq!(
        sample(
            &after,
            &format!(
                "weir_subscription_consumers{{key=\"test.flaky\",subscription_id=\"{}\"}}",
                sub["subscription_id"].as_str().unwrap()
            )
        ),
        Some(1.0)
    );
    assert_eq!(sample(&after, "weir_dead_letters"), Some(1.0));
    assert!(sample(&after, "weir_plugin_calls_total{plugin=\"guest_pipeline\"}").unwrap() > 0.0);
    let memory = sample(
        &after,
        "weir_plugin_memory_bytes{plugin=\"guest_pipeline\"}",
    )
    .unwrap();
    let peak = sample(
        &after,
        "weir_plugin_memory_peak_bytes{plugin=\"guest_pipeline\"}",
    )
    .unwrap();
    assert!(
        memory > 0.0 && peak > 0.0 && peak <= memory,
        "{memory} {peak}"
    );
    let (status, _) = s.send("GET", "/metrics", None, None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn shutdown_delivers_what_was_accepted_before_ending_the_streams() {
    let mut s = server().await;
    let (mut c, _) = s.subscribe("fs.changes", &[]).await;
    let sid = s.create_session().await;
    let rows: Vec<Value> = (0..2000)
        .map(|i| json!({"path": format!("/f/{i:05}.txt"), "size": i, "modified_time": 1_700_000_000.0}))
        .collect();
    let (status, _) = s.push(&sid, snapshot_end(Value::Array(rows))).await;
    assert_eq!(status, StatusCode::OK);
    // Stop at once: the push may still be queued.
    let reader = tokio::spawn(async move { c.drain(Duration::from_secs(10)).await });
    s.stop().await;
    let lines = reader.await.unwrap();
    let (envs, notices): (Vec<&Value>, Vec<&Value>) =
        lines.iter().partition(|v| v.get("notice").is_none());
    let paths: BTreeSet<&str> = envs
        .iter()
        .map(|e| e["data"]["path"].as_str().unwrap())
        .collect();
    assert!(paths.contains("/f/00000.txt") && paths.contains("/f/01999.txt"));
    assert_eq!(envs.len(), 2000, "every file, once");
    assert_eq!(notices.last().unwrap()["notice"], "ended", "{notices:?}");
    assert_eq!(
        lines.last().unwrap()["notice"],
        "ended",
        "the end comes after every event"
    );
}
