//! `pgwarden operator`: three controllers (kube-rs runtime: watches, finalizers, requeues)
//! that keep the broker and the cluster in step with the custom resources.
//!
//! - [`connections`]: a `PostgresConnection` becomes broker connection `k8s.<ns>.<name>`.
//! - [`roles`]: a `PostgresRole` becomes broker role `k8s.<ns>.<name>`.
//! - [`requests`]: a `DatabaseAccessRequest` becomes a broker access request; once approved,
//!   a Secret with a working credential that only the request's subjects may read, renewed
//!   while the request lives and revoked when it goes.

mod conditions;
mod connections;
mod error;
mod leader;
mod metrics;
mod requests;
mod restart;
mod roles;
mod secret;

pub use error::OperatorError;
pub use metrics::{Metrics, serve as serve_metrics};
pub use restart::{RESTART_ANNOTATION, RESTARTED_AT};

use futures::StreamExt;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::watcher;
use kube::{Api, Resource};
use std::sync::Arc;
use std::time::Duration;

/// The finalizer the operator puts on every resource it manages.
pub const FINALIZER: &str = "pgwarden.io/cleanup";

/// Label on what the operator creates (Secrets, Roles, RoleBindings).
pub const MANAGED_BY: (&str, &str) = ("app.kubernetes.io/managed-by", "pgwarden-operator");

/// How the operator reaches the broker.
pub struct Settings {
    /// The broker's API client, signed in with the root token (definitions are root's).
    pub broker: pgwarden_client::Client,
    /// The broker's secrets mount the resources live in (default `database`).
    pub mount: String,
    /// How often a pending request is looked at again.
    pub poll: Duration,
    /// How often an approved request is looked at again (a withdrawal in pgwarden is seen
    /// within this).
    pub recheck: Duration,
    /// The name events are reported under (the Deployment's).
    pub reporter: String,
    /// The namespace of the leader Lease (the operator's own).
    pub lease_namespace: String,
    /// This replica's name in the leader election (its pod's).
    pub identity: String,
    /// What the broker puts before the subjects a request names.
    pub subject_prefixes: SubjectPrefixes,
}

/// The `subject_prefix` (as put before subjects: `eu/`, or empty) of the broker's auth mounts
/// the subjects of this cluster's requests log in through.
#[derive(Debug, Clone, Default)]
pub struct SubjectPrefixes {
    /// The Kubernetes mount of this cluster's service accounts.
    pub service_accounts: String,
    /// The jwt mount of people and their groups.
    pub people: String,
}

/// Why [`run`] returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stopped {
    /// The shutdown future completed.
    Shutdown,
    /// Another replica holds the leader Lease now (or it could not be renewed in time).
    LostLeadership,
}

/// What every reconciliation shares.
pub struct Context {
    /// The Kubernetes API.
    pub kube: kube::Client,
    /// The broker and how to reach it.
    pub settings: Settings,
    /// Publishes Kubernetes Events.
    pub recorder: Recorder,
    /// Counters served on `/metrics`.
    pub metrics: Metrics,
}

/// The broker's name for resource `name` of namespace `namespace`.
pub fn broker_name(namespace: &str, name: &str) -> String {
    format!("k8s.{namespace}.{name}")
}

/// The namespace of a namespaced resource (every pgwarden resource is).
fn namespace_of<K: Resource>(object: &K) -> Result<String, OperatorError> {
    object
        .meta()
        .namespace
        .clone()
        .ok_or_else(|| OperatorError::Invalid("the resource has no namespace".into()))
}

/// Reconciles `object` under the operator's finalizer: `reconcile` gets the finalizer's
/// event (apply, or clean up before deletion), the namespace and the resource's API; a
/// success clears the object's failure count.
async fn finalized<K, F, Fut>(
    object: Arc<K>,
    context: &Context,
    reconcile: F,
) -> Result<Action, OperatorError>
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + serde::Serialize
        + std::fmt::Debug,
    F: FnOnce(kube::runtime::finalizer::Event<K>, String, Api<K>) -> Fut,
    Fut: std::future::Future<Output = Result<Action, OperatorError>>,
{
    let namespace = namespace_of(object.as_ref())?;
    let api: Api<K> = Api::namespaced(context.kube.clone(), &namespace);
    let key = key_of(object.as_ref());
    let action = kube::runtime::finalizer::finalizer(&api, FINALIZER, object, |event| {
        reconcile(event, namespace, api.clone())
    })
    .await
    .map_err(OperatorError::from_finalizer)?;
    context.metrics.succeeded(&key);
    Ok(action)
}

/// The `Ready` condition of a connection or role after writing broker `what` `name`.
fn ready(
    what: &str,
    name: &str,
    outcome: &Result<(), OperatorError>,
) -> conditions::Observed<'static> {
    match outcome {
        Ok(()) => conditions::Observed {
            type_: "Ready",
            status: true,
            reason: "Written",
            message: format!("broker {what} {name} is up to date"),
        },
        Err(error) => conditions::Observed {
            type_: "Ready",
            status: false,
            reason: match error {
                OperatorError::Invalid(_) => "InvalidSpec",
                _ => "BrokerRefused",
            },
            message: error.to_string(),
        },
    }
}

