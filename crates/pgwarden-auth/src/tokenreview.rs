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
        let mut spec = json!({ "token": jwt });
        if let Some(audience) = audience {
            spec["audiences"] = json!([audience]);
        }
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
        let status = &review["status"];
        if status["authenticated"] != Value::Bool(true) {
            let why = status["error"].as_str().unwrap_or("not authenticated");
            return Err(AuthError::rejected(
                Check::TokenReview,
                format!("the API server rejected the token: {why}"),
            ));
        }
        let username = status["user"]["username"].as_str().unwrap_or_default();
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
            uid: status["user"]["uid"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
        })
    }
}
