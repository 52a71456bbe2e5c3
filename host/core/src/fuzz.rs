//! The fuzz targets' bodies (`host/core/fuzz` calls them; the regression
//! test replays the inputs committed in `host/core/fuzz/regressions`). Each
//! takes any bytes and panics when an invariant breaks.

use crate::index::view::glob;
use crate::index::view::{TreeQuery, bound_tree, search_json, tree_json};
use crate::index::{FsIndex, IndexConfig, Meta, Source, Upsert, normalize};
use crate::rows::{Op, RowLimits, parse_batch, parse_feedback};
use crate::text::clip;

const NOW: f64 = 1_800_000_000.0;

/// An agent push, any bytes: parsed row by row (both naming variants), each
/// operation applied to an index as the apply thread does, the index's
/// invariants checked after every operation, and views written.
pub fn push(data: &[u8]) {
    // Small bounds, so that the fuzzer reaches them.
    let limits = RowLimits {
        max_path_bytes: 256,
        max_depth: 16,
        max_name_bytes: 32,
    };
    readers_agree(data, &limits);
    let Ok(batch) = parse_batch(data, NOW, &limits) else {
        return;
    };
    let mut ix = FsIndex::new(IndexConfig {
        max_tombstones: 8,
        max_blind_spots: 8,
        ..IndexConfig::default()
    });
    if batch.source == Source::Audit {
        ix.audit_start(NOW);
    }
    for op in &batch.ops {
        match op {
            Op::Upsert(source, row) => {
                assert!(row.path.len() <= limits.max_path_bytes);
                ix.upsert(row, *source, NOW);
            }
            Op::Delete {
                source,
                path,
                observed_at,
            } => {
                ix.delete(path, *source, NOW, *observed_at);
            }
        }
        if let Err(broken) = ix.check() {
            panic!("after {op:?}: {broken}");
        }
    }
    ix.audit_end(NOW + 1.0);
    if let Err(broken) = ix.check() {
        panic!("after the audit end: {broken}");
    }
    for r in &batch.rejected {
        assert!(
            r.reason.len() < 1024,
            "a reason of {} bytes",
            r.reason.len()
        );
    }
    let q = TreeQuery {
        path: "/".into(),
        recursive: true,
        max_depth: None,
        only_path: false,
    };
    if let Ok(out) = tree_json(&ix, &q, 10_000, 1 << 20, NOW) {
        serde_json::from_slice::<serde_json::Value>(&out).expect("the tree is JSON");
        let (_, bound) = bound_tree(&ix, &q, 10_000).expect("the tree was written");
        assert!(
            out.len() <= bound,
            "{} bytes over a bound of {bound}",
            out.len()
        );
    }
    let _ = search_json(&ix, "*a*", 10_000, 1 << 20, NOW);
}

/// The one-pass push reader and the `Value` one
/// ([`crate::rows::reference`]) agree on `data`: the same batch, or the
/// same shape error, or both find it is not JSON.
pub fn readers_agree(data: &[u8], limits: &RowLimits) {
    use crate::rows::BatchError;
    let plain = crate::rows::reference::parse_batch(data, NOW, limits);
    let fast = parse_batch(data, NOW, limits);
    match (&plain, &fast) {
        (Ok(a), Ok(b)) => assert_eq!(a, b, "the readers disagree"),
        (Err(BatchError::Shape(a)), Err(BatchError::Shape(b))) => assert_eq!(a, b),
        (Err(BatchError::NotJson(_)), Err(BatchError::NotJson(_))) => {}
        _ => panic!("the readers disagree: {plain:?} against {fast:?}"),
    }
}

/// Sentinel feedback, any bytes, against an index with a few suspects:
/// parsed update by update, applied, invariants checked after each.
pub fn feedback(data: &[u8]) {
    let Ok((updates, rejected)) = parse_feedback(data, &RowLimits::default()) else {
        return;
    };
    let mut ix = FsIndex::new(IndexConfig::default());
    for (i, path) in ["/a", "/a/b", "/c", "/d/e/f"].iter().enumerate() {
        let row = Upsert {
            path: path.to_string(),
            meta: Meta {
                is_dir: false,
                size: i as u64,
                mtime: NOW - 1.0,
                ctime: NOW - 1.0,
            },
            is_atomic_write: Some(i % 2 == 0),
            audit_skipped: false,
            parent_mtime: None,
        };
        ix.upsert(&row, Source::Snapshot, NOW);
    }
    for u in updates {
        ix.sentinel_feedback(&u.path, u.feedback.clone(), NOW);
        if let Err(broken) = ix.check() {
            panic!("after {u:?}: {broken}");
        }
    }
    for r in &rejected {
        assert!(r.reason.len() < 1024);
    }
}

