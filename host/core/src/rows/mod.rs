//! Parsing of agent pushes into index operations, row by row: a bad row is
//! rejected with its reason and never fails the rest of the batch (the
//! agent would retry the whole batch forever).
//!
//! Accepts both naming variants: `path`/`file_path`, `is_directory`/`is_dir`,
//! `is_end`/`is_snapshot_end`, and a per-event `message_source` with the
//! batch's `source_type` as fallback.

pub mod reference;
mod stream;
pub(crate) use stream::{Skip, map_is, scalars_are, seq_is};

use std::borrow::Cow;

use serde::Serialize;
use serde_json::{Map, Value};

use crate::index::{Meta, Source, Upsert, normalize};
use crate::text::echo;

/// The latest time a row may carry: 9999-12-31T23:59:59Z, the last second
/// RFC 3339 can write (change events format row times).
pub const MAX_TIME_SECS: f64 = 253_402_300_799.0;

/// The largest file size a row may carry (`i64::MAX`, what file systems
/// can report).
pub const MAX_SIZE: u64 = i64::MAX as u64;

/// Bounds checked on every row at parse time; a row beyond one is rejected
/// alone, with the bound named.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RowLimits {
    /// Most bytes of a normalized path.
    pub max_path_bytes: usize,
    /// Most segments of a normalized path.
    pub max_depth: usize,
    /// Most bytes of one path segment (a file or directory name).
    pub max_name_bytes: usize,
}

impl Default for RowLimits {
    fn default() -> Self {
        Self {
            max_path_bytes: 4096,
            max_depth: 256,
            max_name_bytes: 255,
        }
    }
}

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
    /// Set on a `job_complete` push: the agent finished an on-demand scan.
    pub job_complete: Option<JobComplete>,
}

/// Longest on-demand scan job id an agent may name (Fusion's and Weir's
/// are 8 characters).
pub const MAX_JOB_ID_BYTES: usize = 64;

/// What a `job_complete` push (`source_type` `job_complete`, or Fusion's
/// `scan_complete` and `find_complete`) says in its `metadata`: which job
/// ended, by id or by the path it scanned (at least one of the two).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobComplete {
    /// `metadata.job_id`.
    pub job_id: Option<String>,
    /// `metadata.scan_path`, normalized.
    pub scan_path: Option<String>,
}

/// Reads the `metadata` of a `job_complete` push.
fn job_complete(meta: Option<&Value>, limits: &RowLimits) -> Result<JobComplete, BatchError> {
    let shape = |m: String| BatchError::Shape(m);
    let meta = meta
        .and_then(Value::as_object)
        .ok_or_else(|| shape("a `job_complete` push needs a `metadata` object".into()))?;
    let job_id = match meta.get("job_id") {
        None | Some(Value::Null) => None,
        Some(Value::String(id)) if !id.is_empty() && id.len() <= MAX_JOB_ID_BYTES => {
            Some(id.clone())
        }
        Some(_) => {
            return Err(shape(format!(
                "`metadata.job_id` is not a string of 1 to {MAX_JOB_ID_BYTES} bytes"
            )));
        }
    };
    let scan_path = match meta.get("scan_path") {
        None | Some(Value::Null) => None,
        Some(Value::String(raw)) => {
            Some(clean_path(raw, limits).map_err(|e| shape(format!("`metadata.scan_path`: {e}")))?)
        }
        Some(_) => return Err(shape("`metadata.scan_path` is not a string".into())),
    };
    if job_id.is_none() && scan_path.is_none() {
        return Err(shape(
            "a `job_complete` push needs `metadata.job_id` or `metadata.scan_path`".into(),
        ));
    }
    Ok(JobComplete { job_id, scan_path })
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

/// One JSON value of a push where the rules read it: scalars as they are,
/// objects and arrays as `Other` (no rule reads inside them). Strings
/// borrow from the body unless they had escapes.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Scalar<'a> {
    Null,
    Bool(bool),
    U64(u64),
    I64(i64),
    F64(f64),
    Str(Cow<'a, str>),
    Other,
}

impl<'a> Scalar<'a> {
    fn of(value: &'a Value) -> Self {
        match value {
            Value::Null => Self::Null,
            Value::Bool(b) => Self::Bool(*b),
            Value::Number(n) => match (n.as_u64(), n.as_i64()) {
                (Some(u), _) => Self::U64(u),
                (None, Some(i)) => Self::I64(i),
                _ => n.as_f64().map_or(Self::Other, Self::F64),
            },
            Value::String(s) => Self::Str(Cow::Borrowed(s)),
            Value::Array(_) | Value::Object(_) => Self::Other,
        }
    }

    /// The same value, borrowed (no copy of an owned string).
    fn view(&self) -> Scalar<'_> {
        match self {
            Self::Str(s) => Scalar::Str(Cow::Borrowed(s)),
            Self::Null => Scalar::Null,
            Self::Bool(b) => Scalar::Bool(*b),
            Self::U64(u) => Scalar::U64(*u),
            Self::I64(i) => Scalar::I64(*i),
            Self::F64(f) => Scalar::F64(*f),
            Self::Other => Scalar::Other,
        }
    }

    fn is_null(&self) -> bool {
        matches!(self, Self::Null)
    }

    fn as_f64(&self) -> Option<f64> {
        match *self {
            Self::U64(u) => Some(u as f64),
            Self::I64(i) => Some(i as f64),
            Self::F64(f) => Some(f),
            _ => None,
        }
    }

    fn as_u64(&self) -> Option<u64> {
        match *self {
            Self::U64(u) => Some(u),
            Self::I64(i) => u64::try_from(i).ok(),
            _ => None,
        }
    }

    fn as_bool(&self) -> Option<bool> {
        match *self {
            Self::Bool(b) => Some(b),
            _ => None,
        }
    }

    fn as_str(&self) -> Option<&str> {
        match self {
            Self::Str(s) => Some(s),
            _ => None,
        }
    }
}

