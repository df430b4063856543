//! The one place where errors become gRPC statuses.

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::auth::AuthError;
use crate::domain::validate::truncate;
use crate::engine::EngineError;
use crate::ledger::LedgerError;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApiError {
    /// A request field is malformed; `field` is its path, e.g. `spec.resources.gpus`.
    #[error("{field}: {description}")]
    InvalidArgument { field: String, description: String },
    #[error("{0} not found")]
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
            ApiError::NotFound(_) => Status::not_found(msg),
            ApiError::AlreadyExists(_) => Status::already_exists(msg),
            ApiError::PermissionDenied(_) => Status::permission_denied(msg),
            ApiError::Unauthenticated(_) => Status::unauthenticated(msg),
            ApiError::FailedPrecondition(_) => Status::failed_precondition(msg),
            ApiError::Unavailable(_) => Status::unavailable(msg),
            ApiError::ResourceExhausted(_) => Status::resource_exhausted(msg),
            ApiError::Internal(_) => Status::internal(msg),
        }
    }
}

impl From<EngineError> for ApiError {
    fn from(e: EngineError) -> Self {
        match e {
            EngineError::NotFound(what) => ApiError::NotFound(what),
            EngineError::RequestReused(m) => ApiError::invalid("request_id", m),
            EngineError::AlreadyExists(m) => ApiError::AlreadyExists(m),
            EngineError::FailedPrecondition(m) => ApiError::FailedPrecondition(m),
            EngineError::Unavailable(m) => ApiError::Unavailable(m),
            EngineError::Internal(m) => ApiError::Internal(m),
        }
    }
}

impl From<LedgerError> for ApiError {
    fn from(e: LedgerError) -> Self {
        match e {
            LedgerError::Busy => ApiError::Unavailable(e.to_string()),
            e => ApiError::Internal(e.to_string()),
        }
    }
}

impl From<AuthError> for ApiError {
    fn from(e: AuthError) -> Self {
        match e {
            AuthError::TenantExists(_) | AuthError::AlreadyIssued(_) => {
                ApiError::AlreadyExists(e.to_string())
            }
            AuthError::NoSuchTenant(t) => ApiError::NotFound(format!("tenant {t}")),
            AuthError::NoSuchToken(id) => ApiError::NotFound(format!("token {id}")),
            AuthError::Ledger(l) => l.into(),
        }
    }
}
