//! One test per arbitration rule.

use super::*;

const NOW: f64 = 1_800_000_000.0;
const OLD: f64 = NOW - 3600.0;

fn row(path: &str, size: u64, mtime: f64) -> Upsert {
    Upsert {
        path: path.into(),
        meta: Meta {
            is_dir: false,
            size,
            mtime,
            ctime: mtime,
        },
        is_atomic_write: None,
        audit_skipped: false,
        parent_mtime: None,
    }
}

fn dir_row(path: &str, mtime: f64) -> Upsert {
    Upsert {
        meta: Meta {
            is_dir: true,
            size: 4096,
            mtime,
            ctime: mtime,
        },
        ..row(path, 0, mtime)
    }
}

fn index() -> FsIndex {
    FsIndex::new(IndexConfig::default())
}

fn size_of(ix: &FsIndex, path: &str) -> Option<u64> {
    ix.tree().get(path).map(|id| ix.tree().meta(id).size)
}

#[test]
fn realtime_upsert_is_always_applied_and_lifts_marks() {
    let mut ix = index();
    ix.upsert(&row("/a", 1, OLD + 10.0), Source::Snapshot, NOW);
    // Older mtime than memory: realtime still wins.
    let c = ix
        .upsert(&row("/a", 2, OLD), Source::Realtime, NOW)
        .unwrap();
    assert_eq!((c.kind, c.source), (ChangeKind::Update, Source::Realtime));
    assert_eq!(size_of(&ix, "/a"), Some(2));
    // Lifts a tombstone.
    ix.delete("/b", Source::Realtime, NOW, NOW);
    assert!(ix.is_tombstoned("/b", NOW));
    ix.upsert(&row("/b", 1, OLD), Source::Realtime, NOW)
        .unwrap();
    assert!(!ix.is_tombstoned("/b", NOW));
    // Clears a suspect mark and a blind-spot mark.
    ix.audit_start(NOW);
    ix.upsert(&row("/hot", 1, NOW - 1.0), Source::Audit, NOW)
        .unwrap();
    let hot = ix.tree().get("/hot").unwrap();
    assert!(ix.is_suspect(hot, NOW));
    assert!(ix.blind_additions().contains("/hot"));
    ix.upsert(&row("/hot", 2, NOW - 1.0), Source::Realtime, NOW)
        .unwrap();
    assert!(!ix.is_suspect(hot, NOW));
    assert!(!ix.blind_additions().contains("/hot"));
}

#[test]
fn non_atomic_realtime_write_is_suspect_for_the_hot_window() {
    let mut ix = index();
    let mut r = row("/w", 5, OLD);
    r.is_atomic_write = Some(false);
    ix.upsert(&r, Source::Realtime, NOW).unwrap();
    let id = ix.tree().get("/w").unwrap();
    assert!(ix.is_suspect(id, NOW + 29.0));
    assert!(!ix.is_suspect(id, NOW + 31.0));
    r.is_atomic_write = Some(true);
    ix.upsert(&r, Source::Realtime, NOW + 1.0).unwrap();
    assert!(!ix.is_suspect(id, NOW + 2.0));
}

#[test]
fn realtime_delete_removes_the_subtree_and_tombstones_it() {
    let mut ix = index();
    ix.upsert(&row("/d/x", 1, OLD), Source::Snapshot, NOW);
    ix.upsert(&row("/d/e/y", 1, OLD), Source::Snapshot, NOW);
    let changes = ix.delete("/d", Source::Realtime, NOW, NOW);
    let paths: Vec<&str> = changes.iter().map(|c| c.path.as_str()).collect();
    assert_eq!(paths.len(), 4, "{paths:?}");
    assert!(changes.iter().all(|c| c.kind == ChangeKind::Delete));
    assert_eq!(ix.tree().get("/d"), None);
    for p in ["/d", "/d/x", "/d/e", "/d/e/y"] {
        assert!(ix.is_tombstoned(p, NOW + 10.0), "{p}");
    }
    // The tombstone expires after its TTL (1 h).
    assert!(!ix.is_tombstoned("/d", NOW + 3601.0));
}

