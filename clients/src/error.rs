//! The client's error: what the server said (gRPC status, message, SQLSTATE), or what
//! went wrong on this side before or after it.

use arrow_flight::error::FlightError;
use arrow_schema::ArrowError;
use tonic::Code;

/// The gRPC metadata key under which Tessera sends the SQLSTATE of an error status.
pub const SQLSTATE_METADATA_KEY: &str = "tessera-sqlstate";

/// A `Result` with the client's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything a call can fail with.
///
/// [`code`](Error::code) and [`sqlstate`](Error::sqlstate) classify an error without
/// matching on its variants: a user's mistake in SQL is `INVALID_ARGUMENT` / `42601`, an
/// unknown table `NOT_FOUND` / `42P01`, a wrong password `UNAUTHENTICATED` / `28P01`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The server (or gRPC on the way to it) answered with an error status.
    #[error("{} ({}{})", .message, code_name(*.code), sqlstate_suffix(.sqlstate.as_deref()))]
    Status {
        /// The gRPC status code.
        code: Code,
        /// The status message, as the server wrote it.
        message: String,
        /// The SQLSTATE from the status metadata, when the server sent one.
        sqlstate: Option<String>,
    },
    /// No connection could be made to the server.
    #[error("cannot connect to {endpoint}: {}", causes(.source))]
    Connect {
        /// The URL that was dialled.
        endpoint: String,
        /// What tonic reported.
        #[source]
        source: tonic::transport::Error,
    },
    /// Arrow data could not be encoded or decoded, or a stream of batches to load failed.
    #[error("Arrow data: {0}")]
    Arrow(#[from] ArrowError),
    /// The server's answer does not follow Flight SQL.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// An argument is not usable: a URL, a certificate, a header value.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
}

impl Error {
    /// The gRPC status code. Errors raised on this side have the code gRPC itself uses
    /// for them: a server that cannot be reached is `UNAVAILABLE`, a bad argument
    /// `INVALID_ARGUMENT`, an answer that breaks the protocol `INTERNAL`, failed Arrow
    /// data `UNKNOWN`.
    pub fn code(&self) -> Code {
        match self {
            Error::Status { code, .. } => *code,
            Error::Connect { .. } => Code::Unavailable,
            Error::Arrow(_) => Code::Unknown,
            Error::Protocol(_) => Code::Internal,
            Error::InvalidArgument(_) => Code::InvalidArgument,
        }
    }

    /// The SQLSTATE the server sent with the status (`42P01`, `42601`, ...), if any.
    pub fn sqlstate(&self) -> Option<&str> {
        match self {
            Error::Status { sqlstate, .. } => sqlstate.as_deref(),
            _ => None,
        }
    }

    /// The message: the server's own for a status, otherwise the error's text.
    pub fn message(&self) -> String {
        match self {
            Error::Status { message, .. } => message.clone(),
            other => other.to_string(),
        }
    }

    pub(crate) fn protocol(message: impl Into<String>) -> Error {
        Error::Protocol(message.into())
    }
}

impl From<tonic::Status> for Error {
    fn from(status: tonic::Status) -> Error {
        let sqlstate = status
            .metadata()
            .get(SQLSTATE_METADATA_KEY)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        // A status made on this side (a lost connection, say) says why in its source.
        let message = match std::error::Error::source(&status) {
            Some(source) => format!("{}: {}", status.message(), causes(source)),
            None => status.message().to_string(),
        };
        Error::Status {
            code: status.code(),
            message,
            sqlstate,
        }
    }
}

impl From<FlightError> for Error {
    fn from(error: FlightError) -> Error {
        match error {
            FlightError::Tonic(status) => Error::from(*status),
            FlightError::Arrow(e) => Error::Arrow(e),
            FlightError::NotYetImplemented(m)
            | FlightError::ProtocolError(m)
            | FlightError::DecodeError(m) => Error::Protocol(m),
            FlightError::ExternalError(e) => Error::Protocol(e.to_string()),
        }
    }
}

impl From<prost::DecodeError> for Error {
    fn from(error: prost::DecodeError) -> Error {
        Error::Protocol(format!("cannot decode the server's message: {error}"))
    }
}

/// The name gRPC's specification gives a status code.
fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

/// An error and its sources, as `outer: inner: innermost`.
fn causes(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        let next = e.to_string();
        if !text.ends_with(&next) {
            text = format!("{text}: {next}");
        }
        source = e.source();
    }
    text
}

fn sqlstate_suffix(sqlstate: Option<&str>) -> String {
    sqlstate
        .map(|s| format!(", SQLSTATE {s}"))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_status_keeps_code_message_and_sqlstate() {
        let mut status = tonic::Status::not_found("table 'nosuch' not found");
        status
            .metadata_mut()
            .insert(SQLSTATE_METADATA_KEY, "42P01".parse().unwrap());
        let error = Error::from(FlightError::Tonic(Box::new(status)));
        assert_eq!(error.code(), Code::NotFound);
        assert_eq!(error.sqlstate(), Some("42P01"));
        assert_eq!(error.message(), "table 'nosuch' not found");
        assert_eq!(
            error.to_string(),
            "table 'nosuch' not found (NOT_FOUND, SQLSTATE 42P01)"
        );

        let plain = Error::from(tonic::Status::unavailable("gone"));
        assert_eq!(plain.sqlstate(), None);
        assert_eq!(plain.to_string(), "gone (UNAVAILABLE)");
    }
}
