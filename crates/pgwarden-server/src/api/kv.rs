//! `<kv-mount>/<path>`: Vault KV v1 reads of the configuration's `settings:` section.

use super::AppState;
use super::respond;
use crate::error::ServerError;
use axum::Json;
use pgwarden_core::wire::SecretResponse;
use serde_json::Value;
use std::collections::BTreeMap;

/// The key/value pairs at `<mount>/<path>` (policy was checked before: no probing).
pub fn read<'s>(
    state: &'s AppState,
    mount: &str,
    path: &str,
) -> Result<Json<SecretResponse<&'s BTreeMap<String, Value>>>, ServerError> {
    let full = format!("{mount}/{path}");
    let data = state
        .settings
        .get(mount)
        .ok_or_else(|| ServerError::NotFound(format!("no handler for path {full:?}")))?
        .get(path)
        .ok_or_else(|| ServerError::NotFound(format!("no settings at {full:?}")))?;
    Ok(respond::ok(data))
}
