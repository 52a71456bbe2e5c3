//! The real `weir` binary: `weir serve` with its default plugin directory
//! starts, serves the example keys, and exits 0 on SIGTERM.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// A minimal HTTP/1.1 request with an optional JSON body; returns the
/// status line and the body.
fn request(
    addr: &str,
    method: &str,
    path: &str,
    key: &str,
    body: Option<&str>,
) -> (String, String) {
    let mut stream = TcpStream::connect(addr).expect("connects");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let body = body.unwrap_or("");
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nX-API-Key: {key}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let status = response.lines().next().unwrap_or_default().to_string();
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

fn get(addr: &str, path: &str, key: &str) -> (String, String) {
    request(addr, "GET", path, key, None)
}

/// A child process killed and reaped when dropped, so that no test leaves
/// a `weir serve` running after it (one on a cluster whose NATS is gone
/// would otherwise keep retrying for as long as the machine runs).
pub(crate) struct Reaped(pub std::process::Child);

impl std::ops::Deref for Reaped {
    type Target = std::process::Child;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl std::ops::DerefMut for Reaped {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.0
    }
}

impl Drop for Reaped {
    fn drop(&mut self) {
        // Already ended (the test stopped it): both are no-ops.
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A running `weir serve`.
pub(crate) struct Served {
    pub child: Reaped,
    /// Its address.
    pub addr: String,
    /// Its JSON start line.
    start: serde_json::Value,
    /// Its stderr lines before the start line.
    before: Vec<String>,
}

/// Starts `weir serve --listen 127.0.0.1:0 --log-format json ARGS` with the
/// example plugins and `env`; waits for its start line.
fn serve(args: &[&str], env: &[(&str, &str)]) -> Served {
    let flags = ["--listen", "127.0.0.1:0", "--log-format", "json"];
    serve_with(&[&flags[..], args].concat(), env)
}

/// Starts `weir serve ARGS` (which must make it log JSON) with `env`; waits
/// for its start line. The rest of its stderr is drained so it never blocks
/// on a full pipe.
pub(crate) fn serve_with(args: &[&str], env: &[(&str, &str)]) -> Served {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_weir"));
    cmd.arg("serve")
        .args(args)
        .env_remove("WEIR_PLUGINS")
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    // Memory only unless the test gives a data directory: tests never
    // write to the user's data directory.
    if !args.contains(&"--data-dir") && !env.iter().any(|(k, _)| *k == "WEIR_DATA_DIR") {
        cmd.env("WEIR_EPHEMERAL", "true");
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("weir starts");
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let started = Instant::now();
    let mut before = Vec::new();
    let start = loop {
        let line = lines.next().expect("a start line").unwrap();
        if line.contains("weir serving") {
            break serde_json::from_str::<serde_json::Value>(&line).unwrap();
        }
        before.push(line);
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "no start line"
        );
    };
    std::thread::spawn(move || for _ in lines {});
    let addr = start["fields"]["addr"]
        .as_str()
        .expect("the host logs its address")
        .to_string();
    Served {
        child: Reaped(child),
        addr,
        start,
        before,
    }
}

#[test]
fn serve_starts_with_the_example_plugins_and_stops_on_sigterm() {
    let Served {
        mut child,
        addr,
        start,
        before,
    } = serve(&[], &[("WEIR_QUERY_KEY", "smoke-query")]);
    assert_eq!(start["fields"]["keys"], 4, "{start}");
    // Ingest and admin keys were not given: generated and printed.
    let generated = before
        .iter()
        .filter(|l| l.starts_with("generated "))
        .count();
    assert_eq!(generated, 2, "{before:?}");
    let (status, body) = get(&addr, "/v1/keys", "smoke-query");
    assert!(status.contains("200"), "{status} {body}");
    assert!(body.contains("\"fs.large_files\""), "{body}");
    let (status, _) = get(&addr, "/v1/keys", "wrong");
    assert!(status.contains("401"), "{status}");

    let pid = child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(status.success(), "{status}");
            break;
        }
        assert!(Instant::now() < deadline, "weir did not stop on SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_bad_config_file_is_refused_with_a_clear_error() {
    let dir = std::env::temp_dir().join(format!("weir-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("weir.toml");
    std::fs::write(&file, "[[datastores]]\nname = \"lab\"\nkeys = [{ role = \"query\", key_env = \"WEIR_TEST_UNSET_VAR\" }]\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_weir"))
        .args(["serve", "--listen", "127.0.0.1:0", "--config"])
        .arg(&file)
        .env_remove("WEIR_TEST_UNSET_VAR")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("weir.toml: datastores[0] (`lab`).keys[0]: environment variable WEIR_TEST_UNSET_VAR is not set"),
        "{stderr}"
    );
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn config_file_datastores_get_their_own_keys() {
    let dir = std::env::temp_dir().join(format!("weir-config-ok-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("weir.toml");
    std::fs::write(
        &file,
        "[[datastores]]\nname = \"lab\"\nkeys = [{ role = \"query\", key_env = \"LAB_QUERY\" }]\n",
    )
    .unwrap();
    let file_arg = file.display().to_string();
    let Served {
        mut child, addr, ..
    } = serve(
        &["--config", &file_arg],
        &[
            ("LAB_QUERY", "lab-query-secret"),
            ("WEIR_QUERY_KEY", "default-query-secret"),
        ],
    );
    let (status, body) = get(&addr, "/api/v1/views/lab/stats", "lab-query-secret");
    assert!(status.contains("503"), "{status} {body}");
    assert!(
        body.contains("datastore `lab` has no live agent session"),
        "{body}"
    );
    let (status, _) = get(&addr, "/api/v1/views/lab/stats", "default-query-secret");
    assert!(status.contains("403"), "{status}");
    let (status, _) = get(&addr, "/api/v1/views/default/stats", "lab-query-secret");
    assert!(status.contains("403"), "{status}");
    child.kill().unwrap();
    child.wait().unwrap();
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn server_and_limit_settings_come_from_the_config_file_and_flags_win() {
    let dir = std::env::temp_dir().join(format!("weir-config-server-{}", std::process::id()));
    let plugins = dir.join("my-plugins");
    std::fs::create_dir_all(&plugins).unwrap();
    std::fs::copy(
        std::path::Path::new(weir_host::EXAMPLE_PLUGIN_DIR).join("fs_large_files.wasm"),
        plugins.join("fs_large_files.wasm"),
    )
    .unwrap();
    let file = dir.join("weir.toml");
    // Relative paths are the file's; the log format and listen address
    // come from the file alone (no flags).
    std::fs::write(
        &file,
        "[server]\nlisten = \"127.0.0.1:0\"\nplugins = \"my-plugins\"\nlog_format = \"json\"\nplugin_poll_ms = 0\n\n[limits]\ncall_deadline_ms = 1234\nmemory_mib = 16\n",
    )
    .unwrap();
    let file_arg = file.display().to_string();
    let Served {
        mut child,
        addr,
        start,
        ..
    } = serve_with(
        &["--config", &file_arg, "--plugin-memory-mib", "24"],
        &[("WEIR_ADMIN_KEY", "admin-secret")],
    );
    assert_eq!(start["fields"]["keys"], 1, "{start}");
    let (status, body) = get(&addr, "/v1/plugins", "admin-secret");
    assert!(status.contains("200"), "{status} {body}");
    let plugins: serde_json::Value = serde_json::from_str(&body).unwrap();
    let limits = &plugins["loaded"][0]["limits"];
    assert_eq!(limits["call_deadline_ms"], 1234, "{body}");
    assert_eq!(limits["memory_mib"], 24, "the flag wins: {body}");
    assert!(
        plugins["loaded"][0]["file"]
            .as_str()
            .unwrap()
            .contains("my-plugins"),
        "{body}"
    );
    child.kill().unwrap();
    child.wait().unwrap();

    // A bad value in the file is named, and nothing starts.
    std::fs::write(&file, "[server]\nlog_format = \"xml\"\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_weir"))
        .args(["serve", "--config", &file_arg])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("unknown variant `xml`"), "{stderr}");
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn consume_exits_cleanly_when_its_output_pipe_closes() {
    let Served {
        child: mut server,
        addr,
        ..
    } = serve(
        &[],
        &[
            ("WEIR_QUERY_KEY", "pipe-query"),
            ("WEIR_INGEST_KEY", "pipe-ingest"),
            ("WEIR_ADMIN_KEY", "pipe-admin"),
        ],
    );
    let mut consumer = Command::new(env!("CARGO_BIN_EXE_weir"))
        .args(["consume", "fs.changes", "--url", &format!("http://{addr}")])
        .env("WEIR_API_KEY", "pipe-query")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("weir consume starts");
    // Its first status line says it is subscribed.
    let mut err = BufReader::new(consumer.stderr.take().unwrap());
    let mut line = String::new();
    err.read_line(&mut line).unwrap();
    assert!(line.starts_with("subscribed: key fs.changes"), "{line}");
    let post_event =
        |addr: &str, body: &str| request(addr, "POST", "/v1/events", "pipe-ingest", Some(body)).0;
    let event = |i: u32| {
        format!(
            r#"{{"event_type":"fs.insert","source":"t","payload":{{"path":"/f{i}.txt","size":1}}}}"#
        )
    };
    assert!(post_event(&addr, &event(0)).contains("200"));
    let mut out = BufReader::new(consumer.stdout.take().unwrap());
    let mut first = String::new();
    out.read_line(&mut first).unwrap();
    assert!(first.contains("\"path\":\"/f0.txt\""), "{first}");
    // `| head -1`: the reader goes away; the next write meets EPIPE.
    drop(out);
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut i = 1;
    let status = loop {
        if let Some(status) = consumer.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "consume did not exit on EPIPE");
        assert!(post_event(&addr, &event(i)).contains("200"));
        i += 1;
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status}");
    let _ = server.kill();
    let _ = server.wait();
}
