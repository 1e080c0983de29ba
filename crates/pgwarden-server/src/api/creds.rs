//! `<mount>/creds/<role>`: issue a credential.

use super::caller::Admitted;
use super::respond;
use super::{AppState, AuditNote};
use crate::error::ServerError;
use axum::Json;
use axum::response::Response;
use pgwarden_core::AuditEvent;

/// Issues a new database user for `role` as a lease, within the caller's grant. `started`
/// is stored before the user exists; both it and the closing record name the lease and user.
pub async fn issue(
    state: &AppState,
    admitted: &Admitted,
    mount: &str,
    role: &str,
    started: AuditEvent,
) -> Result<Response, ServerError> {
    let owner = admitted.caller.owner();
    let issued = state
        .broker
        .issue(mount, role, owner, admitted.cap, started)
        .await?;
    let (lease, credential) = issued.into_credential();
    let note = AuditNote::about(&lease.id, format!("user {}", lease.username)).after_start();
    let response = respond::envelope(credential).with_lease(&lease.id, lease.granted_ttl());
    Ok(note.on(Json(response)))
}
