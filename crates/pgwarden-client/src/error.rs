//! Errors of the client.

/// What went wrong talking to pgwarden.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// pgwarden could not be reached.
    #[error("cannot reach pgwarden at {address}: {reason}")]
    Unreachable {
        /// The address used.
        address: String,
        /// The transport error.
        reason: String,
    },
    /// pgwarden answered with an error.
    #[error("pgwarden answered {status} to {what}: {message}")]
    Api {
        /// What was asked.
        what: String,
        /// HTTP status.
        status: u16,
        /// pgwarden's error message(s).
        message: String,
    },
    /// The CA certificates to trust could not be read.
    #[error("cannot use the CA file {path}: {reason}")]
    CaFile {
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
    /// The login token file could not be read.
    #[error("cannot read the token file {path}: {reason}")]
    TokenFile {
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
    /// The caller asked for something that cannot be sent.
    #[error("{reason}")]
    Usage {
        /// What is wrong with the request.
        reason: String,
    },
    /// The answer was not what the API promises.
    #[error("unexpected answer to {what}: {reason}")]
    Protocol {
        /// What was asked.
        what: String,
        /// What is wrong.
        reason: String,
    },
}

impl ClientError {
    /// True for errors that retrying later may fix (pgwarden down or overloaded).
    pub fn is_transient(&self) -> bool {
        match self {
            ClientError::Unreachable { .. } => true,
            ClientError::Api { status, .. } => *status >= 500 || *status == 429,
            _ => false,
        }
    }

    /// True when pgwarden refused the token (403).
    pub fn is_permission_denied(&self) -> bool {
        matches!(self, ClientError::Api { status: 403, .. })
    }

    /// True when pgwarden answered a lease request with 400, as it does for a lease it does
    /// not know: one that ended at its TTL or was revoked already.
    pub fn is_unknown_lease(&self) -> bool {
        matches!(self, ClientError::Api { status: 400, .. })
    }

    /// True when the answer says the lease is not found (pgwarden's `lease "…" not found`,
    /// Vault's `invalid lease`), not merely that the request was bad.
    pub fn is_lease_not_found(&self) -> bool {
        matches!(self, ClientError::Api { status: 400, message, .. }
            if message.contains("not found") || message.contains("invalid lease"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_an_unknown_lease_is_not_found() {
        let answer = |status, message: &str| ClientError::Api {
            what: "lookup x".into(),
            status,
            message: message.into(),
        };
        let gone = "lease \"x\" not found (it may have expired or been revoked)";
        assert!(answer(400, gone).is_lease_not_found());
        assert!(answer(400, "invalid lease").is_lease_not_found());
        assert!(!answer(400, "lease_id is required").is_lease_not_found());
        assert!(!answer(404, gone).is_lease_not_found());
        assert!(answer(400, "lease_id is required").is_unknown_lease());
    }
}
