//! A cached JSON Web Key Set from a file, a URL, or OIDC discovery; refetched when a token
//! names a key id it does not hold, at most once per refresh interval.

use crate::{AuthError, Check};
use arc_swap::ArcSwap;
use jsonwebtoken::DecodingKey;
use jsonwebtoken::jwk::JwkSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Where the keys come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    /// A JWKS document on disk (re-read on refresh).
    File(PathBuf),
    /// A JWKS document at a URL.
    Url(String),
    /// `<issuer>/.well-known/openid-configuration` names the `jwks_uri`.
    Discovery(String),
}

/// The key set and how to refresh it.
pub struct Jwks {
    source: KeySource,
    http: reqwest::Client,
    keys: ArcSwap<JwkSet>,
    last_refresh: tokio::sync::Mutex<Option<Instant>>,
    min_refresh: Duration,
}

fn unavailable(what: &str, e: impl std::fmt::Display) -> AuthError {
    AuthError::Unavailable(format!("cannot load signing keys from {what}: {e}"))
}

/// [`unavailable`] for a request that failed, with its whole cause chain.
fn unreachable(url: &str, e: reqwest::Error) -> AuthError {
    unavailable(url, pgwarden_core::chain(&e))
}

impl Jwks {
    /// A key set from `source`, refetched at most every `min_refresh`; keys load on first use.
    pub fn new(source: KeySource, http: reqwest::Client, min_refresh: Duration) -> Jwks {
        Jwks {
            source,
            http,
            keys: ArcSwap::from_pointee(JwkSet { keys: Vec::new() }),
            last_refresh: tokio::sync::Mutex::new(None),
            min_refresh,
        }
    }

    async fn get_json<T: serde::de::DeserializeOwned>(&self, url: &str) -> Result<T, AuthError> {
        let response = self
            .http
            .get(url)
            .timeout(Duration::from_secs(10))
            .send()
            .await
            .map_err(|e| unreachable(url, e))?;
        if !response.status().is_success() {
            return Err(unavailable(url, format!("HTTP {}", response.status())));
        }
        response.json().await.map_err(|e| unreachable(url, e))
    }

    async fn fetch(&self) -> Result<JwkSet, AuthError> {
        match &self.source {
            KeySource::File(path) => {
                let text = tokio::fs::read_to_string(path)
                    .await
                    .map_err(|e| unavailable(&path.display().to_string(), e))?;
                serde_json::from_str(&text).map_err(|e| unavailable(&path.display().to_string(), e))
            }
            KeySource::Url(url) => self.get_json(url).await,
            KeySource::Discovery(issuer) => {
                #[derive(serde::Deserialize)]
                struct Discovery {
                    jwks_uri: String,
                }
                let url = format!(
                    "{}/.well-known/openid-configuration",
                    issuer.trim_end_matches('/')
                );
                let discovery: Discovery = self.get_json(&url).await?;
                self.get_json(&discovery.jwks_uri).await
            }
        }
    }

    /// Refetches the keys unless that was done less than the refresh interval ago.
    async fn refresh(&self) -> Result<(), AuthError> {
        let mut last = self.last_refresh.lock().await;
        if last.is_some_and(|at| at.elapsed() < self.min_refresh) {
            return Ok(());
        }
        *last = Some(Instant::now());
        let keys = self.fetch().await?;
        tracing::info!(keys = keys.keys.len(), "signing keys loaded");
        self.keys.store(Arc::new(keys));
        Ok(())
    }

    fn find(&self, kid: Option<&str>) -> Option<Result<DecodingKey, AuthError>> {
        let keys = self.keys.load();
        let jwk = match kid {
            Some(kid) => keys.find(kid),
            None if keys.keys.len() == 1 => keys.keys.first(),
            None => None,
        }?;
        Some(
            DecodingKey::from_jwk(jwk)
                .map_err(|e| AuthError::Unavailable(format!("unusable key in the key set: {e}"))),
        )
    }

    /// The key for `kid`, refreshing the set once if it is not known.
    pub async fn key(&self, kid: Option<&str>) -> Result<DecodingKey, AuthError> {
        if let Some(key) = self.find(kid) {
            return key;
        }
        self.refresh().await?;
        self.find(kid).unwrap_or_else(|| {
            Err(AuthError::rejected(
                Check::UnknownKey,
                format!(
                    "no signing key with kid {:?} in the key set",
                    kid.unwrap_or("")
                ),
            ))
        })
    }
}
