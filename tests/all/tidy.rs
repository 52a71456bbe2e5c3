//! Tidy: the structural invariants ARCHITECTURE.md states, checked on the
//! source tree so that they cannot drift. The floors of `weir-host`, what
//! may import axum, utoipa, wasmtime and the WIT bindings, what `weir-core`
//! may depend on, and a `//!` at the top of every file.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The rooms of `weir-host` (`host/src/ROOM.rs` or `host/src/ROOM/`) and
/// their floors: a room may use rooms on lower floors only. The same table
/// is in ARCHITECTURE.md ("Floors"). `weir-core` is floor 0, below them all.
const FLOORS: &[(&str, u8)] = &[
    ("bus", 1),
    ("registry", 1),
    ("supervise", 1),
    ("wire", 1),
    ("consume", 1),
    ("bench", 4),
    ("engine", 2),
    ("datastore", 2),
    ("store", 2),
    ("plugindir", 3),
    ("plugin_api", 3),
    ("pipeline", 3),
    ("config", 3),
    ("cluster", 3),
    ("runtime", 4),
    ("metrics", 5),
    ("http", 6),
    ("cli", 7),
];

/// Crates only the HTTP layer uses (`wire.rs` may describe its types with
/// utoipa, too).
const HTTP_CRATES: &[&str] = &["axum", "hyper", "hyper_util", "tower", "tower_http"];

/// What `weir-core` must never depend on: it is fuzzed and builds in seconds.
const NOT_IN_CORE: &[&str] = &[
    "wasmtime",
    "wasmtime-wasi",
    "axum",
    "hyper",
    "tokio",
    "reqwest",
    "tower",
    "jsonschema",
];

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("host/ has a parent")
        .to_path_buf()
}

/// Every `.rs` file below `dir`, with its text.
fn sources(dir: &Path) -> Vec<(PathBuf, String)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                if p.file_name().is_some_and(|n| n == "target") {
                    continue;
                }
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "rs") {
                let text = std::fs::read_to_string(&p).expect("readable source");
                out.push((p, text));
            }
        }
    }
    out.sort();
    out
}

/// The room of a file under `host/src`: its first path component, without
/// `.rs`.
fn room_of(src: &Path, file: &Path) -> String {
    let rel = file.strip_prefix(src).expect("under src");
    let first = rel.components().next().expect("a component");
    first
        .as_os_str()
        .to_string_lossy()
        .trim_end_matches(".rs")
        .to_string()
}

/// The code of `text` without its comments (line comments only: the
/// sources use no block comments) and with its strings emptied, so that
/// prose and messages may name anything while a `//` in a string (a URL)
/// hides no code after it.
fn code(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    let mut in_str = false;
    while let Some(c) = chars.next() {
        if in_str {
            match c {
                '\\' => {
                    chars.next();
                }
                '"' => in_str = false,
                // Keep the line structure.
                '\n' => out.push('\n'),
                _ => {}
            }
            continue;
        }
        match c {
            '"' => {
                in_str = true;
                // A string counts as nothing: its text is not code.
                out.push_str("\"\"");
            }
            // A char literal such as '"' is not the start of a string.
            '\'' => {
                out.push(c);
                let rest: String = chars.clone().take(3).collect();
                let mut r = rest.chars();
                match (r.next(), r.next(), r.next()) {
                    (Some('\\'), Some(_), Some('\'')) => {
                        chars.nth(2);
                    }
                    (Some(_), Some('\''), _) => {
                        chars.nth(1);
                    }
                    // A lifetime.
                    _ => {}
                }
            }
            '/' if chars.peek() == Some(&'/') => {
                for c in chars.by_ref() {
                    if c == '\n' {
                        out.push('\n');
                        break;
                    }
                }
            }
            _ => out.push(c),
        }
    }
    out
}

/// Whether `code` uses the crate or module `name` as a path root.
fn uses(code: &str, name: &str) -> bool {
    let bytes = code.as_bytes();
    let needle = format!("{name}::");
    let mut at = 0;
    while let Some(i) = code[at..].find(&needle) {
        let start = at + i;
        let before = start.checked_sub(1).map(|j| bytes[j]);
        // `axum::` but not `weir_axum::` or `crate::x::axum::`.
        let root = before.is_none_or(|b| !(b.is_ascii_alphanumeric() || b == b'_' || b == b':'));
        if root {
            return true;
        }
        at = start + needle.len();
    }
    code.lines()
        .any(|l| l.trim_start().starts_with(&format!("use {name};")))
}

#[test]
fn rooms_use_only_rooms_on_lower_floors() {
    let src = root().join("host/src");
    let floors: BTreeMap<&str, u8> = FLOORS.iter().copied().collect();
    let mut broken = Vec::new();
    for (file, text) in sources(&src) {
        let room = room_of(&src, &file);
        if room == "lib" || room == "main" {
            continue;
        }
        let Some(&floor) = floors.get(room.as_str()) else {
            broken.push(format!(
                "{}: room `{room}` has no floor in FLOORS (and ARCHITECTURE.md)",
                file.display()
            ));
            continue;
        };
        let code = code(&text);
        for (&other, &other_floor) in &floors {
            if other != room && other_floor >= floor && uses(&code, &format!("crate::{other}")) {
                broken.push(format!(
                    "{}: `{room}` (floor {floor}) uses `{other}` (floor {other_floor})",
                    file.display()
                ));
            }
        }
    }
    assert!(broken.is_empty(), "{}", broken.join("\n"));
}

