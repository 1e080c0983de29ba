//! `PostgresRole` → broker role `k8s.<ns>.<name>` on connection `k8s.<ns>.<databaseRef>`.
//! Deleting the resource deletes the role once no lease of it is live; until then the
//! deletion waits and the status says why.

use super::conditions::Observed;
use super::{Context, OperatorError, broker_name};
use crate::PostgresRole;
use kube::runtime::controller::Action;
use kube::runtime::finalizer::Event;
use kube::{Api, ResourceExt};
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::Duration;

/// How often a role is written again.
const RESYNC: Duration = Duration::from_secs(300);

/// Reconciles one `PostgresRole`.
pub async fn reconcile(
    role: Arc<PostgresRole>,
    context: Arc<Context>,
) -> Result<Action, OperatorError> {
    let context = context.as_ref();
    super::finalized(role, context, |event, namespace, api| async move {
        match event {
            Event::Apply(role) => apply(&api, &role, &namespace, context).await,
            Event::Cleanup(role) => cleanup(&api, &role, &namespace, context).await,
        }
    })
    .await
}

/// The broker role definition of `role`.
fn definition(role: &PostgresRole, namespace: &str) -> Value {
    let spec = &role.spec;
    let mut body = json!({ "db_name": broker_name(namespace, &spec.database_ref.name) });
    let mut set = |field: &str, value: Value| body[field] = value;
    if let Some(preset) = spec.preset {
        set("preset", json!(preset));
        if !spec.schemas.is_empty() {
            set("schemas", json!(spec.schemas));
        }
    }
    if !spec.creation_statements.is_empty() {
        set("creation_statements", json!(spec.creation_statements));
    }
    if !spec.revocation_statements.is_empty() {
        set("revocation_statements", json!(spec.revocation_statements));
    }
    if let Some(ttl) = &spec.default_ttl {
        set("default_ttl", json!(ttl));
    }
    if let Some(ttl) = &spec.max_ttl {
        set("max_ttl", json!(ttl));
    }
    body
}

async fn apply(
    api: &Api<PostgresRole>,
    role: &PostgresRole,
    namespace: &str,
    context: &Context,
) -> Result<Action, OperatorError> {
    let name = broker_name(namespace, &role.name_any());
    let path = format!("{}/roles/{name}", context.settings.mount);
    let outcome = context
        .settings
        .broker
        .write(&path, definition(role, namespace))
        .await
        .map_err(OperatorError::from);
    let ready = super::ready("role", &name, &outcome);
    super::record_ready(api, role, role.status.as_ref(), &name, ready).await?;
    match outcome {
        Ok(()) => Ok(Action::requeue(RESYNC)),
        // A refusal (bad statements, unknown connection) waits for a change of the spec,
        // or the resync; an unreachable broker is retried with backoff.
        Err(OperatorError::Broker(error)) if error.is_transient() => Err(error.into()),
        Err(_) => Ok(Action::requeue(RESYNC)),
    }
}

/// Deletes the broker role when none of its leases is live; else says so in the status and
/// looks again later.
async fn cleanup(
    api: &Api<PostgresRole>,
    role: &PostgresRole,
    namespace: &str,
    context: &Context,
) -> Result<Action, OperatorError> {
    let name = broker_name(namespace, &role.name_any());
    let mount = &context.settings.mount;
    let leases = context
        .settings
        .broker
        .list_leases_recursive(&format!("{mount}/creds/{name}/"))
        .await?;
    if !leases.is_empty() {
        let waiting = Observed {
            type_: "Ready",
            status: false,
            reason: "LeasesExist",
            message: format!(
                "deletion waits: {} lease(s) of {name} are live; delete the \
                 DatabaseAccessRequests using this role (or revoke the leases) first",
                leases.len()
            ),
        };
        super::record_ready(api, role, role.status.as_ref(), &name, waiting).await?;
        return Err(OperatorError::Waiting(format!(
            "role {name} still has {} live lease(s)",
            leases.len()
        )));
    }
    context
        .settings
        .broker
        .delete(&format!("{mount}/roles/{name}"))
        .await?;
    Ok(Action::await_change())
}
