//! What can go wrong while reconciling.

/// A reconciliation failure; the controller retries it with backoff.
#[derive(Debug, thiserror::Error)]
pub enum OperatorError {
    /// The Kubernetes API refused or could not be reached.
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    /// The broker refused or could not be reached.
    #[error("pgwarden: {0}")]
    Broker(#[from] pgwarden_client::ClientError),
    /// The resource asks for something that cannot be done as written.
    #[error("{0}")]
    Invalid(String),
    /// A deletion waits for something else to go first (looked at again in a few seconds).
    #[error("{0}")]
    Waiting(String),
    /// A lease could not be renewed: tried again after `retry_in` (backoff that never lets
    /// the lease lapse first).
    #[error("{message}")]
    RenewalFailed {
        /// What failed.
        message: String,
        /// When to try again.
        retry_in: std::time::Duration,
    },
    /// Adding or removing the finalizer failed.
    #[error("finalizer: {0}")]
    Finalizer(String),
}

impl OperatorError {
    /// Turns the finalizer helper's error into ours.
    pub fn from_finalizer(error: kube::runtime::finalizer::Error<OperatorError>) -> OperatorError {
        use kube::runtime::finalizer::Error;
        match error {
            Error::ApplyFailed(e) | Error::CleanupFailed(e) => e,
            other => OperatorError::Finalizer(other.to_string()),
        }
    }
}