/// A row's fields by name, however they were read.
pub(crate) trait Fields {
    /// The field `name`, if the row has it (`Null` when it is null).
    fn get(&self, name: &str) -> Option<Scalar<'_>>;
}

impl Fields for Map<String, Value> {
    fn get(&self, name: &str) -> Option<Scalar<'_>> {
        Map::get(self, name).map(Scalar::of)
    }
}

fn field<'a>(row: &'a impl Fields, names: &[&str]) -> Option<Scalar<'a>> {
    names
        .iter()
        .find_map(|n| row.get(n))
        .filter(|v| !v.is_null())
}

fn number(row: &impl Fields, names: &[&str]) -> Result<Option<f64>, String> {
    match field(row, names) {
        None => Ok(None),
        Some(v) => v
            .as_f64()
            .filter(|f| f.is_finite())
            .map(Some)
            .ok_or_else(|| format!("`{}` is not a number", names[0])),
    }
}

fn flag(row: &impl Fields, names: &[&str]) -> Result<Option<bool>, String> {
    match field(row, names) {
        None => Ok(None),
        Some(v) => v
            .as_bool()
            .map(Some)
            .ok_or_else(|| format!("`{}` is not a boolean", names[0])),
    }
}

fn row_path(row: &impl Fields, limits: &RowLimits) -> Result<String, String> {
    let raw = field(row, &["path", "file_path"]).ok_or("missing `path`")?;
    clean_path(raw.as_str().ok_or("`path` is not a string")?, limits)
}
/// `raw` normalized, within `limits`.
fn clean_path(raw: &str, limits: &RowLimits) -> Result<String, String> {
    // Checked before normalizing, so that a hostile path costs no copy.
    if raw.len() > limits.max_path_bytes.saturating_mul(2) {
        return Err(format!(
            "path `{}` is longer than {} bytes",
            echo(raw),
            limits.max_path_bytes
        ));
    }
    let path = normalize(raw)
        .ok_or_else(|| format!("path `{}` is not a clean relative path", echo(raw)))?;
    if path.len() > limits.max_path_bytes {
        return Err(format!(
            "path `{}` is longer than {} bytes",
            echo(&path),
            limits.max_path_bytes
        ));
    }
    let mut depth = 0;
    for name in path.split('/').skip(1) {
        depth += 1;
        if name.len() > limits.max_name_bytes {
            return Err(format!(
                "path `{}` has a name longer than {} bytes",
                echo(&path),
                limits.max_name_bytes
            ));
        }
    }
    if depth > limits.max_depth {
        return Err(format!(
            "path `{}` is deeper than {} levels",
            echo(&path),
            limits.max_depth
        ));
    }
    Ok(path)
}

