//! `PostgresConnection`: a database and how pgwarden's administrator signs in to it.

use crate::DefinitionStatus;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Where a database is and how pgwarden's administrator signs in (the seed's AppBinding and
/// SecretEngine in one). Becomes a broker connection.
#[derive(CustomResource, Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "pgwarden.io",
    version = "v1alpha1",
    kind = "PostgresConnection",
    namespaced,
    status = "DefinitionStatus",
    shortname = "pgconn",
    printcolumn = r#"{"name":"URL","type":"string","jsonPath":".spec.url"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct PostgresConnectionSpec {
    /// `postgresql://host:port/database?sslmode=verify-full`, without credentials.
    pub url: String,
    /// The Secret key holding the administrator's password (its user is `username`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_secret_ref: Option<SecretKeyRef>,
    /// The administrator pgwarden signs in as.
    pub username: String,
    /// Role globs that may use this connection (the namespaced broker names,
    /// `k8s.<namespace>.<name>`); empty allows the roles of this namespace.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_roles: Vec<String>,
    /// Sign in with an RDS IAM token instead of a password.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rds_iam: Option<RdsIam>,
}

/// A key of a Secret in the same namespace.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct SecretKeyRef {
    /// The Secret.
    pub name: String,
    /// The key (default `password`).
    #[serde(default = "password_key")]
    pub key: String,
}

fn password_key() -> String {
    "password".into()
}

/// RDS IAM authentication of the administrator.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct RdsIam {
    /// The database's AWS region (default: the operator's environment's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
}
