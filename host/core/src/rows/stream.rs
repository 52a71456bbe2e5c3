//! The one-pass reader of a push body: serde visitors that walk the JSON
//! once and keep only what the rules read. Strings borrow from the body,
//! unknown keys are skipped without being built, and each row is checked
//! as soon as its object closes (into a [`PreRow`]), so no row outlives
//! its own parse as JSON.
//!
//! Every visitor accepts every JSON shape (a wrong shape becomes the value
//! the rules reject), so the only errors serde_json can raise here are the
//! body's own: syntax, end of input, nesting beyond its recursion limit.

use std::borrow::Cow;
use std::fmt;

use serde::Deserialize;
use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::Value;

use super::{Fields, PreEvent, PrePush, PreRow, RowLimits, Scalar};

/// Reads `body`: `Ok(None)` when it is JSON but not an object.
pub(super) fn read<'a>(
    body: &'a [u8],
    limits: &RowLimits,
) -> serde_json::Result<Option<PrePush<'a>>> {
    let mut de = serde_json::Deserializer::from_slice(body);
    let pre = PushSeed(limits).deserialize(&mut de)?;
    de.end()?;
    Ok(pre)
}

/// Visitor methods for the scalar shapes, each answering `$other`.
macro_rules! scalars_are {
    ($other:expr) => {
        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok($other)
        }
        fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
            Ok($other)
        }
        fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
            Ok($other)
        }
        fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
            Ok($other)
        }
        fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
            Ok($other)
        }
        fn visit_str<E: de::Error>(self, _: &str) -> Result<Self::Value, E> {
            Ok($other)
        }
    };
}

pub(crate) use scalars_are;

/// `visit_seq` reading the array through and answering `$other`.
macro_rules! seq_is {
    ($other:expr) => {
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            while seq.next_element::<Skip>()?.is_some() {}
            Ok($other)
        }
    };
}

pub(crate) use seq_is;

/// `visit_map` reading the object through and answering `$other`.
macro_rules! map_is {
    ($other:expr) => {
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            while map.next_entry::<Skip, Skip>()?.is_some() {}
            Ok($other)
        }
    };
}

pub(crate) use map_is;

/// A value nobody reads, read through. Unlike serde's `IgnoredAny` (which
/// skips nesting of any depth without counting it), this goes through
/// `deserialize_any`, so serde_json's recursion limit (128) holds here as
/// it does for a `Value`: the same bodies are refused as too deep.
pub(crate) struct Skip;

impl<'de> Deserialize<'de> for Skip {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Skip;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("any JSON value")
            }
            scalars_are!(Skip);
            seq_is!(Skip);
            map_is!(Skip);
        }
        d.deserialize_any(V)
    }
}

impl<'de> Deserialize<'de> for Scalar<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Scalar<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(Scalar::Null)
            }
            fn visit_bool<E: de::Error>(self, b: bool) -> Result<Self::Value, E> {
                Ok(Scalar::Bool(b))
            }
            fn visit_i64<E: de::Error>(self, i: i64) -> Result<Self::Value, E> {
                Ok(Scalar::I64(i))
            }
            fn visit_u64<E: de::Error>(self, u: u64) -> Result<Self::Value, E> {
                Ok(Scalar::U64(u))
            }
            fn visit_f64<E: de::Error>(self, f: f64) -> Result<Self::Value, E> {
                Ok(Scalar::F64(f))
            }
            fn visit_borrowed_str<E: de::Error>(self, s: &'de str) -> Result<Self::Value, E> {
                Ok(Scalar::Str(Cow::Borrowed(s)))
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Self::Value, E> {
                Ok(Scalar::Str(Cow::Owned(s.to_owned())))
            }
            seq_is!(Scalar::Other);
            map_is!(Scalar::Other);
        }
        d.deserialize_any(V)
    }
}

/// An object key, as its position in a table of the names the rules read
/// (`None`: a key nobody reads, skipped).
struct Key(&'static [&'static str]);

impl<'de> DeserializeSeed<'de> for Key {
    type Value = Option<usize>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_str(self)
    }
}

impl Visitor<'_> for Key {
    type Value = Option<usize>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an object key")
    }
    fn visit_str<E: de::Error>(self, key: &str) -> Result<Self::Value, E> {
        Ok(self.0.iter().position(|k| *k == key))
    }
}

/// The push's own keys that the rules read.
const PUSH_KEYS: &[&str] = &[
    "events",
    "source_type",
    "session_id",
    "is_end",
    "is_snapshot_end",
    "metadata",
];

