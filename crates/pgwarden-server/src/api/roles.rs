//! `<mount>/roles[/<name>]`: the mount's role definitions (root only).

use super::AppState;
use super::respond;
use crate::error::ServerError;
use axum::Json;
use axum::http::StatusCode;
use axum::response::Response;
use pgwarden_core::RoleSpec;
use pgwarden_core::wire::SecretResponse;

/// The role names of `mount`.
pub fn list(state: &AppState, mount: &str) -> Result<Response, ServerError> {
    state.broker.catalog().ensure_fresh()?;
    Ok(respond::keys(state.broker.catalog().role_names(mount)?))
}

/// A role as written: Vault's fields, TTLs in seconds.
pub fn read(
    state: &AppState,
    mount: &str,
    name: &str,
) -> Result<Json<SecretResponse<RoleSpec>>, ServerError> {
    state.broker.catalog().ensure_fresh()?;
    let role = state.broker.catalog().role(mount, name)?;
    Ok(respond::ok(role.to_spec()))
}

/// Creates or replaces an API role.
pub async fn write(
    state: &AppState,
    mount: &str,
    name: &str,
    spec: RoleSpec,
) -> Result<StatusCode, ServerError> {
    state.broker.catalog().put_role(mount, name, spec).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Deletes an API role (missing is not an error, as in Vault).
pub async fn delete(state: &AppState, mount: &str, name: &str) -> Result<StatusCode, ServerError> {
    state.broker.catalog().delete_role(mount, name).await?;
    Ok(StatusCode::NO_CONTENT)
}
