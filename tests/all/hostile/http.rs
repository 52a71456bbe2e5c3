//! Hostile HTTP clients: bodies sent before a key is checked, connections
//! held open, requests that never finish, streams that are never read,
//! against a host served with short, configured bounds.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use weir_host::auth::Role;
use weir_host::http::ServerLimits;
use weir_host::runtime::Host;
use weir_tests::{host_with_examples, secret};

/// A host served with `limits`; stops when the sender is dropped or fired.
struct Served {
    addr: std::net::SocketAddr,
    host: Arc<Host>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

async fn serve(limits: ServerLimits) -> Served {
    let host = host_with_examples();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let served = host.clone();
    let task = tokio::spawn(async move {
        weir_host::http::run_with(
            listener,
            served,
            async move {
                let _ = stopped.await;
            },
            limits,
        )
        .await
        .expect("served");
    });
    Served {
        addr,
        host,
        stop: Some(stop),
        task,
    }
}

fn short() -> ServerLimits {
    ServerLimits {
        max_connections: 64,
        header_timeout: Duration::from_secs(2),
        request_timeout: Duration::from_secs(2),
        shutdown_timeout: Duration::from_secs(2),
    }
}

/// Reads what the server sends until it has a whole head, or `wait` passes.
async fn read_head(stream: &mut TcpStream, wait: Duration) -> Option<String> {
    let mut buf = Vec::new();
    let deadline = Instant::now() + wait;
    loop {
        let mut chunk = [0u8; 4096];
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, stream.read(&mut chunk)).await {
            Ok(Ok(0)) | Err(_) | Ok(Err(_)) => {
                return (!buf.is_empty()).then(|| String::from_utf8_lossy(&buf).into_owned());
            }
            Ok(Ok(n)) => {
                buf.extend_from_slice(&chunk[..n]);
                if buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    return Some(String::from_utf8_lossy(&buf).into_owned());
                }
            }
        }
    }
}

/// Sends a request head announcing a 64 MiB body, and no body.
async fn announce_big_body(addr: std::net::SocketAddr, key: Option<&str>) -> TcpStream {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let key = key
        .map(|k| format!("X-API-Key: {k}\r\n"))
        .unwrap_or_default();
    let head = format!(
        "POST /api/v1/pipe/ingest/some-session/events HTTP/1.1\r\nHost: x\r\n{key}Content-Type: application/json\r\nContent-Length: 67108864\r\n\r\n"
    );
    s.write_all(head.as_bytes()).await.unwrap();
    s
}

#[tokio::test]
async fn the_key_is_checked_before_any_body_is_read() {
    let served = serve(short()).await;
    // No key: 401 at once, without the host waiting for 64 MiB.
    let mut s = announce_big_body(served.addr, None).await;
    let head = read_head(&mut s, Duration::from_secs(1))
        .await
        .expect("an answer before any body is sent");
    assert!(head.starts_with("HTTP/1.1 401"), "{head}");
    // An unknown key: 401; a key of another role: 403.
    let mut s = announce_big_body(served.addr, Some("nobody")).await;
    let head = read_head(&mut s, Duration::from_secs(1)).await.unwrap();
    assert!(head.starts_with("HTTP/1.1 401"), "{head}");
    let mut s = announce_big_body(served.addr, Some(&secret(Role::Query))).await;
    let head = read_head(&mut s, Duration::from_secs(1)).await.unwrap();
    assert!(head.starts_with("HTTP/1.1 403"), "{head}");
    assert!(head.contains("application/json"), "{head}");
}

#[tokio::test]
async fn a_body_that_never_arrives_gets_408_and_a_silent_client_is_cut() {
    let served = serve(short()).await;
    // The right key, then 10 of the 100 bytes announced, then nothing.
    let mut s = TcpStream::connect(served.addr).await.unwrap();
    let head = format!(
        "POST /v1/events HTTP/1.1\r\nHost: x\r\nX-API-Key: {}\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"event_ty",
        secret(Role::Ingest)
    );
    s.write_all(head.as_bytes()).await.unwrap();
    let started = Instant::now();
    let answer = read_head(&mut s, Duration::from_secs(6))
        .await
        .expect("an answer");
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(started.elapsed() < Duration::from_secs(5));
    // A client that connects and sends nothing is cut after the header
    // timeout.
    let mut idle = TcpStream::connect(served.addr).await.unwrap();
    let mut byte = [0u8; 1];
    let started = Instant::now();
    let read = tokio::time::timeout(Duration::from_secs(6), idle.read(&mut byte)).await;
    assert!(read.is_ok(), "the idle connection was not cut");
    assert!(started.elapsed() >= Duration::from_secs(1));
    // The host serves others meanwhile.
    let ok = reqwest::get(format!("http://{}/healthz", served.addr))
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
}

#[tokio::test]
async fn connections_beyond_the_limit_wait_until_one_closes() {
    let served = serve(ServerLimits {
        max_connections: 2,
        ..short()
    })
    .await;
    // Two connections hold both places (sending nothing).
    let a = TcpStream::connect(served.addr).await.unwrap();
    let b = TcpStream::connect(served.addr).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let client = reqwest::Client::new();
    let url = format!("http://{}/healthz", served.addr);
    let waiting = tokio::spawn(async move {
        let started = Instant::now();
        let status = client.get(url).send().await.map(|r| r.status().as_u16());
        (status, started.elapsed())
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!waiting.is_finished(), "a third connection was served");
    // The idle two are cut by the header timeout (2 s); then it is served.
    let (status, waited) = waiting.await.unwrap();
    assert_eq!(status.ok(), Some(200));
    assert!(waited >= Duration::from_millis(900), "{waited:?}");
    drop((a, b));
}

#[tokio::test]
async fn shutdown_is_bounded_by_clients_that_stall() {
    let mut served = serve(short()).await;
    // One client holds a half-sent body.
    let mut half = TcpStream::connect(served.addr).await.unwrap();
    let head = format!(
        "POST /v1/events HTTP/1.1\r\nHost: x\r\nX-API-Key: {}\r\nContent-Length: 1000\r\n\r\n[",
        secret(Role::Ingest)
    );
    half.write_all(head.as_bytes()).await.unwrap();
    // Another opens a stream and never reads it, while events fill it.
    let mut stream = TcpStream::connect(served.addr).await.unwrap();
    let head = format!(
        "GET /v1/keys/json.field_equals/stream?field=k&equals=v HTTP/1.1\r\nHost: x\r\nX-API-Key: {}\r\n\r\n",
        secret(Role::Query)
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let pad = "p".repeat(60_000);
    let events: Vec<serde_json::Value> = (0..200)
        .map(|i| serde_json::json!({"event_type": "x", "source": "t", "payload": {"k": "v", "i": i, "pad": pad}}))
        .collect();
    let published = served.host.pipeline().publish(
        weir_host::producer::parse_events(serde_json::Value::Array(events).to_string().as_bytes())
            .unwrap()
            .valid
            .into_iter()
            .map(|(_, e)| e)
            .collect(),
    );
    assert_eq!(published.unwrap().len(), 200);
    let started = Instant::now();
    served.stop.take().unwrap().send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(20), &mut served.task)
        .await
        .expect("shutdown finished within its bound")
        .unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "{:?}",
        started.elapsed()
    );
    drop((half, stream));
}