#[test]
fn snapshot_delete_respects_tombstones_and_newer_nodes() {
    let mut ix = index();
    ix.upsert(&row("/a", 1, OLD), Source::Snapshot, NOW);
    ix.upsert(&row("/new", 1, NOW - 5.0), Source::Snapshot, NOW);
    // The node changed after the scan saw it missing: ignored.
    assert!(
        ix.delete("/new", Source::Snapshot, NOW, NOW - 10.0)
            .is_empty()
    );
    assert!(ix.tree().get("/new").is_some());
    // Applied otherwise, not recorded as a blind spot for snapshots.
    assert_eq!(ix.delete("/a", Source::Snapshot, NOW, NOW).len(), 1);
    assert!(ix.blind_deletions().is_empty());
    // Tombstoned: ignored (nothing to do anyway, but no error and no change).
    ix.upsert(&row("/t", 1, OLD), Source::Realtime, NOW);
    ix.delete("/t", Source::Realtime, NOW, NOW);
    assert!(ix.delete("/t", Source::Snapshot, NOW, NOW).is_empty());
}

#[test]
fn audit_delete_is_a_blind_spot_deletion() {
    let mut ix = index();
    ix.upsert(&row("/gone", 1, OLD), Source::Snapshot, NOW);
    ix.audit_start(NOW);
    assert_eq!(ix.delete("/gone", Source::Audit, NOW, NOW).len(), 1);
    assert!(ix.blind_deletions().contains("/gone"));
}

#[test]
fn snapshot_upsert_arbitration() {
    let mut ix = index();
    ix.upsert(&row("/f", 1, OLD), Source::Snapshot, NOW)
        .unwrap();
    // Same or older mtime: ignored.
    assert!(
        ix.upsert(&row("/f", 2, OLD), Source::Snapshot, NOW)
            .is_none()
    );
    assert!(
        ix.upsert(&row("/f", 2, OLD - 1.0), Source::Snapshot, NOW)
            .is_none()
    );
    // Newer: applied.
    assert_eq!(
        ix.upsert(&row("/f", 3, OLD + 1.0), Source::Snapshot, NOW)
            .unwrap()
            .kind,
        ChangeKind::Update
    );
    // Tombstoned: ignored unless newer than the deletion, which lifts it.
    ix.delete("/f", Source::Realtime, NOW, NOW);
    assert!(
        ix.upsert(&row("/f", 4, OLD + 2.0), Source::Snapshot, NOW + 1.0)
            .is_none()
    );
    assert!(ix.is_tombstoned("/f", NOW + 1.0));
    let c = ix
        .upsert(&row("/f", 5, NOW + 5.0), Source::Snapshot, NOW + 10.0)
        .unwrap();
    assert_eq!(c.kind, ChangeKind::Insert);
    assert!(!ix.is_tombstoned("/f", NOW + 10.0));
}

#[test]
fn young_snapshot_files_are_suspect() {
    let mut ix = index();
    ix.upsert(&row("/young", 1, NOW - 10.0), Source::Snapshot, NOW)
        .unwrap();
    ix.upsert(&row("/old", 1, OLD), Source::Snapshot, NOW)
        .unwrap();
    let young = ix.tree().get("/young").unwrap();
    assert!(ix.is_suspect(young, NOW));
    assert!(
        !ix.is_suspect(young, NOW + 21.0),
        "suspect until mtime + window"
    );
    assert!(!ix.is_suspect(ix.tree().get("/old").unwrap(), NOW));
    assert_eq!(
        ix.suspect_paths(NOW),
        vec![("/young".to_string(), NOW + 20.0)]
    );
}

#[test]
fn audit_skipped_directories_are_not_ignored_and_not_listed() {
    let mut ix = index();
    ix.upsert(&dir_row("/d", OLD), Source::Snapshot, NOW);
    ix.upsert(&row("/d/keep", 1, OLD), Source::Snapshot, NOW);
    ix.audit_start(NOW);
    let mut skipped = dir_row("/d", OLD);
    skipped.audit_skipped = true;
    // Identical metadata: nothing changes, so nothing goes to the feed.
    assert!(ix.upsert(&skipped, Source::Audit, NOW).is_none());
    // Same mtime but other metadata: not ignored for the mtime, because
    // audit_skipped rows are the audit's word on the directory.
    skipped.meta.ctime = OLD + 5.0;
    assert_eq!(
        ix.upsert(&skipped, Source::Audit, NOW).unwrap().kind,
        ChangeKind::Update
    );
    // Its files were not listed: audit end must not delete them.
    assert!(ix.audit_end(NOW).is_empty());
    assert!(ix.tree().get("/d/keep").is_some());
}

