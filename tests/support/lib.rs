//! Shared helpers of the integration tests: where the compiled components
//! are, and hosts built over them.

pub mod nats;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use weir_host::auth::{Keys, Role};
use weir_host::bus::{Event, NewEvent};
use weir_host::engine::{EngineConfig, Environment, Limits};
use weir_host::runtime::{Host, HostConfig};

/// The captured fixtures (`tests/fixtures`), such as the Fustor wire traffic.
pub const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures");

/// The Fustor route that creates an agent session.
pub const SESSION: &str = "/api/v1/pipe/session/";

/// Directory of the test guests, built by this crate's build script.
pub const GUEST_DIR: &str = env!("WEIR_TEST_GUEST_DIR");

/// An example plugin component, by crate name (`fs-large-files`).
pub fn example(name: &str) -> PathBuf {
    PathBuf::from(weir_host::EXAMPLE_PLUGIN_DIR).join(format!("{}.wasm", name.replace('-', "_")))
}

/// A test guest component, by crate name (`guest-hostile`).
pub fn guest(name: &str) -> PathBuf {
    PathBuf::from(GUEST_DIR).join(format!("{}.wasm", name.replace('-', "_")))
}

/// Secrets of the test keys, one per role.
pub fn secret(role: Role) -> String {
    format!("test-{role}-secret")
}

/// The test keys, as `weir serve` sets them up without a config file:
/// `default`'s ingest and query keys, and a host-level admin key.
pub fn test_keys() -> Keys {
    let mut keys = Keys::new();
    keys.insert(&secret(Role::Ingest), Role::Ingest, "default");
    keys.insert(&secret(Role::Query), Role::Query, "default");
    keys.insert_host(&secret(Role::Admin), Role::Admin);
    keys
}

/// Test limits: short deadlines so that hostile guests fail fast.
pub fn test_limits() -> Limits {
    Limits {
        matches_deadline: Duration::from_millis(50),
        call_deadline: Duration::from_millis(500),
        memory_bytes: 32 * 1024 * 1024,
        max_output_bytes: 1024 * 1024,
    }
}

/// A host with the example plugins loaded and one key per role.
pub fn host_with_examples() -> Arc<Host> {
    host_with_plugin_dir(PathBuf::from(weir_host::EXAMPLE_PLUGIN_DIR))
}

/// A host over the plugin directory `dir`, with one key per role.
pub fn host_with_plugin_dir(dir: PathBuf) -> Arc<Host> {
    host_with_plugin_dir_env(dir, Environment::default())
}

/// [`host_with_plugin_dir`] whose manifests take their `${VAR}` secrets
/// from `env` instead of the process environment.
pub fn host_with_plugin_dir_env(dir: PathBuf, env: Environment) -> Arc<Host> {
    host_with_keys(dir, env, test_keys())
}

/// A host over the plugin directory `dir` with `keys`.
pub fn host_with_keys(dir: PathBuf, env: Environment, keys: Keys) -> Arc<Host> {
    let mut config = test_config();
    config.plugin_dir = Some(dir);
    config.engine.env = env;
    config.keys = keys;
    Arc::new(Host::new(config).expect("host starts"))
}

/// What the tests' hosts start with: the example plugins, the test limits,
/// the shared compile cache, one key per role, memory only.
pub fn test_config() -> HostConfig {
    HostConfig {
        plugin_dir: Some(PathBuf::from(weir_host::EXAMPLE_PLUGIN_DIR)),
        engine: test_engine(),
        keys: test_keys(),
        ..HostConfig::default()
    }
}

/// The engine of the tests' hosts: the test limits, the shared compile
/// cache, and instances allocated on demand. Dozens of hosts live at once
/// in the test binary; each pooling allocator reserves terabytes of
/// address space, and together they would exhaust the process's 128 TiB
/// (the pool itself is tested by `plugin_runtime`).
pub fn test_engine() -> EngineConfig {
    EngineConfig {
        limits: test_limits(),
        cache_dir: Some(compile_cache()),
        pooling: false,
        ..EngineConfig::default()
    }
}

