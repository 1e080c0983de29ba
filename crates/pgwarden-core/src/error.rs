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
    /// A TTL beyond [`crate::Ttl::MAX`].
    #[error("TTL {value:?} is too long: the maximum is {max} (100 years)", max = crate::Ttl::MAX)]
    TtlTooLong {
        /// The value as given.
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
    /// A statement template that runs `COPY`, whose data transfer pgwarden does not carry.
    #[error(
        "statement runs COPY, which templates cannot use: pgwarden does not carry COPY's data \
         (FROM STDIN, TO STDOUT)"
    )]
    CopyInStatement,
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

/// `error` followed by each of its causes, joined by `: `; a cause whose text is already shown
/// is skipped. Drivers (reqwest, rustls, tokio-postgres) keep the useful part ("certificate not
/// trusted", "connection refused") in a cause, so every log line and 5xx message uses this.
pub fn chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(inner) = cause {
        let inner_text = inner.to_string();
        if !text.contains(&inner_text) {
            text.push_str(": ");
            text.push_str(&inner_text);
        }
        cause = inner.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::chain;

    #[derive(Debug, thiserror::Error)]
    #[error("outer")]
    struct Outer(#[source] Middle);

    #[derive(Debug, thiserror::Error)]
    #[error("middle: {0}")]
    struct Middle(#[source] std::io::Error);

    #[test]
    fn chain_shows_every_cause_once() {
        let error = Outer(Middle(std::io::Error::other("connection refused")));
        assert_eq!(chain(&error), "outer: middle: connection refused");
    }
}
