//! The on-disk form of an [`Event`] in the event log (the sequence number is
//! the record's key, not part of it). Compact and versioned; decoding checks
//! every length against what is left and every string for UTF-8, so a
//! damaged record is an error naming what is wrong, never a panic.
//!
//! Version 1: `[1u8][timestamp_ms: u64 LE]`, then `id`, `event_type`,
//! `source`, `payload` as `[len: u32 LE][bytes]`, then `source_time`,
//! `correlation_id`, `scope` as `[0u8]` (none) or `[1u8][len: u32 LE][bytes]`.

use crate::event::{Event, NewEvent};

/// The record format this build writes.
pub const VERSION: u8 = 1;

/// Why a stored record could not be read back.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    /// The record names a format this build does not know.
    #[error("record format {0} is not known (this build reads format {VERSION})")]
    Version(u8),
    /// The record ends before a field does.
    #[error("record is truncated in `{0}`")]
    Truncated(&'static str),
    /// A string field is not UTF-8.
    #[error("`{0}` is not UTF-8")]
    Utf8(&'static str),
    /// An optional field's marker is neither 0 nor 1.
    #[error("`{0}` has a bad presence marker {1}")]
    Marker(&'static str, u8),
    /// Bytes follow the last field.
    #[error("{0} bytes after the last field")]
    Trailing(usize),
}

/// Bytes [`encode`] writes for `event`.
pub fn encoded_len(event: &NewEvent) -> usize {
    let opt = |s: &Option<String>| 1 + s.as_ref().map_or(0, |s| 4 + s.len());
    1 + 8
        + 16
        + event.id.len()
        + event.event_type.len()
        + event.source.len()
        + event.payload.len()
        + opt(&event.source_time)
        + opt(&event.correlation_id)
        + opt(&event.scope)
}

/// Appends the record of `event` to `out`.
pub fn encode(event: &Event, out: &mut Vec<u8>) {
    let n = &event.new;
    out.reserve(encoded_len(n));
    out.push(VERSION);
    out.extend_from_slice(&event.timestamp_ms.to_le_bytes());
    for s in [&n.id, &n.event_type, &n.source, &n.payload] {
        put_str(out, s);
    }
    for s in [&n.source_time, &n.correlation_id, &n.scope] {
        match s {
            None => out.push(0),
            Some(s) => {
                out.push(1);
                put_str(out, s);
            }
        }
    }
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    // Fields are bounded far below 4 GiB by the producer limits.
    out.extend_from_slice(&(s.len() as u32).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

/// Reads back the record of event `seq`.
pub fn decode(seq: u64, bytes: &[u8]) -> Result<Event, CodecError> {
    let mut r = Reader(bytes);
    let version = r.u8("version")?;
    if version != VERSION {
        return Err(CodecError::Version(version));
    }
    let timestamp_ms = u64::from_le_bytes(r.take(8, "timestamp")?.try_into().unwrap_or([0; 8]));
    let id = r.string("id")?;
    let event_type = r.string("event_type")?;
    let source = r.string("source")?;
    let payload = r.string("payload")?;
    let source_time = r.optional("source_time")?;
    let correlation_id = r.optional("correlation_id")?;
    let scope = r.optional("scope")?;
    if !r.0.is_empty() {
        return Err(CodecError::Trailing(r.0.len()));
    }
    Ok(Event {
        seq,
        timestamp_ms,
        new: NewEvent {
            id,
            event_type,
            source,
            source_time,
            correlation_id,
            payload,
            scope,
        },
    })
}

/// Reads only the id and the timestamp of a record (the dedup window is
/// rebuilt from these at start).
pub fn decode_id(bytes: &[u8]) -> Result<(u64, String), CodecError> {
    let mut r = Reader(bytes);
    let version = r.u8("version")?;
    if version != VERSION {
        return Err(CodecError::Version(version));
    }
    let timestamp_ms = u64::from_le_bytes(r.take(8, "timestamp")?.try_into().unwrap_or([0; 8]));
    Ok((timestamp_ms, r.string("id")?))
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, field: &'static str) -> Result<&'a [u8], CodecError> {
        if self.0.len() < n {
            return Err(CodecError::Truncated(field));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn u8(&mut self, field: &'static str) -> Result<u8, CodecError> {
        Ok(self.take(1, field)?[0])
    }

    fn string(&mut self, field: &'static str) -> Result<String, CodecError> {
        let len = u32::from_le_bytes(self.take(4, field)?.try_into().unwrap_or([0; 4])) as usize;
        let bytes = self.take(len, field)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| CodecError::Utf8(field))
    }

    fn optional(&mut self, field: &'static str) -> Result<Option<String>, CodecError> {
        match self.u8(field)? {
            0 => Ok(None),
            1 => self.string(field).map(Some),
            m => Err(CodecError::Marker(field, m)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(scope: Option<&str>) -> Event {
        Event {
            seq: 7,
            timestamp_ms: 1_700_000_000_123,
            new: NewEvent {
                id: "e-1".into(),
                event_type: "fs.insert".into(),
                source: "agent".into(),
                source_time: Some("2026-12-04T00:00:00Z".into()),
                correlation_id: None,
                payload: r#"{"path":"/a","size":3}"#.into(),
                scope: scope.map(str::to_string),
            },
        }
    }

    #[test]
    fn round_trips_and_reports_its_length() {
        for scope in [None, Some("lab")] {
            let e = event(scope);
            let mut buf = Vec::new();
            encode(&e, &mut buf);
            assert_eq!(buf.len(), encoded_len(&e.new));
            assert_eq!(decode(7, &buf), Ok(e.clone()));
            assert_eq!(decode_id(&buf), Ok((e.timestamp_ms, "e-1".into())));
        }
    }

    #[test]
    fn every_damage_is_an_error_not_a_panic() {
        let mut buf = Vec::new();
        encode(&event(Some("lab")), &mut buf);
        for cut in 0..buf.len() {
            assert!(decode(1, &buf[..cut]).is_err(), "cut at {cut}");
        }
        let mut v2 = buf.clone();
        v2[0] = 2;
        assert_eq!(decode(1, &v2), Err(CodecError::Version(2)));
        let mut extra = buf.clone();
        extra.push(0);
        assert_eq!(decode(1, &extra), Err(CodecError::Trailing(1)));
        // A length that claims more than is there.
        let mut long = buf.clone();
        long[9..13].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(decode(1, &long), Err(CodecError::Truncated("id")));
    }
}
