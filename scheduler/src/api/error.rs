//! The one place where errors become gRPC statuses.

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::domain::validate::truncate;
use crate::domain::{ErrorCode, ServiceError};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApiError {
    /// A request field is malformed; `field` is its path, e.g. `spec.resources.gpus`.
    #[error("{field}: {description}")]
    InvalidArgument { field: String, description: String },
    /// What was not found, as a whole message (`job … not found`).
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    AlreadyExists(String),
    #[error("{0}")]
    PermissionDenied(String),
    #[error("{0}")]
    Unauthenticated(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("{0}")]
    Unavailable(String),
    /// A quota of the caller's is used up (plugins per tenant, their bytes).
    #[error("{0}")]
    ResourceExhausted(String),
    #[error("internal error: {0}")]
    Internal(String),
}

pub type ApiResult<T> = Result<T, ApiError>;

impl ApiError {
    pub fn invalid(field: impl Into<String>, description: impl Into<String>) -> Self {
        ApiError::InvalidArgument {
            field: field.into(),
            description: description.into(),
        }
    }
}

/// The most bytes of a status message (and of a field path): a message
/// goes out in HTTP/2 headers, where a long one would be refused whole and
/// its code and field lost. Messages quote short prefixes of user input
/// anyway (`domain::validate::quote`); this is the last guard.
const MAX_MESSAGE_BYTES: usize = 2048;
const MAX_FIELD_BYTES: usize = 256;

impl ApiError {
    /// What kind of failure this is.
    pub fn code(&self) -> ErrorCode {
        match self {
            ApiError::InvalidArgument { .. } => ErrorCode::InvalidArgument,
            ApiError::NotFound(_) => ErrorCode::NotFound,
            ApiError::AlreadyExists(_) => ErrorCode::AlreadyExists,
            ApiError::PermissionDenied(_) => ErrorCode::PermissionDenied,
            ApiError::Unauthenticated(_) => ErrorCode::Unauthenticated,
            ApiError::FailedPrecondition(_) => ErrorCode::FailedPrecondition,
            ApiError::Unavailable(_) => ErrorCode::Unavailable,
            ApiError::ResourceExhausted(_) => ErrorCode::ResourceExhausted,
            ApiError::Internal(_) => ErrorCode::Internal,
        }
    }
}

/// The gRPC status code of each kind of failure: the one mapping.
pub fn grpc_code(code: ErrorCode) -> Code {
    match code {
        ErrorCode::InvalidArgument => Code::InvalidArgument,
        ErrorCode::NotFound => Code::NotFound,
        ErrorCode::AlreadyExists => Code::AlreadyExists,
        ErrorCode::PermissionDenied => Code::PermissionDenied,
        ErrorCode::Unauthenticated => Code::Unauthenticated,
        ErrorCode::FailedPrecondition => Code::FailedPrecondition,
        ErrorCode::Unavailable => Code::Unavailable,
        ErrorCode::ResourceExhausted => Code::ResourceExhausted,
        ErrorCode::Internal => Code::Internal,
    }
}

impl From<ApiError> for Status {
    fn from(e: ApiError) -> Status {
        let msg = truncate(&e.to_string(), MAX_MESSAGE_BYTES).to_string();
        match e {
            ApiError::InvalidArgument { field, description } => Status::with_error_details(
                Code::InvalidArgument,
                msg,
                ErrorDetails::with_bad_request_violation(
                    truncate(&field, MAX_FIELD_BYTES),
                    truncate(&description, MAX_MESSAGE_BYTES),
                ),
            ),
            other => Status::new(grpc_code(other.code()), msg),
        }
    }
}

/// Any service's error, by its code: the engine's, the ledger's, tenancy's,
/// the plugin registry's. Its message is kept as it is.
impl<E: ServiceError> From<E> for ApiError {
    fn from(e: E) -> Self {
        let message = e.to_string();
        match e.code() {
            ErrorCode::InvalidArgument => ApiError::invalid(e.field().unwrap_or("request"), message),
            ErrorCode::NotFound => ApiError::NotFound(message),
            ErrorCode::AlreadyExists => ApiError::AlreadyExists(message),
            ErrorCode::PermissionDenied => ApiError::PermissionDenied(message),
            ErrorCode::Unauthenticated => ApiError::Unauthenticated(message),
            ErrorCode::FailedPrecondition => ApiError::FailedPrecondition(message),
            ErrorCode::Unavailable => ApiError::Unavailable(message),
            ErrorCode::ResourceExhausted => ApiError::ResourceExhausted(message),
            ErrorCode::Internal => ApiError::Internal(message),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::AuthError;
    use crate::engine::EngineError;
    use crate::ledger::LedgerError;

    #[test]
    fn every_kind_of_failure_has_its_own_status_code() {
        use ErrorCode as C;
        let all = [
            C::InvalidArgument,
            C::NotFound,
            C::AlreadyExists,
            C::PermissionDenied,
            C::Unauthenticated,
            C::FailedPrecondition,
            C::Unavailable,
            C::ResourceExhausted,
            C::Internal,
        ];
        let codes: std::collections::HashSet<Code> = all.iter().map(|c| grpc_code(*c)).collect();
        assert_eq!(codes.len(), all.len());
        assert_eq!(grpc_code(C::FailedPrecondition), Code::FailedPrecondition);
        assert_eq!(grpc_code(C::Unavailable), Code::Unavailable);
    }

    #[test]
    fn service_errors_become_statuses_by_their_code_keeping_their_message() {
        let status = |e: ApiError| Status::from(e);
        let s = status(EngineError::NotFound("job j1".into()).into());
        assert_eq!((s.code(), s.message()), (Code::NotFound, "job j1 not found"));
        let s = status(EngineError::Internal("disk on fire".into()).into());
        assert_eq!(
            (s.code(), s.message()),
            (Code::Internal, "internal error: disk on fire")
        );
        // A reused request id is a bad field, with the field in the details.
        let s = status(EngineError::RequestReused("used for another job".into()).into());
        assert_eq!(s.code(), Code::InvalidArgument);
        let details = s.get_error_details();
        let bad = details.bad_request().expect("field details");
        assert_eq!(bad.field_violations[0].field, "request_id");
        // A busy ledger read may be retried; other ledger faults are the server's.
        assert_eq!(status(LedgerError::Busy.into()).code(), Code::Unavailable);
        assert_eq!(status(LedgerError::Refused("no").into()).code(), Code::Internal);
        let s = status(AuthError::NoSuchTenant("acme".parse().unwrap()).into());
        assert_eq!((s.code(), s.message()), (Code::NotFound, "tenant acme not found"));
        let s = status(AuthError::Ledger(LedgerError::Busy).into());
        assert_eq!(s.code(), Code::Unavailable, "a wrapped error keeps its own code");
        let s = status(crate::policy::RegistryError::Limit("too many plugins".into()).into());
        assert_eq!(
            (s.code(), s.message()),
            (Code::ResourceExhausted, "too many plugins")
        );
    }
}
