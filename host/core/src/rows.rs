//! Parsing of agent pushes into index operations, row by row: a bad row is
//! rejected with its reason and never fails the rest of the batch (the
//! agent would retry the whole batch forever).
//!
//! Accepts both naming variants: `path`/`file_path`, `is_directory`/`is_dir`,
//! `is_end`/`is_snapshot_end`, and a per-event `message_source` with the
//! batch's `source_type` as fallback.

use serde::Serialize;
use serde_json::{Map, Value};

use crate::index::{Meta, Source, Upsert, normalize};

/// One index operation.
#[derive(Debug, Clone, PartialEq)]
pub enum Op {
    /// Insert or update.
    Upsert(Source, Upsert),
    /// Delete; `observed_at` is when the agent saw it (seconds).
    Delete {
        /// Row source.
        source: Source,
        /// Normalized path.
        path: String,
        /// The event's `index`, in seconds.
        observed_at: f64,
    },
}

/// A row (or event) that was not applied, and why.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Rejected {
    /// Position of the event in the batch.
    pub event: usize,
    /// Position of the row in the event (`None`: the whole event).
    pub row: Option<usize>,
    /// What is wrong.
    pub reason: String,
}

/// A parsed push.
#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    /// The session id in the body, if any.
    pub session_id: Option<String>,
    /// The batch's source type.
    pub source: Source,
    /// The last batch of a snapshot (or audit).
    pub is_end: bool,
    /// Valid operations, in order.
    pub ops: Vec<Op>,
    /// Rejected rows.
    pub rejected: Vec<Rejected>,
}

/// Why a body cannot be read as a push at all.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BatchError {
    /// Not JSON.
    #[error("body is not JSON: {0}")]
    NotJson(String),
    /// JSON, but not a push.
    #[error("body is not a push: {0}")]
    Shape(String),
}

/// `source_type` / `message_source` values.
fn source_of(name: &str) -> Option<Source> {
    match name {
        "realtime" | "message" => Some(Source::Realtime),
        "snapshot" => Some(Source::Snapshot),
        "audit" => Some(Source::Audit),
        "on_demand_job" | "job" => Some(Source::OnDemandJob),
        _ => None,
    }
}

fn field<'a>(row: &'a Map<String, Value>, names: &[&str]) -> Option<&'a Value> {
    names
        .iter()
        .find_map(|n| row.get(*n))
        .filter(|v| !v.is_null())
}

fn number(row: &Map<String, Value>, names: &[&str]) -> Result<Option<f64>, String> {
    match field(row, names) {
        None => Ok(None),
        Some(v) => v
            .as_f64()
            .filter(|f| f.is_finite())
            .map(Some)
            .ok_or_else(|| format!("`{}` is not a number", names[0])),
    }
}

fn flag(row: &Map<String, Value>, names: &[&str]) -> Result<Option<bool>, String> {
    match field(row, names) {
        None => Ok(None),
        Some(v) => v
            .as_bool()
            .map(Some)
            .ok_or_else(|| format!("`{}` is not a boolean", names[0])),
    }
}

fn row_path(row: &Map<String, Value>) -> Result<String, String> {
    let raw = field(row, &["path", "file_path"])
        .ok_or("missing `path`")?
        .as_str()
        .ok_or("`path` is not a string")?;
    normalize(raw).ok_or_else(|| format!("path `{raw}` is not a clean relative path"))
}

fn upsert_row(row: &Map<String, Value>) -> Result<Upsert, String> {
    let path = row_path(row)?;
    let size = match field(row, &["size"]) {
        None => 0,
        Some(v) => v.as_u64().ok_or("`size` is not a non-negative integer")?,
    };
    let mtime = number(row, &["modified_time", "mtime"])?.ok_or("missing `modified_time`")?;
    let ctime = number(row, &["created_time", "ctime"])?.unwrap_or(mtime);
    let is_dir = flag(row, &["is_directory", "is_dir"])?.unwrap_or(false);
    Ok(Upsert {
        path,
        meta: Meta {
            is_dir,
            size,
            mtime,
            ctime,
        },
        is_atomic_write: flag(row, &["is_atomic_write"])?,
        audit_skipped: flag(row, &["audit_skipped"])?.unwrap_or(false),
        parent_mtime: number(row, &["parent_mtime"])?,
    })
}

