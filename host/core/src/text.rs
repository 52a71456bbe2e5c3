//! Bounded echoes of input. Whatever the host repeats from a request or a
//! plugin (a rejected path, a `task_id`, a log line) goes through [`clip`],
//! so that a hostile megabyte is never copied into a log line or an answer.

use std::borrow::Cow;

/// The most bytes of an input value the host echoes in a log line or an
/// error answer.
pub const ECHO_BYTES: usize = 256;

/// `s` cut to at most `max` bytes (on a character boundary), with the number
/// of bytes left out appended, such as `"/a/a/a… (99744 more bytes)"`.
pub fn clip(s: &str, max: usize) -> Cow<'_, str> {
    if s.len() <= max {
        return Cow::Borrowed(s);
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    Cow::Owned(format!("{}… ({} more bytes)", &s[..end], s.len() - end))
}

/// [`clip`] to [`ECHO_BYTES`].
pub fn echo(s: &str) -> Cow<'_, str> {
    clip(s, ECHO_BYTES)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clips_on_a_character_boundary_and_says_how_much_is_left_out() {
        assert_eq!(clip("short", 10), "short");
        assert_eq!(clip("abcdef", 3), "abc… (3 more bytes)");
        // 'é' is two bytes: the cut moves back to a boundary.
        assert_eq!(clip("aé", 2), "a… (2 more bytes)");
        assert!(echo(&"x".repeat(1 << 20)).len() < ECHO_BYTES + 40);
    }
}
