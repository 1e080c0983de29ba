//! Rolling restarts of the workloads that ask for one when their credential changes user
//! (`kubectl rollout restart` does the same: a new pod-template annotation).

use super::OperatorError;
use k8s_openapi::api::apps::v1::Deployment;
use kube::api::{ListParams, Patch, PatchParams};
use kube::{Api, ResourceExt};
use serde_json::json;

/// On a Deployment: the credential Secrets (comma-separated names) whose new user should
/// restart it.
pub const RESTART_ANNOTATION: &str = "pgwarden.io/restart-on-rotation";

/// The pod-template annotation a restart sets (its value: when).
pub const RESTARTED_AT: &str = "pgwarden.io/restarted-at";

/// Restarts the Deployments of `namespace` that opted in for Secret `secret`; returns their
/// names.
pub async fn restart_opted_in(
    kube: &kube::Client,
    namespace: &str,
    secret: &str,
) -> Result<Vec<String>, OperatorError> {
    let api: Api<Deployment> = Api::namespaced(kube.clone(), namespace);
    let now = k8s_openapi::jiff::Timestamp::now().to_string();
    let mut restarted = Vec::new();
    for deployment in api.list(&ListParams::default()).await? {
        let opted_in = deployment
            .annotations()
            .get(RESTART_ANNOTATION)
            .is_some_and(|names| names.split(',').any(|n| n.trim() == secret));
        if !opted_in {
            continue;
        }
        let patch =
            json!({"spec": {"template": {"metadata": {"annotations": {RESTARTED_AT: now}}}}});
        api.patch(
            &deployment.name_any(),
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await?;
        restarted.push(deployment.name_any());
    }
    Ok(restarted)
}