/// Parses a push body. `now` (seconds) stands in for a missing event index.
pub fn parse_batch(body: &[u8], now: f64) -> Result<Batch, BatchError> {
    let value: Value =
        serde_json::from_slice(body).map_err(|e| BatchError::NotJson(e.to_string()))?;
    let obj = value
        .as_object()
        .ok_or_else(|| BatchError::Shape("expected a JSON object".into()))?;
    let events = obj
        .get("events")
        .and_then(Value::as_array)
        .ok_or_else(|| BatchError::Shape("`events` must be a list".into()))?;
    let source = match obj.get("source_type").and_then(Value::as_str) {
        None => Source::Realtime,
        Some(s) => source_of(s).ok_or_else(|| {
            BatchError::Shape(format!(
                "`source_type` `{s}` is not snapshot, message, audit or on_demand_job"
            ))
        })?,
    };
    let is_end = ["is_end", "is_snapshot_end"]
        .iter()
        .any(|k| obj.get(*k).and_then(Value::as_bool) == Some(true));
    let mut batch = Batch {
        session_id: obj
            .get("session_id")
            .and_then(Value::as_str)
            .map(str::to_string),
        source,
        is_end,
        ops: Vec::new(),
        rejected: Vec::new(),
    };
    for (e, event) in events.iter().enumerate() {
        if let Err(reason) = parse_event(event, e, source, now, &mut batch) {
            batch.rejected.push(Rejected {
                event: e,
                row: None,
                reason,
            });
        }
    }
    Ok(batch)
}

