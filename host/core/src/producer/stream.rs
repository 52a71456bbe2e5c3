//! The one-pass reader of a `POST /v1/events` body: serde visitors that
//! walk the JSON once. Field strings borrow from the body, each payload is
//! taken as raw text and rewritten as compact JSON without building a
//! `Value`, and events past the most a request may carry are skipped
//! unbuilt.
//!
//! It reads every body the reference reader accepts the same way. Where it
//! differs, it is kinder: a payload the reference refuses with the whole
//! body (nesting deeper than serde_json's limit counted from the body's
//! root, a number out of range, an escape of a lone surrogate) costs only
//! its own event here, refused with the reason.

use std::borrow::Cow;
use std::collections::HashSet;
use std::fmt;
use std::io::Write as _;

use serde::Deserialize;
use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;

use super::{EventFields, FIELDS, MAX_EVENTS_PER_REQUEST, ParsedEvents, Read, Text};
use crate::rows::{Skip, map_is, scalars_are, seq_is};

/// Reads `body` (see [`super::parse_events`]).
pub(super) fn read(body: &[u8]) -> Result<ParsedEvents, String> {
    let mut de = serde_json::Deserializer::from_slice(body);
    let read = BodySeed
        .deserialize(&mut de)
        .and_then(|b| de.end().map(|()| b))
        .map_err(|e| format!("body is not JSON: {e}"))?;
    match read {
        Body::Other => {
            Err("body must be one event (a JSON object) or an array of events".to_string())
        }
        Body::One(event) => Ok(super::parsed_from([event])),
        Body::Many { count, .. } if count > MAX_EVENTS_PER_REQUEST => Err(format!(
            "{count} events in one request; at most {MAX_EVENTS_PER_REQUEST}"
        )),
        Body::Many { events, .. } => Ok(super::parsed_from(events)),
    }
}

/// The body as read.
enum Body<'a> {
    /// One event object.
    One(Read<'a>),
    /// An array: its first events (at most the most a request may carry),
    /// and how many items it had.
    Many { events: Vec<Read<'a>>, count: usize },
    /// Any other JSON value.
    Other,
}

struct BodySeed;

impl<'de> DeserializeSeed<'de> for BodySeed {
    type Value = Body<'de>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for BodySeed {
    type Value = Body<'de>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an event or an array of events")
    }
    scalars_are!(Body::Other);
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut events = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1024));
        let mut count = 0;
        while count < MAX_EVENTS_PER_REQUEST {
            match seq.next_element_seed(EventSeed)? {
                Some(e) => events.push(e),
                None => return Ok(Body::Many { events, count }),
            }
            count += 1;
        }
        // Too many: counted for the reason, not built.
        while seq.next_element::<Skip>()?.is_some() {
            count += 1;
        }
        Ok(Body::Many { events, count })
    }
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
        EventSeed.visit_map(map).map(Body::One)
    }
}

/// One item of the body.
struct EventSeed;

impl<'de> DeserializeSeed<'de> for EventSeed {
    type Value = Read<'de>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for EventSeed {
    type Value = Read<'de>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an event")
    }
    scalars_are!(Read::NotAnObject);
    seq_is!(Read::NotAnObject);
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut f = EventFields::default();
        let mut order = KeyOrder::default();
        while let Some(Key(key)) = map.next_key()? {
            order.note(&key);
            // A repeated field: its last value counts, as in a map.
            match &*key {
                "event_id" => f.event_id = Some(map.next_value::<TextValue>()?.0),
                "event_type" => f.event_type = Some(map.next_value::<TextValue>()?.0),
                "source" => f.source = Some(map.next_value::<TextValue>()?.0),
                "source_time" => f.source_time = Some(map.next_value::<TextValue>()?.0),
                "correlation_id" => f.correlation_id = Some(map.next_value::<TextValue>()?.0),
                "payload" => f.payload = Some(compact(map.next_value::<&RawValue>()?.get())),
                _ => {
                    map.next_value::<Skip>()?;
                }
            }
        }
        f.unknown = order.unknown();
        Ok(Read::Object(f))
    }
}