/// A `POST /v1/events` body, any bytes: every event is either accepted
/// within the documented bounds or rejected alone with a short reason.
pub fn events(data: &[u8]) {
    use crate::producer::{
        MAX_EVENTS_PER_REQUEST, MAX_FIELD_BYTES, MAX_PAYLOAD_BYTES, RESERVED_SOURCE, parse_events,
    };
    events_agree(data);
    let Ok(parsed) = parse_events(data) else {
        return;
    };
    let total = parsed.valid.len() + parsed.rejected.len();
    assert!(total <= MAX_EVENTS_PER_REQUEST);
    let mut seen: Vec<usize> = parsed.valid.iter().map(|(i, _)| *i).collect();
    seen.extend(parsed.rejected.iter().map(|r| r.index));
    seen.sort_unstable();
    assert!(
        seen.iter().copied().eq(0..total),
        "each event answered once"
    );
    for (_, e) in &parsed.valid {
        for field in [&e.id, &e.event_type, &e.source]
            .into_iter()
            .chain(e.source_time.as_ref())
            .chain(e.correlation_id.as_ref())
        {
            assert!(!field.trim().is_empty() && field.len() <= MAX_FIELD_BYTES);
            assert!(!field.chars().any(char::is_control), "{field:?}");
        }
        assert!(
            e.event_type
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || ".-_:".contains(c))
        );
        assert!(!e.source.starts_with(RESERVED_SOURCE));
        assert!(e.payload.len() <= MAX_PAYLOAD_BYTES);
        serde_json::from_str::<serde_json::Value>(&e.payload).expect("the payload is JSON");
        assert!(
            e.scope.is_none(),
            "the scope comes from the key, never the body"
        );
    }
    for r in &parsed.rejected {
        assert!(
            r.reason.len() < 1024,
            "a reason of {} bytes",
            r.reason.len()
        );
        assert!(
            r.event_id
                .as_ref()
                .is_none_or(|id| id.len() <= MAX_FIELD_BYTES)
        );
    }
}

/// The one-pass events reader against the reference (`Value`) reader: a
/// body the reference reads, the one-pass reader reads the same (ids the
/// host made up are UUIDs on both sides, not the same ones). A body the
/// reference refuses whole may fare better: a payload it cannot use costs
/// only its own event.
pub fn events_agree(data: &[u8]) {
    use crate::producer::{parse_events, reference};
    let fast = parse_events(data);
    let Ok(slow) = reference::parse_events(data) else {
        return;
    };
    let fast = match fast {
        Ok(fast) => fast,
        Err(e) => panic!("the reference read the body, the one-pass reader refused it: {e}"),
    };
    assert_eq!(fast.rejected, slow.rejected);
    assert_eq!(fast.valid.len(), slow.valid.len());
    let made_up = |id: &str| id.len() == 36 && id.matches('-').count() == 4;
    for ((i, a), (j, b)) in fast.valid.iter().zip(&slow.valid) {
        assert_eq!(i, j);
        assert!(
            a.id == b.id || (made_up(&a.id) && made_up(&b.id)),
            "{a:?} {b:?}"
        );
        let (mut a, mut b) = (a.clone(), b.clone());
        a.id.clear();
        b.id.clear();
        assert_eq!(a, b);
    }
}

/// A plugin manifest (`NAME.toml`), any text: parsed and checked as the
/// engine does; what passes is within the documented bounds.
pub fn manifest(data: &[u8]) {
    use crate::manifest::Manifest;
    use crate::settings::Limits;
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(m) = Manifest::parse(text) else {
        return;
    };
    let grants = m.grants().expect("parse checked the grants");
    // Whatever a plugin asks, the answer is a yes or a no.
    for path in ["/v1/keys", "/v1/state/a/b", "/", "", "/a//b?x=/y"] {
        let _ = grants.allows("GET", path);
    }
    let _ = grants.allows("GET", &"/x".repeat(10_000));
    if let Ok(ups) = m.upstreams(&|_| Some("secret".into())) {
        for u in &ups {
            assert!(!u.base_url.ends_with('/'), "{}", u.base_url);
            assert!(!u.methods.is_empty());
            assert!(u.max_response_bytes >= 1024 && u.timeout.as_millis() >= 1);
            assert!(!format!("{u:?}").contains("secret"), "a secret in Debug");
        }
    }
    let max_memory = 256 << 20;
    if let Ok(l) = m.limits(&Limits::default(), max_memory) {
        assert!(l.memory_bytes >= 1 << 20 && l.memory_bytes <= max_memory);
        assert!(!l.call_deadline.is_zero() && !l.matches_deadline.is_zero());
        assert!(l.max_output_bytes >= 1024);
    }
    let _ = m.dirs(std::path::Path::new("/nonexistent/weir-fuzz"));
}