fn parse_event(
    event: &Value,
    e: usize,
    fallback: Source,
    now: f64,
    batch: &mut Batch,
) -> Result<(), String> {
    let event = event.as_object().ok_or("event is not an object")?;
    let kind = event
        .get("event_type")
        .and_then(Value::as_str)
        .ok_or("missing `event_type`")?;
    let delete = match kind {
        "insert" | "update" | "INSERT" | "UPDATE" => false,
        "delete" | "DELETE" => true,
        other => {
            return Err(format!(
                "`event_type` `{other}` is not insert, update or delete"
            ));
        }
    };
    let source = match event.get("message_source").and_then(Value::as_str) {
        None => fallback,
        Some(s) => source_of(s).ok_or_else(|| format!("`message_source` `{s}` is unknown"))?,
    };
    let observed_at = event
        .get("index")
        .and_then(Value::as_f64)
        .map_or(now, |ms| ms / 1000.0);
    let rows = event
        .get("rows")
        .and_then(Value::as_array)
        .ok_or("`rows` must be a list")?;
    for (r, row) in rows.iter().enumerate() {
        let parsed = row
            .as_object()
            .ok_or_else(|| "row is not an object".to_string())
            .and_then(|row| {
                if delete {
                    row_path(row).map(|path| Op::Delete {
                        source,
                        path,
                        observed_at,
                    })
                } else {
                    upsert_row(row).map(|u| Op::Upsert(source, u))
                }
            });
        match parsed {
            Ok(op) => batch.ops.push(op),
            Err(reason) => batch.rejected.push(Rejected {
                event: e,
                row: Some(r),
                reason,
            }),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn parse(v: Value) -> Batch {
        parse_batch(v.to_string().as_bytes(), 100.0).unwrap()
    }

    #[test]
    fn fustor_snapshot_batch() {
        let b = parse(json!({
            "session_id": "s1", "source_type": "snapshot", "is_end": true,
            "events": [{"event_type": "update", "event_schema": "fs", "table": "files", "index": 1795414283955u64,
                "fields": ["path"], "message_source": "snapshot",
                "rows": [
                    {"path": "/", "file_name": "", "size": 4096, "modified_time": 1.5, "created_time": 2.5, "is_directory": true},
                    {"path": "/README.txt", "file_name": "README.txt", "size": 6, "modified_time": 1.5, "created_time": 2.5, "is_directory": false}
                ]}]
        }));
        assert_eq!(b.session_id.as_deref(), Some("s1"));
        assert!(b.is_end);
        assert_eq!(b.source, Source::Snapshot);
        assert!(b.rejected.is_empty());
        let Op::Upsert(source, u) = &b.ops[1] else {
            panic!()
        };
        assert_eq!(*source, Source::Snapshot);
        assert_eq!(u.path, "/README.txt");
        assert_eq!(
            u.meta,
            Meta {
                is_dir: false,
                size: 6,
                mtime: 1.5,
                ctime: 2.5
            }
        );
    }

    #[test]
    fn seed_naming_variant_and_message_fallback() {
        let b = parse(json!({
            "source_type": "message", "is_snapshot_end": true,
            "events": [
                {"event_type": "insert", "rows": [{"file_path": "a/b", "size": 1, "modified_time": 3.0, "is_dir": false, "is_atomic_write": false}]},
                {"event_type": "delete", "index": 5000, "rows": [{"file_path": "/a/c"}]}
            ]
        }));
        assert!(b.is_end);
        let Op::Upsert(Source::Realtime, u) = &b.ops[0] else {
            panic!("{:?}", b.ops)
        };
        assert_eq!(
            (u.path.as_str(), u.is_atomic_write, u.meta.ctime),
            ("/a/b", Some(false), 3.0)
        );
        assert_eq!(
            b.ops[1],
            Op::Delete {
                source: Source::Realtime,
                path: "/a/c".into(),
                observed_at: 5.0
            }
        );
    }

    #[test]
    fn bad_rows_are_rejected_one_by_one() {
        let b = parse(json!({
            "source_type": "message",
            "events": [
                {"event_type": "update", "message_source": "realtime", "rows": [
                    {"path": "/ok", "size": 1, "modified_time": 1.0},
                    {"path": "/neg", "size": -1, "modified_time": 1.0},
                    {"size": 1, "modified_time": 1.0},
                    {"path": "/../etc", "modified_time": 1.0},
                    {"path": "/nomtime"},
                    "not a row"
                ]},
                {"event_type": "rename", "rows": []},
                {"foo": 1},
                {"event_type": "delete", "rows": [{"path": "/gone"}]}
            ]
        }));
        assert_eq!(b.ops.len(), 2);
        let reasons: Vec<(usize, Option<usize>, &str)> = b
            .rejected
            .iter()
            .map(|r| (r.event, r.row, r.reason.as_str()))
            .collect();
        assert_eq!(
            reasons,
            [
                (0, Some(1), "`size` is not a non-negative integer"),
                (0, Some(2), "missing `path`"),
                (0, Some(3), "path `/../etc` is not a clean relative path"),
                (0, Some(4), "missing `modified_time`"),
                (0, Some(5), "row is not an object"),
                (
                    1,
                    None,
                    "`event_type` `rename` is not insert, update or delete"
                ),
                (2, None, "missing `event_type`"),
            ]
        );
    }

    #[test]
    fn whole_body_errors() {
        assert!(matches!(
            parse_batch(b"{nope", 0.0),
            Err(BatchError::NotJson(_))
        ));
        assert_eq!(
            parse_batch(b"[]", 0.0),
            Err(BatchError::Shape("expected a JSON object".into()))
        );
        assert_eq!(
            parse_batch(br#"{"events": 1}"#, 0.0),
            Err(BatchError::Shape("`events` must be a list".into()))
        );
        assert!(parse_batch(br#"{"events": [], "source_type": "tape"}"#, 0.0).is_err());
    }
}
