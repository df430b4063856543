//! What kind of failure an error is, for whoever answers a caller.
//!
//! Each service (the engine, the ledger, tenancy, the plugin registry) has
//! its own error type, in its own words; each says which [`ErrorCode`] an
//! error of it is, through [`ServiceError`]. The API turns a code into a
//! gRPC status in one place (`api/error.rs`), so a new service error needs
//! no new mapping, and no error type mirrors another.

/// The kinds of failure a caller can act on differently.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// The request is malformed: do not retry it as it is.
    InvalidArgument,
    NotFound,
    AlreadyExists,
    PermissionDenied,
    Unauthenticated,
    /// The request is valid but the state does not allow it now.
    FailedPrecondition,
    /// Try again later (a node is away, the server is busy or stopping).
    Unavailable,
    /// A limit of the caller's is used up.
    ResourceExhausted,
    /// A fault of the server's.
    Internal,
}

/// An error a service returns to its callers: its message (`Display`), its
/// code, and for an invalid argument the request field at fault.
pub trait ServiceError: std::fmt::Display {
    fn code(&self) -> ErrorCode;

    /// The request field an [`ErrorCode::InvalidArgument`] names.
    fn field(&self) -> Option<&str> {
        None
    }
}
