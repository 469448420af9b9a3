//! The one error type of the load tool: a message that ends the run cleanly.

use std::fmt;

/// Why a run stopped early (connection refused, broker closed, protocol error...).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error(pub String);

impl Error {
    pub fn new(msg: impl Into<String>) -> Error {
        Error(msg.into())
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Error {}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Error {
        Error(format!("I/O error: {e}"))
    }
}

impl From<tern_codec::DecodeError> for Error {
    fn from(e: tern_codec::DecodeError) -> Error {
        Error(format!("malformed packet from broker: {e}"))
    }
}

impl From<tern_codec::EncodeError> for Error {
    fn from(e: tern_codec::EncodeError) -> Error {
        Error(format!("cannot encode packet: {e}"))
    }
}

/// Result with the load tool's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;
