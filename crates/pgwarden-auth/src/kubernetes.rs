//! Kubernetes service-account login (Vault's `auth/kubernetes`): which service account a token
//! belongs to, checked locally against the cluster's keys or by TokenReview, and bound to
//! login roles by name and namespace.

use crate::jwt::{JwtRules, verify};
use crate::{AuthError, Check, Jwks, TokenReviewer};
use pgwarden_core::glob::any_match;
use pgwarden_core::{Identity, Ttl};
use serde::Deserialize;
use serde_json::{Map, Value};
use std::collections::{BTreeMap, HashMap};

/// The issuer of legacy secret-based service-account tokens.
pub const LEGACY_ISSUER: &str = "kubernetes/serviceaccount";

/// A service account as a token names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceAccount {
    /// Its namespace.
    pub namespace: String,
    /// Its name.
    pub name: String,
    /// Its uid.
    pub uid: String,
}

/// A login role (Vault's `auth/kubernetes/role/<name>`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KubernetesRole {
    /// Service-account names allowed (`*` and glob suffixes).
    pub bound_service_account_names: Vec<String>,
    /// Namespaces allowed (`*` and glob suffixes).
    pub bound_service_account_namespaces: Vec<String>,
    /// An audience the token must carry, beyond the mount's own.
    #[serde(default)]
    pub audience: Option<String>,
    /// TTL of the pgwarden token issued at login.
    #[serde(default)]
    pub token_ttl: Option<Ttl>,
    /// Longest life of that token, renewals included.
    #[serde(default)]
    pub token_max_ttl: Option<Ttl>,
}

/// How tokens are validated.
pub enum Validation {
    /// Locally, against the cluster's signing keys.
    Jwks {
        /// The keys.
        jwks: Jwks,
        /// The cluster's issuer (`https://kubernetes.default.svc.cluster.local` or similar).
        issuer: Option<String>,
        /// Accepted audiences (any one suffices); empty skips the check.
        audiences: Vec<String>,
        /// Whether legacy secret-based tokens are accepted.
        allow_legacy: bool,
    },
    /// By the API server.
    TokenReview(TokenReviewer),
}

/// One Kubernetes auth mount.
pub struct KubernetesAuth {
    /// The mount's name (`kubernetes` by default).
    pub mount: String,
    /// How tokens are checked.
    pub validation: Validation,
    /// Login roles by name.
    pub roles: HashMap<String, KubernetesRole>,
}

fn string_at<'a>(value: &'a Value, path: &[&str]) -> Option<&'a str> {
    path.iter().try_fold(value, |v, key| v.get(key))?.as_str()
}

/// What a legacy secret-based token must satisfy: signed by the cluster's keys, issued by
/// [`LEGACY_ISSUER`].
fn legacy_rules() -> JwtRules {
    JwtRules {
        issuers: vec![LEGACY_ISSUER.to_string()],
        audiences: Vec::new(),
        leeway_secs: 60,
        require_exp: false,
    }
}

/// The service account of a verified token's claims (projected, or legacy when allowed).
pub fn service_account_from_claims(
    claims: &Map<String, Value>,
    allow_legacy: bool,
) -> Result<ServiceAccount, AuthError> {
    let claims = Value::Object(claims.clone());
    let missing =
        |what: &str| AuthError::rejected(Check::Claims, format!("the token has no {what} claim"));
    if string_at(&claims, &["iss"]) == Some(LEGACY_ISSUER) {
        if !allow_legacy {
            return Err(AuthError::rejected(
                Check::LegacyToken,
                "legacy secret-based service-account tokens are not accepted; use a projected token",
            ));
        }
        let get = |suffix: &str| -> Result<String, AuthError> {
            let key = format!("kubernetes.io/serviceaccount/{suffix}");
            claims
                .get(&key)
                .and_then(Value::as_str)
                .map(String::from)
                .ok_or_else(|| missing(&key))
        };
        return Ok(ServiceAccount {
            namespace: get("namespace")?,
            name: get("service-account.name")?,
            uid: get("service-account.uid")?,
        });
    }
    let get = |path: &[&str], what: &str| {
        string_at(&claims, path)
            .map(String::from)
            .ok_or_else(|| missing(what))
    };
    Ok(ServiceAccount {
        namespace: get(&["kubernetes.io", "namespace"], "kubernetes.io.namespace")?,
        name: get(
            &["kubernetes.io", "serviceaccount", "name"],
            "kubernetes.io.serviceaccount.name",
        )?,
        uid: get(
            &["kubernetes.io", "serviceaccount", "uid"],
            "kubernetes.io.serviceaccount.uid",
        )?,
    })
}