/// The distinct keys of an event object in first-seen order, as far as
/// the reason for an unknown key needs them: the reference reader names
/// the first unknown key of a `serde_json::Map` from which `event_id` was
/// removed, and removing moves the last key into the removed one's place.
#[derive(Default)]
struct KeyOrder<'a> {
    /// Distinct keys so far.
    n: usize,
    /// Which of [`FIELDS`] were seen (bit i for `FIELDS[i]`).
    known: u8,
    /// Where `event_id` is.
    event_id_at: Option<usize>,
    /// The first unknown key and where it is.
    first_unknown: Option<(usize, Cow<'a, str>)>,
    /// The last distinct key, when it is unknown.
    last_unknown: Option<Cow<'a, str>>,
    /// Unknown keys seen (only an event with one builds this).
    unknown: HashSet<Cow<'a, str>>,
}

impl<'a> KeyOrder<'a> {
    // A `&Cow`, not a `&str`: cloning it keeps a borrowed key borrowed.
    #[allow(clippy::ptr_arg)]
    fn note(&mut self, key: &Cow<'a, str>) {
        match FIELDS.iter().position(|f| *f == key.as_ref()) {
            Some(i) => {
                if self.known & (1 << i) != 0 {
                    return;
                }
                self.known |= 1 << i;
                if i == 0 {
                    self.event_id_at = Some(self.n);
                }
                self.last_unknown = None;
            }
            None => {
                if !self.unknown.insert(key.clone()) {
                    return;
                }
                if self.first_unknown.is_none() {
                    self.first_unknown = Some((self.n, key.clone()));
                }
                self.last_unknown = Some(key.clone());
            }
        }
        self.n += 1;
    }

    /// The unknown key the reason names.
    fn unknown(self) -> Option<Cow<'a, str>> {
        let (at, first) = self.first_unknown?;
        match (self.event_id_at, self.last_unknown) {
            // `event_id` was ahead of the first unknown key and not last:
            // the last key, unknown, took its place.
            (Some(id_at), Some(last)) if id_at < at && id_at + 1 != self.n => Some(last),
            _ => Some(first),
        }
    }
}

/// A key, borrowed from the body unless it had escapes.
struct Key<'a>(Cow<'a, str>);

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a key")
            }
            fn visit_borrowed_str<E: de::Error>(self, s: &'de str) -> Result<Self::Value, E> {
                Ok(Key(Cow::Borrowed(s)))
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Self::Value, E> {
                Ok(Key(Cow::Owned(s.to_string())))
            }
            fn visit_string<E: de::Error>(self, s: String) -> Result<Self::Value, E> {
                Ok(Key(Cow::Owned(s)))
            }
        }
        d.deserialize_str(V)
    }
}

/// The value of a text field, of any JSON shape.
struct TextValue<'a>(Text<'a>);

impl<'de> Deserialize<'de> for TextValue<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = TextValue<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(TextValue(Text::Null))
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
                Ok(TextValue(Text::Other("a boolean")))
            }
            fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
                Ok(TextValue(Text::Other("a number")))
            }
            fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
                Ok(TextValue(Text::Other("a number")))
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
                Ok(TextValue(Text::Other("a number")))
            }
            fn visit_borrowed_str<E: de::Error>(self, s: &'de str) -> Result<Self::Value, E> {
                Ok(TextValue(Text::Str(Cow::Borrowed(s))))
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Self::Value, E> {
                Ok(TextValue(Text::Str(Cow::Owned(s.to_string()))))
            }
            fn visit_string<E: de::Error>(self, s: String) -> Result<Self::Value, E> {
                Ok(TextValue(Text::Str(Cow::Owned(s))))
            }
            seq_is!(TextValue(Text::Other("an array")));
            map_is!(TextValue(Text::Other("an object")));
        }
        d.deserialize_any(V)
    }
}

/// `raw` (one JSON value) as compact JSON, exactly as a `serde_json::Value`
/// of it would print, or why it cannot be. Written straight from the text;
/// an object with a repeated key (whose last value a `Value` keeps, at the
/// first key's place) goes through a `Value` instead.
pub(crate) fn compact(raw: &str) -> Result<String, String> {
    let mut out = Vec::with_capacity(raw.len());
    let mut repeated = false;
    let mut de = serde_json::Deserializer::from_str(raw);
    let written = Compact {
        out: &mut out,
        repeated: &mut repeated,
    }
    .deserialize(&mut de)
    .and_then(|()| de.end());
    let text = match written {
        Err(e) => return Err(format!("`payload` is not usable JSON: {e}")),
        Ok(()) if repeated => serde_json::from_str::<serde_json::Value>(raw)
            .map(|v| v.to_string())
            .map_err(|e| format!("`payload` is not usable JSON: {e}"))?,
        // Only JSON text was written, from `&str`s.
        Ok(()) => String::from_utf8(out).map_err(|e| e.to_string())?,
    };
    Ok(text)
}