/// A host configuration (`weir.toml`), any text: parsed and resolved as
/// `weir serve` does; what passes is within the documented bounds.
pub fn config(data: &[u8]) {
    use crate::auth::Role;
    use crate::config::FileConfig;
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(file) = toml::from_str::<FileConfig>(text) else {
        return;
    };
    let env = |var: &str| {
        var.len()
            .is_multiple_of(2)
            .then(|| format!("from-env-{var}"))
    };
    if let Ok((datastores, keys)) = file.resolve("weir.toml", &env) {
        assert_eq!(
            datastores.iter().filter(|d| d.name == "default").count(),
            1,
            "`default` exactly once"
        );
        for (i, d) in datastores.iter().enumerate() {
            assert!(datastores[..i].iter().all(|o| o.name != d.name));
            assert!(d.queue_rows >= 1 && d.max_tree_items >= 1 && d.rows.max_depth >= 1);
            assert!(d.index.hot_window_secs >= 0.0 && d.index.tombstone_ttl_secs >= 0.0);
        }
        // No key of one datastore opens another.
        for d in &datastores {
            for role in Role::ALL {
                let _ = keys.authorize(Some("k"), role, Some(&d.name));
            }
        }
    }
    if let Ok((bus, pipeline)) = file.events.resolve("weir.toml") {
        assert!(!bus.dedup_ttl.is_zero());
        assert!(pipeline.dlq_capacity >= 1 && pipeline.dlq_bytes >= 1);
    }
    let _ = file
        .limits
        .apply(&crate::settings::Limits::default(), 1 << 30);
}

/// Path normalization, glob matching and bounded echoes, any text: the
/// first line is a glob pattern, the rest a path.
pub fn paths(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (pattern, path) = text.split_once('\n').unwrap_or((text, text));
    if let Some(p) = normalize(path) {
        assert!(p.starts_with('/'), "{p:?}");
        assert!(p == "/" || !p.ends_with('/'), "{p:?}");
        assert!(!p.contains("//"), "{p:?}");
        for segment in p.split('/').skip(1) {
            assert!(segment != "." && segment != "..", "{p:?}");
        }
        assert_eq!(normalize(&p).as_deref(), Some(p.as_str()), "not idempotent");
    }
    // Bounded: glob may not take more than a few seconds on any input, and
    // never panics. Long inputs are cut, as the views' query limits do.
    let pattern: String = pattern.chars().take(64).collect();
    let name: String = path.chars().take(256).collect();
    let hit = glob(&pattern, &name);
    if !pattern.contains(['*', '?']) {
        assert_eq!(hit, pattern == name);
    }
    if pattern == "*" {
        assert!(hit);
    }
    for max in [0, 1, 7, 64] {
        let c = clip(path, max);
        assert!(
            c.len() <= max.max(path.len().min(max)) + 40,
            "{} bytes",
            c.len()
        );
    }
}

/// A stored event-log record, any bytes: decoding never panics, and what
/// decodes encodes back to the same bytes.
pub fn codec(data: &[u8]) {
    use crate::codec::{decode, decode_id, encode};
    let id = decode_id(data);
    if let Ok(event) = decode(7, data) {
        let mut again = Vec::new();
        encode(&event, &mut again);
        assert_eq!(again, data, "decode then encode is the identity");
        assert_eq!(id, Ok((event.timestamp_ms, event.new.id.clone())));
    }
}

/// An operation of a cluster's ingest log, any bytes: decoding never
/// panics, and whatever decodes, encoded, decodes back to itself exactly
/// (times included: serde_json reads numbers correctly rounded, its
/// `float_roundtrip` feature, so the host that wrote an operation and the
/// replicas that read it hold the same `f64`).
pub fn ingest_op(data: &[u8]) {
    use crate::ingest_log::IngestOp;
    if let Ok(op) = IngestOp::decode(data) {
        assert_eq!(IngestOp::decode(&op.encode()), Ok(op));
    }
}

#[cfg(test)]
mod tests {
    /// Every input committed under `fuzz/regressions/TARGET/` (crashes the
    /// fuzzer once found, kept so they stay fixed) and the seed corpus.
    #[test]
    fn regressions_stay_fixed() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/regressions");
        type Target = fn(&[u8]);
        let targets: [(&str, Target); 8] = [
            ("push", super::push),
            ("feedback", super::feedback),
            ("paths", super::paths),
            ("events", super::events),
            ("manifest", super::manifest),
            ("config", super::config),
            ("codec", super::codec),
            ("ingest_op", super::ingest_op),
        ];
        let mut replayed = 0;
        for (name, target) in targets {
            let Ok(dir) = std::fs::read_dir(root.join(name)) else {
                continue;
            };
            for entry in dir.flatten() {
                let data = std::fs::read(entry.path()).expect("a readable input");
                target(&data);
                replayed += 1;
            }
        }
        assert!(
            replayed > 0,
            "no regression inputs under {}",
            root.display()
        );
    }
}
