//! Auth mounts built from the configuration: Kubernetes service-account login and OIDC/JWT
//! login, each turning a token into an [`Identity`] plus the TTLs of the pgwarden token to issue.

use crate::config::{AuthConfig, ConfigError, KeysConfig};
use pgwarden_auth::{
    AuthError, Jwks, JwtAuth, JwtRole, KeySource, KubernetesAuth, TokenReviewer, Validation,
};
use pgwarden_core::policy::{MAX_SUBJECT_PREFIX, is_subject_prefix};
use pgwarden_core::{Identity, Ttl};
use std::collections::{BTreeMap, HashMap};
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

/// An auth mount and what it puts before its callers' subjects (`eu/`, or empty).
struct AuthMount {
    login: Mount,
    subject_prefix: String,
}

/// Every auth mount by name.
pub struct Logins {
    mounts: BTreeMap<String, AuthMount>,
}

/// Refuses login roles of one jwt mount that read a person's subjects from different claims
/// (`user_claim`, `groups_claim`), or from an empty one: one person would then be two
/// subjects (`user:<email>` and `user:<sub>`), or in other groups by role, and could approve
/// as one what names them as the other.
fn one_way_to_read_people(
    mount: &str,
    roles: &HashMap<String, JwtRole>,
) -> Result<(), ConfigError> {
    let mut roles: Vec<(&String, &JwtRole)> = roles.iter().collect();
    roles.sort_by_key(|(name, _)| *name);
    if let Some((name, _)) = roles.iter().find(|(_, r)| r.user_claim.trim().is_empty()) {
        return Err(ConfigError::Invalid(format!(
            "auth mount {mount:?}: login role {name:?} has an empty user_claim"
        )));
    }
    let Some((first, first_role)) = roles.first() else {
        return Ok(());
    };
    let claims = |r: &JwtRole| (r.user_claim.clone(), r.groups_claim.clone());
    match roles.iter().find(|(_, r)| claims(r) != claims(first_role)) {
        Some((other, role)) => Err(ConfigError::Invalid(format!(
            "auth mount {mount:?}: login roles {first:?} and {other:?} read people from \
             different claims (user_claim {:?} and {:?}, groups_claim {} and {}), so one \
             person would be two subjects or in other groups by role (and could approve as one \
             what names them as the other): use one user_claim and one groups_claim in a mount",
            first_role.user_claim,
            role.user_claim,
            named(&first_role.groups_claim),
            named(&role.groups_claim)
        ))),
        None => Ok(()),
    }
}

/// A claim's name quoted, or `none`.
fn named(claim: &Option<String>) -> String {
    claim
        .as_ref()
        .map_or_else(|| "none".into(), |c| format!("{c:?}"))
}