/// Writes the value it reads, compact, into `out`; sets `repeated` when an
/// object repeats a key.
struct Compact<'o> {
    out: &'o mut Vec<u8>,
    repeated: &'o mut bool,
}

impl<'de> DeserializeSeed<'de> for Compact<'_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        // Through `deserialize_any`, so serde_json's recursion limit bounds
        // the nesting this recursion follows.
        d.deserialize_any(self)
    }
}

impl Compact<'_> {
    fn json<T: serde::Serialize + ?Sized, E: de::Error>(self, v: &T) -> Result<(), E> {
        serde_json::to_writer(&mut *self.out, v).map_err(E::custom)
    }
}

impl<'de> Visitor<'de> for Compact<'_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        self.out.extend_from_slice(b"null");
        Ok(())
    }
    fn visit_bool<E: de::Error>(self, b: bool) -> Result<(), E> {
        self.out
            .extend_from_slice(if b { b"true" } else { b"false" });
        Ok(())
    }
    fn visit_i64<E: de::Error>(self, n: i64) -> Result<(), E> {
        write!(self.out, "{n}").map_err(E::custom)
    }
    fn visit_u64<E: de::Error>(self, n: u64) -> Result<(), E> {
        write!(self.out, "{n}").map_err(E::custom)
    }
    fn visit_f64<E: de::Error>(self, n: f64) -> Result<(), E> {
        self.json(&n)
    }
    fn visit_str<E: de::Error>(self, s: &str) -> Result<(), E> {
        self.json(s)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        self.out.push(b'[');
        let mut first = true;
        loop {
            if !first {
                // Taken back if the array ends here.
                self.out.push(b',');
            }
            let element = Compact {
                out: &mut *self.out,
                repeated: &mut *self.repeated,
            };
            if seq.next_element_seed(element)?.is_none() {
                if !first {
                    self.out.pop();
                }
                break;
            }
            first = false;
        }
        self.out.push(b']');
        Ok(())
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        self.out.push(b'{');
        let mut keys = KeyHashes::default();
        let mut first = true;
        loop {
            if !first {
                self.out.push(b',');
            }
            let key = WriteKey {
                out: &mut *self.out,
                keys: &mut keys,
            };
            match map.next_key_seed(key)? {
                None => {
                    if !first {
                        self.out.pop();
                    }
                    break;
                }
                Some(repeated) => *self.repeated |= repeated,
            }
            self.out.push(b':');
            map.next_value_seed(Compact {
                out: &mut *self.out,
                repeated: &mut *self.repeated,
            })?;
            first = false;
        }
        self.out.push(b'}');
        Ok(())
    }
}

/// Hashes of an object's keys, to notice a repeated one. A collision only
/// sends the payload the slower way, through a `Value`.
#[derive(Default)]
struct KeyHashes {
    few: Vec<u64>,
    many: HashSet<u64>,
}

impl KeyHashes {
    /// Notes `key`; whether it (or its hash) was seen before.
    fn repeated(&mut self, key: &str) -> bool {
        // FNV-1a: keys are short.
        let h = key.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        });
        if self.many.is_empty() {
            if self.few.contains(&h) {
                return true;
            }
            self.few.push(h);
            // Past a few keys a linear search would make a wide object
            // quadratic.
            if self.few.len() > 16 {
                self.many.extend(self.few.drain(..));
            }
            false
        } else {
            !self.many.insert(h)
        }
    }
}

/// Writes a key and notes it; answers whether it was repeated.
struct WriteKey<'o> {
    out: &'o mut Vec<u8>,
    keys: &'o mut KeyHashes,
}

impl<'de> DeserializeSeed<'de> for WriteKey<'_> {
    type Value = bool;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<bool, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for WriteKey<'_> {
    type Value = bool;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a key")
    }
    fn visit_str<E: de::Error>(self, s: &str) -> Result<bool, E> {
        serde_json::to_writer(&mut *self.out, s).map_err(E::custom)?;
        Ok(self.keys.repeated(s))
    }
}
