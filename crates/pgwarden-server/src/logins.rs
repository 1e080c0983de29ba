//! Auth mounts built from the configuration: Kubernetes service-account login and OIDC/JWT
//! login, each turning a token into an [`Identity`] plus the TTLs of the pgwarden token to issue.

use crate::config::{AuthConfig, ConfigError, KeysConfig};
use pgwarden_auth::{
    AuthError, Jwks, JwtAuth, KeySource, KubernetesAuth, TokenReviewer, Validation,
};
use pgwarden_core::{Identity, Ttl};
use std::collections::BTreeMap;
use std::time::Duration;

/// TTL of a login token when the login role sets none.
pub const DEFAULT_TOKEN_TTL: Ttl = Ttl::from_secs(3600);
/// Longest life of a login token when the login role sets none.
pub const DEFAULT_TOKEN_MAX_TTL: Ttl = Ttl::from_secs(24 * 3600);
/// Least time between two fetches of a key set.
const JWKS_MIN_REFRESH: Duration = Duration::from_secs(1);

/// A successful login.
pub struct LoggedIn {
    /// Who it is.
    pub identity: Identity,
    /// TTL of the token to issue.
    pub ttl: Ttl,
    /// Longest life of that token.
    pub max_ttl: Ttl,
}

enum Mount {
    Kubernetes(KubernetesAuth),
    Jwt(JwtAuth),
}

/// Every auth mount by name.
pub struct Logins {
    mounts: BTreeMap<String, Mount>,
}

fn key_source(
    mount: &str,
    keys: &KeysConfig,
    issuer: Option<&String>,
) -> Result<KeySource, ConfigError> {
    match (&keys.jwks_file, &keys.jwks_url, keys.oidc_discovery, issuer) {
        (Some(file), None, false, _) => Ok(KeySource::File(file.clone())),
        (None, Some(url), false, _) => Ok(KeySource::Url(url.clone())),
        (None, None, true, Some(issuer)) => Ok(KeySource::Discovery(issuer.clone())),
        (None, None, true, None) => Err(ConfigError::Invalid(format!(
            "auth mount {mount:?}: keys.oidc_discovery needs issuer"
        ))),
        _ => Err(ConfigError::Invalid(format!(
            "auth mount {mount:?}: set exactly one of keys.jwks_file, keys.jwks_url or keys.oidc_discovery"
        ))),
    }
}

fn read_file(mount: &str, what: &str, path: &std::path::Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|e| {
        ConfigError::Invalid(format!(
            "auth mount {mount:?}: {what} {}: {e}",
            path.display()
        ))
    })
}

/// Refuses the settings of a Kubernetes mount that `token_review` makes meaningless: they
/// would look like checks and check nothing.
fn unused_with_token_review(
    mount: &str,
    k: &crate::config::KubernetesConfig,
) -> Result<(), ConfigError> {
    let keys = &k.keys;
    let unused = [
        (k.issuer.is_some(), "issuer"),
        (
            keys.jwks_file.is_some() || keys.jwks_url.is_some() || keys.oidc_discovery,
            "keys",
        ),
        (k.allow_legacy_tokens, "allow_legacy_tokens"),
    ];
    match unused.iter().find(|(set, _)| *set) {
        Some((_, field)) => Err(ConfigError::Invalid(format!(
            "auth mount {mount:?}: {field} is not used with token_review (the API server \
             validates the token; set audiences to accept only tokens made for pgwarden): \
             remove it"
        ))),
        None => Ok(()),
    }
}

fn token_review(
    mount: &str,
    config: &crate::config::TokenReviewConfig,
) -> Result<TokenReviewer, ConfigError> {
    let mut http = reqwest::Client::builder();
    if let Some(ca_file) = &config.ca_file {
        let pem = read_file(mount, "ca_file", ca_file)?;
        let cert = reqwest::Certificate::from_pem(pem.as_bytes()).map_err(|e| {
            ConfigError::Invalid(format!(
                "auth mount {mount:?}: ca_file is not a PEM certificate: {e}"
            ))
        })?;
        http = http.add_root_certificate(cert);
    }
    // The error names the file; the token itself never appears in it.
    let token =
        crate::config::read_secret_file(&config.reviewer_token_file, "reviewer_token_file")?;
    Ok(TokenReviewer {
        host: config.host.clone(),
        reviewer_token: token,
        http: http
            .build()
            .map_err(|e| ConfigError::Invalid(format!("auth mount {mount:?}: HTTP client: {e}")))?,
    })
}

