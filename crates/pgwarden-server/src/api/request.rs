//! Reading a request: its operation, its body (size- and time-limited) and the body's JSON.

use super::routes::Op;
use crate::error::ServerError;
use axum::body::{Body, Bytes};
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;
use std::collections::HashMap;
use std::time::Duration;
use tower_http::limit::RequestBodyLimitLayer;

/// Largest request body accepted.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;
/// Time a client has to send a request's body once its headers are in.
const BODY_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// The body limit for every route: a declared length over [`MAX_BODY_BYTES`] is refused before
/// anything is read (a streamed body is cut off at the limit by [`read_body`]).
pub fn body_limit() -> RequestBodyLimitLayer {
    RequestBodyLimitLayer::new(MAX_BODY_BYTES)
}

/// Gives the body limit's 413 Vault's error body.
pub async fn vault_payload_too_large(response: Response) -> Response {
    if response.status() == StatusCode::PAYLOAD_TOO_LARGE {
        return ServerError::PayloadTooLarge(MAX_BODY_BYTES).into_response();
    }
    response
}

/// Vault's operation for `method` (`GET ?list=true` is a LIST).
pub fn operation(method: &Method, query: &HashMap<String, String>) -> Result<Op, ServerError> {
    Ok(match method.as_str() {
        "GET" if query.get("list").is_some_and(|v| v == "true") => Op::List,
        "GET" => Op::Read,
        "PUT" | "POST" => Op::Write,
        "DELETE" => Op::Delete,
        "LIST" => Op::List,
        _ => return Err(ServerError::MethodNotAllowed),
    })
}

/// The body of a write (others carry none), within the size limit and read timeout.
pub async fn read_body(op: Op, body: Body) -> Result<Bytes, ServerError> {
    if op != Op::Write {
        return Ok(Bytes::new());
    }
    tokio::time::timeout(
        BODY_READ_TIMEOUT,
        axum::body::to_bytes(body, MAX_BODY_BYTES),
    )
    .await
    .map_err(|_| {
        ServerError::RequestTimeout(format!(
            "request body not received within {}s",
            BODY_READ_TIMEOUT.as_secs()
        ))
    })?
    .map_err(|_| ServerError::PayloadTooLarge(MAX_BODY_BYTES))
}

/// Parses a JSON body (empty means `{}`), naming what is wrong.
pub fn json<T: DeserializeOwned>(body: &Bytes) -> Result<T, ServerError> {
    let text: &[u8] = if body.iter().all(u8::is_ascii_whitespace) {
        b"{}"
    } else {
        body
    };
    serde_json::from_slice(text)
        .map_err(|e| ServerError::BadRequest(format!("invalid request body: {e}")))
}