impl KubernetesRole {
    /// Whether this role admits `sa`.
    pub fn admit(&self, sa: &ServiceAccount) -> Result<(), AuthError> {
        if !any_match(&self.bound_service_account_namespaces, &sa.namespace) {
            return Err(AuthError::rejected(
                Check::Namespace,
                format!(
                    "namespace {:?} is not bound to this login role",
                    sa.namespace
                ),
            ));
        }
        if !any_match(&self.bound_service_account_names, &sa.name) {
            return Err(AuthError::rejected(
                Check::ServiceAccount,
                format!(
                    "service account {:?} is not bound to this login role",
                    sa.name
                ),
            ));
        }
        Ok(())
    }
}

impl KubernetesAuth {
    /// The login role `name`.
    pub fn role(&self, name: &str) -> Result<&KubernetesRole, AuthError> {
        self.roles.get(name).ok_or_else(|| AuthError::UnknownRole {
            mount: self.mount.clone(),
            role: name.to_string(),
        })
    }

    /// Verifies `jwt` for login role `role_name` and returns who it is.
    pub async fn login(&self, role_name: &str, jwt: &str) -> Result<Identity, AuthError> {
        let role = self.role(role_name)?;
        let sa = match &self.validation {
            Validation::Jwks {
                jwks,
                issuer,
                audiences,
                allow_legacy,
            } => {
                let mut rules = JwtRules {
                    issuers: issuer.iter().cloned().collect(),
                    audiences: audiences.clone(),
                    leeway_secs: 60,
                    require_exp: true,
                };
                if let Some(audience) = &role.audience {
                    rules.audiences = vec![audience.clone()];
                }
                let claims = match verify(jwks, jwt, &rules).await {
                    Ok(claims) => claims,
                    // A legacy token has no aud and no exp: verify it against the legacy
                    // issuer alone; whether legacy tokens are accepted is decided below.
                    Err(error) => verify(jwks, jwt, &legacy_rules())
                        .await
                        .map_err(|_| error)?,
                };
                service_account_from_claims(&claims, *allow_legacy)?
            }
            Validation::TokenReview(reviewer) => {
                reviewer.review(jwt, role.audience.as_deref()).await?
            }
        };
        role.admit(&sa)?;
        let metadata = BTreeMap::from([
            ("role".to_string(), role_name.to_string()),
            ("service_account_name".to_string(), sa.name.clone()),
            (
                "service_account_namespace".to_string(),
                sa.namespace.clone(),
            ),
            ("service_account_uid".to_string(), sa.uid.clone()),
        ]);
        Ok(Identity {
            subject: Identity::service_account_subject(&sa.namespace, &sa.name),
            groups: Vec::new(),
            display_name: format!("{}-{}-{}", self.mount, sa.namespace, sa.name),
            metadata,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn claims(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn reads_projected_and_legacy_claims() {
        let projected = claims(
            json!({"iss": "https://k8s", "kubernetes.io": {"namespace": "team-a", "serviceaccount": {"name": "app", "uid": "u1"}}}),
        );
        let sa = service_account_from_claims(&projected, false).unwrap();
        assert_eq!(
            sa,
            ServiceAccount {
                namespace: "team-a".into(),
                name: "app".into(),
                uid: "u1".into()
            }
        );
        let legacy = claims(
            json!({"iss": LEGACY_ISSUER, "kubernetes.io/serviceaccount/namespace": "ns",
            "kubernetes.io/serviceaccount/service-account.name": "sa", "kubernetes.io/serviceaccount/service-account.uid": "u2"}),
        );
        assert_eq!(
            service_account_from_claims(&legacy, true).unwrap().name,
            "sa"
        );
        let err = service_account_from_claims(&legacy, false).unwrap_err();
        assert_eq!(err.label(), "legacy_token");
        let err = service_account_from_claims(&claims(json!({"iss": "x"})), false).unwrap_err();
        assert_eq!(
            err.to_string(),
            "permission denied: the token has no kubernetes.io.namespace claim"
        );
    }

    #[test]
    fn roles_bind_names_and_namespaces_with_globs() {
        let role = KubernetesRole {
            bound_service_account_names: vec!["app-*".into()],
            bound_service_account_namespaces: vec!["team-*".into()],
            audience: None,
            token_ttl: None,
            token_max_ttl: None,
        };
        let sa = |ns: &str, name: &str| ServiceAccount {
            namespace: ns.into(),
            name: name.into(),
            uid: "u".into(),
        };
        assert!(role.admit(&sa("team-a", "app-web")).is_ok());
        assert_eq!(
            role.admit(&sa("other", "app-web")).unwrap_err().to_string(),
            "permission denied: namespace \"other\" is not bound to this login role"
        );
        assert_eq!(
            role.admit(&sa("team-a", "db")).unwrap_err().to_string(),
            "permission denied: service account \"db\" is not bound to this login role"
        );
    }
}
