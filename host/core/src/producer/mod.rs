//! Events from producers (`POST /v1/events`): one JSON object or an array
//! of them, each checked on its own so that one bad event costs only
//! itself (a payload that is not usable JSON included). A missing id gets
//! a UUID. The body's OpenAPI schema is built
//! beside the parser (feature `openapi`), so that the two cannot drift.

pub mod reference;
mod stream;

use std::borrow::Cow;

use serde::Serialize;

use crate::event::NewEvent;
use crate::text::echo;

/// Sources only the host publishes (`datastore/NAME`, the index changes).
pub const RESERVED_SOURCE: &str = "datastore/";

/// Most events one request may carry.
pub const MAX_EVENTS_PER_REQUEST: usize = 10_000;

/// Longest id, type, source or correlation id, in bytes.
pub const MAX_FIELD_BYTES: usize = 256;

/// Largest payload of one event (compact JSON), in bytes.
pub const MAX_PAYLOAD_BYTES: usize = 1024 * 1024;

/// The fields an event may have.
const FIELDS: [&str; 6] = [
    "event_id",
    "event_type",
    "source",
    "source_time",
    "correlation_id",
    "payload",
];

/// An event that was not accepted, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RejectedEvent {
    /// Position in the request (0 for a single object).
    pub index: usize,
    /// Its id, when it had a usable one.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(nullable = false))]
    pub event_id: Option<String>,
    /// What is wrong.
    pub reason: String,
}

/// Events of one request: the valid ones with their position, and the rest.
#[derive(Debug, Default)]
pub struct ParsedEvents {
    /// Valid events and their positions.
    pub valid: Vec<(usize, NewEvent)>,
    /// Invalid events.
    pub rejected: Vec<RejectedEvent>,
}

/// Parses a request body. Errors only when the body as a whole is unusable.
///
/// One pass over the body ([`stream`]): no `Value` is built for the request
/// or its events, and each payload is rewritten as compact JSON straight
/// from its text. [`reference::parse_events`] reads the same body through a
/// `serde_json::Value`; whatever it accepts, this reads the same (tested,
/// and fuzzed by the `events` target).
pub fn parse_events(body: &[u8]) -> Result<ParsedEvents, String> {
    stream::read(body)
}

/// The events of a body, each read into [`EventFields`], in order.
fn parsed_from<'a>(events: impl IntoIterator<Item = Read<'a>>) -> ParsedEvents {
    let mut out = ParsedEvents::default();
    for (index, read) in events.into_iter().enumerate() {
        let checked = match read {
            Read::NotAnObject => Err((None, "an event must be a JSON object".to_string())),
            Read::Object(fields) => check(fields),
        };
        match checked {
            Ok(e) => out.valid.push((index, e)),
            Err((event_id, reason)) => out.rejected.push(RejectedEvent {
                index,
                event_id,
                reason,
            }),
        }
    }
    out
}

/// One item of the body as a reader found it.
pub(crate) enum Read<'a> {
    /// Not a JSON object.
    NotAnObject,
    Object(EventFields<'a>),
}

/// The value of a text field as the event gave it.
pub(crate) enum Text<'a> {
    Null,
    Str(Cow<'a, str>),
    /// Any other JSON value: what it is, for the reason (`a number`).
    Other(&'static str),
}

/// The fields of one event object, as read: the last value of each named
/// field, and the unknown key the reason names (the first, in the order a
/// `serde_json::Map` keeps once `event_id` is taken out of it).
#[derive(Default)]
pub(crate) struct EventFields<'a> {
    pub event_id: Option<Text<'a>>,
    pub event_type: Option<Text<'a>>,
    pub source: Option<Text<'a>>,
    pub source_time: Option<Text<'a>>,
    pub correlation_id: Option<Text<'a>>,
    /// The payload as compact JSON, or why it cannot be.
    pub payload: Option<Result<String, String>>,
    pub unknown: Option<Cow<'a, str>>,
}

