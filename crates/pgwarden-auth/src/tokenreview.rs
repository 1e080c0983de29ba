//! Validation by the Kubernetes API server: POST an `authentication.k8s.io/v1` TokenReview with
//! a reviewer token, for clusters whose signing keys pgwarden cannot reach.

use crate::kubernetes::ServiceAccount;
use crate::{AuthError, Check};
use secrecy::{ExposeSecret, SecretString};
use serde_json::{Value, json};
use std::time::Duration;

/// A client of the API server's TokenReview endpoint.
pub struct TokenReviewer {
    /// `https://<api server>`.
    pub host: String,
    /// Token of a service account allowed to create TokenReviews.
    pub reviewer_token: SecretString,
    /// HTTP client trusting the cluster's CA.
    pub http: reqwest::Client,
}

impl TokenReviewer {
    /// Asks the API server whether `jwt` is valid (for `audience`, when given) and whose it is.
    pub async fn review(
        &self,
        jwt: &str,
        audience: Option<&str>,
    ) -> Result<ServiceAccount, AuthError> {
        let url = format!(
            "{}/apis/authentication.k8s.io/v1/tokenreviews",
            self.host.trim_end_matches('/')
        );
        let spec = match audience {
            Some(audience) => json!({ "token": jwt, "audiences": [audience] }),
            None => json!({ "token": jwt }),
        };
        let body = json!({ "apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "spec": spec });
        let unavailable =
            |e: String| AuthError::Unavailable(format!("TokenReview at {url} failed: {e}"));
        let response = self
            .http
            .post(&url)
            .bearer_auth(self.reviewer_token.expose_secret())
            .timeout(Duration::from_secs(10))
            .json(&body)
            .send()
            .await
            .map_err(|e| unavailable(pgwarden_core::chain(&e)))?;
        let status = response.status();
        if !status.is_success() {
            return Err(unavailable(format!("HTTP {status}")));
        }
        let review: Value = response
            .json()
            .await
            .map_err(|e| unavailable(pgwarden_core::chain(&e)))?;
        let field = |pointer: &str| review.pointer(pointer).and_then(Value::as_str);
        if review.pointer("/status/authenticated") != Some(&Value::Bool(true)) {
            let why = field("/status/error").unwrap_or("not authenticated");
            return Err(AuthError::rejected(
                Check::TokenReview,
                format!("the API server rejected the token: {why}"),
            ));
        }
        let username = field("/status/user/username").unwrap_or_default();
        let Some(rest) = username.strip_prefix("system:serviceaccount:") else {
            return Err(AuthError::rejected(
                Check::Claims,
                format!("{username:?} is not a service account"),
            ));
        };
        let (namespace, name) = rest.split_once(':').ok_or_else(|| {
            AuthError::rejected(
                Check::Claims,
                format!("{username:?} is not a service account"),
            )
        })?;
        Ok(ServiceAccount {
            namespace: namespace.to_string(),
            name: name.to_string(),
            uid: field("/status/user/uid").unwrap_or_default().to_string(),
        })
    }
}