#[test]
fn audit_upsert_of_a_new_path_checks_the_parent_mtime() {
    let mut ix = index();
    ix.upsert(&dir_row("/p", OLD + 100.0), Source::Snapshot, NOW);
    ix.audit_start(NOW);
    // The parent changed after the agent scanned it: the row is stale.
    let mut stale = row("/p/x", 1, OLD);
    stale.parent_mtime = Some(OLD + 50.0);
    assert!(ix.upsert(&stale, Source::Audit, NOW).is_none());
    let mut fresh = row("/p/y", 1, OLD);
    fresh.parent_mtime = Some(OLD + 100.0);
    assert_eq!(
        ix.upsert(&fresh, Source::Audit, NOW).unwrap().kind,
        ChangeKind::Insert
    );
    // A new file first seen by audit is a blind-spot addition.
    assert!(ix.blind_additions().contains("/p/y"));
}

#[test]
fn audit_end_deletes_unseen_files_in_listed_directories() {
    let mut ix = index();
    ix.upsert(&dir_row("/d", OLD), Source::Snapshot, NOW);
    for f in ["seen", "unseen", "realtime", "tombstoned"] {
        ix.upsert(&row(&format!("/d/{f}"), 1, OLD), Source::Snapshot, NOW);
    }
    ix.upsert(&dir_row("/other", OLD), Source::Snapshot, NOW);
    ix.upsert(&row("/other/not_listed", 1, OLD), Source::Snapshot, NOW);
    ix.delete("/old_tomb", Source::Realtime, NOW - 10.0, NOW - 10.0);

    ix.audit_start(NOW);
    ix.upsert(&dir_row("/d", OLD + 1.0), Source::Audit, NOW + 1.0);
    ix.upsert(&row("/d/seen", 1, OLD), Source::Audit, NOW + 1.0);
    ix.upsert(&row("/d/realtime", 2, OLD), Source::Realtime, NOW + 2.0);
    ix.delete("/d/tombstoned", Source::Realtime, NOW + 2.0, NOW + 2.0);
    let changes = ix.audit_end(NOW + 3.0);

    let deleted: Vec<&str> = changes.iter().map(|c| c.path.as_str()).collect();
    assert_eq!(deleted, ["/d/unseen"]);
    assert!(ix.blind_deletions().contains("/d/unseen"));
    for kept in ["/d/seen", "/d/realtime", "/other/not_listed"] {
        assert!(ix.tree().get(kept).is_some(), "{kept}");
    }
    // Tombstones older than the audit start are purged; newer ones stay.
    assert!(!ix.is_tombstoned("/old_tomb", NOW + 3.0));
    assert!(ix.is_tombstoned("/d/tombstoned", NOW + 3.0));
    assert_eq!(ix.audit_cycles_done(), 1);
    assert!(!ix.is_auditing());
}

#[test]
fn clearing_resets_tree_audit_state_blind_spots_and_tombstones() {
    let mut ix = index();
    ix.audit_start(NOW);
    ix.upsert(&row("/x", 1, OLD), Source::Audit, NOW);
    ix.delete("/t", Source::Realtime, NOW, NOW);
    assert!(!ix.blind_additions().is_empty());
    ix.clear();
    assert!(ix.blind_additions().is_empty());
    assert!(!ix.is_auditing());
    assert!(!ix.is_tombstoned("/t", NOW));
    assert_eq!(ix.tree().get("/x"), None);
    assert_eq!((ix.tree().file_count(), ix.tree().dir_count()), (0, 1));
}

#[test]
fn sentinel_feedback_clears_stable_files_and_renews_changed_ones() {
    let mut ix = index();
    let mut r = row("/s", 1, NOW - 40.0);
    r.is_atomic_write = Some(false);
    ix.upsert(&r, Source::Realtime, NOW);
    let id = ix.tree().get("/s").unwrap();
    assert!(ix.is_suspect(id, NOW));
    // Unchanged and older than the hot window: cleared.
    assert!(
        ix.sentinel_feedback("/s", Feedback::Exists(r.meta), NOW)
            .is_empty()
    );
    assert!(!ix.is_suspect(id, NOW));
    // No longer suspect: feedback about it is ignored, even `missing`.
    assert!(
        ix.sentinel_feedback("/s", Feedback::Missing, NOW)
            .is_empty()
    );
    assert_eq!(size_of(&ix, "/s"), Some(1));
    assert_eq!(ix.evictions().feedback_ignored, 1);
    ix.upsert(&r, Source::Realtime, NOW);
    // Changed: updated and suspect again.
    let changed = Meta {
        size: 9,
        mtime: NOW,
        ..r.meta
    };
    let changes = ix.sentinel_feedback("/s", Feedback::Exists(changed), NOW);
    assert_eq!(changes[0].kind, ChangeKind::Update);
    assert!(ix.is_suspect(id, NOW + 1.0));
    assert_eq!(size_of(&ix, "/s"), Some(9));
    // Missing: deleted.
    assert_eq!(
        ix.sentinel_feedback("/s", Feedback::Missing, NOW)[0].kind,
        ChangeKind::Delete
    );
    assert_eq!(ix.tree().get("/s"), None);
    // Directories are not the sentinel's business.
    ix.upsert(&dir_row("/dir", OLD), Source::Snapshot, NOW);
    assert!(
        ix.sentinel_feedback("/dir", Feedback::Missing, NOW)
            .is_empty()
    );
    assert!(ix.tree().get("/dir").is_some());
    // Nor any file that was never suspect.
    ix.upsert(&row("/plain", 1, OLD), Source::Snapshot, NOW);
    assert!(
        ix.sentinel_feedback("/plain", Feedback::Missing, NOW)
            .is_empty()
    );
    assert_eq!(size_of(&ix, "/plain"), Some(1));
    assert_eq!(ix.evictions().feedback_ignored, 3);
}

