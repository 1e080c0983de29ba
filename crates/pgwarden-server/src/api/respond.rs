//! Vault's success shapes: the envelope around `data`, LIST answers, timestamps.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use pgwarden_core::wire::{ErrorBody, KeyList, SecretResponse};
use serde::Serialize;
use time::format_description::well_known::Rfc3339;

/// The envelope around `data`, with a fresh request id.
pub fn ok<T: Serialize>(data: T) -> Json<SecretResponse<T>> {
    Json(envelope(data))
}

/// The envelope itself, for responses that add a lease, warnings or an auth block; its
/// `request_id` is the one the request's audit records carry.
pub fn envelope<T>(data: T) -> SecretResponse<T> {
    SecretResponse::new(crate::audit::request_id(), data)
}

/// Vault's LIST answer; nothing under the prefix is 404 with an empty error list.
pub fn keys(keys: Vec<String>) -> Response {
    if keys.is_empty() {
        return (
            StatusCode::NOT_FOUND,
            Json(ErrorBody { errors: Vec::new() }),
        )
            .into_response();
    }
    ok(KeyList { keys }).into_response()
}

/// A timestamp as Vault writes them.
pub fn rfc3339(t: time::OffsetDateTime) -> String {
    // Only instants past year 9999 fail to format; pgwarden caps dates before that.
    t.format(&Rfc3339)
        .unwrap_or_else(|_| t.unix_timestamp().to_string())
}
