//! `<mount>/static-roles[/<name>]`, `<mount>/static-creds/<name>`, `<mount>/rotate-role/<name>`:
//! static roles, their current passwords and on-demand rotation, in Vault's shapes.

use super::AppState;
use super::respond;
use crate::error::ServerError;
use axum::Json;
use axum::http::StatusCode;
use axum::response::Response;
use pgwarden_core::static_role::StaticRoleSpec;
use pgwarden_core::wire::{SecretResponse, StaticCredential, StaticRoleInfo};

/// The static role names of `mount`.
pub async fn list(state: &AppState, mount: &str) -> Result<Response, ServerError> {
    Ok(respond::keys(state.static_roles.names(mount).await?))
}

/// A static role: Vault's fields and its last rotation.
pub async fn read(
    state: &AppState,
    mount: &str,
    name: &str,
) -> Result<Json<SecretResponse<StaticRoleInfo>>, ServerError> {
    Ok(respond::ok(state.static_roles.read(mount, name).await?))
}

/// Creates a static role (its password changes at once) or updates its rotation.
pub async fn write(
    state: &AppState,
    mount: &str,
    name: &str,
    spec: StaticRoleSpec,
) -> Result<StatusCode, ServerError> {
    state.static_roles.write(mount, name, spec).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Forgets a static role; the user keeps its password.
pub async fn delete(state: &AppState, mount: &str, name: &str) -> Result<StatusCode, ServerError> {
    state.static_roles.delete(mount, name).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The current password, with the seconds until it changes as `ttl` (no lease, as in Vault).
pub async fn creds(
    state: &AppState,
    mount: &str,
    name: &str,
) -> Result<Json<SecretResponse<StaticCredential>>, ServerError> {
    Ok(respond::ok(
        state.static_roles.credential(mount, name).await?,
    ))
}

/// Rotates the password now.
pub async fn rotate(state: &AppState, mount: &str, name: &str) -> Result<StatusCode, ServerError> {
    state.static_roles.rotate(mount, name).await?;
    Ok(StatusCode::NO_CONTENT)
}