/// Checks every mount's `subject_prefix` (lowercase letters, digits and `-`) and that no two
/// mounts of one kind would give callers the same subjects; returns each mount's prefix as
/// put before subjects (`eu/`, or empty), in the mounts' order.
fn subject_prefixes(auth: &BTreeMap<String, AuthConfig>) -> Result<Vec<String>, ConfigError> {
    let mut prefixes = Vec::new();
    let mut taken: BTreeMap<(&str, String), &str> = BTreeMap::new();
    for (name, config) in auth {
        let (kind, prefix, subjects) = match config {
            AuthConfig::Kubernetes(k) => (
                "kubernetes",
                &k.subject_prefix,
                "service accounts system:serviceaccount:<namespace>:<name>",
            ),
            AuthConfig::Jwt(j) => ("jwt", &j.subject_prefix, "people user:<user_claim>"),
        };
        let prefix = match prefix {
            None => String::new(),
            Some(p) if is_subject_prefix(p) => format!("{p}/"),
            Some(p) => {
                return Err(ConfigError::Invalid(format!(
                    "auth mount {name:?}: subject_prefix {p:?} must be 1 to \
                     {MAX_SUBJECT_PREFIX} lowercase letters, digits or '-'"
                )));
            }
        };
        if let Some(other) = taken.insert((kind, prefix.clone()), name) {
            return Err(ConfigError::Invalid(format!(
                "auth mounts {other:?} and {name:?} would both name their {subjects}, so \
                 that a caller of one could act as the other's: give one of them a \
                 subject_prefix (subject_prefix: {name} makes its subjects {name}/…)"
            )));
        }
        prefixes.push(prefix);
    }
    Ok(prefixes)
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
        let prefixes = subject_prefixes(auth)?;
        let mut mounts = BTreeMap::new();
        for ((name, config), prefix) in auth.iter().zip(prefixes) {
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
                        None if k.allow_legacy_tokens && !k.audiences.is_empty() => {
                            return Err(ConfigError::Invalid(format!(
                                "auth mount {name:?}: allow_legacy_tokens accepts nothing while \
                                 audiences are required (a legacy token is for no audience): \
                                 remove one of them, or move the audience to the login roles \
                                 that must not take legacy tokens"
                            )));
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
                AuthConfig::Jwt(j) => {
                    one_way_to_read_people(name, &j.roles)?;
                    if j.audiences.is_empty()
                        && j.roles.values().any(|r| r.bound_audiences.is_empty())
                    {
                        tracing::warn!(mount = %name, "this jwt auth mount takes tokens made for any client of its identity provider (no audiences): set audiences to the client id pgwarden's tokens are made for");
                    }
                    Mount::Jwt(JwtAuth {
                        mount: name.clone(),
                        jwks: Jwks::new(
                            key_source(name, &j.keys, j.issuer.as_ref())?,
                            http.clone(),
                            JWKS_MIN_REFRESH,
                        ),
                        issuer: j.issuer.clone(),
                        audiences: j.audiences.clone(),
                        roles: j.roles.clone(),
                    })
                }
            };
            mounts.insert(
                name.clone(),
                AuthMount {
                    login: mount,
                    subject_prefix: prefix,
                },
            );
        }
        Ok(Logins { mounts })
    }

    /// True when `mount` is an auth mount.
    pub fn has_mount(&self, mount: &str) -> bool {
        self.mounts.contains_key(mount)
    }

    /// Whether a login token of `mount` whose subjects carry `prefix` still names its caller
    /// as the mount does: false once the mount is gone or its `subject_prefix` changed (the
    /// token's subjects would be another mount's).
    pub fn still_names(&self, mount: &str, prefix: &str) -> bool {
        self.mounts
            .get(mount)
            .is_some_and(|m| m.subject_prefix == prefix)
    }

    /// Logs in with `jwt` for login role `role` of `mount`.
    pub async fn login(&self, mount: &str, role: &str, jwt: &str) -> Result<LoggedIn, AuthError> {
        let unknown = || AuthError::UnknownRole {
            mount: mount.to_string(),
            role: role.to_string(),
        };
        let found = self.mounts.get(mount).ok_or_else(unknown)?;
        let (identity, (ttl, max_ttl)) = match &found.login {
            Mount::Kubernetes(auth) => {
                let ttls = auth
                    .role(role)
                    .map(|r| ttls(r.token_ttl, r.token_max_ttl))?;
                (auth.login(role, jwt).await?, ttls)
            }
            Mount::Jwt(auth) => {
                let ttls = auth
                    .roles
                    .get(role)
                    .map(|r| ttls(r.token_ttl, r.token_max_ttl))
                    .ok_or_else(unknown)?;
                (auth.login(role, jwt).await?, ttls)
            }
        };
        Ok(LoggedIn {
            identity: identity.under_prefix(&found.subject_prefix),
            ttl,
            max_ttl,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refusal(yaml: &str) -> String {
        let auth: BTreeMap<String, AuthConfig> = serde_saphyr::from_str(yaml).unwrap();
        match Logins::from_config(&auth) {
            Ok(_) => panic!("accepted: {yaml}"),
            Err(error) => error.to_string(),
        }
    }

    #[test]
    fn mounts_of_one_kind_need_different_subject_prefixes() {
        let jwt = |name: &str, prefix: &str| {
            format!("{name}:\n  type: jwt\n  keys: {{ jwks_file: /k }}\n  {prefix}\n")
        };
        assert_eq!(
            refusal(&(jwt("corp", "") + &jwt("partner", ""))),
            "config: auth mounts \"corp\" and \"partner\" would both name their people \
             user:<user_claim>, so that a caller of one could act as the other's: give one of \
             them a subject_prefix (subject_prefix: partner makes its subjects partner/…)"
        );
        assert_eq!(
            refusal(&(jwt("a", "subject_prefix: x") + &jwt("b", "subject_prefix: x"))),
            "config: auth mounts \"a\" and \"b\" would both name their people \
             user:<user_claim>, so that a caller of one could act as the other's: give one of \
             them a subject_prefix (subject_prefix: b makes its subjects b/…)"
        );
        assert_eq!(
            refusal(&jwt("a", "subject_prefix: EU/1")),
            "config: auth mount \"a\": subject_prefix \"EU/1\" must be 1 to 32 lowercase \
             letters, digits or '-'"
        );
        let k8s = |name: &str, prefix: &str| {
            format!("{name}:\n  type: kubernetes\n  keys: {{ jwks_file: /k }}\n  {prefix}\n")
        };
        assert!(refusal(&(k8s("eu", "") + &k8s("us", ""))).starts_with(
            "config: auth mounts \"eu\" and \"us\" would both name their service accounts"
        ));
        // One of each kind, or different prefixes, are fine.
        for yaml in [
            jwt("corp", "") + &k8s("cluster", ""),
            jwt("corp", "") + &jwt("partner", "subject_prefix: partner"),
        ] {
            let auth: BTreeMap<String, AuthConfig> = serde_saphyr::from_str(&yaml).unwrap();
            assert!(Logins::from_config(&auth).is_ok(), "{yaml}");
        }
    }

    #[test]
    fn legacy_tokens_and_required_audiences_are_refused_together() {
        assert_eq!(
            refusal(
                "k8s:\n  type: kubernetes\n  keys: { jwks_file: /k }\n  audiences: [pgwarden]\n  allow_legacy_tokens: true\n"
            ),
            "config: auth mount \"k8s\": allow_legacy_tokens accepts nothing while audiences \
             are required (a legacy token is for no audience): remove one of them, or move the \
             audience to the login roles that must not take legacy tokens"
        );
    }

    #[test]
    fn a_jwt_mount_reads_people_from_one_claim_each() {
        let mount = |roles: &str| {
            format!("jwt:\n  type: jwt\n  keys: {{ jwks_file: /k }}\n  roles:\n{roles}")
        };
        assert_eq!(
            refusal(&mount(
                "    people: { user_claim: email }\n    people-sub: {}\n    robots: { user_claim: email }\n"
            )),
            "config: auth mount \"jwt\": login roles \"people\" and \"people-sub\" read people \
             from different claims (user_claim \"email\" and \"sub\", groups_claim none and \
             none), so one person would be two subjects or in other groups by role (and could \
             approve as one what names them as the other): use one user_claim and one \
             groups_claim in a mount"
        );
        assert_eq!(
            refusal(&mount(
                "    admins: { user_claim: email, groups_claim: roles }\n    people: { user_claim: email, groups_claim: groups }\n"
            )),
            "config: auth mount \"jwt\": login roles \"admins\" and \"people\" read people \
             from different claims (user_claim \"email\" and \"email\", groups_claim \
             \"roles\" and \"groups\"), so one person would be two subjects or in \
             other groups by role (and could approve as one what names them as the other): use \
             one user_claim and one groups_claim in a mount"
        );
        assert_eq!(
            refusal(&mount("    people: { user_claim: \" \" }\n")),
            "config: auth mount \"jwt\": login role \"people\" has an empty user_claim"
        );
    }

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
            assert_eq!(
                refusal(&yaml),
                format!(
                    "config: auth mount \"k8s\": {field} is not used with token_review (the API server \
                     validates the token; set audiences to accept only tokens made for \
                     pgwarden): remove it"
                )
            );
        }
    }
}