/// Records `ready` and the broker's `name` in the status of a connection or role, whose
/// status was `previous`.
async fn record_ready<K>(
    api: &Api<K>,
    object: &K,
    previous: Option<&crate::DefinitionStatus>,
    name: &str,
    ready: conditions::Observed<'_>,
) -> Result<(), OperatorError>
where
    K: Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let previous = previous.map_or(&[][..], |p| p.conditions.as_slice());
    let status = crate::DefinitionStatus {
        conditions: conditions::with(previous, ready, object.meta().generation),
        broker_name: Some(name.to_string()),
    };
    let patch = serde_json::json!({ "status": status });
    api.patch_status(
        object.meta().name.as_deref().unwrap_or_default(),
        &kube::api::PatchParams::default(),
        &kube::api::Patch::Merge(patch),
    )
    .await?;
    Ok(())
}

/// `Kind/namespace/name`, as logs and failure counts name an object.
fn key_of<K: Resource<DynamicType = ()>>(object: &K) -> String {
    format!(
        "{}/{}/{}",
        K::kind(&()),
        object.meta().namespace.as_deref().unwrap_or(""),
        object.meta().name.as_deref().unwrap_or("")
    )
}

/// What to do after a failed reconciliation: try again, later each time (5 s doubling to
/// 5 min), per object; a deletion waiting on something else looks again every 5 s.
fn retry_later<K: Resource<DynamicType = ()>>(
    object: Arc<K>,
    error: &OperatorError,
    context: Arc<Context>,
) -> Action {
    let key = key_of(object.as_ref());
    match error {
        OperatorError::Waiting(why) => {
            tracing::info!(object = key, why, "waiting");
            return Action::requeue(Duration::from_secs(5));
        }
        // Counted, logged and published where it happened.
        OperatorError::RenewalFailed { retry_in, .. } => return Action::requeue(*retry_in),
        _ => {}
    }
    let failures = context.metrics.failed(&key);
    tracing::warn!(object = key, failures, error = %error, "reconciling failed; retrying");
    let backoff = 5u64.saturating_mul(1 << failures.min(6)).min(300);
    Action::requeue(Duration::from_secs(backoff))
}

/// Runs the three controllers while this replica holds the leader Lease, until `shutdown`
/// completes (handing the Lease back) or the Lease is lost.
pub async fn run(
    kube: kube::Client,
    settings: Settings,
    metrics: Metrics,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + Clone + 'static,
) -> Stopped {
    let leadership = leader::Leadership::new(
        kube.clone(),
        &settings.lease_namespace,
        settings.identity.clone(),
    );
    let since = tokio::select! {
        since = leadership.acquire() => since,
        () = shutdown.clone() => return Stopped::Shutdown,
    };
    tracing::info!(
        identity = settings.identity,
        "holding the leader Lease: reconciling"
    );
    let stopped = tokio::select! {
        () = controllers(kube, settings, metrics, shutdown) => Stopped::Shutdown,
        () = leadership.hold(since) => Stopped::LostLeadership,
    };
    if stopped == Stopped::Shutdown {
        leadership.release().await;
    }
    stopped
}

/// The three controllers, until `shutdown` completes.
async fn controllers(
    kube: kube::Client,
    settings: Settings,
    metrics: Metrics,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + Clone + 'static,
) {
    let recorder = Recorder::new(
        kube.clone(),
        Reporter {
            controller: settings.reporter.clone(),
            instance: Some(settings.identity.clone()),
        },
    );
    let context = Arc::new(Context {
        kube: kube.clone(),
        settings,
        recorder,
        metrics,
    });
    let owned_secrets =
        watcher::Config::default().labels(&format!("{}={}", MANAGED_BY.0, MANAGED_BY.1));
    let requests = Controller::new(
        Api::<crate::DatabaseAccessRequest>::all(kube.clone()),
        watcher::Config::default(),
    )
    .owns(
        Api::<k8s_openapi::api::core::v1::Secret>::all(kube.clone()),
        owned_secrets,
    )
    .graceful_shutdown_on(shutdown.clone())
    .run(requests::reconcile, retry_later, context.clone())
    .for_each(|_| async {});
    let roles = Controller::new(
        Api::<crate::PostgresRole>::all(kube.clone()),
        watcher::Config::default(),
    )
    .graceful_shutdown_on(shutdown.clone())
    .run(roles::reconcile, retry_later, context.clone())
    .for_each(|_| async {});
    let connections = Controller::new(
        Api::<crate::PostgresConnection>::all(kube),
        watcher::Config::default(),
    )
    .graceful_shutdown_on(shutdown)
    .run(connections::reconcile, retry_later, context)
    .for_each(|_| async {});
    futures::join!(requests, roles, connections);
}
