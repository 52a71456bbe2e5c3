//! The error type key functions return.

use std::fmt;

/// An error from a key function. The host reports its message to the
/// consumer (and, for `process`, sends the event to the dead-letter queue).
///
/// Any `std::error::Error` converts into it, so `?` works on serde, params
/// and API results alike.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    message: String,
}

impl Error {
    /// An error with this message.
    pub fn msg(message: impl fmt::Display) -> Self {
        Self {
            message: message.to_string(),
        }
    }

    /// The message.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

// Not `std::error::Error` itself, so that this blanket conversion does not
// overlap with `From<T> for T` (the same trick as anyhow).
impl<E: std::error::Error> From<E> for Error {
    fn from(e: E) -> Self {
        Self::msg(e)
    }
}
