//! `weir config check`: a summary for a good file, every problem named for
//! a bad one.

fn check(text: &str) -> (i32, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("weir.toml");
    std::fs::write(&path, text).unwrap();
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let code = weir_host::cli::run(
        [
            "weir",
            "config",
            "check",
            "--config",
            path.to_str().unwrap(),
        ]
        .map(String::from),
        &mut out,
        &mut err,
    );
    (
        code,
        String::from_utf8(out).unwrap(),
        String::from_utf8(err).unwrap(),
    )
}

#[test]
fn a_good_file_is_summarized() {
    let (code, out, err) = check(
        r#"
[[datastores]]
name = "lab"
queue_rows = 500
keys = [{ role = "query", key = "s3cret" }]

[events]
history_events = 42
quarantine_after = 5

[server]
listen = "0.0.0.0:8080"
log_format = "json"
plugin_poll_ms = 0

[limits]
memory_mib = 16
call_deadline_ms = 250
"#,
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.contains(": ok"), "{out}");
    assert!(
        out.contains("datastore lab: session timeout 30 s, queue 500 rows, 1 key(s)"),
        "{out}"
    );
    assert!(out.contains("datastore default"), "{out}");
    assert!(out.contains("history 42 events"), "{out}");
    assert!(out.contains("quarantine after 5"), "{out}");
    assert!(
        out.contains("server: listen 0.0.0.0:8080, plugins "),
        "{out}"
    );
    assert!(out.contains("poll never, log json"), "{out}");
    assert!(
        out.contains("limits: memory 16 MiB, matches 50 ms, calls 250 ms, output 1024 KiB"),
        "{out}"
    );
}

#[test]
fn problems_are_named() {
    let (code, _, err) = check("[events]\nhistory = 1\n");
    assert_eq!(code, 1);
    assert!(err.contains("unknown field `history`"), "{err}");
    let (code, _, err) = check(
        "[[datastores]]\nname = \"lab\"\nkeys = [{ role = \"query\", key_env = \"WEIR_TEST_UNSET_VAR_X\" }]\n",
    );
    assert_eq!(code, 1);
    assert!(
        err.contains("environment variable WEIR_TEST_UNSET_VAR_X is not set"),
        "{err}"
    );
    let (code, _, err) = check("[events]\ndlq_capacity = 0\n");
    assert_eq!(code, 1);
    assert!(
        err.contains("events.dlq_capacity must be at least 1"),
        "{err}"
    );
    let (code, _, err) = check("[limits]\nmemory_mib = 0\n");
    assert_eq!(code, 1);
    assert!(
        err.contains("limits.memory_mib = 0: must be from 1 to 1024"),
        "{err}"
    );
    let (code, _, err) = check("[server]\nlog = \"info,[[[\"\n");
    assert_eq!(code, 1);
    assert!(err.contains("server.log = \"info,[[[\""), "{err}");
    let (code, _, err) = check("[server]\nlisten = \"nowhere\"\n");
    assert_eq!(code, 1);
    assert!(err.contains("invalid socket address"), "{err}");
    let (code, _, err) = check("[[datastores]]\nname = \"a b\"\n");
    assert_eq!(code, 1);
    assert!(err.contains("name must be 1 to 64 letters"), "{err}");
}

#[test]
fn a_secret_given_to_two_keys_is_refused_naming_both() {
    let (code, _, err) = check(
        r#"
[[datastores]]
name = "lab"
keys = [{ role = "query", key = "shared" }]

[[datastores]]
name = "prod"
keys = [{ role = "ingest", key = "other" }, { role = "admin", key = "shared" }]
"#,
    );
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains(
            "the same secret is given to datastores[0] (`lab`).keys[0] and to datastores[1] (`prod`).keys[1]"
        ),
        "{err}"
    );
}
