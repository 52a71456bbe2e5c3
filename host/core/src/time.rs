//! Wall-clock time as the host writes it: event timestamps in milliseconds
//! since the Unix epoch, index times in seconds (what agents send), and RFC
//! 3339 text in answers. One place, so that every room agrees.

use std::time::{Duration, SystemTime};

/// The latest time RFC 3339 can write: 9999-12-31T23:59:59.999Z.
const MAX_RFC3339_MS: u64 = 253_402_300_799_999;

/// `t` in ms since the Unix epoch (0 before it).
pub fn ms_since_epoch(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Now, ms since the Unix epoch: what event timestamps are.
pub fn now_ms() -> u64 {
    ms_since_epoch(SystemTime::now())
}

/// Now, seconds since the Unix epoch: what index times are.
pub fn now_secs() -> f64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// `ms` since the Unix epoch as RFC 3339 UTC with milliseconds. Times past
/// the year 9999 (which the format cannot write) are written as its last
/// millisecond rather than panicking: rows are checked at parse time, and
/// this keeps a time from any other source from taking a thread down.
pub fn rfc3339_ms(ms: u64) -> String {
    let ms = ms.min(MAX_RFC3339_MS);
    humantime::format_rfc3339_millis(SystemTime::UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_past_the_year_9999_do_not_panic() {
        assert_eq!(rfc3339_ms(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339_ms(1e15 as u64), "9999-12-31T23:59:59.999Z");
        assert_eq!(rfc3339_ms(u64::MAX), "9999-12-31T23:59:59.999Z");
    }

    #[test]
    fn before_the_epoch_is_zero() {
        assert_eq!(
            ms_since_epoch(SystemTime::UNIX_EPOCH - Duration::from_secs(1)),
            0
        );
        assert!(now_ms() > 1_700_000_000_000);
        assert!(now_secs() > 1_700_000_000.0);
    }
}
