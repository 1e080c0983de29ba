//! The one error type of the core crate: every variant is bad input a user can fix.

/// A definition or value that pgwarden refuses; the message names the thing and the fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CoreError {
    /// A TTL that is neither integer seconds nor a Go-style duration.
    #[error("invalid TTL {value:?}: use integer seconds or a duration like 90s, 15m, 1h, 24h")]
    InvalidTtl {
        /// The text as given.
        value: String,
    },
    /// A role definition that cannot be used.
    #[error("role {role:?}: {reason}")]
    InvalidRole {
        /// The role's name.
        role: String,
        /// What is wrong and how to fix it.
        reason: String,
    },
    /// A connection definition that cannot be used.
    #[error("connection {connection:?}: {reason}")]
    InvalidConnection {
        /// The connection's name.
        connection: String,
        /// What is wrong and how to fix it.
        reason: String,
    },
    /// A name (mount, role, connection) that cannot be used in a path.
    #[error("invalid name {name:?}: {reason}")]
    InvalidName {
        /// The name as given.
        name: String,
        /// What is wrong.
        reason: &'static str,
    },
    /// A statement template with a placeholder pgwarden does not know.
    #[error(
        "unknown placeholder {{{{{placeholder}}}}} in statement; known: name, username, password, expiration"
    )]
    UnknownPlaceholder {
        /// The placeholder's name, without braces.
        placeholder: String,
    },
    /// A value that would leave its quotes if substituted into a statement.
    #[error(
        "refusing to substitute {placeholder}: the value has characters outside the safe alphabet"
    )]
    UnsafeValue {
        /// Which placeholder the value was for.
        placeholder: &'static str,
    },
    /// A renewal of a lease that has reached its max TTL.
    #[error("lease {lease_id:?} is past the max TTL, cannot renew")]
    PastMaxTtl {
        /// The lease's id.
        lease_id: String,
    },
    /// A policy grant that cannot be used.
    #[error("policy grant {grant}: {reason}")]
    InvalidPolicy {
        /// The grant's position, counting from 1.
        grant: usize,
        /// What is wrong.
        reason: String,
    },
}
