//! `<mount>/creds/<role>`: issue a credential.

use super::caller::Admitted;
use super::respond;
use super::{AppState, AuditNote};
use crate::error::ServerError;
use axum::Json;
use axum::response::{IntoResponse, Response};
use pgwarden_core::wire::DbCredential;

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
    let credential = DbCredential {
        username: issued.lease.username.clone(),
        password: issued.password,
        host: issued.endpoint.host,
        port: issued.endpoint.port,
        database: issued.endpoint.database,
        hosts: issued.endpoint.hosts,
    };
    let note = AuditNote {
        actor: None,
        object: Some(issued.lease.id.clone()),
        detail: Some(format!("user {}", issued.lease.username)),
    };
    let response =
        respond::envelope(credential).with_lease(&issued.lease.id, issued.lease.granted_ttl());
    Ok(note.on(Json(response).into_response()))
}
