//! Upstream HTTP services granted by a manifest, end to end: a real HTTP
//! server started here stands for the service; the hostile guest calls it
//! through `call-api("…", "/upstream/NAME/…")` in a host over a plugin
//! directory. The secret header comes from this process's environment.

use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::Request;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect};
use axum::routing::{any, get};
use serde_json::json;
use weir_host::engine::Environment;
use weir_tests::{chaos_call, chaos_ok, guest, host_with_plugin_dir_env};

/// The only environment variable this test binary sets (before any thread
/// that could read the environment exists).
const TOKEN_VAR: &str = "WEIR_TEST_UPSTREAM_TOKEN";
const TOKEN: &str = "upstream-s3cret";

/// Every path the service was asked for, as it arrived.
static HITS: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());

/// The service: echoes what it got (path, query, method, body, the headers
/// the host added), or misbehaves on purpose.
fn service() -> Router {
    async fn echo(headers: HeaderMap, req: Request) -> impl IntoResponse {
        let method = req.method().to_string();
        let uri = req.uri().clone();
        let body = axum::body::to_bytes(req.into_body(), 1 << 20)
            .await
            .unwrap_or_default();
        let header = |n: &str| {
            headers
                .get(n)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        axum::Json(json!({
            "method": method,
            "path": uri.path(),
            "query": uri.query(),
            "authorization": header("authorization"),
            "x_static": header("x-static"),
            "body": String::from_utf8_lossy(&body),
        }))
    }
    Router::new()
        .route("/api/echo/{*rest}", any(echo))
        .route(
            "/api/slow",
            get(|| async {
                tokio::time::sleep(Duration::from_secs(5)).await;
                "late"
            }),
        )
        .route("/api/big", get(|| async { "x".repeat(100 * 1024) }))
        .route(
            "/api/missing",
            get(|| async { (StatusCode::NOT_FOUND, "nothing here") }),
        )
        .route(
            "/api/elsewhere",
            get(|| async { Redirect::temporary("http://127.0.0.1:9/steal") }),
        )
        .route(
            "/admin",
            any(|| async { "the admin page: the secret leaked" }),
        )
        .layer(axum::middleware::from_fn(
            |req: Request, next: axum::middleware::Next| async move {
                HITS.lock().unwrap().push(req.uri().path().to_string());
                next.run(req).await
            },
        ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn granted_upstreams_are_reached_with_host_secrets_and_bounded() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, service()).await });

    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(guest("guest-hostile"), dir.path().join("hostile.wasm")).unwrap();
    std::fs::write(
        dir.path().join("hostile.toml"),
        format!(
            r#"[limits]
call_deadline_ms = 2000

[[capabilities.upstreams]]
name = "ref"
base_url = "http://{addr}/api/"
methods = ["GET", "POST"]
timeout_ms = 300
max_response_kib = 64
headers = {{ Authorization = "Bearer ${{{TOKEN_VAR}}}", X-Static = "plain" }}
"#
        ),
    )
    .unwrap();
    // The secret comes from the host's environment, injected (never the
    // process environment, which the other tests' threads read).
    let env = Environment::from_fn(|var| (var == TOKEN_VAR).then(|| TOKEN.to_string()));
    let host = host_with_plugin_dir_env(dir.path().to_path_buf(), env);
    assert!(
        host.failed_plugins().is_empty(),
        "{:?}",
        host.failed_plugins()
    );

    // Granted: the host adds the headers; path and query pass through.
    let got = chaos_ok(&chaos_call(&host, "GET", "/upstream/ref/echo/a/b?x=1&y=%20", None).await);
    assert_eq!(got["method"], "GET");
    assert_eq!(got["path"], "/api/echo/a/b");
    assert_eq!(got["query"], "x=1&y=%20");
    assert_eq!(got["authorization"], format!("Bearer {TOKEN}"));
    assert_eq!(got["x_static"], "plain");
    let posted =
        chaos_ok(&chaos_call(&host, "post", "/upstream/ref/echo/p", Some(json!({"n": 1}))).await);
    assert_eq!(
        (posted["method"].as_str(), posted["body"].as_str()),
        (Some("POST"), Some(r#"{"n":1}"#))
    );

    // Paths that URL parsers would move out of the base (`\` read as `/`,
    // tabs and newlines dropped, encoded dots and slashes) are refused before
    // anything is sent: the service never sees a path outside `/api/`.
    for escape in [
        "/upstream/ref/echo\\..\\..\\admin",
        "/upstream/ref/.\t./.\t./admin",
        "/upstream/ref/echo/.\n./..\r/admin",
        "/upstream/ref/%2e%2e/admin",
        "/upstream/ref/echo%2f..%2f..%2fadmin",
        "/upstream/ref/echo%5c..%5c..%5cadmin",
        "/upstream/ref//127.0.0.1/admin",
    ] {
        let refused = chaos_call(&host, "GET", escape, None).await;
        assert_eq!(refused["status"], 400, "{escape:?}: {refused}");
    }
    let hits = HITS.lock().unwrap().clone();
    assert!(
        hits.iter().all(|p| p.starts_with("/api/")),
        "the service was reached outside the base: {hits:?}"
    );

    // Not granted: another upstream name, another method.
    let refused = chaos_call(&host, "GET", "/upstream/other/x", None).await;
    assert_eq!(refused["status"], 403, "{refused}");
    assert!(
        refused["message"]
            .as_str()
            .unwrap()
            .contains("plugin `hostile` has no upstream `other`; declare it in hostile.toml"),
        "{refused}"
    );
    let method = chaos_call(&host, "DELETE", "/upstream/ref/echo/x", None).await;
    assert_eq!(method["status"], 405, "{method}");

    // Bounded: timeout, size cap; the guest's calls fail alone, the host
    // and the next call are fine.
    let started = Instant::now();
    let slow = chaos_call(&host, "GET", "/upstream/ref/slow", None).await;
    assert_eq!(slow["status"], 504, "{slow}");
    assert_eq!(
        slow["message"],
        "upstream `ref` did not answer within 300 ms"
    );
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    let big = chaos_call(&host, "GET", "/upstream/ref/big", None).await;
    assert_eq!(big["status"], 502, "{big}");
    assert!(
        big["message"]
            .as_str()
            .unwrap()
            .contains("more than 64 KiB"),
        "{big}"
    );

    // The service's own errors pass through with its status; redirects are
    // not followed (nothing but base_url's host is reached); `..` cannot
    // climb out of base_url.
    let missing = chaos_call(&host, "GET", "/upstream/ref/missing", None).await;
    assert_eq!(missing["status"], 404);
    assert_eq!(
        missing["message"],
        "upstream `ref` answered 404 Not Found: nothing here"
    );
    let moved = chaos_call(&host, "GET", "/upstream/ref/elsewhere", None).await;
    assert_eq!(moved["status"], 307, "{moved}");
    let climb = chaos_call(&host, "GET", "/upstream/ref/../secret", None).await;
    assert_eq!(climb["status"], 400, "{climb}");
    let again = chaos_ok(&chaos_call(&host, "GET", "/upstream/ref/echo/again", None).await);
    assert_eq!(again["path"], "/api/echo/again");

    // A manifest naming a variable the host does not have is refused at
    // load, naming it; the running version stays.
    std::fs::write(
        dir.path().join("hostile.toml"),
        format!(
            "[[capabilities.upstreams]]\nname = \"ref\"\nbase_url = \"http://{addr}/api\"\nheaders = {{ X-Key = \"${{WEIR_TEST_NOT_SET}}\" }}\n"
        ),
    )
    .unwrap();
    host.reload_plugins().await;
    host.reload_plugins().await;
    let failed = host.failed_plugins();
    assert_eq!(failed.len(), 1, "{failed:?}");
    let reason = serde_json::to_value(&failed[0]).unwrap().to_string();
    assert!(
        reason.contains("capabilities.upstreams[0].headers.X-Key: environment variable `WEIR_TEST_NOT_SET` is not set"),
        "{reason}"
    );
    let still = chaos_ok(&chaos_call(&host, "GET", "/upstream/ref/echo/still", None).await);
    assert_eq!(still["authorization"], format!("Bearer {TOKEN}"));
}
