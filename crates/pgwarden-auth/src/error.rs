//! Why a login failed, with the check that failed as a metrics label.

/// The check a token failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Check {
    /// Not a JWT at all, or an unacceptable algorithm.
    Malformed,
    /// No key with the token's `kid`, even after refreshing the JWKS.
    UnknownKey,
    /// The signature does not verify.
    Signature,
    /// `exp` is past (or missing).
    Expired,
    /// `nbf` is in the future.
    NotYetValid,
    /// `iss` is not the configured issuer.
    Issuer,
    /// `aud` has none of the accepted audiences.
    Audience,
    /// A claim pgwarden needs is missing or has the wrong type.
    Claims,
    /// A legacy secret-based token while those are disabled.
    LegacyToken,
    /// The service account name is not bound to the login role.
    ServiceAccount,
    /// The namespace is not bound to the login role.
    Namespace,
    /// A `bound_claims` value does not match.
    BoundClaims,
    /// The API server's TokenReview did not authenticate the token.
    TokenReview,
}

impl Check {
    /// The label used in `/metrics`.
    pub fn label(self) -> &'static str {
        match self {
            Check::Malformed => "malformed",
            Check::UnknownKey => "unknown_key",
            Check::Signature => "bad_signature",
            Check::Expired => "expired",
            Check::NotYetValid => "not_yet_valid",
            Check::Issuer => "wrong_issuer",
            Check::Audience => "wrong_audience",
            Check::Claims => "missing_claims",
            Check::LegacyToken => "legacy_token",
            Check::ServiceAccount => "service_account_not_bound",
            Check::Namespace => "namespace_not_bound",
            Check::BoundClaims => "bound_claims",
            Check::TokenReview => "token_review",
        }
    }
}

/// A failed login.
#[derive(Debug, Clone, thiserror::Error)]
pub enum AuthError {
    /// The login role does not exist (HTTP 400).
    #[error("login role {role:?} not found in auth mount {mount:?}")]
    UnknownRole {
        /// The auth mount.
        mount: String,
        /// The role asked for.
        role: String,
    },
    /// The token failed a check (HTTP 403).
    #[error("permission denied: {detail}")]
    Rejected {
        /// Which check.
        check: Check,
        /// What exactly, for the caller.
        detail: String,
    },
    /// Keys or the TokenReview API could not be reached (HTTP 503).
    #[error("{0}")]
    Unavailable(String),
}

impl AuthError {
    /// A rejection by `check`.
    pub fn rejected(check: Check, detail: impl Into<String>) -> AuthError {
        AuthError::Rejected {
            check,
            detail: detail.into(),
        }
    }

    /// The metrics label of this failure.
    pub fn label(&self) -> &'static str {
        match self {
            AuthError::UnknownRole { .. } => "unknown_role",
            AuthError::Rejected { check, .. } => check.label(),
            AuthError::Unavailable(_) => "unavailable",
        }
    }
}
