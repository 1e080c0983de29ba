//! Login and the token's own endpoints: `auth/<mount>/login`, `auth/token/lookup-self`,
//! `renew-self`, `revoke-self` and root's `revoke-accessor`.

use super::AppState;
use super::caller::Caller;
use super::respond;
use crate::error::ServerError;
use crate::metrics::LoginLabels;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use pgwarden_core::{TokenRecord, Ttl};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde_json::{Value, json};
use time::OffsetDateTime;

/// `POST auth/<mount>/login`.
#[derive(Deserialize)]
pub struct LoginBody {
    role: String,
    jwt: String,
}

/// `POST auth/token/renew-self`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RenewSelfBody {
    #[serde(default)]
    increment: Option<Ttl>,
}

/// `POST auth/token/revoke-accessor`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RevokeAccessorBody {
    accessor: String,
}

fn seconds_left(record: &TokenRecord) -> u64 {
    Ttl::between(OffsetDateTime::now_utc(), record.expires_at).as_secs()
}

/// Vault's `auth` block of a login or renewal response.
fn auth_response(
    token: Option<&SecretString>,
    record: &TokenRecord,
    lease_duration: Ttl,
    warnings: Option<Vec<String>>,
) -> Response {
    let mut body = respond::envelope_value(Value::Null, None, warnings);
    let auth = json!({
        "client_token": token.map(|t| t.expose_secret().to_string()),
        "accessor": record.accessor,
        "policies": ["default"],
        "token_policies": ["default"],
        "metadata": record.identity.metadata,
        "lease_duration": lease_duration.as_secs(),
        "renewable": true,
        "entity_id": record.identity.subject,
        "token_type": "service",
        "orphan": true,
    });
    if let Some(fields) = body.as_object_mut() {
        fields.insert("auth".into(), auth);
    }
    axum::Json(body).into_response()
}

/// Verifies the login token and issues a pgwarden token.
pub async fn login(
    state: &AppState,
    mount: &str,
    body: LoginBody,
) -> Result<Response, ServerError> {
    if !state.logins.has_mount(mount) {
        return Err(ServerError::NotFound(format!("no auth mount {mount:?}")));
    }
    let result = state.logins.login(mount, &body.role, &body.jwt).await;
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
    let (token, record) = state.tokens.issue(
        logged_in.identity,
        mount,
        &body.role,
        logged_in.ttl,
        logged_in.max_ttl,
    )?;
    tracing::info!(target: "pgwarden::audit", mount, role = %body.role, subject = %record.identity.subject, accessor = %record.accessor, "login");
    Ok(auth_response(Some(&token), &record, record.ttl, None))
}

/// What the caller's own token is.
pub fn lookup_self(caller: &Caller) -> Response {
    let data = match caller {
        Caller::Root => json!({
            "accessor": "root",
            "display_name": "root",
            "policies": ["root"],
            "ttl": 0,
            "expire_time": null,
            "renewable": false,
            "type": "service",
        }),
        Caller::Token(t) => json!({
            "accessor": t.accessor,
            "display_name": t.identity.display_name,
            "entity_id": t.identity.subject,
            "policies": ["default"],
            "meta": t.identity.metadata,
            "path": format!("auth/{}/login", t.mount),
            "issue_time": super::rfc3339(t.issued_at),
            "expire_time": super::rfc3339(t.expires_at),
            "ttl": seconds_left(t),
            "renewable": OffsetDateTime::now_utc() < t.max_expires_at,
            "type": "service",
        }),
    };
    respond::envelope(data, None, None)
}

/// Extends the caller's token, never past its max TTL.
pub fn renew_self(
    state: &AppState,
    caller: Caller,
    body: RenewSelfBody,
) -> Result<Response, ServerError> {
    let Caller::Token(mut record) = caller else {
        return Err(ServerError::BadRequest(
            "the root token does not expire and cannot be renewed".into(),
        ));
    };
    let renewal = state
        .tokens
        .renew(&mut record, body.increment.unwrap_or_default())?;
    let warning = renewal.warning().map(|w| vec![w]);
    Ok(auth_response(None, &record, renewal.ttl, warning))
}

/// Revokes a token and every lease it created (a logout).
async fn revoke_token(state: &AppState, accessor: &str) -> Result<Response, ServerError> {
    state.tokens.revoke(accessor)?;
    let leases = state.broker.revoke_token_leases(accessor).await?;
    tracing::info!(target: "pgwarden::audit", accessor, leases, "token revoked");
    Ok(respond::empty(StatusCode::NO_CONTENT))
}

/// Revokes the caller's own token and its leases.
pub async fn revoke_self(state: &AppState, caller: &Caller) -> Result<Response, ServerError> {
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
) -> Result<Response, ServerError> {
    state.tokens.by_accessor(&body.accessor)?;
    revoke_token(state, &body.accessor).await
}