/// The sequence numbers of the events a `POST /v1/events` answer accepted.
pub fn accepted_seqs(answer: &serde_json::Value) -> Vec<u64> {
    answer["accepted"]
        .as_array()
        .map(|a| a.iter().filter_map(|e| e["seq"].as_u64()).collect())
        .unwrap_or_default()
}

/// A compiled-component cache shared by the tests (beside the guests), so
/// that each test does not compile every component again.
pub fn compile_cache() -> PathBuf {
    PathBuf::from(GUEST_DIR).with_file_name("weir-test-compile-cache")
}

/// An event with a JSON payload.
pub fn event(id: &str, event_type: &str, payload: serde_json::Value) -> Event {
    Event {
        seq: 1,
        timestamp_ms: 1_700_000_000_000,
        new: NewEvent {
            id: id.to_string(),
            event_type: event_type.to_string(),
            source: "test".into(),
            source_time: None,
            correlation_id: None,
            payload: payload.to_string(),
            scope: None,
        },
    }
}

/// `events` by reference, as runners take them.
pub fn refs(events: &[Event]) -> Vec<&Event> {
    events.iter().collect()
}

/// Parameters from pairs.
pub fn params(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// A host served on a loopback port for the length of a test.
pub struct TestServer {
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    /// The host behind it.
    pub host: Arc<Host>,
    /// A client.
    pub client: reqwest::Client,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<Result<(), String>>>,
}

impl TestServer {
    /// Serves `host` (inside a tokio runtime).
    pub async fn start(host: Arc<Host>) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let served = host.clone();
        let task = tokio::spawn(async move {
            weir_host::run(listener, served, async move {
                let _ = stopped.await;
            })
            .await
            .map_err(|e| e.to_string())
        });
        Self {
            base,
            host,
            client: reqwest::Client::new(),
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// Sends a request with the key of `role` (if any) and a JSON body (if
    /// any); returns the status and the body as JSON (or as a string).
    pub async fn send(
        &self,
        method: &str,
        path: &str,
        role: Option<Role>,
        body: Option<serde_json::Value>,
    ) -> (reqwest::StatusCode, serde_json::Value) {
        let key = role.map(secret);
        self.send_as(method, path, key.as_deref(), body).await
    }

    /// `GET path` with the key of `role`.
    pub async fn get(&self, path: &str, role: Role) -> (reqwest::StatusCode, serde_json::Value) {
        self.send("GET", path, Some(role), None).await
    }

    /// `POST path` with the key of `role` and a JSON body (if any).
    pub async fn post(
        &self,
        path: &str,
        role: Role,
        body: Option<serde_json::Value>,
    ) -> (reqwest::StatusCode, serde_json::Value) {
        self.send("POST", path, Some(role), body).await
    }

    /// `DELETE path` with the key of `role`.
    pub async fn delete(&self, path: &str, role: Role) -> (reqwest::StatusCode, serde_json::Value) {
        self.send("DELETE", path, Some(role), None).await
    }

    /// [`TestServer::send`] with the key `key` (a secret), if any.
    pub async fn send_as(
        &self,
        method: &str,
        path: &str,
        key: Option<&str>,
        body: Option<serde_json::Value>,
    ) -> (reqwest::StatusCode, serde_json::Value) {
        let mut req = self
            .client
            .request(method.parse().unwrap(), format!("{}{path}", self.base));
        if let Some(key) = key {
            req = req.header("X-API-Key", key);
        }
        if let Some(body) = body {
            req = req.json(&body);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status();
        let text = resp.text().await.unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text)),
        )
    }

    /// Creates an agent session on the `default` datastore; returns its id.
    pub async fn create_session(&self) -> String {
        let (status, body) = self
            .send(
                "POST",
                SESSION,
                Some(Role::Ingest),
                Some(serde_json::json!({"task_id": "agent-1:pipe", "source_type": "fs"})),
            )
            .await;
        assert_eq!(status, reqwest::StatusCode::OK, "{body}");
        body["session_id"].as_str().unwrap().to_string()
    }

    /// Pushes `body` (its `session_id` set to `sid`) as the agent does.
    pub async fn push(
        &self,
        sid: &str,
        mut body: serde_json::Value,
    ) -> (reqwest::StatusCode, serde_json::Value) {
        body["session_id"] = serde_json::json!(sid);
        self.send(
            "POST",
            &format!("/api/v1/pipe/ingest/{sid}/events"),
            Some(Role::Ingest),
            Some(body),
        )
        .await
    }

    /// Pushes `rows` from `source` (`snapshot`, `message`, `audit`) as one
    /// event of `kind` (`update`, `delete`).
    pub async fn push_rows(
        &self,
        sid: &str,
        source: &str,
        kind: &str,
        rows: serde_json::Value,
    ) -> (reqwest::StatusCode, serde_json::Value) {
        self.push(sid, rows_push(source, kind, rows)).await
    }

    /// Publishes events with the ingest key; returns the answer.
    pub async fn publish(&self, events: serde_json::Value) -> serde_json::Value {
        let (status, body) = self
            .send("POST", "/v1/events", Some(Role::Ingest), Some(events))
            .await;
        assert_eq!(status, reqwest::StatusCode::OK, "{body}");
        body
    }

    /// Opens `GET /v1/keys/{key}/stream?query` as NDJSON with the query key.
    /// Returns the error status and body when the host refuses.
    pub async fn stream(
        &self,
        key: &str,
        query: &[(&str, &str)],
    ) -> Result<NdjsonStream, (reqwest::StatusCode, serde_json::Value)> {
        self.stream_as(&secret(Role::Query), key, query).await
    }

    /// [`TestServer::stream`] with the API key `api_key` (a secret).
    pub async fn stream_as(
        &self,
        api_key: &str,
        key: &str,
        query: &[(&str, &str)],
    ) -> Result<NdjsonStream, (reqwest::StatusCode, serde_json::Value)> {
        let mut url = reqwest::Url::parse(&format!("{}/v1/keys/{key}/stream", self.base)).unwrap();
        url.query_pairs_mut().extend_pairs(query);
        let resp = self
            .client
            .get(url)
            .header("X-API-Key", api_key)
            .header("Accept", "application/x-ndjson")
            .send()
            .await
            .unwrap();
        if !resp.status().is_success() {
            let status = resp.status();
            return Err((status, resp.json().await.unwrap_or_default()));
        }
        Ok(NdjsonStream {
            lines: weir_host::consume::NdjsonLines::new(resp),
        })
    }

    /// Opens a stream that must be accepted and reads its `subscribed` notice.
    pub async fn subscribe(
        &self,
        key: &str,
        query: &[(&str, &str)],
    ) -> (NdjsonStream, serde_json::Value) {
        let mut s = self
            .stream(key, query)
            .await
            .unwrap_or_else(|e| panic!("subscription refused: {e:?}"));
        let first = s.next(Duration::from_secs(10)).await.expect("a first line");
        assert_eq!(first["notice"], "subscribed", "{first}");
        (s, first)
    }

    /// Stops the server and waits for it to wind down.
    pub async fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.unwrap().unwrap();
        }
    }

    /// Waits (bounded) until `check` holds for `GET /v1/subscriptions`.
    pub async fn wait_subscriptions(
        &self,
        what: &str,
        check: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let (_, body) = self
                .send("GET", "/v1/subscriptions", Some(Role::Admin), None)
                .await;
            if check(&body) {
                return body;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out waiting for {what}: {body}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// An NDJSON stream being read line by line.
pub struct NdjsonStream {
    lines: weir_host::consume::NdjsonLines,
}

impl NdjsonStream {
    /// The next line as JSON; `None` at the end of the stream or after
    /// `wait` without a line.
    pub async fn next(&mut self, wait: Duration) -> Option<serde_json::Value> {
        match tokio::time::timeout(wait, self.lines.next_line()).await {
            Ok(Ok(Some(line))) => Some(serde_json::from_slice(&line).expect("a JSON line")),
            Ok(Ok(None)) | Err(_) => None,
            Ok(Err(e)) => panic!("stream failed: {e}"),
        }
    }

    /// The next envelope, skipping nothing: panics on a notice.
    pub async fn envelope(&mut self) -> serde_json::Value {
        let v = self
            .next(Duration::from_secs(10))
            .await
            .expect("an envelope");
        assert!(v.get("notice").is_none(), "expected an envelope, got {v}");
        v
    }

    /// Lines until `wait` passes without one (or the stream ends).
    pub async fn drain(&mut self, wait: Duration) -> Vec<serde_json::Value> {
        let mut out = Vec::new();
        while let Some(v) = self.next(wait).await {
            out.push(v);
        }
        out
    }
}

/// An agent push body: `rows` from `source` (`snapshot`, `message`,
/// `audit`) as one event of `kind` (`update`, `delete`).
pub fn rows_push(source: &str, kind: &str, rows: serde_json::Value) -> serde_json::Value {
    serde_json::json!({"source_type": source, "events": [{"event_type": kind, "index": 1_000_000_000_000u64, "rows": rows}]})
}

/// A snapshot push of `rows` that ends the snapshot.
pub fn snapshot_end(rows: serde_json::Value) -> serde_json::Value {
    let mut push = rows_push("snapshot", "update", rows);
    push["is_end"] = serde_json::json!(true);
    push
}

/// A host with the example plugins and the pipeline test guest.
pub fn host_with_pipeline_guest() -> Arc<Host> {
    with_pipeline_guest(host_with_examples())
}

/// [`host_with_pipeline_guest`] with `keys` instead of the test keys.
pub fn host_with_pipeline_guest_keys(keys: Keys) -> Arc<Host> {
    with_pipeline_guest(host_with_keys(
        PathBuf::from(weir_host::EXAMPLE_PLUGIN_DIR),
        Environment::default(),
        keys,
    ))
}

fn with_pipeline_guest(host: Arc<Host>) -> Arc<Host> {
    host.load_file(&guest("guest-pipeline"))
        .expect("the pipeline guest registers");
    host
}

/// What the hostile guest's `call` action got back from `call-api(method,
/// path, body)` in `host`'s `hostile.chaos` key: `{ok}` with the answer text
/// or `{status, message}`. Runs on a blocking thread, as the pipeline does.
pub async fn chaos_call(
    host: &Host,
    method: &str,
    path: &str,
    body: Option<serde_json::Value>,
) -> serde_json::Value {
    let k = host
        .registry()
        .lookup("hostile.chaos")
        .cloned()
        .expect("hostile loaded");
    let mut payload = serde_json::json!({"do": "call", "method": method, "path": path});
    if let Some(b) = body {
        payload["body"] = serde_json::Value::String(b.to_string());
    }
    let out = tokio::task::spawn_blocking(move || {
        k.plugin
            .process(&k.def.key, &vec![], &event("u", "x", payload))
    })
    .await
    .expect("call ran")
    .expect("the call action never faults");
    match out {
        weir_host::engine::Outcome::Emit(s) => serde_json::from_str(&s).expect("JSON"),
        other => panic!("{other:?}"),
    }
}

/// The parsed `ok` answer of a [`chaos_call`]; panics with the error.
pub fn chaos_ok(answer: &serde_json::Value) -> serde_json::Value {
    let text = answer["ok"].as_str().unwrap_or_else(|| panic!("{answer}"));
    serde_json::from_str(text).expect("JSON answer")
}

/// `METHOD url` with `key` and an optional JSON body to a host in another
/// process; the answer's JSON.
pub async fn call(
    method: &str,
    url: &str,
    key: &str,
    body: Option<&serde_json::Value>,
) -> serde_json::Value {
    let mut req = reqwest::Client::new()
        .request(method.parse().unwrap(), url)
        .header("X-API-Key", key);
    if let Some(body) = body {
        req = req.json(body);
    }
    req.send().await.unwrap().json().await.unwrap()
}
