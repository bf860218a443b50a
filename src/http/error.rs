//! [`Error`] → HTTP status and a one-line text body, in one place.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use crate::error::{Error, FileError};

/// The status code a client sees for each kind of error.
pub(crate) fn status_of(err: &Error) -> StatusCode {
    match err {
        Error::InvalidPath { .. } | Error::BadRequest(_) | Error::File(FileError::InvalidPath(_)) => {
            StatusCode::BAD_REQUEST
        }
        Error::File(FileError::NotFound(_)) => StatusCode::NOT_FOUND,
        Error::File(_) => StatusCode::CONFLICT,
        Error::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
        Error::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        Error::Gone(_) => StatusCode::GONE,
        Error::NoSpace(_) => StatusCode::INSUFFICIENT_STORAGE,
        Error::Io { .. }
        | Error::CorruptLog { .. }
        | Error::Config(_)
        | Error::Peer { .. }
        | Error::Raft(_) => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let status = status_of(&self);
        if status.is_server_error() && status != StatusCode::SERVICE_UNAVAILABLE {
            tracing::error!(cause = %self, "request failed");
        }
        (status, format!("{self}\n")).into_response()
    }
}
