//! `PostgresRole`: a role whose users pgwarden issues on a connection.

use crate::{DefinitionStatus, LocalRef};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A role on a [`crate::PostgresConnection`] of the same namespace: the seed's statements, or
/// a preset with its schemas. Becomes the broker role `k8s.<namespace>.<name>`, so teams never
/// collide.
#[derive(CustomResource, Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "pgwarden.io",
    version = "v1alpha1",
    kind = "PostgresRole",
    namespaced,
    status = "DefinitionStatus",
    shortname = "pgrole",
    printcolumn = r#"{"name":"Database","type":"string","jsonPath":".spec.databaseRef.name"}"#,
    printcolumn = r#"{"name":"Preset","type":"string","jsonPath":".spec.preset"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct PostgresRoleSpec {
    /// The connection its users are created on.
    pub database_ref: LocalRef,
    /// Vault templates creating a user (`{{name}}`, `{{password}}`, `{{expiration}}`); or use
    /// `preset`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub creation_statements: Vec<String>,
    /// Vault templates dropping a user (default: pgwarden's own revocation).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub revocation_statements: Vec<String>,
    /// Generate the statements from a preset instead.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preset: Option<Preset>,
    /// Schemas a preset covers (default `public`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub schemas: Vec<String>,
    /// Lease TTL when none is asked (`1h`, `90m`, seconds).
    #[serde(
        default,
        rename = "defaultTTL",
        skip_serializing_if = "Option::is_none"
    )]
    pub default_ttl: Option<String>,
    /// No lease outlives its issue time plus this.
    #[serde(default, rename = "maxTTL", skip_serializing_if = "Option::is_none")]
    pub max_ttl: Option<String>,
}

/// The privilege sets pgwarden generates.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Preset {
    /// Read tables and sequences.
    Readonly,
    /// Read and write rows.
    User,
    /// Everything on the schemas' objects.
    Admin,
}