#[test]
fn only_the_http_layer_knows_http_and_only_the_engine_knows_wasmtime() {
    let src = root().join("host/src");
    let mut broken = Vec::new();
    for (file, text) in sources(&src) {
        let room = room_of(&src, &file);
        let code = code(&text);
        if room != "http" {
            for c in HTTP_CRATES {
                if uses(&code, c) {
                    broken.push(format!("{}: uses `{c}` outside http/", file.display()));
                }
            }
            if room != "wire" && (uses(&code, "utoipa") || uses(&code, "utoipa_axum")) {
                broken.push(format!(
                    "{}: uses utoipa outside http/ and wire.rs",
                    file.display()
                ));
            }
        }
        if room != "engine" {
            for c in ["wasmtime", "wasmtime_wasi", "bindings"] {
                if uses(&code, c) {
                    broken.push(format!("{}: uses `{c}` outside engine/", file.display()));
                }
            }
        }
    }
    for (file, text) in sources(&root().join("host/core/src")) {
        let code = code(&text);
        for c in HTTP_CRATES.iter().chain(&["wasmtime", "tokio"]) {
            if uses(&code, c) {
                broken.push(format!("{}: weir-core uses `{c}`", file.display()));
            }
        }
    }
    assert!(broken.is_empty(), "{}", broken.join("\n"));
}

/// What `weir-agent` (a small binary for file servers) must never depend
/// on, outside its bench.
const NOT_IN_AGENT: &[&str] = &[
    "wasmtime",
    "wasmtime-wasi",
    "axum",
    "hyper-util",
    "tower",
    "jsonschema",
    "weir-host",
    "redb",
    "async-nats",
];

/// The names of the `[dependencies]` of the crate at `dir`, each with its
/// line.
fn dependencies(dir: &str) -> Vec<(String, String)> {
    let manifest = std::fs::read_to_string(root().join(dir).join("Cargo.toml")).unwrap();
    let deps = manifest
        .split("[dependencies]")
        .nth(1)
        .expect("a [dependencies] section");
    let deps = deps.split("\n[").next().unwrap_or(deps);
    deps.lines()
        .map(|line| {
            let name = line.split(['=', '.', ' ']).next().unwrap_or("").trim();
            (name.to_string(), line.to_string())
        })
        .collect()
}

#[test]
fn weir_core_depends_on_no_engine_runtime_or_http_crate() {
    for (name, line) in dependencies("host/core") {
        assert!(
            !NOT_IN_CORE.contains(&name.as_str()),
            "weir-core depends on `{name}`: {line}"
        );
    }
}

#[test]
fn weir_agent_depends_on_no_engine_store_or_server_crate() {
    for (name, line) in dependencies("host/agent") {
        assert!(
            !NOT_IN_AGENT.contains(&name.as_str()),
            "weir-agent depends on `{name}`: {line}"
        );
    }
}

#[test]
fn every_source_file_says_what_it_owns() {
    let r = root();
    let mut missing = Vec::new();
    let mut files = Vec::new();
    for dir in [
        "host/src",
        "host/core/src",
        "host/core/tests",
        "host/core/fuzz/fuzz_targets",
        "host/benches",
        "host/agent/src",
        "host/agent/benches",
        "host/build-support/src",
        "sdk/src",
        "plugins",
        "tests/all",
        "tests/support",
        "tests/guests",
    ] {
        files.extend(sources(&r.join(dir)));
    }
    // A file pasted into another with `include!` cannot have inner docs;
    // the file that includes it says what it is.
    let included: Vec<PathBuf> = files
        .iter()
        .flat_map(|(file, text)| {
            text.lines()
                .filter_map(|l| l.trim().strip_prefix("include!(\""))
                .filter_map(|l| l.split('"').next())
                .map(|rel| file.parent().expect("a directory").join(rel))
                .collect::<Vec<_>>()
        })
        .filter_map(|p| p.canonicalize().ok())
        .collect();
    for (file, text) in &files {
        let is_included = file.canonicalize().is_ok_and(|f| included.contains(&f));
        if !is_included && !text.trim_start().starts_with("//!") {
            missing.push(file.display().to_string());
        }
    }
    assert!(
        missing.is_empty(),
        "no `//!` at the top of:\n{}",
        missing.join("\n")
    );
}

#[test]
fn the_floors_in_architecture_md_are_the_floors_checked() {
    let doc = std::fs::read_to_string(root().join("ARCHITECTURE.md")).unwrap();
    for (room, floor) in FLOORS {
        let row = format!("| {floor} | `{room}` |");
        assert!(
            doc.contains(&row),
            "ARCHITECTURE.md has no floors row `{row}`"
        );
    }
}

#[test]
fn the_checks_see_what_they_look_for() {
    assert!(uses("use crate::http::AppError;", "crate::http"));
    assert!(uses("let x = axum::Router::new();", "axum"));
    assert!(!uses("use weir_axum::x;", "axum"));
    assert!(!uses("use crate::engine::bindings::X;", "bindings"));
    assert!(!uses(&code("// axum::Router is only named here"), "axum"));
    assert!(uses("use crate::bus;", "crate::bus"));
}

#[test]
fn code_drops_comments_and_strings_but_not_what_follows_a_url() {
    let text = "let u = \"http://x\"; axum::Router::new(); // tokio::spawn\nlet c = '\"'; wasmtime::Engine";
    let c = code(text);
    assert!(uses(&c, "axum"), "{c}");
    assert!(uses(&c, "wasmtime"), "{c}");
    assert!(!uses(&c, "tokio"), "{c}");
    assert!(!c.contains("http"), "{c}");
}
