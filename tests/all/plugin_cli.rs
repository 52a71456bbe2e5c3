//! `weir plugins inspect | validate | test`, run in-process through
//! `weir_host::cli::run` with captured output.

use serde_json::Value;
use weir_tests::{example, guest};

fn weir(args: &[&str]) -> (i32, String, String) {
    let mut out = Vec::new();
    let mut err = Vec::new();
    let argv = std::iter::once("weir")
        .chain(args.iter().copied())
        .map(String::from);
    let code = weir_host::cli::run(argv, &mut out, &mut err);
    (
        code,
        String::from_utf8(out).unwrap(),
        String::from_utf8(err).unwrap(),
    )
}

fn path(p: std::path::PathBuf) -> String {
    p.display().to_string()
}

#[test]
fn inspect_lists_keys_params_types_defaults_and_values() {
    let (code, out, _) = weir(&["plugins", "inspect", &path(example("fs-changes"))]);
    assert_eq!(code, 0);
    assert!(out.contains("key fs.changes (File changes)"), "{out}");
    assert!(out.contains("event type: fs.*"), "{out}");
    assert!(
        out.contains("functions:  normalize-params, matches, process"),
        "{out}"
    );
    assert!(
        out.contains("kinds (enum, optional): Only this kind of change"),
        "{out}"
    );
    assert!(
        out.contains("      delete - A file or directory was removed"),
        "{out}"
    );
    let (_, out, _) = weir(&["plugins", "inspect", &path(example("fs-large-files"))]);
    assert!(
        out.contains("min_size (int, required): Smallest file size in bytes"),
        "{out}"
    );
    assert!(
        out.contains("path_prefix (string, optional, subscription key)"),
        "{out}"
    );
}

#[test]
fn inspect_json_is_the_full_definition() {
    let (code, out, _) = weir(&["plugins", "inspect", "--json", &path(example("enrich"))]);
    assert_eq!(code, 0);
    let doc: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(doc["plugin"], "enrich");
    assert_eq!(doc["sha256"].as_str().unwrap().len(), 64);
    let key = &doc["keys"][0];
    assert_eq!(key["key"], "enrich.context");
    assert_eq!(
        key["implements"],
        serde_json::json!(["normalize-params", "process", "pre-consume", "cleanup"])
    );
    assert_eq!(key["params"][0]["type"], "string");
    assert_eq!(key["params"][0]["subscription_key"], true);
    assert_eq!(key["schema"]["kind"], "custom");
}

#[test]
fn validate_accepts_examples_and_lists_every_broken_rule() {
    for p in [
        "fs-large-files",
        "fs-changes",
        "enrich",
        "json-field-filter",
    ] {
        let (code, out, _) = weir(&["plugins", "validate", &path(example(p))]);
        assert_eq!(code, 0, "{p}: {out}");
        assert!(out.starts_with("ok: "), "{out}");
    }
    let (code, out, _) = weir(&[
        "plugins",
        "validate",
        &path(guest("guest-rule-missing-values")),
    ]);
    assert_eq!(code, 1);
    assert!(
        out.contains(
            "guest_rule_missing_values.wasm: key `rule.no_values`: enum parameter `mode` has no values"
        ),
        "{out}"
    );
    assert!(
        out.contains("multi parameter `tags` has no values"),
        "{out}"
    );
    assert!(out.contains("invalid: 2 rule(s) broken"), "{out}");
}

#[test]
fn validate_reports_a_file_that_is_not_a_component() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("junk.wasm");
    std::fs::write(&file, "junk").unwrap();
    let (code, out, _) = weir(&["plugins", "validate", &path(file)]);
    assert_eq!(code, 1);
    assert!(
        out.contains("not a loadable weir:plugin component"),
        "{out}"
    );
}

/// Each line of `out` as JSON.
fn json_lines(out: &str) -> Vec<Value> {
    out.lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect()
}

fn events_file(lines: &[&str]) -> tempfile::NamedTempFile {
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), lines.join("\n")).unwrap();
    file
}

