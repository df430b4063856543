//! The SDK's one error type: a gRPC status with its code, message and, for
//! bad input, the field the server named.

use tonic::Code;
use tonic_types::StatusExt;

/// An error from the server or the connection.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct Error {
    pub(crate) code: Code,
    pub(crate) message: String,
    pub(crate) field: Option<String>,
}

impl Error {
    /// The gRPC status code (`InvalidArgument`, `NotFound`, `PermissionDenied`, …).
    pub fn code(&self) -> Code {
        self.code
    }

    pub fn message(&self) -> &str {
        &self.message
    }

    /// For `InvalidArgument`: the request field at fault, e.g. `spec.resources.gpus`.
    pub fn field(&self) -> Option<&str> {
        self.field.as_deref()
    }

    pub(crate) fn local(code: Code, message: impl Into<String>) -> Self {
        Error {
            code,
            message: message.into(),
            field: None,
        }
    }
}

impl From<tonic::Status> for Error {
    fn from(s: tonic::Status) -> Self {
        let field = s
            .get_details_bad_request()
            .and_then(|b| b.field_violations.first().map(|v| v.field.clone()));
        Error {
            code: s.code(),
            message: s.message().to_string(),
            field,
        }
    }
}

impl From<tonic::transport::Error> for Error {
    fn from(e: tonic::transport::Error) -> Self {
        let mut msg = e.to_string();
        let mut src = std::error::Error::source(&e);
        while let Some(s) = src {
            msg.push_str(": ");
            msg.push_str(&s.to_string());
            src = s.source();
        }
        Error::local(Code::Unavailable, msg)
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