#[derive(Clone, Copy)]
struct PushSeed<'l>(&'l RowLimits);

impl<'de> DeserializeSeed<'de> for PushSeed<'_> {
    type Value = Option<PrePush<'de>>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for PushSeed<'_> {
    type Value = Option<PrePush<'de>>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a push")
    }
    scalars_are!(None);
    seq_is!(None);
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut pre = PrePush::default();
        while let Some(key) = map.next_key_seed(Key(PUSH_KEYS))? {
            match key {
                Some(0) => pre.events = map.next_value_seed(ListOf(EventSeed(self.0)))?,
                Some(1) => pre.source_type = Some(map.next_value()?),
                Some(2) => pre.session_id = Some(map.next_value()?),
                Some(3) => pre.is_end = Some(map.next_value()?),
                Some(4) => pre.is_snapshot_end = Some(map.next_value()?),
                Some(_) => pre.metadata = Some(map.next_value::<Value>()?),
                None => {
                    map.next_value::<Skip>()?;
                }
            }
        }
        Ok(Some(pre))
    }
}

/// A list of what `S` reads (`events`, `rows`): `None` when not a list.
#[derive(Clone, Copy)]
struct ListOf<S>(S);

impl<'de, S: DeserializeSeed<'de> + Copy> DeserializeSeed<'de> for ListOf<S> {
    type Value = Option<Vec<S::Value>>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de, S: DeserializeSeed<'de> + Copy> Visitor<'de> for ListOf<S> {
    type Value = Option<Vec<S::Value>>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a list")
    }
    scalars_are!(None);
    map_is!(None);
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element_seed(self.0)? {
            items.push(item);
        }
        Ok(Some(items))
    }
}

/// An event's keys that the rules read.
const EVENT_KEYS: &[&str] = &["event_type", "message_source", "index", "rows"];

#[derive(Clone, Copy)]
struct EventSeed<'l>(&'l RowLimits);

impl<'de> DeserializeSeed<'de> for EventSeed<'_> {
    type Value = PreEvent<'de>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for EventSeed<'_> {
    type Value = PreEvent<'de>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an event")
    }
    scalars_are!(PreEvent::NotAnObject);
    seq_is!(PreEvent::NotAnObject);
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let (mut event_type, mut message_source, mut index, mut rows) = (None, None, None, None);
        while let Some(key) = map.next_key_seed(Key(EVENT_KEYS))? {
            match key {
                Some(0) => event_type = Some(map.next_value()?),
                Some(1) => message_source = Some(map.next_value()?),
                Some(2) => index = Some(map.next_value()?),
                Some(_) => rows = map.next_value_seed(ListOf(RowSeed(self.0)))?,
                None => {
                    map.next_value::<Skip>()?;
                }
            }
        }
        Ok(PreEvent::Event {
            event_type,
            message_source,
            index,
            rows,
        })
    }
}

/// A row's keys that the rules read (both naming variants).
const ROW_KEYS: [&str; 12] = [
    "path",
    "file_path",
    "size",
    "modified_time",
    "mtime",
    "created_time",
    "ctime",
    "is_directory",
    "is_dir",
    "is_atomic_write",
    "audit_skipped",
    "parent_mtime",
];

/// A row object's fields, slot per name in [`ROW_KEYS`], for the time it
/// takes to check it.
struct RawRow<'a>([Option<Scalar<'a>>; ROW_KEYS.len()]);

impl Fields for RawRow<'_> {
    fn get(&self, name: &str) -> Option<Scalar<'_>> {
        let slot = ROW_KEYS.iter().position(|k| *k == name)?;
        self.0[slot].as_ref().map(Scalar::view)
    }
}

#[derive(Clone, Copy)]
struct RowSeed<'l>(&'l RowLimits);

impl<'de> DeserializeSeed<'de> for RowSeed<'_> {
    type Value = PreRow;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for RowSeed<'_> {
    type Value = PreRow;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a row")
    }
    scalars_are!(PreRow::not_an_object());
    seq_is!(PreRow::not_an_object());
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut row = RawRow([const { None }; ROW_KEYS.len()]);
        while let Some(key) = map.next_key_seed(Key(&ROW_KEYS))? {
            match key {
                Some(slot) => row.0[slot] = Some(map.next_value()?),
                None => {
                    map.next_value::<Skip>()?;
                }
            }
        }
        Ok(PreRow::read(&row, self.0))
    }
}
