//! What an approved request's credential becomes in the cluster: a Secret owned by the
//! request, and a Role and RoleBinding letting only the request's subjects read it.

use super::{MANAGED_BY, OperatorError};
use crate::{DatabaseAccessRequest, SubjectKind};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::api::rbac::v1::{PolicyRule, Role, RoleBinding, RoleRef, Subject};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, Resource, ResourceExt};
use pgwarden_client::Credential;
use secrecy::ExposeSecret;
use std::collections::BTreeMap;

/// Annotation on the Secret naming the lease of the credential it holds.
pub const LEASE_ANNOTATION: &str = "pgwarden.io/lease-id";

/// The Secret (and Role, RoleBinding) name of `request`.
pub fn secret_name(request: &DatabaseAccessRequest) -> String {
    format!("{}-credentials", request.name_any())
}

/// The lease the Secret holds a credential of, if any.
pub fn lease_of(secret: &Secret) -> Option<String> {
    secret.annotations().get(LEASE_ANNOTATION).cloned()
}

/// Metadata of something the request owns (garbage-collected with it).
fn owned_meta(
    request: &DatabaseAccessRequest,
    namespace: &str,
) -> Result<ObjectMeta, OperatorError> {
    let owner = request
        .controller_owner_ref(&())
        .ok_or_else(|| OperatorError::Invalid("the request has no uid yet".into()))?;
    Ok(ObjectMeta {
        name: Some(secret_name(request)),
        namespace: Some(namespace.to_string()),
        labels: Some(BTreeMap::from([(
            MANAGED_BY.0.to_string(),
            MANAGED_BY.1.to_string(),
        )])),
        owner_references: Some(vec![owner]),
        ..ObjectMeta::default()
    })
}

/// `postgresql://user:password@host:port/database`, user and password percent-encoded.
fn uri(credential: &Credential) -> String {
    let encode = |s: &str| {
        s.bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                    (b as char).to_string()
                }
                _ => format!("%{b:02X}"),
            })
            .collect::<String>()
    };
    let host = if credential.host.contains(':') {
        format!("[{}]", credential.host)
    } else {
        credential.host.clone()
    };
    format!(
        "postgresql://{}:{}@{host}:{}/{}",
        encode(&credential.username),
        encode(credential.password.expose_secret()),
        credential.port,
        encode(&credential.database)
    )
}

/// Writes `credential` into the request's Secret (creating it, or replacing its content),
/// annotated with its lease.
pub async fn write_secret(
    kube: &kube::Client,
    request: &DatabaseAccessRequest,
    namespace: &str,
    credential: &Credential,
) -> Result<(), OperatorError> {
    let mut metadata = owned_meta(request, namespace)?;
    metadata.annotations = Some(BTreeMap::from([(
        LEASE_ANNOTATION.to_string(),
        credential.lease_id.clone(),
    )]));
    let entry = |value: &str| ByteString(value.as_bytes().to_vec());
    let data = BTreeMap::from([
        ("username".to_string(), entry(&credential.username)),
        (
            "password".to_string(),
            entry(credential.password.expose_secret()),
        ),
        ("host".to_string(), entry(&credential.host)),
        ("port".to_string(), entry(&credential.port.to_string())),
        ("database".to_string(), entry(&credential.database)),
        ("uri".to_string(), entry(&uri(credential))),
    ]);
    let secret = Secret {
        metadata,
        data: Some(data),
        type_: Some("Opaque".into()),
        ..Secret::default()
    };
    let api: Api<Secret> = Api::namespaced(kube.clone(), namespace);
    match api.get_opt(&secret_name(request)).await? {
        None => {
            api.create(&PostParams::default(), &secret).await?;
        }
        Some(existing) => {
            ensure_owned(request, &existing)?;
            // A whole replacement, so no key of another writer survives.
            let mut secret = secret;
            secret.metadata.resource_version = existing.metadata.resource_version;
            api.replace(&secret_name(request), &PostParams::default(), &secret)
                .await?;
        }
    }
    Ok(())
}

