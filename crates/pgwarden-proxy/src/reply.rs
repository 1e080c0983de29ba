//! Messages the proxy itself sends to clients, encoded by pgwire.

use bytes::BytesMut;
use pgwire::messages::PgWireBackendMessage as Backend;
use pgwire::messages::response::{ErrorResponse, ReadyForQuery, TransactionStatus};
use pgwire::messages::startup::{
    Authentication, BackendKeyData, NegotiateProtocolVersion, ParameterStatus, SecretKey,
};

/// A refusal the client sees as a PostgreSQL error: its SQLSTATE and message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct PgError {
    /// SQLSTATE, e.g. `28P01`.
    pub code: String,
    /// What the client is told.
    pub message: String,
}

impl PgError {
    /// An error with `code` and `message`.
    pub fn new(code: &str, message: impl Into<String>) -> PgError {
        PgError {
            code: code.to_string(),
            message: message.into(),
        }
    }
}

/// Appends `message` to `out`. Encoding into a buffer cannot fail for these messages.
fn put(out: &mut BytesMut, message: Backend) {
    let _ = message.encode(out);
}

/// A FATAL `ErrorResponse` for `error`.
pub fn fatal(out: &mut BytesMut, error: &PgError) {
    let fields = vec![
        (b'S', "FATAL".to_string()),
        (b'V', "FATAL".to_string()),
        (b'C', error.code.clone()),
        (b'M', error.message.clone()),
    ];
    put(out, Backend::ErrorResponse(ErrorResponse::new(fields)));
}

/// `NegotiateProtocolVersion`: protocol 3.0, without the `unsupported` options.
pub fn negotiate_protocol(out: &mut BytesMut, unsupported: Vec<String>) {
    let message = NegotiateProtocolVersion::new(0, unsupported);
    put(out, Backend::NegotiateProtocolVersion(message));
}

/// `AuthenticationCleartextPassword`.
pub fn ask_password(out: &mut BytesMut) {
    put(
        out,
        Backend::Authentication(Authentication::CleartextPassword),
    );
}

/// What a client is sent once it is in: `AuthenticationOk`, the server's parameters, the
/// proxy's cancel key and `ReadyForQuery`.
pub fn welcome(out: &mut BytesMut, parameters: &[(String, String)], key: (i32, i32)) {
    put(out, Backend::Authentication(Authentication::Ok));
    for (name, value) in parameters {
        let status = ParameterStatus::new(name.clone(), value.clone());
        put(out, Backend::ParameterStatus(status));
    }
    let key = BackendKeyData::new(key.0, SecretKey::I32(key.1));
    put(out, Backend::BackendKeyData(key));
    put(
        out,
        Backend::ReadyForQuery(ReadyForQuery::new(TransactionStatus::Idle)),
    );
}