/// The `size` field (0 when absent), within 0 ..= [`MAX_SIZE`].
fn size(row: &impl Fields) -> Result<u64, String> {
    match field(row, &["size"]) {
        None => Ok(0),
        Some(v) => v
            .as_u64()
            .filter(|&s| s <= MAX_SIZE)
            .ok_or_else(|| format!("`size` is not an integer from 0 to {MAX_SIZE}")),
    }
}

/// A time field in seconds within 0 ..= [`MAX_TIME_SECS`].
fn time(row: &impl Fields, names: &[&str]) -> Result<Option<f64>, String> {
    match number(row, names)? {
        Some(t) if !(0.0..=MAX_TIME_SECS).contains(&t) => Err(format!(
            "`{}` {t:?} is outside 0 ..= {MAX_TIME_SECS} (the years 1970 to 9999)",
            names[0]
        )),
        t => Ok(t),
    }
}

/// A row read before its event says whether it upserts or deletes (an
/// event's keys come in any order): both readings, checked once.
#[derive(Debug)]
pub(crate) enum PreRow {
    /// Valid as an upsert (and so as a delete of its path).
    Upsert(Upsert),
    /// A valid path (a delete may use it), but no valid upsert: why.
    PathOnly(String, String),
    /// Neither: why.
    Bad(String),
}

impl PreRow {
    /// Reads one row object within `limits`.
    pub(crate) fn read(row: &impl Fields, limits: &RowLimits) -> Self {
        let path = match row_path(row, limits) {
            Ok(path) => path,
            Err(reason) => return Self::Bad(reason),
        };
        match upsert_fields(row) {
            Ok((meta, is_atomic_write, audit_skipped, parent_mtime)) => Self::Upsert(Upsert {
                path,
                meta,
                is_atomic_write,
                audit_skipped,
                parent_mtime,
            }),
            Err(reason) => Self::PathOnly(path, reason),
        }
    }

    /// A row that is not an object.
    pub(crate) fn not_an_object() -> Self {
        Self::Bad("row is not an object".into())
    }
}

type UpsertFields = (Meta, Option<bool>, bool, Option<f64>);

fn upsert_fields(row: &impl Fields) -> Result<UpsertFields, String> {
    let size = size(row)?;
    let mtime = time(row, &["modified_time", "mtime"])?.ok_or("missing `modified_time`")?;
    let ctime = time(row, &["created_time", "ctime"])?.unwrap_or(mtime);
    let is_dir = flag(row, &["is_directory", "is_dir"])?.unwrap_or(false);
    Ok((
        Meta {
            is_dir,
            size,
            mtime,
            ctime,
        },
        flag(row, &["is_atomic_write"])?,
        flag(row, &["audit_skipped"])?.unwrap_or(false),
        time(row, &["parent_mtime"])?,
    ))
}

/// One event of a push as read, before the push's own fields are known.
#[derive(Debug)]
pub(crate) enum PreEvent<'a> {
    /// An object: the fields the rules read (`rows` is `None` when it is
    /// missing or not a list).
    Event {
        event_type: Option<Scalar<'a>>,
        message_source: Option<Scalar<'a>>,
        index: Option<Scalar<'a>>,
        rows: Option<Vec<PreRow>>,
    },
    /// Not an object.
    NotAnObject,
}

/// A push as read: its own fields and its events.
#[derive(Debug, Default)]
pub(crate) struct PrePush<'a> {
    /// `None` when missing or not a list.
    pub(crate) events: Option<Vec<PreEvent<'a>>>,
    pub(crate) source_type: Option<Scalar<'a>>,
    pub(crate) session_id: Option<Scalar<'a>>,
    pub(crate) is_end: Option<Scalar<'a>>,
    pub(crate) is_snapshot_end: Option<Scalar<'a>>,
    pub(crate) metadata: Option<Value>,
}