type Refusal = (Option<String>, String);

/// The rules every event meets, in the order their reasons are given.
fn check(f: EventFields<'_>) -> Result<NewEvent, Refusal> {
    let event_id = text("event_id", f.event_id).map_err(|r| (None, r))?;
    let id_for = |r: String| (event_id.clone(), r);
    if let Some(unknown) = f.unknown {
        return Err(id_for(format!(
            "unknown field `{}` (allowed: {})",
            echo(&unknown),
            FIELDS.join(", ")
        )));
    }
    let event_type = text("event_type", f.event_type)
        .map_err(id_for)?
        .ok_or_else(|| id_for("`event_type` is required".into()))?;
    if let Some(c) = event_type
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | ':')))
    {
        return Err(id_for(format!(
            "`event_type` `{}` has `{c}`; allowed are letters, digits and . _ - :",
            echo(&event_type)
        )));
    }
    let source = text("source", f.source)
        .map_err(id_for)?
        .ok_or_else(|| id_for("`source` is required".into()))?;
    if source.starts_with(RESERVED_SOURCE) {
        return Err(id_for(format!(
            "`source` `{source}` is reserved: `{RESERVED_SOURCE}*` sources are the host's datastore change events"
        )));
    }
    let source_time = text("source_time", f.source_time).map_err(id_for)?;
    if let Some(t) = &source_time
        && let Err(e) = humantime::parse_rfc3339_weak(t)
    {
        return Err(id_for(format!(
            "`source_time` `{t}` is not an RFC 3339 time ({e})"
        )));
    }
    let correlation_id = text("correlation_id", f.correlation_id).map_err(id_for)?;
    let payload = match f.payload {
        None => return Err(id_for("`payload` is required".into())),
        Some(Err(reason)) => return Err(id_for(reason)),
        Some(Ok(p)) => p,
    };
    if payload.len() > MAX_PAYLOAD_BYTES {
        return Err(id_for(format!(
            "`payload` is {} bytes; at most {MAX_PAYLOAD_BYTES}",
            payload.len()
        )));
    }
    Ok(NewEvent {
        id: event_id.unwrap_or_else(|| uuid::Uuid::new_v4().to_string()),
        event_type,
        source,
        source_time,
        correlation_id,
        payload,
        // Set by the caller from the publishing key.
        scope: None,
    })
}

/// A string field that is absent, null, or a non-empty string of at most
/// [`MAX_FIELD_BYTES`] without control characters.
fn text(name: &str, value: Option<Text<'_>>) -> Result<Option<String>, String> {
    match value {
        None | Some(Text::Null) => Ok(None),
        Some(Text::Str(s)) => {
            if s.trim().is_empty() {
                Err(format!("`{name}` is empty"))
            } else if s.len() > MAX_FIELD_BYTES {
                Err(format!(
                    "`{name}` is {} bytes; at most {MAX_FIELD_BYTES}",
                    s.len()
                ))
            } else if s.chars().any(char::is_control) {
                Err(format!("`{name}` contains control characters"))
            } else {
                Ok(Some(s.into_owned()))
            }
        }
        Some(Text::Other(what)) => Err(format!("`{name}` must be a string, not {what}")),
    }
}

/// The OpenAPI schema of the body [`parse_events`] reads.
#[cfg(feature = "openapi")]
mod openapi {
    use utoipa::openapi::RefOr;
    use utoipa::openapi::schema::{
        AdditionalProperties, ArrayBuilder, KnownFormat, Object, ObjectBuilder, OneOfBuilder,
        Schema, SchemaFormat, SchemaType, Type,
    };

    use super::{MAX_EVENTS_PER_REQUEST, MAX_FIELD_BYTES, MAX_PAYLOAD_BYTES, ParsedEvents};

