//! A cached JSON Web Key Set from a file, a URL, or OIDC discovery; refetched when a token
//! names a key id it does not hold, at most once per refresh interval.

use crate::{AuthError, Check};
use arc_swap::ArcSwap;
use jsonwebtoken::jwk::{Jwk, JwkSet, KeyOperations, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey};
use std::path::PathBuf;
use std::str::FromStr;
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

    /// The key for `kid` (or the set's only key, without one) usable for an `alg` signature:
    /// of several keys with one id (a signing and an encryption key, say), the first usable;
    /// if none is, why the first is not. `None` when no key has that id.
    fn find(&self, kid: Option<&str>, alg: Algorithm) -> Option<Result<DecodingKey, AuthError>> {
        let keys = self.keys.load();
        let candidates: Vec<&Jwk> = match kid {
            Some(kid) => keys
                .keys
                .iter()
                .filter(|k| k.common.key_id.as_deref() == Some(kid))
                .collect(),
            None if keys.keys.len() == 1 => keys.keys.iter().collect(),
            None => Vec::new(),
        };
        let first = candidates.first()?;
        let jwk = candidates
            .iter()
            .find(|jwk| usable_for(jwk, alg).is_ok())
            .unwrap_or(first);
        Some(usable_for(jwk, alg).and_then(|()| {
            DecodingKey::from_jwk(jwk)
                .map_err(|e| AuthError::Unavailable(format!("unusable key in the key set: {e}")))
        }))
    }

    /// The key for `kid` to verify an `alg` signature with, refreshing the set once if it is
    /// not known.
    pub async fn key(&self, kid: Option<&str>, alg: Algorithm) -> Result<DecodingKey, AuthError> {
        if let Some(key) = self.find(kid, alg) {
            return key;
        }
        self.refresh().await?;
        self.find(kid, alg).unwrap_or_else(|| {
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

/// Refuses `jwk` for an `alg` signature when the key set says it is for another algorithm
/// (`alg`), for encryption (`use: enc`), or for operations that do not include verifying
/// (`key_ops` without `verify`).
fn usable_for(jwk: &Jwk, alg: Algorithm) -> Result<(), AuthError> {
    if let Some(declared) = jwk.common.key_algorithm
        && Algorithm::from_str(&declared.to_string()).ok() != Some(alg)
    {
        return Err(AuthError::rejected(
            Check::Signature,
            format!("the token is signed with {alg:?}, but its key is for {declared}"),
        ));
    }
    let verifies = jwk
        .common
        .key_operations
        .as_ref()
        .is_none_or(|ops| ops.contains(&KeyOperations::Verify));
    if matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption)) || !verifies {
        return Err(AuthError::rejected(
            Check::Signature,
            "the token's key is not for verifying signatures (its use or key_ops)",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jwk(extra: serde_json::Value) -> Jwk {
        let mut value = serde_json::json!({"kty": "EC", "crv": "P-256", "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU", "y": "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"});
        value
            .as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        serde_json::from_value(value).unwrap()
    }

    #[test]
    fn a_key_serves_only_its_algorithm_and_signatures() {
        assert!(usable_for(&jwk(serde_json::json!({})), Algorithm::ES256).is_ok());
        let es256 = jwk(serde_json::json!({"alg": "ES256", "use": "sig"}));
        assert!(usable_for(&es256, Algorithm::ES256).is_ok());
        assert_eq!(
            usable_for(&es256, Algorithm::ES384)
                .unwrap_err()
                .to_string(),
            "permission denied: the token is signed with ES384, but its key is for ES256"
        );
        let encryption = jwk(serde_json::json!({"use": "enc"}));
        assert_eq!(
            usable_for(&encryption, Algorithm::ES256)
                .unwrap_err()
                .to_string(),
            "permission denied: the token's key is not for verifying signatures (its use or key_ops)"
        );
        let encrypts = jwk(serde_json::json!({"key_ops": ["encrypt"]}));
        assert_eq!(
            usable_for(&encrypts, Algorithm::ES256)
                .unwrap_err()
                .to_string(),
            "permission denied: the token's key is not for verifying signatures (its use or key_ops)"
        );
        let verifies = jwk(serde_json::json!({"key_ops": ["verify"]}));
        assert!(usable_for(&verifies, Algorithm::ES256).is_ok());
    }

    #[tokio::test]
    async fn of_keys_sharing_an_id_the_usable_one_is_taken() {
        let path =
            std::env::temp_dir().join(format!("pgwarden-jwks-kid-{}.json", std::process::id()));
        let set = |keys: Vec<serde_json::Value>| serde_json::json!({ "keys": keys }).to_string();
        let enc = serde_json::to_value(jwk(serde_json::json!({"kid": "k", "use": "enc"}))).unwrap();
        let sig = serde_json::to_value(jwk(
            serde_json::json!({"kid": "k", "use": "sig", "alg": "ES256"}),
        ))
        .unwrap();
        std::fs::write(&path, set(vec![enc.clone(), sig])).unwrap();
        let jwks = Jwks::new(
            KeySource::File(path.clone()),
            reqwest::Client::new(),
            Duration::ZERO,
        );
        assert!(jwks.key(Some("k"), Algorithm::ES256).await.is_ok());
        std::fs::write(&path, set(vec![enc])).unwrap();
        let only_enc = Jwks::new(
            KeySource::File(path.clone()),
            reqwest::Client::new(),
            Duration::ZERO,
        );
        assert_eq!(
            only_enc
                .key(Some("k"), Algorithm::ES256)
                .await
                .err()
                .unwrap()
                .to_string(),
            "permission denied: the token's key is not for verifying signatures (its use or key_ops)"
        );
        std::fs::remove_file(path).unwrap();
    }
}