impl PrePush<'_> {
    /// The push the rules make of it.
    fn into_batch(self, now: f64, limits: &RowLimits) -> Result<Batch, BatchError> {
        let events = self
            .events
            .ok_or_else(|| BatchError::Shape("`events` must be a list".into()))?;
        let source_type = self.source_type.as_ref().and_then(Scalar::as_str);
        let completes = matches!(
            source_type,
            Some("job_complete" | "scan_complete" | "find_complete")
        );
        let source = match source_type {
            None => Source::Realtime,
            Some(_) if completes => Source::OnDemandJob,
            Some(s) => source_of(s).ok_or_else(|| {
                BatchError::Shape(format!(
                    "`source_type` `{}` is not snapshot, message, audit, on_demand_job or job_complete",
                    echo(s)
                ))
            })?,
        };
        let job_complete = if completes {
            Some(job_complete(self.metadata.as_ref(), limits)?)
        } else {
            None
        };
        let is_end = [&self.is_end, &self.is_snapshot_end]
            .iter()
            .any(|v| v.as_ref().and_then(Scalar::as_bool) == Some(true));
        let rows = events
            .iter()
            .map(|e| match e {
                PreEvent::Event { rows: Some(r), .. } => r.len(),
                _ => 0,
            })
            .sum();
        let mut batch = Batch {
            session_id: self
                .session_id
                .as_ref()
                .and_then(Scalar::as_str)
                .map(str::to_string),
            source,
            is_end,
            ops: Vec::with_capacity(rows),
            rejected: Vec::new(),
            job_complete,
        };
        for (e, event) in events.into_iter().enumerate() {
            if let Err(reason) = add_event(event, e, source, now, &mut batch) {
                batch.rejected.push(Rejected {
                    event: e,
                    row: None,
                    reason,
                });
            }
        }
        Ok(batch)
    }
}

/// Parses a push body, each row within `limits`. `now` (seconds) stands in
/// for a missing event index.
///
/// One pass over the body with no JSON tree: strings borrow from it, and a
/// row costs one allocation (its path). [`reference::parse_batch`] reads
/// the same body through a `serde_json::Value` and must agree (the fuzz
/// target `push` checks it).
pub fn parse_batch(body: &[u8], now: f64, limits: &RowLimits) -> Result<Batch, BatchError> {
    let pre = stream::read(body, limits).map_err(|e| BatchError::NotJson(e.to_string()))?;
    pre.ok_or_else(|| BatchError::Shape("expected a JSON object".into()))?
        .into_batch(now, limits)
}

