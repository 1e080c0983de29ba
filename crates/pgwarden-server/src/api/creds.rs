//! `<mount>/creds/<role>`: issue a credential.

use super::caller::Admitted;
use super::respond;
use super::{AppState, AuditNote};
use crate::error::ServerError;
use axum::Json;
use axum::response::Response;

/// Issues a new database user for `role` as a lease, within the caller's grant; the audit
/// record names the lease and the user.
pub async fn issue(
    state: &AppState,
    admitted: &Admitted,
    mount: &str,
    role: &str,
) -> Result<Response, ServerError> {
    let issued = state
        .broker
        .issue(mount, role, admitted.caller.owner(), admitted.cap)
        .await?;
    let (lease, credential) = issued.into_credential();
    let note = AuditNote::about(&lease.id, format!("user {}", lease.username));
    let response = respond::envelope(credential).with_lease(&lease.id, lease.granted_ttl());
    Ok(note.on(Json(response)))
}
