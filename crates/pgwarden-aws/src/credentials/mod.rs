//! AWS credentials and the chain that finds them: [`env`] keys first, then [`web_identity`]
//! from the environment, then the shared files' [`profile`] — botocore's order for these
//! sources. [`CredentialChain`] caches what it found and refreshes it before it expires.

mod env;
mod profile;
mod sts;
mod web_identity;

use crate::Error;
use secrecy::{ExposeSecret, SecretString};
use std::collections::HashMap;
use std::time::{Duration, SystemTime};

/// Credentials are refreshed this long before they expire (botocore's advisory window is 15
/// minutes and its mandatory one 10; STS credentials live at least 15 minutes, so 5 leaves
/// every token made from them its full 15).
pub const REFRESH_BEFORE_EXPIRY: Duration = Duration::from_secs(5 * 60);

/// One set of AWS credentials. The secret key and session token are [`SecretString`]s: `Debug`
/// prints them as `[REDACTED]`.
#[derive(Clone, Debug)]
pub struct Credentials {
    access_key_id: String,
    secret_access_key: SecretString,
    session_token: Option<SecretString>,
    expires_at: Option<SystemTime>,
    source: &'static str,
}

impl Credentials {
    /// Long-lived credentials (no expiry), e.g. an IAM user's keys.
    pub fn new(
        access_key_id: impl Into<String>,
        secret_access_key: SecretString,
        session_token: Option<SecretString>,
    ) -> Credentials {
        Credentials {
            access_key_id: access_key_id.into(),
            secret_access_key,
            session_token,
            expires_at: None,
            source: "static",
        }
    }

    /// The same credentials, expiring at `expires_at`.
    pub fn expiring(mut self, expires_at: SystemTime) -> Credentials {
        self.expires_at = Some(expires_at);
        self
    }

    /// The same credentials, recorded as coming from `source` (e.g. `environment`).
    fn sourced_from(mut self, source: &'static str) -> Credentials {
        self.source = source;
        self
    }

    /// The access key id (not secret: it names the key).
    pub fn access_key_id(&self) -> &str {
        &self.access_key_id
    }

    /// The secret access key.
    pub fn secret_access_key(&self) -> &SecretString {
        &self.secret_access_key
    }

    /// The session token of temporary credentials.
    pub fn session_token(&self) -> Option<&SecretString> {
        self.session_token.as_ref()
    }

    /// When temporary credentials stop working; `None` for long-lived keys.
    pub fn expires_at(&self) -> Option<SystemTime> {
        self.expires_at
    }

    /// Where they came from: `environment`, `web identity`, `profile` or `static`.
    pub fn source(&self) -> &'static str {
        self.source
    }

    /// Whether they should be replaced at `now`: within `margin` of their expiry.
    fn needs_refresh(&self, now: SystemTime, margin: Duration) -> bool {
        self.expires_at
            .is_some_and(|expires| expires <= now.checked_add(margin).unwrap_or(now))
    }

    /// The `aws-sigv4` form of these credentials, for signing.
    pub(crate) fn to_sdk(&self) -> aws_credential_types::Credentials {
        aws_credential_types::Credentials::new(
            self.access_key_id.clone(),
            self.secret_access_key.expose_secret().to_string(),
            self.session_token
                .as_ref()
                .map(|token| token.expose_secret().to_string()),
            self.expires_at,
            "pgwarden",
        )
    }
}

/// A snapshot of the environment variables the chain reads. Empty values count as unset, as
/// in botocore. Tests build one with [`Env::from_pairs`] instead of changing the process's.
#[derive(Clone, Debug, Default)]
pub struct Env {
    vars: HashMap<String, String>,
}

impl Env {
    /// The current process's environment.
    pub fn process() -> Env {
        Env::from_pairs(std::env::vars_os().filter_map(|(name, value)| {
            Some((name.into_string().ok()?, value.into_string().ok()?))
        }))
    }

    /// An environment made of these variables only.
    pub fn from_pairs<K: Into<String>, V: Into<String>>(
        pairs: impl IntoIterator<Item = (K, V)>,
    ) -> Env {
        Env {
            vars: pairs
                .into_iter()
                .map(|(name, value)| (name.into(), value.into()))
                .collect(),
        }
    }

    /// The variable's value, `None` when unset or empty.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.vars
            .get(name)
            .map(String::as_str)
            .filter(|value| !value.is_empty())
    }
}

/// The credential chain with its cache. One per process is enough; clones of the credentials
/// it returns are cheap.
#[derive(Debug)]
pub struct CredentialChain {
    env: Env,
    profile: Option<String>,
    refresh_before: Duration,
    http: reqwest::Client,
    cached: tokio::sync::Mutex<Option<Credentials>>,
}

impl CredentialChain {
    /// A chain reading `env` (usually [`Env::process`]).
    pub fn new(env: Env) -> CredentialChain {
        CredentialChain {
            env,
            profile: None,
            refresh_before: REFRESH_BEFORE_EXPIRY,
            http: sts::client(),
            cached: tokio::sync::Mutex::new(None),
        }
    }

    /// Use this profile of the shared files, as `aws --profile` does: it wins over
    /// AWS_PROFILE, and the environment's keys are then ignored.
    pub fn with_profile(mut self, profile: impl Into<String>) -> CredentialChain {
        self.profile = Some(profile.into());
        self
    }

    /// Refresh this long before expiry instead of [`REFRESH_BEFORE_EXPIRY`].
    pub fn with_refresh_before(mut self, margin: Duration) -> CredentialChain {
        self.refresh_before = margin;
        self
    }