fn ttls(ttl: Option<Ttl>, max_ttl: Option<Ttl>) -> (Ttl, Ttl) {
    let max_ttl = max_ttl
        .filter(|t| !t.is_zero())
        .unwrap_or(DEFAULT_TOKEN_MAX_TTL);
    let ttl = ttl
        .filter(|t| !t.is_zero())
        .unwrap_or(DEFAULT_TOKEN_TTL)
        .min(max_ttl);
    (ttl, max_ttl)
}

impl Logins {
    /// Builds every auth mount of the configuration.
    pub fn from_config(auth: &BTreeMap<String, AuthConfig>) -> Result<Logins, ConfigError> {
        let http = reqwest::Client::new();
        let mut mounts = BTreeMap::new();
        for (name, config) in auth {
            let mount = match config {
                AuthConfig::Kubernetes(k) => {
                    let validation = match &k.token_review {
                        Some(review) => {
                            unused_with_token_review(name, k)?;
                            Validation::TokenReview {
                                reviewer: token_review(name, review)?,
                                audiences: k.audiences.clone(),
                            }
                        }
                        None => Validation::Jwks {
                            jwks: Jwks::new(
                                key_source(name, &k.keys, k.issuer.as_ref())?,
                                http.clone(),
                                JWKS_MIN_REFRESH,
                            ),
                            issuer: k.issuer.clone(),
                            audiences: k.audiences.clone(),
                            allow_legacy: k.allow_legacy_tokens,
                        },
                    };
                    Mount::Kubernetes(KubernetesAuth {
                        mount: name.clone(),
                        validation,
                        roles: k.roles.clone(),
                    })
                }
                AuthConfig::Jwt(j) => Mount::Jwt(JwtAuth {
                    mount: name.clone(),
                    jwks: Jwks::new(
                        key_source(name, &j.keys, j.issuer.as_ref())?,
                        http.clone(),
                        JWKS_MIN_REFRESH,
                    ),
                    issuer: j.issuer.clone(),
                    audiences: j.audiences.clone(),
                    roles: j.roles.clone(),
                }),
            };
            mounts.insert(name.clone(), mount);
        }
        Ok(Logins { mounts })
    }

    /// True when `mount` is an auth mount.
    pub fn has_mount(&self, mount: &str) -> bool {
        self.mounts.contains_key(mount)
    }

    /// Logs in with `jwt` for login role `role` of `mount`.
    pub async fn login(&self, mount: &str, role: &str, jwt: &str) -> Result<LoggedIn, AuthError> {
        let unknown = || AuthError::UnknownRole {
            mount: mount.to_string(),
            role: role.to_string(),
        };
        match self.mounts.get(mount).ok_or_else(unknown)? {
            Mount::Kubernetes(auth) => {
                let (ttl, max_ttl) = auth
                    .role(role)
                    .map(|r| ttls(r.token_ttl, r.token_max_ttl))?;
                let identity = auth.login(role, jwt).await?;
                Ok(LoggedIn {
                    identity,
                    ttl,
                    max_ttl,
                })
            }
            Mount::Jwt(auth) => {
                let (ttl, max_ttl) = auth
                    .roles
                    .get(role)
                    .map(|r| ttls(r.token_ttl, r.token_max_ttl))
                    .ok_or_else(unknown)?;
                let identity = auth.login(role, jwt).await?;
                Ok(LoggedIn {
                    identity,
                    ttl,
                    max_ttl,
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_token_review_would_not_use_are_refused() {
        for (field, setting) in [
            ("issuer", "issuer: https://kubernetes.default.svc"),
            ("keys", "keys: { jwks_file: /etc/jwks.json }"),
            ("allow_legacy_tokens", "allow_legacy_tokens: true"),
        ] {
            let yaml = format!(
                "k8s:\n  type: kubernetes\n  token_review: {{ host: https://api, reviewer_token_file: /nonexistent }}\n  {setting}\n"
            );
            let auth: BTreeMap<String, AuthConfig> = serde_saphyr::from_str(&yaml).unwrap();
            let Err(error) = Logins::from_config(&auth) else {
                panic!("{field} was accepted with token_review");
            };
            assert_eq!(
                error.to_string(),
                format!(
                    "config: auth mount \"k8s\": {field} is not used with token_review (the API server \
                     validates the token; set audiences to accept only tokens made for \
                     pgwarden): remove it"
                )
            );
        }
    }
}
