//! Login and the token's own endpoints: `auth/<mount>/login`, `auth/token/lookup-self`,
//! `renew-self`, `revoke-self` and root's `revoke-accessor`.

use super::caller::Caller;
use super::respond;
use super::{AppState, AuditNote};
use crate::error::ServerError;
use crate::metrics::LoginLabels;
use axum::Json;
use axum::http::StatusCode;
use axum::response::Response;
use pgwarden_core::wire::{
    AuthBlock, LoginBody, RenewSelfBody, RevokeAccessorBody, SecretResponse, TokenLookup,
};
use pgwarden_core::{TokenRecord, Ttl};
use secrecy::{ExposeSecret, SecretString};
use time::OffsetDateTime;

/// A login or token renewal answer: no data, the token in `auth`.
type AuthResponse = Json<SecretResponse<()>>;

fn seconds_left(record: &TokenRecord) -> u64 {
    Ttl::between(OffsetDateTime::now_utc(), record.expires_at).as_secs()
}

/// Vault's `auth` block of a login (with the token) or renewal (without) response.
fn auth_response(
    token: Option<SecretString>,
    record: &TokenRecord,
    lease_duration: Ttl,
    warning: Option<String>,
) -> AuthResponse {
    let mut response = respond::envelope(()).with_warning(warning);
    response.auth = Some(AuthBlock {
        client_token: token,
        accessor: record.accessor.clone(),
        policies: vec!["default".into()],
        token_policies: vec!["default".into()],
        metadata: record.identity.metadata.clone(),
        lease_duration: lease_duration.as_secs(),
        renewable: true,
        entity_id: record.identity.subject.clone(),
        token_type: "service".into(),
        orphan: true,
    });
    Json(response)
}

/// Verifies the login token and issues a pgwarden token; the audit record names who logged
/// in and the new token's accessor.
pub async fn login(
    state: &AppState,
    mount: &str,
    body: LoginBody,
) -> Result<Response, ServerError> {
    if !state.logins.has_mount(mount) {
        return Err(ServerError::NotFound(format!("no auth mount {mount:?}")));
    }
    let result = state
        .logins
        .login(mount, &body.role, body.jwt.expose_secret())
        .await;
    let label = result.as_ref().map_or_else(|e| e.label(), |_| "ok");
    state
        .metrics
        .logins
        .get_or_create(&LoginLabels {
            mount: mount.to_string(),
            result: label,
        })
        .inc();
    let logged_in = result.inspect_err(|error| {
        tracing::warn!(target: "pgwarden::audit", mount, role = %body.role, reason = error.label(), %error, "login refused");
    })?;
    let (token, record) = state
        .tokens
        .issue(
            logged_in.identity,
            mount,
            &body.role,
            logged_in.ttl,
            logged_in.max_ttl,
        )
        .await?;
    tracing::info!(target: "pgwarden::audit", mount, role = %body.role, subject = %record.identity.subject, accessor = %record.accessor, "login");
    let note = AuditNote {
        actor: Some(record.identity.subject.clone()),
        ..AuditNote::about(
            format!("auth/{mount}/login"),
            format!("role {}, token accessor {}", body.role, record.accessor),
        )
    };
    Ok(note.on(auth_response(Some(token), &record, record.ttl, None)))
}

/// `groups` sorted, for an answer that does not depend on the identity provider's order.
fn sorted(groups: &[String]) -> Vec<String> {
    let mut groups = groups.to_vec();
    groups.sort();
    groups
}

/// What the caller's own token is.
pub fn lookup_self(caller: &Caller) -> Json<SecretResponse<TokenLookup>> {
    let lookup = match caller {
        Caller::Root => TokenLookup {
            accessor: "root".into(),
            display_name: "root".into(),
            entity_id: None,
            policies: vec!["root".into()],
            meta: None,
            path: None,
            issue_time: None,
            expire_time: None,
            ttl: 0,
            renewable: false,
            token_type: "service".into(),
            groups: Vec::new(),
        },
        Caller::Token(t) => TokenLookup {
            accessor: t.accessor.clone(),
            display_name: t.identity.display_name.clone(),
            entity_id: Some(t.identity.subject.clone()),
            policies: vec!["default".into()],
            meta: Some(t.identity.metadata.clone()),
            path: Some(format!("auth/{}/login", t.mount)),
            issue_time: Some(respond::rfc3339(t.issued_at)),
            expire_time: Some(respond::rfc3339(t.expires_at)),
            ttl: seconds_left(t),
            renewable: OffsetDateTime::now_utc() < t.max_expires_at,
            token_type: "service".into(),
            groups: sorted(&t.identity.groups),
        },
    };
    respond::ok(lookup)
}

/// Extends the caller's token, never past its max TTL.
pub async fn renew_self(
    state: &AppState,
    caller: &Caller,
    body: RenewSelfBody,
) -> Result<AuthResponse, ServerError> {
    let Caller::Token(record) = caller else {
        return Err(ServerError::BadRequest(
            "the root token does not expire and cannot be renewed".into(),
        ));
    };
    let mut record = TokenRecord::clone(record);
    let renewal = state
        .tokens
        .renew(&mut record, body.increment.unwrap_or_default())
        .await?;
    Ok(auth_response(None, &record, renewal.ttl, renewal.warning()))
}

/// Revokes a token and every lease it created (a logout).
async fn revoke_token(state: &AppState, accessor: &str) -> Result<StatusCode, ServerError> {
    let leases = state.broker.revoke_token(accessor).await?;
    tracing::info!(target: "pgwarden::audit", accessor, leases, "token revoked");
    Ok(StatusCode::NO_CONTENT)
}

/// Revokes the caller's own token and its leases.
pub async fn revoke_self(state: &AppState, caller: &Caller) -> Result<StatusCode, ServerError> {
    match caller {
        Caller::Root => Err(ServerError::BadRequest(
            "the root token cannot be revoked through the API".into(),
        )),
        Caller::Token(record) => revoke_token(state, &record.accessor).await,
    }
}

/// Root revokes the token with the given accessor and its leases.
pub async fn revoke_accessor(
    state: &AppState,
    body: RevokeAccessorBody,
) -> Result<StatusCode, ServerError> {
    state.tokens.by_accessor(&body.accessor).await?;
    revoke_token(state, &body.accessor).await
}