    /// Current credentials: the cached ones while they are fresh, else found anew. When a
    /// refresh fails but the cached credentials have not expired yet, those are returned (and
    /// the failure logged) so a short STS outage does not stop token making.
    pub async fn credentials(&self) -> Result<Credentials, Error> {
        let mut cached = self.cached.lock().await;
        let now = SystemTime::now();
        if let Some(credentials) = cached.as_ref()
            && !credentials.needs_refresh(now, self.refresh_before)
        {
            return Ok(credentials.clone());
        }
        match self.resolve().await {
            Ok(credentials) => {
                tracing::debug!(
                    source = credentials.source(),
                    access_key_id = credentials.access_key_id(),
                    "AWS credentials found"
                );
                *cached = Some(credentials.clone());
                Ok(credentials)
            }
            Err(error) => match cached.as_ref() {
                Some(old) if !old.needs_refresh(now, Duration::ZERO) => {
                    tracing::warn!(%error, "refreshing AWS credentials failed; using the cached ones until they expire");
                    Ok(old.clone())
                }
                _ => Err(error),
            },
        }
    }

    /// The region for signing when none is given: AWS_REGION, AWS_DEFAULT_REGION, then the
    /// profile's `region`.
    pub fn region(&self) -> Result<Option<String>, Error> {
        if let Some(region) = self
            .env
            .get("AWS_REGION")
            .or_else(|| self.env.get("AWS_DEFAULT_REGION"))
        {
            return Ok(Some(region.to_string()));
        }
        profile::region(&self.env, self.profile.as_deref())
    }

    /// Walks the chain once, without the cache.
    async fn resolve(&self) -> Result<Credentials, Error> {
        let mut tried = Vec::new();
        if self.profile.is_none() {
            if let Some(credentials) = env::credentials(&self.env)? {
                return Ok(credentials.sourced_from("environment"));
            }
            tried.push("environment (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY)".to_string());
        }
        if let Some(config) = web_identity::Config::from_env(&self.env)? {
            return config.fetch(&self.http).await;
        }
        tried.push("web identity (AWS_ROLE_ARN, AWS_WEB_IDENTITY_TOKEN_FILE)".to_string());
        match profile::credentials(&self.env, self.profile.as_deref())? {
            profile::Found::Keys(credentials) => Ok(credentials.sourced_from("profile")),
            profile::Found::WebIdentity(config) => config.fetch(&self.http).await,
            profile::Found::Nothing(searched) => {
                tried.push(searched);
                Err(Error::NoCredentials {
                    tried: tried.join(", "),
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> Credentials {
        Credentials::new("AKID", SecretString::from("secret"), None)
    }

    #[test]
    fn debug_hides_secrets() {
        let credentials = Credentials::new(
            "AKID",
            SecretString::from("very-secret"),
            Some(SecretString::from("token-secret")),
        );
        let printed = format!("{credentials:?}");
        assert!(printed.contains("AKID"));
        assert!(!printed.contains("very-secret") && !printed.contains("token-secret"));
    }

    #[test]
    fn refresh_window() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let margin = Duration::from_secs(300);
        assert!(!keys().needs_refresh(now, margin));
        let later = keys().expiring(now + Duration::from_secs(301));
        assert!(!later.needs_refresh(now, margin));
        let soon = keys().expiring(now + Duration::from_secs(300));
        assert!(soon.needs_refresh(now, margin));
    }

    #[tokio::test]
    async fn nothing_found_names_every_source() {
        let dir = tempfile::tempdir().expect("temp dir");
        let env = Env::from_pairs([("HOME", dir.path().to_str().expect("utf-8 path"))]);
        let error = CredentialChain::new(env)
            .credentials()
            .await
            .expect_err("no credentials");
        let message = error.to_string();
        assert!(
            message.contains("environment (AWS_ACCESS_KEY_ID"),
            "{message}"
        );
        assert!(message.contains("web identity"), "{message}");
        assert!(message.contains("profile \"default\""), "{message}");
    }

    #[tokio::test]
    async fn environment_wins_and_is_cached() {
        let env = Env::from_pairs([
            ("AWS_ACCESS_KEY_ID", "AKIAENV"),
            ("AWS_SECRET_ACCESS_KEY", "env-secret"),
            ("AWS_SESSION_TOKEN", "env-token"),
            ("AWS_ROLE_ARN", "arn:aws:iam::123456789012:role/ignored"),
            ("AWS_WEB_IDENTITY_TOKEN_FILE", "/nonexistent"),
        ]);
        let chain = CredentialChain::new(env);
        let first = chain.credentials().await.expect("credentials");
        assert_eq!(first.access_key_id(), "AKIAENV");
        assert_eq!(first.source(), "environment");
        assert_eq!(
            first.session_token().map(|t| t.expose_secret().to_string()),
            Some("env-token".to_string())
        );
        let second = chain.credentials().await.expect("cached");
        assert_eq!(second.access_key_id(), "AKIAENV");
    }

    #[tokio::test]
    async fn explicit_profile_ignores_environment_keys() {
        let dir = tempfile::tempdir().expect("temp dir");
        let file = dir.path().join("credentials");
        std::fs::write(
            &file,
            "[dev]\naws_access_key_id = AKIADEV\naws_secret_access_key = dev-secret\n",
        )
        .expect("write credentials");
        let env = Env::from_pairs([
            ("AWS_ACCESS_KEY_ID", "AKIAENV"),
            ("AWS_SECRET_ACCESS_KEY", "env-secret"),
            (
                "AWS_SHARED_CREDENTIALS_FILE",
                file.to_str().expect("utf-8 path"),
            ),
            ("AWS_CONFIG_FILE", "/nonexistent/config"),
        ]);
        let chain = CredentialChain::new(env).with_profile("dev");
        let credentials = chain.credentials().await.expect("credentials");
        assert_eq!(credentials.access_key_id(), "AKIADEV");
        assert_eq!(credentials.source(), "profile");
    }
}
