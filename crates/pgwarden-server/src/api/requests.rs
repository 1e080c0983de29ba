//! `pgwarden/requests…`: make, list, read, decide and withdraw access requests, and read the
//! credential of an approved one.

use super::AppState;
use super::caller::Caller;
use super::respond;
use crate::error::ServerError;
use crate::requests::Asker;
use axum::Json;
use pgwarden_core::wire::{
    DbCredential, DecisionBody, RequestCreate, RequestList, RequestView, SecretResponse,
};
use pgwarden_core::{AccessRequest, RequestState};
use std::collections::HashMap;

impl Caller {
    /// The caller as access requests see it.
    pub fn asker(&self) -> Asker {
        match self {
            Caller::Root => Asker {
                subject: "root".into(),
                subjects: vec!["root".into()],
                display_name: "root".into(),
                root: true,
            },
            Caller::Token(token) => Asker {
                subject: token.identity.subject.clone(),
                subjects: token.identity.policy_subjects(),
                display_name: token.identity.display_name.clone(),
                root: false,
            },
        }
    }
}

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

/// `POST pgwarden/requests`: asks for a role that needs approval.
pub async fn create(
    state: &AppState,
    caller: &Caller,
    body: RequestCreate,
) -> Result<Json<SecretResponse<RequestView>>, ServerError> {
    let request = state.requests.create(&caller.asker(), body).await?;
    Ok(respond::ok(view(state, request)))
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
) -> Result<Json<SecretResponse<RequestView>>, ServerError> {
    let asker = caller.asker();
    let request = if approve {
        state.requests.approve(&asker, id, &body.reason).await?
    } else {
        state.requests.deny(&asker, id, &body.reason).await?
    };
    Ok(respond::ok(view(state, request)))
}

/// `DELETE pgwarden/requests/<id>`: withdraws it, revoking its credential.
pub async fn withdraw(
    state: &AppState,
    caller: &Caller,
    id: &str,
) -> Result<Json<SecretResponse<RequestView>>, ServerError> {
    let (request, failure) = state.requests.withdraw(&caller.asker(), id).await?;
    Ok(Json(
        respond::envelope(view(state, request)).with_warning(failure),
    ))
}

/// `GET pgwarden/requests/<id>/creds`: the approved credential, for the request's subjects.
pub async fn creds(
    state: &AppState,
    caller: &Caller,
    id: &str,
) -> Result<Json<SecretResponse<DbCredential>>, ServerError> {
    let issued = state.requests.credential(&caller.asker(), id).await?;
    Ok(Json(
        respond::envelope(issued.credential).with_lease(&issued.lease_id, issued.ttl),
    ))
}