#[test]
fn test_prints_one_line_per_event() {
    let events = events_file(&[
        r#"{"event_id":"a","event_type":"fs.insert","payload":{"path":"/d/A.PDF","size":10}}"#,
        r#"{"event_id":"b","event_type":"fs.insert","payload":{"path":"/d/b.txt","size":10}}"#,
        r#"{"event_id":"c","event_type":"fs.update","payload":{"path":"/d/c.pdf"}}"#,
        "",
        "not json",
        r#"{"event_id":"d","event_type":"deal.status.changed","payload":{}}"#,
    ]);
    let (code, out, err) = weir(&[
        "plugins",
        "test",
        &path(example("fs-changes")),
        "--key",
        "fs.changes",
        "--param",
        "extensions=.Pdf",
        "--param",
        "kinds=insert",
        "--events",
        events.path().to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    let lines = json_lines(&out);
    assert_eq!(lines.len(), 5, "{out}");
    assert_eq!(lines[0]["result"], "emitted");
    assert_eq!(lines[0]["data"]["ext"], "pdf");
    assert_eq!(
        lines[1],
        serde_json::json!({"line": 2, "event_id": "b", "result": "dropped", "by": "matches"})
    );
    assert_eq!(lines[2]["by"], "matches");
    assert_eq!(lines[3]["kind"], "bad_event");
    assert_eq!(lines[3]["line"], 5);
    assert_eq!(lines[4]["by"], "event_type");
}

#[test]
fn test_reports_faults_with_their_kind() {
    let events = events_file(&[
        r#"{"event_type":"t","payload":{"do":"panic"}}"#,
        r#"{"event_type":"t","payload":{"do":"match_api"}}"#,
        r#"{"event_type":"t","payload":{"do":"fine"}}"#,
    ]);
    let (code, out, _) = weir(&[
        "plugins",
        "test",
        &path(guest("guest-hostile")),
        "--key",
        "hostile.chaos",
        "--call-deadline-ms",
        "300",
        "--events",
        events.path().to_str().unwrap(),
    ]);
    let _ = out;
    // The hostile key's pre-consume always refuses, and a consumer would be
    // refused the same way: before any event.
    assert_eq!(code, 1);
}

#[test]
fn test_judges_each_event_as_the_pipeline_does_schema_included() {
    let events = events_file(&[
        r#"{"event_type":"test.a","payload":{"n":5}}"#,
        r#"{"event_type":"test.a","payload":{"n":1}}"#,
        r#"{"event_type":"test.a","payload":{"n":5,"mode":"drop"}}"#,
        r#"{"event_type":"test.a","payload":{"n":5,"mode":"error"}}"#,
        r#"{"event_type":"test.a","payload":{"n":5,"mode":"invalid"}}"#,
    ]);
    let (code, out, err) = weir(&[
        "plugins",
        "test",
        &path(guest("guest-pipeline")),
        "--key",
        "test.flaky",
        "--param",
        "sub=Cli",
        "--param",
        "min=3",
        "--events",
        events.path().to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    let lines = json_lines(&out);
    assert_eq!(lines[0]["result"], "emitted", "{}", lines[0]);
    assert_eq!(lines[0]["data"]["sub"], "cli");
    assert_eq!(
        (&lines[1]["result"], &lines[1]["by"]),
        (&"dropped".into(), &"matches".into())
    );
    assert_eq!(
        (&lines[2]["result"], &lines[2]["by"]),
        (&"dropped".into(), &"process".into())
    );
    assert_eq!(lines[3]["kind"], "plugin_error", "{}", lines[3]);
    // Output that breaks the key's own schema is what a consumer would
    // get as a dead letter: the same verdict here.
    assert_eq!(
        (&lines[4]["result"], &lines[4]["stage"], &lines[4]["kind"]),
        (&"error".into(), &"process".into(), &"invalid_output".into()),
        "{}",
        lines[4]
    );
}

#[test]
fn test_runs_pre_consume_and_cleanup_around_the_events() {
    let events = events_file(&[r#"{"event_id":"x","event_type":"a.b","payload":{"n":1}}"#]);
    let (code, out, err) = weir(&[
        "plugins",
        "test",
        &path(example("enrich")),
        "--key",
        "enrich.context",
        "--param",
        "tag=Ops",
        "--events",
        events.path().to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    let line: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(line["data"]["enrichment"]["tag"], "ops");
    assert!(
        line["data"]["enrichment"]["subscription"]["subscription_id"]
            .as_str()
            .unwrap()
            .starts_with("enrich.context@")
    );
}

#[test]
fn test_refuses_bad_params_and_unknown_keys_clearly() {
    let events = events_file(&[]);
    let ev = events.path().to_str().unwrap();
    let large = path(example("fs-large-files"));
    let changes = path(example("fs-changes"));
    // (plugin, key, params, exit code, what stderr must say)
    let cases: &[(&str, &str, &[&str], i32, &str)] = &[
        (
            &large,
            "fs.large_files",
            &[],
            1,
            "param `min_size`: required int parameter is missing",
        ),
        (
            &large,
            "fs.large_files",
            &["min_size=big"],
            1,
            "param `min_size`: `big` is not an integer",
        ),
        (
            &large,
            "fs.large_files",
            &["min_size=1", "colour=red"],
            1,
            "param `colour`: unknown parameter of key `fs.large_files` (known: min_size, path_prefix)",
        ),
        (
            &large,
            "nope",
            &[],
            1,
            "defines no key `nope` (keys: fs.large_files)",
        ),
        (
            &large,
            "fs.large_files",
            &["oops"],
            2,
            "`oops` is not name=value",
        ),
        (
            &changes,
            "fs.changes",
            &["kinds=rename"],
            1,
            "param `kinds`: `rename` is not one of: insert, update, delete",
        ),
    ];
    for (plugin, key, params, expected_code, expected) in cases {
        let mut args = vec!["plugins", "test", plugin, "--key", key, "--events", ev];
        for p in *params {
            args.extend(["--param", p]);
        }
        let (code, _, err) = weir(&args);
        assert_eq!(code, *expected_code, "{args:?}: {err}");
        assert!(err.contains(expected), "{args:?}: {err}");
    }
}
