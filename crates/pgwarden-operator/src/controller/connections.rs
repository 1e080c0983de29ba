//! `PostgresConnection` → broker connection `k8s.<ns>.<name>`, its administrator's password
//! read from the Secret it names; deleted from the broker when the resource goes.

use super::conditions::{self, Observed};
use super::{Context, FINALIZER, OperatorError, broker_name, namespace_of};
use crate::{DefinitionStatus, PostgresConnection};
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::finalizer::{Event, finalizer};
use kube::{Api, ResourceExt};
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;

/// How often a connection is written again (its Secret may have changed).
const RESYNC: Duration = Duration::from_secs(300);

/// Reconciles one `PostgresConnection`.
pub async fn reconcile(
    connection: Arc<PostgresConnection>,
    context: Arc<Context>,
) -> Result<Action, OperatorError> {
    let namespace = namespace_of(connection.as_ref())?;
    let api: Api<PostgresConnection> = Api::namespaced(context.kube.clone(), &namespace);
    let key = super::key_of(connection.as_ref());
    let action = finalizer(&api, FINALIZER, connection, |event| async {
        match event {
            Event::Apply(connection) => apply(&connection, &namespace, &context).await,
            Event::Cleanup(connection) => {
                let name = broker_name(&namespace, &connection.name_any());
                let path = format!("{}/config/{name}", context.settings.mount);
                context.settings.broker.delete(&path).await?;
                Ok(Action::await_change())
            }
        }
    })
    .await
    .map_err(OperatorError::from_finalizer)?;
    context.metrics.succeeded(&key);
    Ok(action)
}

async fn apply(
    connection: &PostgresConnection,
    namespace: &str,
    context: &Context,
) -> Result<Action, OperatorError> {
    let name = broker_name(namespace, &connection.name_any());
    let outcome = write(connection, namespace, &name, context).await;
    let ready = match &outcome {
        Ok(()) => Observed {
            type_: "Ready",
            status: true,
            reason: "Written",
            message: format!("broker connection {name} is up to date"),
        },
        Err(error) => Observed {
            type_: "Ready",
            status: false,
            reason: match error {
                OperatorError::Invalid(_) => "InvalidSpec",
                _ => "BrokerRefused",
            },
            message: error.to_string(),
        },
    };
    let previous = connection.status.clone().unwrap_or_default();
    let status = DefinitionStatus {
        conditions: conditions::with(&previous.conditions, ready, connection.metadata.generation),
        broker_name: Some(name),
    };
    let api: Api<PostgresConnection> = Api::namespaced(context.kube.clone(), namespace);
    api.patch_status(
        &connection.name_any(),
        &PatchParams::default(),
        &Patch::Merge(json!({ "status": status })),
    )
    .await?;
    match outcome {
        Ok(()) => Ok(Action::requeue(RESYNC)),
        Err(OperatorError::Invalid(_)) => Ok(Action::await_change()),
        Err(error) => Err(error),
    }
}

/// Writes the broker connection from the resource and its Secret.
async fn write(
    connection: &PostgresConnection,
    namespace: &str,
    name: &str,
    context: &Context,
) -> Result<(), OperatorError> {
    let spec = &connection.spec;
    if spec.rds_iam.is_some() {
        return Err(OperatorError::Invalid(
            "rdsIam connections must be defined in pgwarden's configuration file for now \
             (auth: rds_iam); the broker API takes password connections only"
                .into(),
        ));
    }
    let reference = spec.credentials_secret_ref.as_ref().ok_or_else(|| {
        OperatorError::Invalid("credentialsSecretRef is required (or rdsIam)".into())
    })?;
    let prefix = broker_name(namespace, "");
    if let Some(outside) = spec.allowed_roles.iter().find(|r| !r.starts_with(&prefix)) {
        return Err(OperatorError::Invalid(format!(
            "allowedRoles entry {outside:?} must name roles of this namespace ({prefix}…)"
        )));
    }
    let secrets: Api<Secret> = Api::namespaced(context.kube.clone(), namespace);
    let secret = secrets
        .get_opt(&reference.name)
        .await?
        .ok_or_else(|| OperatorError::Invalid(format!("Secret {:?} not found", reference.name)))?;
    let password = secret
        .data
        .as_ref()
        .and_then(|data| data.get(&reference.key))
        .and_then(|bytes| String::from_utf8(bytes.0.clone()).ok())
        .ok_or_else(|| {
            OperatorError::Invalid(format!(
                "Secret {:?} has no UTF-8 key {:?}",
                reference.name, reference.key
            ))
        })?;
    let allowed_roles = if spec.allowed_roles.is_empty() {
        vec![format!("{prefix}*")]
    } else {
        spec.allowed_roles.clone()
    };
    let definition = json!({
        "plugin_name": "postgresql-database-plugin",
        "connection_url": spec.url,
        "username": spec.username,
        "password": password,
        "allowed_roles": allowed_roles,
        "verify_connection": true,
    });
    let path = format!("{}/config/{name}", context.settings.mount);
    context.settings.broker.write(&path, definition).await?;
    Ok(())
}
