//! The server's one error type, mapped once to an HTTP status and Vault's error body.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use pgwarden_auth::AuthError;
use pgwarden_core::CoreError;
use pgwarden_core::wire::ErrorBody;
use pgwarden_engine::EngineError;
use pgwarden_store::StoreError;

/// Every way a request can fail, each with its HTTP status.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// 400: the request is wrong; the message says how.
    #[error("{0}")]
    BadRequest(String),
    /// 403: no token, or not a token that may do this.
    #[error("permission denied")]
    PermissionDenied,
    /// 403 with the reason a login was refused.
    #[error("{0}")]
    Forbidden(String),
    /// 404: no such mount, role, connection or path.
    #[error("{0}")]
    NotFound(String),
    /// 405: the path exists but not with this method.
    #[error("unsupported operation")]
    MethodNotAllowed,
    /// 408: the client did not send its request in time.
    #[error("{0}")]
    RequestTimeout(String),
    /// 409: the request conflicts with the state (in use, revoked meanwhile).
    #[error("{0}")]
    Conflict(String),
    /// 413: the body is over the limit.
    #[error("request body is larger than {0} bytes")]
    PayloadTooLarge(usize),
    /// 503: a target database cannot be reached, or the server is shutting down.
    #[error("{0}")]
    Unavailable(String),
    /// 500: something failed on pgwarden's side.
    #[error("{0}")]
    Internal(String),
    /// A target database's error, kept whole (its SQLSTATE stays readable); the status
    /// depends on the kind.
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// 500: the state store failed (503 when its database is unreachable).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A login's error; the status depends on the kind.
    #[error(transparent)]
    Auth(#[from] pgwarden_auth::AuthError),
    /// 400: a definition or value is invalid.
    #[error(transparent)]
    Core(#[from] CoreError),
}

impl ServerError {
    /// The HTTP status code for this error.
    pub fn status(&self) -> u16 {
        match self {
            ServerError::BadRequest(_) => 400,
            ServerError::PermissionDenied | ServerError::Forbidden(_) => 403,
            ServerError::NotFound(_) => 404,
            ServerError::MethodNotAllowed => 405,
            ServerError::RequestTimeout(_) => 408,
            ServerError::Conflict(_) => 409,
            ServerError::PayloadTooLarge(_) => 413,
            ServerError::Unavailable(_) => 503,
            ServerError::Store(StoreError::Unavailable(_)) => 503,
            ServerError::Internal(_) | ServerError::Store(_) => 500,
            ServerError::Core(_) => 400,
            ServerError::Engine(e) => match e {
                EngineError::Unreachable { .. } => 503,
                EngineError::NoIdentityRole { .. } | EngineError::IdentityTooLong { .. } => 403,
                EngineError::Sql { .. }
                | EngineError::ReplicaLag { .. }
                | EngineError::CommitUnknown { .. } => 500,
                EngineError::InvalidUrl { .. }
                | EngineError::Template(_)
                | EngineError::UserGone { .. }
                | EngineError::UnsafeGroup { .. }
                | EngineError::TransactionEnded { .. } => 400,
            },
            ServerError::Auth(e) => match e {
                AuthError::UnknownRole { .. } => 400,
                AuthError::Rejected { .. } => 403,
                AuthError::Unavailable(_) => 503,
            },
        }
    }
}

/// Vault's error body `{"errors": [message]}` with the error's status.
impl IntoResponse for ServerError {
    fn into_response(self) -> Response {
        let status =
            StatusCode::from_u16(self.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = ErrorBody {
            errors: vec![self.to_string()],
        };
        (status, Json(body)).into_response()
    }
}
