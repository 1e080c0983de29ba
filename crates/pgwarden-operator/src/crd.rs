//! The CustomResourceDefinitions of the three resources, generated from their types, with the
//! rule that freezes a request's `spec` once asked (a CEL transition rule, which the derive
//! cannot express).

use crate::{DatabaseAccessRequest, PostgresConnection, PostgresRole};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    CustomResourceDefinition, ValidationRule,
};
use kube::CustomResourceExt;

/// A request keeps the `spec` its broker request was made from (`status.requestId` set):
/// approvers decide on what they see, never on what it became.
const FROZEN_ONCE_ASKED: &str = "!has(oldSelf.status) || !has(oldSelf.status.requestId) || \
     self.spec == oldSelf.spec";

/// The CRDs, in the order to apply them.
pub fn crds() -> Vec<CustomResourceDefinition> {
    let mut request = DatabaseAccessRequest::crd();
    for version in &mut request.spec.versions {
        if let Some(schema) = version
            .schema
            .as_mut()
            .and_then(|s| s.open_api_v3_schema.as_mut())
        {
            schema.x_kubernetes_validations = Some(vec![ValidationRule {
                rule: FROZEN_ONCE_ASKED.into(),
                message: Some(
                    "spec cannot change once the request is made (status.requestId is set): make a new request"
                        .into(),
                ),
                ..ValidationRule::default()
            }]);
        }
    }
    vec![PostgresConnection::crd(), PostgresRole::crd(), request]
}

/// The CRDs as one YAML stream (`---` between documents), as `pgwarden operator crds` prints.
pub fn crds_yaml() -> Result<String, serde_saphyr::SerializeError> {
    let documents = crds()
        .iter()
        .map(serde_saphyr::to_string)
        .collect::<Result<Vec<_>, _>>()?;
    Ok(documents.join("---\n"))
}

#[cfg(test)]
mod tests {
    use crate::{DatabaseAccessRequest, PostgresConnection, PostgresRole, Preset, SubjectKind};

    #[test]
    fn the_examples_read_as_the_typed_resources() {
        let text = include_str!("../../../deploy/operator/examples/team-a.yaml");
        let docs: Vec<serde_json::Value> = serde_saphyr::from_multiple(text).unwrap();
        let of = |kind: &'static str| docs.iter().filter(move |d| d["kind"] == kind).cloned();
        let connections: Vec<PostgresConnection> = of("PostgresConnection")
            .map(|d| serde_json::from_value(d).unwrap())
            .collect();
        assert_eq!(
            connections[0]
                .spec
                .credentials_secret_ref
                .as_ref()
                .unwrap()
                .key,
            "password"
        );
        assert!(connections[1].spec.rds_iam.is_some());
        let roles: Vec<PostgresRole> = of("PostgresRole")
            .map(|d| serde_json::from_value(d).unwrap())
            .collect();
        assert_eq!(roles[0].spec.preset, Some(Preset::Readonly));
        assert_eq!(roles[0].spec.max_ttl.as_deref(), Some("24h"));
        assert_eq!(roles[1].spec.creation_statements.len(), 2);
        let request: DatabaseAccessRequest =
            serde_json::from_value(of("DatabaseAccessRequest").next().unwrap()).unwrap();
        assert_eq!(request.spec.role_ref.name, "reader");
        assert_eq!(request.spec.subjects[0].kind, SubjectKind::ServiceAccount);
    }
}
