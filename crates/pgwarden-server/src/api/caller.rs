//! Who is calling, from the token in `X-Vault-Token` or `Authorization: Bearer`, and what they
//! may do: root may do anything; a login token gets what policy grants and its own leases only.

use super::AppState;
use super::routes::Access;
use crate::error::ServerError;
use crate::metrics::DenialLabels;
use crate::requests::Asker;
use axum::http::{HeaderMap, header};
use pgwarden_core::{Lease, Owner, TokenRecord, Ttl};
use secrecy::ExposeSecret;
use subtle::ConstantTimeEq;

/// An authenticated caller.
pub enum Caller {
    /// The root token.
    Root,
    /// A token issued at login.
    Token(Box<TokenRecord>),
}

fn token_from(headers: &HeaderMap) -> Option<&str> {
    headers
        .get("x-vault-token")
        .and_then(|v| v.to_str().ok())
        .or_else(|| {
            headers
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "))
        })
}

/// A caller let through a route's access check, with the TTL cap its grant sets.
pub struct Admitted {
    /// Who is calling.
    pub caller: Caller,
    /// The policy grant's cap on lease TTLs, for routes checked against policy.
    pub cap: Option<Ttl>,
}

/// Checks `access` for an authenticated caller (`what` names the request in logs).
pub fn admit(
    state: &AppState,
    caller: Caller,
    access: Access<'_>,
    what: &str,
) -> Result<Admitted, ServerError> {
    let cap = match access {
        Access::Anyone | Access::AnyToken => None,
        Access::Root => {
            caller.require_root(state, what)?;
            None
        }
        Access::Policy { mount, path } => caller.authorize(state, mount, path)?,
        Access::StaticCreds { mount, name } => {
            caller.authorize_static(state, mount, name)?;
            None
        }
    };
    Ok(Admitted { caller, cap })
}

/// Checks the request's token: the root token (compared in constant time) or a live login token.
pub async fn authenticate(state: &AppState, headers: &HeaderMap) -> Result<Caller, ServerError> {
    let token = token_from(headers).ok_or(ServerError::PermissionDenied)?;
    if bool::from(
        token
            .as_bytes()
            .ct_eq(state.root_token.expose_secret().as_bytes()),
    ) {
        return Ok(Caller::Root);
    }
    let record = state.tokens.authenticate(token).await?;
    if !state
        .logins
        .still_names(&record.mount, &record.identity.subject_prefix)
    {
        // Its mount was removed, or given another subject prefix: the token's subjects are
        // no longer what that mount makes. Its caller logs in again.
        return Err(ServerError::PermissionDenied);
    }
    Ok(Caller::Token(Box::new(record)))
}

impl Caller {
    /// The owner recorded on leases this caller creates.
    pub fn owner(&self) -> Owner {
        match self {
            Caller::Root => Owner::root(),
            Caller::Token(t) => Owner {
                display_name: t.identity.display_name.clone(),
                subject: t.identity.subject.clone(),
                token_accessor: Some(t.accessor.clone()),
            },
        }
    }

    /// The caller's subject (`root` for the root token), as the audit log names it.
    pub fn subject(&self) -> &str {
        match self {
            Caller::Root => "root",
            Caller::Token(t) => &t.identity.subject,
        }
    }

    fn deny(&self, state: &AppState, reason: &'static str, what: &str) -> ServerError {
        state
            .metrics
            .denials
            .get_or_create(&DenialLabels { reason })
            .inc();
        tracing::warn!(target: "pgwarden::audit", subject = self.subject(), reason, what, "permission denied");
        ServerError::PermissionDenied
    }

    /// Only the root token may do this.
    fn require_root(&self, state: &AppState, what: &str) -> Result<(), ServerError> {
        match self {
            Caller::Root => Ok(()),
            Caller::Token(_) => Err(self.deny(state, "root_only", what)),
        }
    }

    /// Whether policy lets this caller read static role `name`'s password on `mount`.
    fn authorize_static(
        &self,
        state: &AppState,
        mount: &str,
        name: &str,
    ) -> Result<(), ServerError> {
        let Caller::Token(token) = self else {
            return Ok(());
        };
        let subjects = token.identity.policy_subjects();
        if state.policy.get().allows_static(&subjects, mount, name) {
            Ok(())
        } else {
            Err(self.deny(state, "policy", &format!("{mount}/static-creds/{name}")))
        }
    }

    /// Whether policy lets this caller read `<mount>/<path>`; returns the grant's TTL cap.
    fn authorize(
        &self,
        state: &AppState,
        mount: &str,
        path: &str,
    ) -> Result<Option<Ttl>, ServerError> {
        let Caller::Token(token) = self else {
            return Ok(None);
        };
        let policy = state.policy.get();
        let subjects = token.identity.policy_subjects();
        match policy.allows(&subjects, mount, path) {
            Some(allowed) => Ok(allowed.max_ttl),
            None if policy
                .allows_with_approval(&subjects, mount, path)
                .is_some() =>
            {
                self.deny(state, "approval_required", &format!("{mount}/{path}"));
                Err(ServerError::Forbidden(format!(
                    "{mount}/{path} is granted only through an approved access request: \
                     pgwarden request create {mount}/{path} --reason \"…\" \
                     (POST /v1/pgwarden/requests)"
                )))
            }
            None => Err(self.deny(state, "policy", &format!("{mount}/{path}"))),
        }
    }

    /// Only the lease's owner (same subject) or root may touch it.
    pub fn require_owner(&self, state: &AppState, lease: &Lease) -> Result<(), ServerError> {
        match self {
            Caller::Root => Ok(()),
            Caller::Token(t) if t.identity.subject == lease.owner.subject => Ok(()),
            Caller::Token(_) => Err(self.deny(state, "not_owner", &lease.id)),
        }
    }

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
