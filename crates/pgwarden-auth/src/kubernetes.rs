//! Kubernetes service-account login (Vault's `auth/kubernetes`): which service account a token
//! belongs to, checked locally against the cluster's keys or by TokenReview, and bound to
//! login roles by name and namespace.

use crate::jwt::{JwtRules, claim_strings, verify};
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

impl ServiceAccount {
    /// The service account `namespace`/`name`, if both are names Kubernetes could have made
    /// (a namespace is a DNS label, a service account a DNS subdomain): anything else would
    /// make a subject that policy globs could misread (`team-a:x` as namespace `team-a`).
    pub fn named(namespace: &str, name: &str, uid: &str) -> Result<ServiceAccount, AuthError> {
        let valid = |value: &str, max: usize, dots: bool| {
            let edge =
                |c: Option<char>| c.is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
            value.len() <= max
                && edge(value.chars().next())
                && edge(value.chars().last())
                && value.chars().all(|c| {
                    c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || (dots && c == '.')
                })
        };
        if !valid(namespace, 63, false) {
            return Err(AuthError::rejected(
                Check::Claims,
                format!("the token's namespace {namespace:?} is not a Kubernetes namespace name"),
            ));
        }
        if !valid(name, 253, true) {
            return Err(AuthError::rejected(
                Check::Claims,
                format!("the token's service account {name:?} is not a Kubernetes name"),
            ));
        }
        Ok(ServiceAccount {
            namespace: namespace.to_string(),
            name: name.to_string(),
            uid: uid.to_string(),
        })
    }
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
    TokenReview {
        /// The API server's client.
        reviewer: TokenReviewer,
        /// Audiences the token must be for (any one suffices); empty: the API server's own.
        audiences: Vec<String>,
    },
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

/// What a legacy secret-based token must satisfy to be read: signed by the cluster's keys,
/// issued by [`LEGACY_ISSUER`]. Its audience is checked after ([`legacy_audience`]).
fn legacy_rules() -> JwtRules {
    JwtRules {
        issuers: vec![LEGACY_ISSUER.to_string()],
        audiences: Vec::new(),
        leeway_secs: 60,
        require_exp: false,
    }
}

/// Checks a verified legacy token's claims against the `audiences` a token must be for: a
/// legacy token has none (it is valid for everything), so where one is required it is
/// refused.
fn legacy_audience(claims: &Map<String, Value>, audiences: &[String]) -> Result<(), AuthError> {
    let carried = claim_strings(claims, "aud");
    if audiences.is_empty() || carried.iter().any(|a| audiences.contains(a)) {
        return Ok(());
    }
    Err(AuthError::rejected(
        Check::Audience,
        format!(
            "a legacy service-account token is not for an audience; this login role accepts \
             only tokens for one of {audiences:?}"
        ),
    ))
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
        return ServiceAccount::named(
            &get("namespace")?,
            &get("service-account.name")?,
            &get("service-account.uid")?,
        );
    }
    let get = |path: &[&str], what: &str| {
        string_at(&claims, path)
            .map(String::from)
            .ok_or_else(|| missing(what))
    };
    ServiceAccount::named(
        &get(&["kubernetes.io", "namespace"], "kubernetes.io.namespace")?,
        &get(
            &["kubernetes.io", "serviceaccount", "name"],
            "kubernetes.io.serviceaccount.name",
        )?,
        &get(
            &["kubernetes.io", "serviceaccount", "uid"],
            "kubernetes.io.serviceaccount.uid",
        )?,
    )
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
                match verify(jwks, jwt, &rules).await {
                    Ok(claims) => service_account_from_claims(&claims, *allow_legacy)?,
                    // A legacy token has no aud and no exp: verify it against the legacy
                    // issuer alone, then decide whether legacy tokens are accepted here.
                    Err(error) => {
                        let claims = verify(jwks, jwt, &legacy_rules())
                            .await
                            .map_err(|_| error)?;
                        let sa = service_account_from_claims(&claims, *allow_legacy)?;
                        legacy_audience(&claims, &rules.audiences)?;
                        sa
                    }
                }
            }
            Validation::TokenReview {
                reviewer,
                audiences,
            } => {
                let audiences = match &role.audience {
                    Some(audience) => std::slice::from_ref(audience),
                    None => audiences.as_slice(),
                };
                reviewer.review(jwt, audiences).await?
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
            subject_prefix: String::new(),
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
    fn only_names_kubernetes_could_make_are_taken() {
        let claims_of = |namespace: &str, name: &str| {
            claims(
                json!({"iss": "https://k8s", "kubernetes.io": {"namespace": namespace, "serviceaccount": {"name": name, "uid": "u"}}}),
            )
        };
        let long_label = "a".repeat(63);
        for (namespace, name) in [
            ("team-a", "app"),
            ("t1", "app.v2-x"),
            (long_label.as_str(), "a"),
        ] {
            assert!(service_account_from_claims(&claims_of(namespace, name), false).is_ok());
        }
        let too_long = "a".repeat(64);
        for namespace in [
            "team-a:x",
            "Team",
            "-a",
            "a-",
            "",
            "a.b",
            "a\n",
            too_long.as_str(),
        ] {
            let error =
                service_account_from_claims(&claims_of(namespace, "app"), false).unwrap_err();
            assert_eq!(
                error.to_string(),
                format!(
                    "permission denied: the token's namespace {namespace:?} is not a Kubernetes namespace name"
                )
            );
        }
        for name in ["app:x", "App", ".app", "", "a b", "app*"] {
            let error = service_account_from_claims(&claims_of("team-a", name), false).unwrap_err();
            assert_eq!(
                error.to_string(),
                format!(
                    "permission denied: the token's service account {name:?} is not a Kubernetes name"
                )
            );
        }
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