    /// The wire form [`parse_events`] reads, for the OpenAPI document: one event
    /// object, or an array of at most [`MAX_EVENTS_PER_REQUEST`] of them, each
    /// with the fields of [`FIELDS`](super::FIELDS) only.
    impl utoipa::PartialSchema for ParsedEvents {
        fn schema() -> RefOr<Schema> {
            let event = event_schema();
            OneOfBuilder::new()
                .description(Some(
                    "One event, or an array of events (each checked on its own).",
                ))
                .item(event.clone())
                .item(
                    ArrayBuilder::new()
                        .items(event)
                        .max_items(Some(MAX_EVENTS_PER_REQUEST)),
                )
                .into()
        }
    }

    impl utoipa::ToSchema for ParsedEvents {
        fn name() -> std::borrow::Cow<'static, str> {
            "Events".into()
        }
    }

    /// The schema of one event object: the fields of [`FIELDS`](super::FIELDS).
    fn event_schema() -> Object {
        let text = |description: &str| {
            ObjectBuilder::new()
                .schema_type(Type::String)
                .min_length(Some(1))
                .max_length(Some(MAX_FIELD_BYTES))
                .description(Some(description))
        };
        ObjectBuilder::new()
            .schema_type(Type::Object)
            .property(
                "event_id",
                text("Unique id; duplicates within the dedup window are answered as duplicates. A UUID when absent."),
            )
            .property(
                "event_type",
                text("Type, such as `fs.insert`: letters, digits and `. _ - :`.")
                    .pattern(Some("^[A-Za-z0-9._:-]+$")),
            )
            .required("event_type")
            .property("source", text("Who produced it."))
            .required("source")
            .property(
                "source_time",
                text("When it happened at the source (RFC 3339).").format(Some(
                    SchemaFormat::KnownFormat(KnownFormat::DateTime),
                )),
            )
            .property("correlation_id", text("Correlation id."))
            .property(
                "payload",
                ObjectBuilder::new()
                    .schema_type(SchemaType::AnyValue)
                    .description(Some(format!(
                        "Any JSON value, at most {MAX_PAYLOAD_BYTES} bytes as compact JSON."
                    ))),
            )
            .required("payload")
            .additional_properties(Some(AdditionalProperties::FreeForm(false)))
            .build()
    }

    #[cfg(test)]
    mod tests {
        use super::super::FIELDS;
        use super::*;

        #[test]
        fn the_schema_names_exactly_the_fields_read() {
            let event = event_schema();
            let named: Vec<&str> = event.properties.keys().map(String::as_str).collect();
            assert_eq!(named, FIELDS);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(body: &str) -> ParsedEvents {
        parse_events(body.as_bytes()).unwrap()
    }

    #[test]
    fn one_object_or_an_array() {
        let one = parse(r#"{"event_type":"a.b","source":"s","payload":{"x":1}}"#);
        assert_eq!(one.valid.len(), 1);
        let e = &one.valid[0].1;
        assert_eq!(e.payload, r#"{"x":1}"#);
        assert_eq!(e.id.len(), 36, "a UUID was assigned: {}", e.id);
        let many = parse(
            r#"[{"event_id":"1","event_type":"a","source":"s","payload":1,"source_time":"2026-01-02T03:04:05Z","correlation_id":"c"},
                {"event_id":"2","event_type":"a","source":"s","payload":null}]"#,
        );
        assert_eq!(many.valid.len(), 2);
        assert_eq!(many.valid[0].1.correlation_id.as_deref(), Some("c"));
        assert_eq!(many.valid[1].1.payload, "null");
    }

    #[test]
    fn each_bad_event_is_rejected_alone_with_its_reason() {
        let got = parse(
            r#"[{"event_id":"ok","event_type":"a","source":"s","payload":{}},
                {"event_id":"e1","source":"s","payload":{}},
                {"event_id":"e2","event_type":"a b","source":"s","payload":{}},
                {"event_id":"e3","event_type":"a","payload":{}},
                {"event_id":"e4","event_type":"a","source":"s"},
                {"event_id":"e5","event_type":"a","source":"s","payload":{},"extra":1},
                {"event_id":"e6","event_type":"a","source":"s","payload":{},"source_time":"yesterday"},
                {"event_id":7,"event_type":"a","source":"s","payload":{}},
                "nope"]"#,
        );
        assert_eq!(got.valid.len(), 1);
        let reasons: Vec<(usize, Option<&str>, &str)> = got
            .rejected
            .iter()
            .map(|r| (r.index, r.event_id.as_deref(), r.reason.as_str()))
            .collect();
        assert_eq!(reasons[0], (1, Some("e1"), "`event_type` is required"));
        assert!(reasons[1].2.contains("has ` `"), "{:?}", reasons[1]);
        assert_eq!(reasons[2].2, "`source` is required");
        assert_eq!(reasons[3].2, "`payload` is required");
        assert!(reasons[4].2.starts_with("unknown field `extra`"));
        assert!(reasons[5].2.contains("not an RFC 3339 time"));
        assert_eq!(
            (reasons[6].1, reasons[6].2),
            (None, "`event_id` must be a string, not a number")
        );
        assert_eq!(reasons[7].2, "an event must be a JSON object");
    }

    /// Bodies the reference reader accepts are read the same by the
    /// one-pass reader: field shapes, repeats, escapes, unknown keys in
    /// every place around `event_id`, every number kind, payload shapes.
    #[test]
    fn the_one_pass_reader_agrees_with_the_reference() {
        let bodies = [
            r#"{"event_type":"a.b","source":"s","payload":{"x":1}}"#,
            r#"[{"event_id":"1","event_type":"a","source":"s","payload":1,"source_time":"2026-01-02T03:04:05Z","correlation_id":"c"},{"event_id":"2","event_type":"a","source":"s","payload":null}]"#,
            r#"[{"event_id":"ok","event_type":"a","source":"s","payload":{}},{"event_id":"e1","source":"s","payload":{}},{"event_id":7,"event_type":"a","source":"s","payload":{}},"nope",[1,[2]],3,null]"#,
            // Repeated fields: the last value counts.
            r#"{"event_type":"a","event_type":"b","source":"s","payload":1,"payload":{"y":[1,2]}}"#,
            // Repeated keys in the payload, at several depths.
            r#"{"event_type":"a","source":"s","payload":{"k":1,"j":2,"k":3,"n":{"a":1,"a":[{"b":1,"b":2}]}}}"#,
            // Unknown keys before, after and around event_id, repeated.
            r#"{"x":1,"event_id":"i","event_type":"a","source":"s","payload":1,"y":2}"#,
            r#"{"event_id":"i","event_type":"a","x":1,"source":"s","payload":1,"y":2}"#,
            r#"{"event_type":"a","event_id":"i","source":"s","payload":1,"y":2,"x":3}"#,
            r#"{"event_type":"a","x":0,"event_id":"i","source":"s","payload":1,"y":2,"x":3}"#,
            r#"{"event_type":"a","source":"s","payload":1,"event_id":"i","z":1}"#,
            r#"{"event_type":"a","source":"s","payload":1,"z":1,"event_id":"i"}"#,
            r#"{"event_id":"i","z":1}"#,
            r#"{"z":1,"event_id":"i","event_id":"j","w":2}"#,
            r#"{"a\u0062":1,"event_id":"\u0069","event_type":"a","source":"s","payload":"x"}"#,
            // Escapes and unicode in strings and keys.
            r#"{"event_type":"a","source":"s\u00e9","payload":{"\n\"k":"\u00e9\ud83d\ude00\t\\ \/"}}"#,
            // Every number kind.
            r#"{"event_type":"a","source":"s","payload":[0,-0,1,-1,18446744073709551615,-9223372036854775808,1.5,-1e-7,1E+300,0.1,123456789012345678901234567890,2.5e-324]}"#,
            // Whitespace everywhere.
            " [ { \"event_type\" : \"a\" , \"source\" : \"s\" , \"payload\" : { \"a\" : [ 1 , 2 , { } , [ ] ] } } ] ",
            // Field shapes.
            r#"{"event_type":null,"source":true,"payload":1}"#,
            r#"{"event_type":"a","source":{"x":[1]},"payload":1}"#,
            r#"{"event_type":"a","source":"s","payload":1,"correlation_id":[]}"#,
            r#"{"event_type":"a","source":" ","payload":1}"#,
            r#"{"event_type":"a","source":"datastore/x","payload":1}"#,
            r#"[]"#,
            r#"{}"#,
        ];
        for body in bodies {
            crate::fuzz::events_agree(body.as_bytes());
            assert!(parse_events(body.as_bytes()).is_ok(), "{body}");
        }
        // The unknown key named, in every place around `event_id`.
        let named = |body: &str| parse(body).rejected[0].reason.clone();
        assert!(
            named(r#"{"event_id":"i","event_type":"a","x":1,"source":"s","payload":1,"y":2}"#)
                .starts_with("unknown field `y`")
        );
        assert!(
            named(r#"{"x":1,"event_id":"i","event_type":"a","source":"s","payload":1,"y":2}"#)
                .starts_with("unknown field `x`")
        );
        // Too many events, counted without being read.
        let many = format!("[{}]", vec!["1"; MAX_EVENTS_PER_REQUEST + 5].join(","));
        assert_eq!(
            parse_events(many.as_bytes()).unwrap_err(),
            reference::parse_events(many.as_bytes()).unwrap_err()
        );
        // Bodies both refuse whole.
        for body in ["{", "3", "[1,", r#"{"a":1}x"#, "", "\u{feff}[]"] {
            assert!(parse_events(body.as_bytes()).is_err(), "{body}");
            assert!(reference::parse_events(body.as_bytes()).is_err(), "{body}");
        }
    }

    /// A payload the reference refuses with the whole body costs only its
    /// own event here.
    #[test]
    fn an_unusable_payload_costs_only_its_event() {
        let deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
        let body = format!(
            r#"[{{"event_id":"deep","event_type":"a","source":"s","payload":{deep}}},{{"event_id":"big","event_type":"a","source":"s","payload":1e400}},{{"event_id":"ok","event_type":"a","source":"s","payload":1}},{{"event_id":"lone","event_type":"a","source":"s","payload":"\ud800"}}]"#
        );
        assert!(reference::parse_events(body.as_bytes()).is_err());
        let got = parse(&body);
        assert_eq!(got.valid.len(), 1);
        assert_eq!(got.valid[0].1.id, "ok");
        assert_eq!(got.rejected.len(), 3);
        assert!(
            got.rejected[0].reason.contains("recursion limit"),
            "{:?}",
            got.rejected
        );
        assert!(
            got.rejected[1].reason.contains("number out of range"),
            "{:?}",
            got.rejected
        );
        assert!(
            got.rejected[2].reason.contains("escape"),
            "{:?}",
            got.rejected
        );
    }

    #[test]
    fn unusable_bodies() {
        assert!(
            parse_events(b"{")
                .unwrap_err()
                .starts_with("body is not JSON")
        );
        assert!(parse_events(b"3").unwrap_err().contains("one event"));
    }

    #[test]
    fn echoes_of_input_are_bounded() {
        let long = "k".repeat(100_000);
        let body = format!(r#"{{"event_type":"a","source":"s","payload":1,"{long}":1}}"#);
        let got = parse_events(body.as_bytes()).unwrap();
        assert!(
            got.rejected[0].reason.len() < 1024,
            "{}",
            got.rejected[0].reason.len()
        );
        let body = format!(r#"{{"event_type":"a {long}","source":"s","payload":1}}"#);
        let got = parse_events(body.as_bytes()).unwrap();
        assert!(got.rejected[0].reason.len() < 1024);
    }
}
