//! Errors from talking to a target database.

use pgwarden_core::CoreError;
use tokio_postgres::error::SqlState;

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
    /// A statement failed. The message already carries the database's message, detail and
    /// SQLSTATE, so the driver error is kept as a field (see [`EngineError::sqlstate`]) rather
    /// than as a `source` that would repeat them in an error chain.
    #[error("{what}: {}", describe(driver))]
    Sql {
        /// What pgwarden was doing.
        what: String,
        /// The driver's error.
        driver: tokio_postgres::Error,
    },
    /// A preset's group role that pgwarden refuses to use.
    #[error("group role {group:?} {reason}")]
    UnsafeGroup {
        /// The group role's name.
        group: String,
        /// What is wrong and how to fix it.
        reason: String,
    },
    /// An identity role's caller has no database role named after its identity.
    #[error(
        "no database role is named after identity {identity:?}: a database owner must create it \
         (CREATE ROLE {quoted} NOLOGIN) and grant it what this identity may do"
    )]
    NoIdentityRole {
        /// The caller's identity (policy subject).
        identity: String,
        /// The same, quoted as an identifier.
        quoted: String,
    },
    /// An identity role's caller has an identity too long to be a role name.
    #[error(
        "identity {identity:?} is longer than PostgreSQL's 63-byte role names, so no database \
         role can be named after it; give it a preset or template role instead"
    )]
    IdentityTooLong {
        /// The caller's identity.
        identity: String,
    },
    /// A role's creation statements ended the transaction (`COMMIT`, `END`, `ROLLBACK`): the
    /// user may already exist, before pgwarden could make sure its lease is recorded.
    #[error(
        "{what}: the creation statements end the transaction (COMMIT, END or ROLLBACK); remove \
         that statement: pgwarden commits the user itself once its lease is recorded"
    )]
    TransactionEnded {
        /// What pgwarden was doing.
        what: String,
    },
    /// A standby did not replay a user's drop in time; its sessions may still run there.
    #[error(
        "user {username:?} is dropped on the primary but still exists on standby {host} after \
         {waited}s; its sessions there are ended as long as it exists, and the revocation is retried"
    )]
    ReplicaLag {
        /// The user.
        username: String,
        /// The standby's `host:port`.
        host: String,
        /// Seconds waited.
        waited: u64,
    },
    /// `COMMIT` failed: the database may or may not have applied the transaction.
    #[error(
        "{what}: the database may or may not have applied it: {}",
        describe(driver)
    )]
    CommitUnknown {
        /// What pgwarden was committing.
        what: String,
        /// The driver's error.
        driver: tokio_postgres::Error,
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

impl EngineError {
    /// True when the failure came before any user could exist (nothing to roll back): the
    /// database was unreachable, or a check refused before the creation statements ran. A
    /// statement error is never such a case: a lost connection may hide a commit.
    pub fn created_nothing(&self) -> bool {
        matches!(
            self,
            EngineError::Unreachable { .. }
                | EngineError::InvalidUrl { .. }
                | EngineError::Template(_)
                | EngineError::UnsafeGroup { .. }
                | EngineError::NoIdentityRole { .. }
                | EngineError::IdentityTooLong { .. }
        )
    }

    /// The SQLSTATE of a statement the database refused.
    pub fn sqlstate(&self) -> Option<&SqlState> {
        match self {
            EngineError::Sql { driver, .. } => driver.code(),
            _ => None,
        }
    }

    /// Whether PostgreSQL refused the administrator a privilege (SQLSTATE 42501).
    pub fn is_permission_denied(&self) -> bool {
        self.sqlstate() == Some(&SqlState::INSUFFICIENT_PRIVILEGE)
    }

    /// Whether running the same work again may succeed: it failed only because of concurrent
    /// work (serialization failure, deadlock, `tuple concurrently updated` from concurrent
    /// GRANTs).
    pub fn is_retryable(&self) -> bool {
        match self {
            EngineError::Sql { driver, .. } => is_retryable(driver),
            _ => false,
        }
    }
}

/// The most useful text of a driver error: the server's message and SQLSTATE when there is one.
pub(crate) fn describe(error: &tokio_postgres::Error) -> String {
    if let Some(db) = error.as_db_error() {
        let detail = db.detail().map(|d| format!("; {d}")).unwrap_or_default();
        return redact_verifiers(&format!(
            "{}{detail} (SQLSTATE {})",
            db.message(),
            db.code().code()
        ));
    }
    pgwarden_core::chain(error)
}

/// `text` with every SCRAM verifier (which a database error may quote from the statement
/// that failed) cut to its prefix, so none reaches a log line, a response or the audit log.
fn redact_verifiers(text: &str) -> String {
    const PREFIX: &str = "SCRAM-SHA-256$";
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find(PREFIX) {
        let (before, from) = rest.split_at(at);
        out.push_str(before);
        out.push_str(PREFIX);
        out.push('…');
        let after = &from[PREFIX.len()..];
        let end = after
            .find(|c: char| !(c.is_ascii_alphanumeric() || "+/=:$".contains(c)))
            .unwrap_or(after.len());
        rest = &after[end..];
    }
    out.push_str(rest);
    out
}

/// True for failures caused only by concurrent work, which the same statements may not meet
/// again: serialization failures, deadlocks, and catalog rows updated by a concurrent GRANT.
fn is_retryable(error: &tokio_postgres::Error) -> bool {
    let Some(db) = error.as_db_error() else {
        return false;
    };
    only_concurrency(db.code(), db.message())
}

/// Whether a statement refused with SQLSTATE `code` and `message` failed only because
/// concurrent work got in its way: a serialization failure, a deadlock, or a catalog row
/// (a role's, say) that another session changed or deleted meanwhile, as two replicas
/// dropping one user at once do.
fn only_concurrency(code: &SqlState, message: &str) -> bool {
    *code == SqlState::T_R_SERIALIZATION_FAILURE
        || *code == SqlState::T_R_DEADLOCK_DETECTED
        || (*code == SqlState::INTERNAL_ERROR
            && matches!(
                message,
                "tuple concurrently updated" | "tuple concurrently deleted"
            ))
}

/// Wraps a failed statement with what pgwarden was doing.
pub(crate) fn sql(what: impl Into<String>) -> impl FnOnce(tokio_postgres::Error) -> EngineError {
    let what = what.into();
    move |driver| EngineError::Sql { what, driver }
}

/// Attempts at work that fails only because of concurrent work.
const ATTEMPTS: u32 = 10;

/// Runs `attempt` until it succeeds, fails for another reason than concurrent work, or has
/// been tried [`ATTEMPTS`] times, waiting [`retry_delay`] between tries; the last outcome.
/// Each attempt must be whole: safe to run again after a failure.
pub(crate) async fn retried<T, Attempt>(
    mut attempt: impl FnMut() -> Attempt,
) -> Result<T, EngineError>
where
    Attempt: std::future::Future<Output = Result<T, EngineError>>,
{
    let mut tries = 1;
    loop {
        let outcome = attempt().await;
        match retry_delay(&outcome, tries) {
            Some(wait) => tokio::time::sleep(wait).await,
            None => return outcome,
        }
        tries = tries.saturating_add(1);
    }
}

/// How long to wait before trying again work whose attempt number `attempt` (from 1) ended
/// with `outcome`; `None` when it succeeded, failed for a reason other than concurrency, or
/// has been tried [`ATTEMPTS`] times. Waits start at 25–37 ms and double up to 1 s, jittered,
/// so competing writers spread out.
fn retry_delay<T>(outcome: &Result<T, EngineError>, attempt: u32) -> Option<std::time::Duration> {
    use std::time::Duration;
    match outcome {
        Err(error) if error.is_retryable() && attempt < ATTEMPTS => Some(pgwarden_core::backoff(
            attempt,
            Duration::from_millis(25),
            Duration::from_secs(1),
        )),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::{only_concurrency, redact_verifiers};
    use tokio_postgres::error::SqlState;

    #[test]
    fn concurrent_catalog_changes_are_retried_and_other_internal_errors_are_not() {
        for (code, message, retried) in [
            (
                SqlState::T_R_SERIALIZATION_FAILURE,
                "could not serialize",
                true,
            ),
            (SqlState::T_R_DEADLOCK_DETECTED, "deadlock detected", true),
            (SqlState::INTERNAL_ERROR, "tuple concurrently updated", true),
            (SqlState::INTERNAL_ERROR, "tuple concurrently deleted", true),
            (
                SqlState::INTERNAL_ERROR,
                "cache lookup failed for role 1",
                false,
            ),
            (SqlState::UNDEFINED_OBJECT, "role does not exist", false),
        ] {
            assert_eq!(only_concurrency(&code, message), retried, "{message}");
        }
    }

    #[test]
    fn verifiers_quoted_by_an_error_are_cut() {
        assert_eq!(
            redact_verifiers(
                "syntax error at or near \"'SCRAM-SHA-256$4096:c2FsdA==$a2V5:c2Vy' NOSUCH\" and SCRAM-SHA-256$1:x"
            ),
            "syntax error at or near \"'SCRAM-SHA-256$…' NOSUCH\" and SCRAM-SHA-256$…"
        );
        assert_eq!(redact_verifiers("no verifier here"), "no verifier here");
    }
}
