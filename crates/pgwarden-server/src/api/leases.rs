//! `sys/leases/*`: renew, revoke, revoke by prefix, look up and list leases.

use super::caller::Caller;
use super::respond;
use super::{AppState, AuditNote};
use crate::error::ServerError;
use axum::Json;
use axum::http::StatusCode;
use axum::response::Response;
use pgwarden_core::wire::{LeaseLookup, LookupBody, RenewBody, RevokeBody, SecretResponse};
use pgwarden_core::{AuditEvent, Lease, LeaseState};

/// The lease id from the path or, failing that, the body.
fn lease_id(from_path: Option<String>, from_body: Option<String>) -> Result<String, ServerError> {
    let id = from_path
        .or(from_body)
        .filter(|id| !id.is_empty())
        .ok_or_else(|| ServerError::BadRequest("lease_id is required".into()))?;
    if id.chars().any(char::is_control) {
        return Err(ServerError::BadRequest(
            "lease_id contains a control character".into(),
        ));
    }
    Ok(id)
}

/// The lease `id`, if the caller owns it (or is root).
async fn owned_lease(state: &AppState, caller: &Caller, id: &str) -> Result<Lease, ServerError> {
    let lease = state.broker.lookup(id).await?;
    caller.require_owner(state, &lease)?;
    Ok(lease)
}

/// Extends a lease, never past its max TTL (a warning says when that cut it short).
pub async fn renew(
    state: &AppState,
    caller: &Caller,
    id: Option<String>,
    body: RenewBody,
) -> Result<Response, ServerError> {
    let id = lease_id(id, body.lease_id)?;
    owned_lease(state, caller, &id).await?;
    let renewed = state
        .broker
        .renew(&id, body.increment.unwrap_or_default())
        .await?;
    let detail = format!("{}s left", renewed.ttl.as_secs());
    let response = respond::envelope(())
        .with_lease(&renewed.lease.id, renewed.ttl)
        .with_warning(renewed.warning);
    Ok(AuditNote::about(id, detail).on(Json(response)))
}

/// Drops a lease's user now (204), its audit record `started` made durable meanwhile, or
/// queues that (`sync: false`, 202).
pub async fn revoke(
    state: &AppState,
    caller: &Caller,
    id: Option<String>,
    body: RevokeBody,
    started: AuditEvent,
) -> Result<Response, ServerError> {
    let id = lease_id(id, body.lease_id)?;
    owned_lease(state, caller, &id).await?;
    if body.sync == Some(false) {
        state.broker.revoke_later(&id).await?;
        Ok(AuditNote::about(id, "queued").on(StatusCode::ACCEPTED))
    } else {
        let started = AuditEvent {
            object: id.clone(),
            ..started
        };
        state.broker.revoke(&id, Some(started)).await?;
        Ok(AuditNote::about(id, "revoked")
            .after_start()
            .on(StatusCode::NO_CONTENT))
    }
}

/// Revokes every lease under `prefix` (whole path segments).
pub async fn revoke_prefix(state: &AppState, prefix: &str) -> Result<StatusCode, ServerError> {
    state.broker.revoke_prefix(prefix).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// What pgwarden knows of a lease.
pub async fn lookup(
    state: &AppState,
    caller: &Caller,
    body: LookupBody,
) -> Result<Json<SecretResponse<LeaseLookup>>, ServerError> {
    let id = lease_id(None, Some(body.lease_id))?;
    let lease = owned_lease(state, caller, &id).await?;
    let now = time::OffsetDateTime::now_utc();
    Ok(respond::ok(LeaseLookup {
        renewable: lease.state == LeaseState::Active && now < lease.max_expires_at,
        ttl: lease.remaining(now).as_secs(),
        issue_time: respond::rfc3339(lease.issued_at),
        expire_time: respond::rfc3339(lease.expires_at),
        last_renewal: lease.last_renewal.map(respond::rfc3339),
        state: lease.state.as_str().to_string(),
        revocation_reason: lease
            .state
            .revoke_reason()
            .map(|reason| reason.as_str().to_string()),
        revocation_attempts: lease.revoke_attempts,
        last_error: lease.last_error,
        id: lease.id,
    }))
}

/// The lease ids and folders directly under `prefix`.
pub async fn list(state: &AppState, prefix: &str) -> Result<Response, ServerError> {
    Ok(respond::keys(state.broker.list(prefix).await?))
}
