//! The fuzz targets' bodies (`host/core/fuzz` calls them; the regression
//! test replays the inputs committed in `host/core/fuzz/regressions`). Each
//! takes any bytes and panics when an invariant breaks.

use crate::index::view::glob;
use crate::index::view::{TreeQuery, search_json, tree_json};
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
    }
    let _ = search_json(&ix, "*a*", 10_000, 1 << 20, NOW);
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

#[cfg(test)]
mod tests {
    /// Every input committed under `fuzz/regressions/TARGET/` (crashes the
    /// fuzzer once found, kept so they stay fixed) and the seed corpus.
    #[test]
    fn regressions_stay_fixed() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/regressions");
        type Target = fn(&[u8]);
        let targets: [(&str, Target); 3] = [
            ("push", super::push),
            ("feedback", super::feedback),
            ("paths", super::paths),
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
