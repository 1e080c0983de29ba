//! `PostgresRole` → broker role `k8s.<ns>.<name>` on connection `k8s.<ns>.<databaseRef>`.
//! Deleting the resource deletes the role once no lease of it is live; until then the
//! deletion waits and the status says why.

use super::conditions::{self, Observed};
use super::{Context, FINALIZER, OperatorError, broker_name, namespace_of};
use crate::{DefinitionStatus, PostgresRole};
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::finalizer::{Event, finalizer};
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
    let namespace = namespace_of(role.as_ref())?;
    let api: Api<PostgresRole> = Api::namespaced(context.kube.clone(), &namespace);
    let key = super::key_of(role.as_ref());
    let action = finalizer(&api, FINALIZER, role, |event| async {
        match event {
            Event::Apply(role) => apply(&role, &namespace, &context).await,
            Event::Cleanup(role) => cleanup(&role, &namespace, &context).await,
        }
    })
    .await
    .map_err(OperatorError::from_finalizer)?;
    context.metrics.succeeded(&key);
    Ok(action)
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
        .await;
    let ready = match &outcome {
        Ok(()) => Observed {
            type_: "Ready",
            status: true,
            reason: "Written",
            message: format!("broker role {name} is up to date"),
        },
        Err(error) => Observed {
            type_: "Ready",
            status: false,
            reason: "BrokerRefused",
            message: error.to_string(),
        },
    };
    set_status(role, namespace, &name, ready, context).await?;
    match outcome {
        Ok(()) => Ok(Action::requeue(RESYNC)),
        // A refusal (bad statements, unknown connection) waits for a change of the spec,
        // or the resync; an unreachable broker is retried with backoff.
        Err(error) if !error.is_transient() => Ok(Action::requeue(RESYNC)),
        Err(error) => Err(error.into()),
    }
}

async fn set_status(
    role: &PostgresRole,
    namespace: &str,
    name: &str,
    ready: Observed<'_>,
    context: &Context,
) -> Result<(), OperatorError> {
    let previous = role.status.clone().unwrap_or_default();
    let status = DefinitionStatus {
        conditions: conditions::with(&previous.conditions, ready, role.metadata.generation),
        broker_name: Some(name.to_string()),
    };
    let api: Api<PostgresRole> = Api::namespaced(context.kube.clone(), namespace);
    api.patch_status(
        &role.name_any(),
        &PatchParams::default(),
        &Patch::Merge(json!({ "status": status })),
    )
    .await?;
    Ok(())
}

/// Deletes the broker role when none of its leases is live; else says so in the status and
/// looks again later.
async fn cleanup(
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
        set_status(role, namespace, &name, waiting, context).await?;
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
