//! `DatabaseAccessRequest`: a request for a role, decided by approvers, whose credential lands
//! in a Secret only its subjects may read.

use crate::LocalRef;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A request for a [`crate::PostgresRole`] of the same namespace, for some subjects. Approval
/// and denial (conditions `Approved` / `Denied`) come from the broker's access requests; on
/// approval the credential is written to a Secret owned by this request; deleting the request
/// revokes the lease first. Its `spec` cannot change once the broker request is made.
#[derive(CustomResource, Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "pgwarden.io",
    version = "v1alpha1",
    kind = "DatabaseAccessRequest",
    namespaced,
    status = "DatabaseAccessRequestStatus",
    shortname = "dbar",
    printcolumn = r#"{"name":"Role","type":"string","jsonPath":".spec.roleRef.name"}"#,
    printcolumn = r#"{"name":"Approved","type":"string","jsonPath":".status.conditions[?(@.type==\"Approved\")].status"}"#,
    printcolumn = r#"{"name":"Denied","type":"string","jsonPath":".status.conditions[?(@.type==\"Denied\")].status"}"#,
    printcolumn = r#"{"name":"Secret","type":"string","jsonPath":".status.secretRef.name"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct DatabaseAccessRequestSpec {
    /// The role asked for.
    pub role_ref: LocalRef,
    /// Who gets the credential (and may read its Secret).
    pub subjects: Vec<Subject>,
    /// How long the credential should live (`1h`, seconds); capped by the role and policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl: Option<String>,
    /// Why, for the approvers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// Who a request is for, as in a RoleBinding.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Subject {
    /// `ServiceAccount`, `User` or `Group`.
    pub kind: SubjectKind,
    /// Its name.
    pub name: String,
    /// A ServiceAccount's namespace (default: the request's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}

/// The kinds of [`Subject`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum SubjectKind {
    /// A Kubernetes service account.
    ServiceAccount,
    /// A person.
    User,
    /// A group of people.
    Group,
}

/// What became of a request.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DatabaseAccessRequestStatus {
    /// `Approved`, `Denied` (with reason, message and time), and `LeaseRenewed`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// The broker's access request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    /// The lease of the issued credential.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease: Option<LeaseStatus>,
    /// The Secret holding the credential.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_ref: Option<LocalRef>,
    /// A lease issued and being written to the Secret (recorded first, so that no crash or
    /// failure can leave it unknown: it is either finished or revoked).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending_lease: Option<PendingLease>,
    /// Earlier leases that may still be alive: a previous user living out its max TTL after
    /// a rotation, or one being revoked. Revoked with the request; dropped once gone.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub former_leases: Vec<String>,
}

/// A lease on its way into the Secret, and what happens to the one it follows.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PendingLease {
    /// The lease id.
    pub id: String,
    /// Its duration in seconds (the TTL it is renewed by).
    pub duration: u64,
    /// When it ends unless renewed (RFC 3339).
    pub expire_time: String,
    /// The lease it replaces: revoked once this one is in force (`replaces`), or left to end
    /// on its own (`succeeds`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous: Option<String>,
    /// Whether the previous lease is revoked (else it lives out its time). Either way, a
    /// credential that follows another restarts the workloads that opted in.
    #[serde(default)]
    pub revoke_previous: bool,
}

/// A lease as the request's status records it (re-adopted after an operator restart).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LeaseStatus {
    /// The lease id.
    pub id: String,
    /// The TTL it is renewed by, in seconds.
    pub duration: u64,
    /// Whether it can be renewed.
    pub renewable: bool,
    /// When it ends unless renewed (RFC 3339), as of its issue or last renewal: a lease gone
    /// well before was revoked in pgwarden, and is not replaced.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expire_time: Option<String>,
}
