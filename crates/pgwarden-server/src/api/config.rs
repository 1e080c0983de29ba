//! `<mount>/config[/<name>]`: the mount's database connections (root only).

use super::AppState;
use super::respond;
use crate::catalog::Source;
use crate::error::ServerError;
use axum::Json;
use axum::http::StatusCode;
use axum::response::Response;
use pgwarden_core::connection::{POSTGRES_PLUGIN, take_url_password};
use pgwarden_core::wire::{ConnectionDetails, ConnectionInfo, ConnectionWrite, SecretResponse};

/// The connection names of `mount`.
pub fn list(state: &AppState, mount: &str) -> Result<Response, ServerError> {
    state.broker.catalog().ensure_fresh()?;
    Ok(respond::keys(
        state.broker.catalog().connection_names(mount)?,
    ))
}

/// A connection as the API shows it: never its password.
pub fn read(
    state: &AppState,
    mount: &str,
    name: &str,
) -> Result<Json<SecretResponse<ConnectionInfo>>, ServerError> {
    state.broker.catalog().ensure_fresh()?;
    let entry = state.broker.catalog().connection(mount, name)?;
    let def = entry.def;
    Ok(respond::ok(ConnectionInfo {
        plugin_name: POSTGRES_PLUGIN.into(),
        connection_details: ConnectionDetails {
            connection_url: take_url_password(&def.connection_url).0,
            username: def.username,
        },
        allowed_roles: def.allowed_roles,
        verify_connection: def.verify_connection,
        password_policy: String::new(),
        root_credentials_rotate_statements: Vec::new(),
        source: match entry.source {
            Source::File => "file",
            Source::Api => "api",
        }
        .into(),
    }))
}

/// Creates or updates an API connection.
pub async fn write(
    state: &AppState,
    mount: &str,
    name: &str,
    body: ConnectionWrite,
) -> Result<StatusCode, ServerError> {
    state
        .broker
        .catalog()
        .put_connection(mount, name, body)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Gives an API connection's administrator a new password that only pgwarden knows.
pub async fn rotate_root(
    state: &AppState,
    mount: &str,
    name: &str,
) -> Result<StatusCode, ServerError> {
    state.broker.catalog().rotate_root(mount, name).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Deletes an API connection no lease uses.
pub async fn delete(state: &AppState, mount: &str, name: &str) -> Result<StatusCode, ServerError> {
    state
        .broker
        .catalog()
        .delete_connection(mount, name)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}
