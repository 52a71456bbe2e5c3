//! The reference reader of a `POST /v1/events` body: the whole body as a
//! `serde_json::Value`, each event's fields taken out of its map. Simple
//! and slow; [`super::parse_events`] must read every body this accepts the
//! same way (the unit tests and the `events` fuzz target compare them).

use std::borrow::Cow;

use serde_json::Value;

use super::{EventFields, FIELDS, MAX_EVENTS_PER_REQUEST, ParsedEvents, Read, Text};

/// Parses a request body through a `Value`.
pub fn parse_events(body: &[u8]) -> Result<ParsedEvents, String> {
    let value: Value =
        serde_json::from_slice(body).map_err(|e| format!("body is not JSON: {e}"))?;
    let items = match value {
        Value::Array(items) => items,
        obj @ Value::Object(_) => vec![obj],
        _ => {
            return Err("body must be one event (a JSON object) or an array of events".to_string());
        }
    };
    if items.len() > MAX_EVENTS_PER_REQUEST {
        return Err(format!(
            "{} events in one request; at most {MAX_EVENTS_PER_REQUEST}",
            items.len()
        ));
    }
    Ok(super::parsed_from(items.into_iter().map(read)))
}

fn read(item: Value) -> Read<'static> {
    let Value::Object(mut obj) = item else {
        return Read::NotAnObject;
    };
    // `remove` moves the last key into the place of the removed one (the map
    // keeps insertion order): the unknown key named is the first after that.
    let event_id = obj.remove("event_id").map(text);
    let unknown = obj
        .keys()
        .find(|k| !FIELDS.contains(&k.as_str()))
        .map(|k| Cow::Owned(k.clone()));
    Read::Object(EventFields {
        event_id,
        event_type: obj.remove("event_type").map(text),
        source: obj.remove("source").map(text),
        source_time: obj.remove("source_time").map(text),
        correlation_id: obj.remove("correlation_id").map(text),
        payload: obj.remove("payload").map(|p| Ok(p.to_string())),
        unknown,
    })
}

fn text(v: Value) -> Text<'static> {
    match v {
        Value::Null => Text::Null,
        Value::String(s) => Text::Str(Cow::Owned(s)),
        Value::Bool(_) => Text::Other("a boolean"),
        Value::Number(_) => Text::Other("a number"),
        Value::Array(_) => Text::Other("an array"),
        Value::Object(_) => Text::Other("an object"),
    }
}
