//! `<mount>/creds/<role>`: issue a credential.

use super::AppState;
use super::caller::Admitted;
use super::respond;
use crate::error::ServerError;
use axum::Json;
use pgwarden_core::wire::{DbCredential, SecretResponse};

/// Issues a new database user for `role` as a lease, within the caller's grant.
pub async fn issue(
    state: &AppState,
    admitted: &Admitted,
    mount: &str,
    role: &str,
) -> Result<Json<SecretResponse<DbCredential>>, ServerError> {
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
    let response =
        respond::envelope(credential).with_lease(&issued.lease.id, issued.lease.granted_ttl());
    Ok(Json(response))
}
