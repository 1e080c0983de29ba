//! Errors from talking to a target database.

use pgwarden_core::CoreError;

/// What went wrong in a target database.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The connection URL cannot be used.
    #[error("connection {connection:?}: invalid connection_url: {reason}")]
    InvalidUrl {
        /// The connection's name.
        connection: String,
        /// Why.
        reason: String,
    },
    /// pgwarden could not connect (network, authentication, TLS).
    #[error("database of connection {connection:?} is unreachable: {reason}")]
    Unreachable {
        /// The connection's name.
        connection: String,
        /// The cause as the driver reports it.
        reason: String,
    },
    /// A statement failed.
    #[error("{what}: {reason}")]
    Sql {
        /// What pgwarden was doing.
        what: String,
        /// The database's message.
        reason: String,
    },
    /// A template could not be rendered.
    #[error(transparent)]
    Template(#[from] CoreError),
    /// The user to renew no longer exists.
    #[error("user {username:?} no longer exists in the database")]
    UserGone {
        /// The user's name.
        username: String,
    },
}

/// The most useful text of a driver error: the server's message and SQLSTATE when there is one.
pub(crate) fn describe(error: &tokio_postgres::Error) -> String {
    if let Some(db) = error.as_db_error() {
        let detail = db.detail().map(|d| format!("; {d}")).unwrap_or_default();
        return format!("{}{detail} (SQLSTATE {})", db.message(), db.code().code());
    }
    pgwarden_core::chain(error)
}

/// Wraps a failed statement with what pgwarden was doing.
pub(crate) fn sql(what: impl Into<String>) -> impl FnOnce(tokio_postgres::Error) -> EngineError {
    let what = what.into();
    move |error| EngineError::Sql {
        what,
        reason: describe(&error),
    }
}
