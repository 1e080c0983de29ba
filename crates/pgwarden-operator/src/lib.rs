//! pgwarden's Kubernetes custom resources (group `pgwarden.io`, version `v1alpha1`), the
//! KubeVault-style way to ask for database access from a namespace:
//!
//! - [`PostgresConnection`]: where a database is and the Secret with its administrator's
//!   credentials (or RDS IAM); becomes a broker connection.
//! - [`PostgresRole`]: a role on a connection, from statements or a preset; becomes the broker
//!   role `k8s.<namespace>.<name>`.
//! - [`DatabaseAccessRequest`]: a request for a role, for some subjects, decided by approvers;
//!   once approved, the credential lands in a Secret only those subjects may read.
//!
//! [`controller::run`] runs the controllers (`pgwarden operator run`). [`crds`] generates the CustomResourceDefinitions from these types (`pgwarden operator
//! crds`); the manifests under `deploy/operator/crds/` are its output.

#![warn(missing_docs)]

mod connection;
pub mod controller;
mod crd;
mod request;
mod role;

pub use connection::{PostgresConnection, PostgresConnectionSpec, RdsIam, SecretKeyRef};
pub use crd::{crds, crds_yaml};
pub use request::{
    DatabaseAccessRequest, DatabaseAccessRequestSpec, DatabaseAccessRequestStatus, LeaseStatus,
    PendingLease, Subject, SubjectKind,
};
pub use role::{PostgresRole, PostgresRoleSpec, Preset};

/// A reference to another resource of the same namespace, by name.
#[derive(
    Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize, schemars::JsonSchema,
)]
pub struct LocalRef {
    /// The resource's name.
    pub name: String,
}

/// Status shared by connections and roles: whether the broker holds the definition.
#[derive(
    Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "camelCase")]
pub struct DefinitionStatus {
    /// `Ready` (the broker holds the definition as written) and why not.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition>,
    /// The broker's name for it (e.g. `k8s.team-a.reader`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub broker_name: Option<String>,
}
