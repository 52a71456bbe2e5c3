//! The straightforward reading of a push: the whole body into a
//! `serde_json::Value` tree, then the same rules as [`super::parse_batch`].
//! Slower (an allocation per key and value), and plainly right: the fuzz
//! target `push` and the tests check that the one-pass reader agrees with
//! it on every input this one accepts.

use serde_json::Value;

use super::{Batch, BatchError, PreEvent, PrePush, PreRow, RowLimits, Scalar};

/// [`super::parse_batch`], read through a `Value`.
pub fn parse_batch(body: &[u8], now: f64, limits: &RowLimits) -> Result<Batch, BatchError> {
    let value: Value =
        serde_json::from_slice(body).map_err(|e| BatchError::NotJson(e.to_string()))?;
    let obj = value
        .as_object()
        .ok_or_else(|| BatchError::Shape("expected a JSON object".into()))?;
    let scalar = |name: &str| obj.get(name).map(Scalar::of);
    let pre = PrePush {
        events: obj
            .get("events")
            .and_then(Value::as_array)
            .map(|events| events.iter().map(|e| event(e, limits)).collect()),
        source_type: scalar("source_type"),
        session_id: scalar("session_id"),
        is_end: scalar("is_end"),
        is_snapshot_end: scalar("is_snapshot_end"),
        metadata: obj.get("metadata").cloned(),
    };
    pre.into_batch(now, limits)
}

fn event<'a>(event: &'a Value, limits: &RowLimits) -> PreEvent<'a> {
    let Some(obj) = event.as_object() else {
        return PreEvent::NotAnObject;
    };
    PreEvent::Event {
        event_type: obj.get("event_type").map(Scalar::of),
        message_source: obj.get("message_source").map(Scalar::of),
        index: obj.get("index").map(Scalar::of),
        rows: obj.get("rows").and_then(Value::as_array).map(|rows| {
            rows.iter()
                .map(|row| match row.as_object() {
                    Some(row) => PreRow::read(row, limits),
                    None => PreRow::not_an_object(),
                })
                .collect()
        }),
    }
}
