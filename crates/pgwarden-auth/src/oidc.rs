//! OIDC/JWT login for people (Vault's `auth/jwt`): a signed token from the identity provider,
//! mapped to a user and groups by login roles.

use crate::jwt::{JwtRules, claim_strings, verify};
use crate::{AuthError, Check, Jwks};
use pgwarden_core::{Identity, Ttl};
use serde::Deserialize;
use serde_json::Value;
use serde_with::{OneOrMany, serde_as};
use std::collections::{BTreeMap, HashMap};

/// A login role (Vault's `auth/jwt/role/<name>`).
#[serde_as]
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwtRole {
    /// Claim naming the user (e.g. `email`).
    #[serde(default = "default_user_claim")]
    pub user_claim: String,
    /// Claim listing the user's groups.
    #[serde(default)]
    pub groups_claim: Option<String>,
    /// Claims that must have one of the given values.
    #[serde_as(as = "BTreeMap<_, OneOrMany<_>>")]
    #[serde(default)]
    pub bound_claims: BTreeMap<String, Vec<String>>,
    /// Audiences accepted for this role (overrides the mount's).
    #[serde(default)]
    pub bound_audiences: Vec<String>,
    /// TTL of the pgwarden token issued at login.
    #[serde(default)]
    pub token_ttl: Option<Ttl>,
    /// Longest life of that token.
    #[serde(default)]
    pub token_max_ttl: Option<Ttl>,
}

fn default_user_claim() -> String {
    "sub".to_string()
}

/// One JWT auth mount.
pub struct JwtAuth {
    /// The mount's name (`jwt` by default).
    pub mount: String,
    /// The identity provider's keys.
    pub jwks: Jwks,
    /// The identity provider's issuer.
    pub issuer: Option<String>,
    /// Audiences accepted by default.
    pub audiences: Vec<String>,
    /// Login roles by name.
    pub roles: HashMap<String, JwtRole>,
}

impl JwtAuth {
    /// Verifies `jwt` for login role `role_name` and returns the person it names.
    pub async fn login(&self, role_name: &str, jwt: &str) -> Result<Identity, AuthError> {
        let role = self
            .roles
            .get(role_name)
            .ok_or_else(|| AuthError::UnknownRole {
                mount: self.mount.clone(),
                role: role_name.to_string(),
            })?;
        let rules = JwtRules {
            issuers: self.issuer.iter().cloned().collect(),
            audiences: if role.bound_audiences.is_empty() {
                self.audiences.clone()
            } else {
                role.bound_audiences.clone()
            },
            leeway_secs: 60,
            require_exp: true,
        };
        let claims = verify(&self.jwks, jwt, &rules).await?;
        for (name, accepted) in &role.bound_claims {
            let values = claim_strings(&claims, name);
            if !values.iter().any(|v| accepted.contains(v)) {
                return Err(AuthError::rejected(
                    Check::BoundClaims,
                    format!("claim {name:?} does not have a value this login role accepts"),
                ));
            }
        }
        let user = claims
            .get(&role.user_claim)
            .and_then(Value::as_str)
            .filter(|u| !u.is_empty())
            .ok_or_else(|| {
                AuthError::rejected(
                    Check::Claims,
                    format!("the token has no {:?} claim (user_claim)", role.user_claim),
                )
            })?
            .to_string();
        let groups = role
            .groups_claim
            .as_deref()
            .map(|c| claim_strings(&claims, c))
            .unwrap_or_default();
        Ok(Identity {
            subject: format!("user:{user}"),
            display_name: format!("{}-{user}", self.mount),
            metadata: BTreeMap::from([
                ("role".to_string(), role_name.to_string()),
                ("user".to_string(), user),
            ]),
            groups,
            subject_prefix: String::new(),
        })
    }
}
