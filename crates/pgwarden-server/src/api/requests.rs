//! `pgwarden/requests…`: make, list, read, decide and withdraw access requests, and read the
//! credential of an approved one.

use super::caller::Caller;
use super::respond;
use super::{AppState, AuditNote};
use crate::error::ServerError;
use axum::Json;
use axum::response::Response;
use pgwarden_core::wire::{DecisionBody, RequestCreate, RequestList, RequestView, SecretResponse};
use pgwarden_core::{AccessRequest, RequestState};
use std::collections::HashMap;

/// A request as callers see it.
fn view(state: &AppState, request: AccessRequest) -> RequestView {
    RequestView {
        approvals_required: state.requests.approvals_required(&request),
        role: request.role_path(),
        id: request.id,
        state: request.state,
        requester: request.requester,
        reason: request.reason,
        ttl: request.ttl,
        subjects: request.subjects,
        created: request.created_at,
        expires: request.expires_at,
        approvals: request.approvals,
        denial: request.denial,
        withdrawal: request.withdrawal,
        lease_id: request.lease_id,
    }
}

/// What a request's audit record says about its state after a change.
fn outcome(request: &AccessRequest) -> String {
    match (&request.state, &request.lease_id) {
        (RequestState::Approved, Some(lease)) => format!("approved; lease {lease} issued"),
        (RequestState::Withdrawn, Some(lease)) => format!("withdrawn; lease {lease} revoked"),
        (state, _) => state.as_str().to_string(),
    }
}

/// `POST pgwarden/requests`: asks for a role that needs approval.
pub async fn create(
    state: &AppState,
    caller: &Caller,
    body: RequestCreate,
) -> Result<Response, ServerError> {
    let request = state.requests.create(&caller.asker(), body).await?;
    let (id, detail) = (request.id.clone(), request.role_path());
    Ok(AuditNote::about(id, detail).on(respond::ok(view(state, request))))
}

/// `GET pgwarden/requests[?state=…]`: the requests the caller may see, newest first.
pub async fn list(
    state: &AppState,
    caller: &Caller,
    query: &HashMap<String, String>,
) -> Result<Json<SecretResponse<RequestList>>, ServerError> {
    let wanted = match query.get("state") {
        None => None,
        Some(name) => Some(RequestState::parse(name).ok_or_else(|| {
            ServerError::BadRequest(format!(
                "state {name:?} must be one of pending, approved, denied, withdrawn, expired"
            ))
        })?),
    };
    let requests = state.requests.list(&caller.asker(), wanted).await?;
    Ok(respond::ok(RequestList {
        requests: requests.into_iter().map(|r| view(state, r)).collect(),
    }))
}

/// `GET pgwarden/requests/<id>`.
pub async fn read(
    state: &AppState,
    caller: &Caller,
    id: &str,
) -> Result<Json<SecretResponse<RequestView>>, ServerError> {
    let request = state.requests.get(&caller.asker(), id).await?;
    Ok(respond::ok(view(state, request)))
}

/// `POST pgwarden/requests/<id>/approve` or `…/deny`.
pub async fn decide(
    state: &AppState,
    caller: &Caller,
    id: &str,
    approve: bool,
    body: DecisionBody,
) -> Result<Response, ServerError> {
    let asker = caller.asker();
    let request = if approve {
        state.requests.approve(&asker, id, &body.reason).await?
    } else {
        state.requests.deny(&asker, id, &body.reason).await?
    };
    let detail = match body.reason.as_str() {
        "" => outcome(&request),
        reason => format!("{}; reason: {reason}", outcome(&request)),
    };
    Ok(AuditNote::about(id, detail).on(respond::ok(view(state, request))))
}

/// `DELETE pgwarden/requests/<id>`: withdraws it, revoking its credential.
pub async fn withdraw(
    state: &AppState,
    caller: &Caller,
    id: &str,
) -> Result<Response, ServerError> {
    let (request, failure) = state.requests.withdraw(&caller.asker(), id).await?;
    let detail = match &failure {
        Some(failure) => failure.clone(),
        None => outcome(&request),
    };
    let response = respond::envelope(view(state, request)).with_warning(failure);
    Ok(AuditNote::about(id, detail).on(Json(response)))
}

/// `GET pgwarden/requests/<id>/creds`: the approved credential, for the request's subjects.
pub async fn creds(state: &AppState, caller: &Caller, id: &str) -> Result<Response, ServerError> {
    let issued = state.requests.credential(&caller.asker(), id).await?;
    let detail = format!("lease {}", issued.lease_id);
    let response = respond::envelope(issued.credential).with_lease(&issued.lease_id, issued.ttl);
    Ok(AuditNote::about(id, detail).on(Json(response)))
}
