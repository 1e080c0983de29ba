//! Vault's response shapes: the envelope around data, the error body, empty successes.

use crate::error::ServerError;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

/// Vault's response envelope with `data` and, optionally, a lease and warnings.
pub fn envelope(
    data: Value,
    lease: Option<(&str, u64)>,
    warnings: Option<Vec<String>>,
) -> Response {
    (
        StatusCode::OK,
        axum::Json(envelope_value(data, lease, warnings)),
    )
        .into_response()
}

/// The envelope as JSON, for responses that add to it (login's `auth`).
pub fn envelope_value(
    data: Value,
    lease: Option<(&str, u64)>,
    warnings: Option<Vec<String>>,
) -> Value {
    let (lease_id, lease_duration, renewable) = match lease {
        Some((id, ttl)) => (id, ttl, true),
        None => ("", 0, false),
    };
    json!({
        "request_id": uuid::Uuid::new_v4().to_string(),
        "lease_id": lease_id,
        "renewable": renewable,
        "lease_duration": lease_duration,
        "data": data,
        "wrap_info": null,
        "warnings": warnings,
        "auth": null,
    })
}

/// An empty response with `status` (204 for writes, 202 for queued work).
pub fn empty(status: StatusCode) -> Response {
    status.into_response()
}

/// Vault's error body `{"errors": [message]}` with the error's status.
pub fn error(e: &ServerError) -> Response {
    let status = StatusCode::from_u16(e.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let body = json!({ "errors": [e.to_string()] });
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

/// Vault's answer to a LIST with nothing under it: 404 with an empty error list.
pub fn empty_list() -> Response {
    (StatusCode::NOT_FOUND, axum::Json(json!({ "errors": [] }))).into_response()
}

/// Vault's LIST answer.
pub fn keys(keys: Vec<String>) -> Response {
    if keys.is_empty() {
        return empty_list();
    }
    envelope(json!({ "keys": keys }), None, None)
}
