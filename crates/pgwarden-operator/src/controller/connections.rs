//! `PostgresConnection` → broker connection `k8s.<ns>.<name>`, its administrator's password
//! read from the Secret it names; deleted from the broker when the resource goes.

use super::{Context, OperatorError, broker_name};
use crate::PostgresConnection;
use k8s_openapi::api::core::v1::Secret;
use kube::runtime::controller::Action;
use kube::runtime::finalizer::Event;
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
    let context = context.as_ref();
    super::finalized(connection, context, |event, namespace, api| async move {
        match event {
            Event::Apply(connection) => apply(&api, &connection, &namespace, context).await,
            Event::Cleanup(connection) => {
                let name = broker_name(&namespace, &connection.name_any());
                let path = format!("{}/config/{name}", context.settings.mount);
                context.settings.broker.delete(&path).await?;
                Ok(Action::await_change())
            }
        }
    })
    .await
}

async fn apply(
    api: &Api<PostgresConnection>,
    connection: &PostgresConnection,
    namespace: &str,
    context: &Context,
) -> Result<Action, OperatorError> {
    let name = broker_name(namespace, &connection.name_any());
    let outcome = write(connection, namespace, &name, context).await;
    let ready = super::ready("connection", &name, &outcome);
    super::record_ready(api, connection, connection.status.as_ref(), &name, ready).await?;
    match outcome {
        Ok(()) => Ok(Action::requeue(RESYNC)),
        // A refusal waits for a change of the spec, or the resync: a Secret created after
        // the resource (GitOps, ExternalSecrets) is read then.
        Err(OperatorError::Invalid(_)) => Ok(Action::requeue(RESYNC)),
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