#[test]
fn tombstones_are_bounded_oldest_first() {
    let mut ix = FsIndex::new(IndexConfig {
        max_tombstones: 100,
        ..IndexConfig::default()
    });
    // Realtime deletes of paths never seen, as a hostile agent sends them.
    for i in 0..1_000 {
        assert!(
            ix.delete(
                &format!("/ghost{i}"),
                Source::Realtime,
                NOW + f64::from(i),
                0.0
            )
            .is_empty()
        );
        assert!(ix.tombstone_count() <= 100);
    }
    assert!(ix.evictions().tombstones >= 900, "{:?}", ix.evictions());
    // The newest are the ones kept.
    assert!(ix.is_tombstoned("/ghost999", NOW + 1_000.0));
    assert!(!ix.is_tombstoned("/ghost0", NOW + 1_000.0));
    // Expired ones go first, without counting as evictions.
    let mut ix = FsIndex::new(IndexConfig {
        max_tombstones: 10,
        tombstone_ttl_secs: 5.0,
        ..IndexConfig::default()
    });
    for i in 0..10 {
        ix.delete(&format!("/old{i}"), Source::Realtime, NOW, 0.0);
    }
    ix.delete("/new", Source::Realtime, NOW + 100.0, 0.0);
    assert_eq!(ix.tombstone_count(), 1);
    assert_eq!(ix.evictions().tombstones, 0);
}

#[test]
fn blind_spot_lists_are_bounded() {
    let mut ix = FsIndex::new(IndexConfig {
        max_blind_spots: 5,
        ..IndexConfig::default()
    });
    ix.audit_start(NOW);
    for i in 0..20 {
        ix.upsert(&row(&format!("/b{i}"), 1, OLD), Source::Audit, NOW);
    }
    assert_eq!(ix.tree().file_count(), 20);
    assert_eq!(ix.blind_additions().len(), 5);
    assert_eq!(ix.evictions().blind_spots, 15);
}

#[test]
fn an_audit_that_misses_a_directory_deletes_its_subtree_unless_realtime_touched_it() {
    let mut ix = index();
    for (p, is_dir) in [
        ("/gone", true),
        ("/gone/sub", true),
        ("/gone/sub/f", false),
        ("/kept", true),
        ("/busy", true),
    ] {
        let r = if is_dir {
            dir_row(p, OLD)
        } else {
            row(p, 1, OLD)
        };
        ix.upsert(&r, Source::Snapshot, NOW);
    }
    ix.audit_start(NOW);
    // Realtime put a file in /busy after the audit began: /busy stays.
    ix.upsert(&row("/busy/new", 1, NOW), Source::Realtime, NOW);
    ix.upsert(&dir_row("/", OLD), Source::Audit, NOW);
    ix.upsert(&dir_row("/kept", OLD), Source::Audit, NOW);
    let changes = ix.audit_end(NOW + 1.0);
    let mut gone: Vec<&str> = changes.iter().map(|c| c.path.as_str()).collect();
    gone.sort();
    assert_eq!(gone, ["/gone", "/gone/sub", "/gone/sub/f"]);
    assert!(ix.tree().get("/busy/new").is_some());
    assert!(ix.tree().get("/kept").is_some());
    // Files count as blind-spot deletions, directories do not.
    assert_eq!(
        ix.blind_deletions().iter().collect::<Vec<_>>(),
        ["/gone/sub/f"]
    );
}