fn add_event(
    event: PreEvent<'_>,
    e: usize,
    fallback: Source,
    now: f64,
    batch: &mut Batch,
) -> Result<(), String> {
    let PreEvent::Event {
        event_type,
        message_source,
        index,
        rows,
    } = event
    else {
        return Err("event is not an object".into());
    };
    let kind = event_type
        .as_ref()
        .and_then(Scalar::as_str)
        .ok_or("missing `event_type`")?;
    let delete = match kind {
        "insert" | "update" | "INSERT" | "UPDATE" => false,
        "delete" | "DELETE" => true,
        other => {
            return Err(format!(
                "`event_type` `{}` is not insert, update or delete",
                echo(other)
            ));
        }
    };
    let source = match message_source.as_ref().and_then(Scalar::as_str) {
        None => fallback,
        Some(s) => {
            source_of(s).ok_or_else(|| format!("`message_source` `{}` is unknown", echo(s)))?
        }
    };
    let observed_at = index
        .as_ref()
        .and_then(Scalar::as_f64)
        .map_or(now, |ms| ms / 1000.0);
    let rows = rows.ok_or("`rows` must be a list")?;
    for (r, row) in rows.into_iter().enumerate() {
        let parsed = match (row, delete) {
            (PreRow::Upsert(u), false) => Ok(Op::Upsert(source, u)),
            (PreRow::Upsert(Upsert { path, .. }) | PreRow::PathOnly(path, _), true) => {
                Ok(Op::Delete {
                    source,
                    path,
                    observed_at,
                })
            }
            (PreRow::PathOnly(_, reason), false) | (PreRow::Bad(reason), _) => Err(reason),
        };
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

/// What a sentinel found at one suspect path.
#[derive(Debug, Clone, PartialEq)]
pub struct FeedbackUpdate {
    /// Normalized path.
    pub path: String,
    /// Exists (with its metadata) or missing.
    pub feedback: crate::index::Feedback,
}

/// Parses sentinel feedback (`{"updates": [{path, status, mtime?, size?}]}`)
/// update by update, each path and time within `limits`: a bad update is
/// rejected alone (its `event` is its position, `row` is `None`).
pub fn parse_feedback(
    body: &[u8],
    limits: &RowLimits,
) -> Result<(Vec<FeedbackUpdate>, Vec<Rejected>), BatchError> {
    let value: Value =
        serde_json::from_slice(body).map_err(|e| BatchError::NotJson(e.to_string()))?;
    let updates = value
        .as_object()
        .and_then(|o| o.get("updates"))
        .and_then(Value::as_array)
        .ok_or_else(|| {
            BatchError::Shape("feedback needs `updates`: [{path, status, mtime, size}]".into())
        })?;
    let mut ok = Vec::new();
    let mut rejected = Vec::new();
    for (i, u) in updates.iter().enumerate() {
        let parsed = u
            .as_object()
            .ok_or_else(|| "update is not an object".to_string())
            .and_then(|u| feedback_update(u, limits));
        match parsed {
            Ok(update) => ok.push(update),
            Err(reason) => rejected.push(Rejected {
                event: i,
                row: None,
                reason,
            }),
        }
    }
    Ok((ok, rejected))
}

fn feedback_update(u: &Map<String, Value>, limits: &RowLimits) -> Result<FeedbackUpdate, String> {
    use crate::index::Feedback;
    let path = row_path(u, limits)?;
    let status = field(u, &["status"]).ok_or("missing `status`")?;
    let status = status.as_str().ok_or("`status` is not a string")?;
    let feedback = match status {
        "missing" => Feedback::Missing,
        "exists" => {
            let mtime = time(u, &["mtime", "modified_time"])?.ok_or("`exists` needs `mtime`")?;
            Feedback::Exists(Meta {
                is_dir: false,
                size: size(u)?,
                mtime,
                ctime: mtime,
            })
        }
        other => {
            return Err(format!("status `{}` is not exists or missing", echo(other)));
        }
    };
    Ok(FeedbackUpdate { path, feedback })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn parse(v: Value) -> Batch {
        parse_batch(v.to_string().as_bytes(), 100.0, &RowLimits::default()).unwrap()
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
    fn job_complete_names_its_job_and_bad_metadata_is_named() {
        // ex_14 of the recorded Fustor traffic.
        let b = parse(json!({
            "session_id": "s1", "events": [], "source_type": "job_complete", "is_end": false,
            "metadata": {"scan_path": "/proj_2/run_0", "job_id": "5525facd"}
        }));
        assert_eq!(b.source, Source::OnDemandJob);
        assert_eq!(
            b.job_complete,
            Some(JobComplete {
                job_id: Some("5525facd".into()),
                scan_path: Some("/proj_2/run_0".into())
            })
        );
        let b = parse(
            json!({"events": [], "source_type": "scan_complete", "metadata": {"scan_path": "a/"}}),
        );
        assert_eq!(b.job_complete.unwrap().scan_path.as_deref(), Some("/a"));
        let on_demand = parse(json!({"events": [], "source_type": "on_demand_job"}));
        assert_eq!(on_demand.job_complete, None);
        for (body, says) in [
            (
                json!({"events": [], "source_type": "job_complete"}),
                "needs a `metadata` object",
            ),
            (
                json!({"events": [], "source_type": "job_complete", "metadata": {}}),
                "needs `metadata.job_id` or",
            ),
            (
                json!({"events": [], "source_type": "job_complete", "metadata": {"job_id": 7}}),
                "`metadata.job_id` is not",
            ),
            (
                json!({"events": [], "source_type": "job_complete", "metadata": {"job_id": "x".repeat(65)}}),
                "1 to 64 bytes",
            ),
            (
                json!({"events": [], "source_type": "job_complete", "metadata": {"scan_path": "/a/../b"}}),
                "`metadata.scan_path`",
            ),
        ] {
            let e =
                parse_batch(body.to_string().as_bytes(), 1.0, &RowLimits::default()).unwrap_err();
            assert!(e.to_string().contains(says), "{e}");
        }
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
                (
                    0,
                    Some(1),
                    "`size` is not an integer from 0 to 9223372036854775807"
                ),
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
    fn rows_beyond_the_limits_are_rejected_alone_naming_the_bound() {
        let deep = "/a".repeat(100_000);
        let long_name = format!("/{}", "n".repeat(300));
        let too_deep = "/d".repeat(300);
        let b = parse(
            json!({"source_type": "snapshot", "events": [{"event_type": "update", "rows": [
            {"path": "/ok", "modified_time": 1.0},
            {"path": deep, "modified_time": 1.0},
            {"path": long_name, "modified_time": 1.0},
            {"path": too_deep, "modified_time": 1.0},
            {"path": "/future", "modified_time": 1e12},
            {"path": "/past", "modified_time": -1.0},
            {"path": "/ctime", "modified_time": 1.0, "created_time": 1e300},
            {"path": "/parent", "modified_time": 1.0, "parent_mtime": -5.0},
            {"path": "/neg", "modified_time": 1.0, "size": -1},
            {"path": "/huge", "modified_time": 1.0, "size": u64::MAX},
            {"path": "/last", "modified_time": MAX_TIME_SECS, "size": MAX_SIZE},
        ]}, {"event_type": "delete", "rows": [{"path": deep}]}]}),
        );
        let reasons: Vec<(Option<usize>, &str)> = b
            .rejected
            .iter()
            .map(|r| (r.row, r.reason.as_str()))
            .collect();
        assert_eq!(b.ops.len(), 2, "{reasons:?}");
        let expect = [
            (Some(1), "is longer than 4096 bytes"),
            (Some(2), "has a name longer than 255 bytes"),
            (Some(3), "is deeper than 256 levels"),
            (Some(4), "`modified_time` 1000000000000.0 is outside"),
            (Some(5), "`modified_time` -1.0 is outside"),
            (Some(6), "`created_time` 1e300 is outside"),
            (Some(7), "`parent_mtime` -5.0 is outside"),
            (Some(8), "`size` is not an integer"),
            (Some(9), "`size` is not an integer"),
            (Some(0), "is longer than 4096 bytes"),
        ];
        assert_eq!(reasons.len(), expect.len(), "{reasons:?}");
        for ((row, reason), (want_row, want)) in reasons.iter().zip(expect) {
            assert_eq!(*row, want_row);
            assert!(reason.contains(want), "{reason} lacks {want}");
            // What is echoed of the input stays short.
            assert!(reason.len() < 400, "{} bytes", reason.len());
        }
        // The bounds are the datastore's to set.
        let tight = RowLimits {
            max_path_bytes: 8,
            max_depth: 2,
            max_name_bytes: 3,
        };
        let body = json!({"events": [{"event_type": "update", "rows": [
            {"path": "/a/b", "modified_time": 1.0},
            {"path": "/a/b/c", "modified_time": 1.0},
            {"path": "/abcd", "modified_time": 1.0},
            {"path": "/ab/ab/ab", "modified_time": 1.0},
        ]}]});
        let b = parse_batch(body.to_string().as_bytes(), 0.0, &tight).unwrap();
        assert_eq!(b.ops.len(), 1);
        assert_eq!(b.rejected.len(), 3);
    }

    #[test]
    fn sentinel_feedback_is_checked_update_by_update() {
        let body = json!({"updates": [
            {"path": "/ok", "status": "exists", "mtime": 5.0, "size": 3},
            {"path": "gone/", "status": "missing"},
            {"path": "/future", "status": "exists", "mtime": 1e12},
            {"path": "/x", "status": "exists"},
            {"path": "/../x", "status": "missing"},
            {"path": "/y", "status": "weird"},
            7,
        ]});
        let (ok, rejected) =
            parse_feedback(body.to_string().as_bytes(), &RowLimits::default()).unwrap();
        assert_eq!(ok.len(), 2);
        assert_eq!(ok[1].path, "/gone");
        let reasons: Vec<(usize, &str)> = rejected
            .iter()
            .map(|r| (r.event, r.reason.as_str()))
            .collect();
        assert_eq!(reasons.len(), 5, "{reasons:?}");
        assert!(reasons[0].1.contains("`mtime` 1000000000000.0 is outside"));
        assert_eq!(reasons[1], (3, "`exists` needs `mtime`"));
        assert_eq!(reasons[4], (6, "update is not an object"));
        assert!(parse_feedback(b"{}", &RowLimits::default()).is_err());
    }

    #[test]
    fn the_one_pass_reader_agrees_with_the_value_reader() {
        let deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
        let deep_row = format!(
            r#"{{"events": [{{"event_type": "update", "rows": [{{"path": "/d", "x": {deep}, "modified_time": 1}}]}}]}}"#
        );
        let deep_skipped = format!(r#"{{"x": {deep}, "events": []}}"#);
        let bodies: Vec<&[u8]> = vec![
            // Keys in any order: rows before the event says what they are.
            br#"{"events": [{"rows": [{"path": "/a", "size": 1}, {"modified_time": 2, "path": "b"}], "event_type": "delete", "index": 3000}], "source_type": "audit"}"#,
            br#"{"events": [{"rows": [{"path": "/a", "size": -1, "mtime": 1}], "event_type": "update"}]}"#,
            // Duplicate keys: the last one wins, in both.
            br#"{"events": [], "events": [{"event_type": "update", "event_type": "delete", "rows": [{"path": "/x", "path": 5}]}]}"#,
            br#"{"events": [{"event_type": "insert", "rows": 1, "rows": [{"path": "/p", "mtime": 1, "modified_time": null}]}]}"#,
            br#"{"events": [{"event_type": "insert", "rows": [{"path": null, "file_path": "/q", "mtime": 1}]}]}"#,
            // Escapes in keys and values; unknown keys holding anything.
            br#"{"ev\u0065nts": [{"event_type": "upd\u0061te", "message_source": "snap\u0073hot", "rows": [{"pa\u0074h": "/\u00e9\n", "modified_time": 1e2, "x": {"y": [1, {"z": null}]}}]}], "session_id": "s\"1"}"#,
            // Numbers of every kind where each rule reads one.
            br#"{"events": [{"event_type": "update", "index": -5, "rows": [{"path": "/n", "size": 3.0, "modified_time": 1}, {"path": "/m", "size": 18446744073709551615, "modified_time": 0}, {"path": "/o", "size": 1e400}]}]}"#,
            br#"{"events": [{"event_type": "update", "rows": [{"path": "/n", "modified_time": -0, "ctime": 1, "is_dir": 1, "is_atomic_write": "yes"}]}]}"#,
            // Wrong shapes at every level.
            br#"{"events": [1, "e", null, [], {"event_type": ["update"]}, {"event_type": "update", "rows": {"path": "/a"}}, {"event_type": "update", "rows": [[], 1, null]}]}"#,
            br#"{"events": {}, "source_type": "snapshot"}"#,
            br#"{"source_type": 7, "is_end": "true", "is_snapshot_end": true, "session_id": 1, "events": []}"#,
            br#"{"source_type": "job_complete", "metadata": {"job_id": "j", "scan_path": "/s"}, "metadata": 1, "events": []}"#,
            br#"{"source_type": "scan_complete", "metadata": {"scan_path": "/s/"}, "events": []}"#,
            br#"{"source_type": "tape", "events": []}"#,
            br#"[]"#,
            br#""push""#,
            br#"{"events": []} x"#,
            br#"{"events": [}"#,
            b"",
            deep_row.as_bytes(),
            deep_skipped.as_bytes(),
        ];
        for body in bodies {
            crate::fuzz::readers_agree(body, &RowLimits::default());
        }
        for fixture in std::fs::read_dir(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../tests/fixtures/fustor-wire"
        ))
        .expect("the recorded traffic")
        {
            let text = std::fs::read(fixture.unwrap().path()).unwrap();
            let Ok(exchange) = serde_json::from_slice::<Value>(&text) else {
                continue;
            };
            if let Some(body) = exchange.pointer("/request/body") {
                crate::fuzz::readers_agree(body.to_string().as_bytes(), &RowLimits::default());
            }
        }
    }

    #[test]
    fn whole_body_errors() {
        assert!(matches!(
            parse_batch(b"{nope", 0.0, &RowLimits::default()),
            Err(BatchError::NotJson(_))
        ));
        assert_eq!(
            parse_batch(b"[]", 0.0, &RowLimits::default()),
            Err(BatchError::Shape("expected a JSON object".into()))
        );
        assert_eq!(
            parse_batch(br#"{"events": 1}"#, 0.0, &RowLimits::default()),
            Err(BatchError::Shape("`events` must be a list".into()))
        );
        assert!(
            parse_batch(
                br#"{"events": [], "source_type": "tape"}"#,
                0.0,
                &RowLimits::default()
            )
            .is_err()
        );
    }
}