/// Removes the credential from the request's Secret (keeping the Secret, which goes with
/// the request).
pub async fn empty_secret(
    kube: &kube::Client,
    request: &DatabaseAccessRequest,
    namespace: &str,
) -> Result<(), OperatorError> {
    let api: Api<Secret> = Api::namespaced(kube.clone(), namespace);
    if let Some(existing) = api.get_opt(&secret_name(request)).await? {
        ensure_owned(request, &existing)?;
        let patch = serde_json::json!({
            "data": null,
            "metadata": {"annotations": {LEASE_ANNOTATION: null}},
        });
        api.patch(
            &secret_name(request),
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await?;
    }
    Ok(())
}

/// Refuses to touch `object` unless `request` controls it: a Secret, Role or RoleBinding of
/// the same name made by someone else is never taken over.
pub fn ensure_owned<K: Resource<DynamicType = ()>>(
    request: &DatabaseAccessRequest,
    object: &K,
) -> Result<(), OperatorError> {
    let uid = request.uid().unwrap_or_default();
    let owned = object
        .owner_references()
        .iter()
        .any(|r| r.controller == Some(true) && r.uid == uid);
    if owned {
        Ok(())
    } else {
        Err(OperatorError::Invalid(format!(
            "{} {:?} exists and does not belong to this request: rename or delete it",
            K::kind(&()),
            object.name_any()
        )))
    }
}

/// Creates the Role allowing `get` on the request's Secret only, and the RoleBinding giving
/// it to the request's subjects, if they are missing.
pub async fn grant_read(
    kube: &kube::Client,
    request: &DatabaseAccessRequest,
    namespace: &str,
) -> Result<(), OperatorError> {
    let name = secret_name(request);
    let role = Role {
        metadata: owned_meta(request, namespace)?,
        rules: Some(vec![PolicyRule {
            api_groups: Some(vec![String::new()]),
            resources: Some(vec!["secrets".into()]),
            resource_names: Some(vec![name.clone()]),
            verbs: vec!["get".into()],
            ..PolicyRule::default()
        }]),
    };
    let subjects = request
        .spec
        .subjects
        .iter()
        .map(|subject| match subject.kind {
            SubjectKind::ServiceAccount => Subject {
                kind: "ServiceAccount".into(),
                name: subject.name.clone(),
                namespace: Some(
                    subject
                        .namespace
                        .clone()
                        .unwrap_or_else(|| namespace.to_string()),
                ),
                ..Subject::default()
            },
            SubjectKind::User | SubjectKind::Group => Subject {
                kind: format!("{:?}", subject.kind),
                name: subject.name.clone(),
                api_group: Some("rbac.authorization.k8s.io".into()),
                ..Subject::default()
            },
        })
        .collect();
    let binding = RoleBinding {
        metadata: owned_meta(request, namespace)?,
        role_ref: RoleRef {
            api_group: "rbac.authorization.k8s.io".into(),
            kind: "Role".into(),
            name: name.clone(),
        },
        subjects: Some(subjects),
    };
    create_missing(
        Api::<Role>::namespaced(kube.clone(), namespace),
        request,
        &role,
    )
    .await?;
    create_missing(
        Api::<RoleBinding>::namespaced(kube.clone(), namespace),
        request,
        &binding,
    )
    .await
}

/// Creates `object` unless one of its name exists, which must belong to `request`.
async fn create_missing<K>(
    api: Api<K>,
    request: &DatabaseAccessRequest,
    object: &K,
) -> Result<(), OperatorError>
where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + serde::Serialize
        + std::fmt::Debug,
{
    // Looked up first: on every recheck of a healthy request it exists, and a read is all
    // that needs (a create would be refused with 409 each time).
    if let Some(existing) = api.get_opt(&object.name_any()).await? {
        return ensure_owned(request, &existing);
    }
    match api.create(&PostParams::default(), object).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.code == 409 => {
            let existing = api.get(&object.name_any()).await?;
            ensure_owned(request, &existing)
        }
        Err(error) => Err(error.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn the_uri_encodes_what_a_url_cannot_hold() {
        let credential = Credential {
            lease_id: "l".into(),
            lease_duration: Duration::from_secs(1),
            username: "v-k8s-a".into(),
            password: "p@ss/w:rd%".to_string().into(),
            host: "db.example".into(),
            port: 5432,
            database: "app db".into(),
            hosts: Vec::new(),
        };
        assert_eq!(
            uri(&credential),
            "postgresql://v-k8s-a:p%40ss%2Fw%3Ard%25@db.example:5432/app%20db"
        );
    }
}
