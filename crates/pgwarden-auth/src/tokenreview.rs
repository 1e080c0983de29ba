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
    /// Asks the API server whether `jwt` is valid for one of `audiences` (empty: for the API
    /// server itself) and whose it is.
    pub async fn review(
        &self,
        jwt: &str,
        audiences: &[String],
    ) -> Result<ServiceAccount, AuthError> {
        let url = format!(
            "{}/apis/authentication.k8s.io/v1/tokenreviews",
            self.host.trim_end_matches('/')
        );
        let spec = if audiences.is_empty() {
            json!({ "token": jwt })
        } else {
            json!({ "token": jwt, "audiences": audiences })
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
        confirmed_audience(audiences, review.pointer("/status/audiences"))?;
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
        ServiceAccount::named(
            namespace,
            name,
            field("/status/user/uid").unwrap_or_default(),
        )
    }
}

/// Checks that the API server found the token valid for one of the `asked` audiences, as its
/// `status.audiences` says: an API server that ignores `spec.audiences` (older than 1.13, or
/// a webhook authenticator) answers without them, and its yes is for itself, not for
/// pgwarden.
fn confirmed_audience(asked: &[String], answered: Option<&Value>) -> Result<(), AuthError> {
    if asked.is_empty() {
        return Ok(());
    }
    let answered: Vec<&str> = answered
        .and_then(Value::as_array)
        .map(|list| list.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    if answered.iter().any(|a| asked.iter().any(|b| b == a)) {
        return Ok(());
    }
    Err(AuthError::rejected(
        Check::Audience,
        format!(
            "the API server did not confirm that the token is for one of {asked:?} \
             (status.audiences: {answered:?})"
        ),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_answer_counts_only_for_the_audiences_asked() {
        let asked = ["pgwarden".to_string()];
        assert!(confirmed_audience(&[], None).is_ok());
        assert!(confirmed_audience(&asked, Some(&json!(["other", "pgwarden"]))).is_ok());
        for answered in [
            None,
            Some(json!(null)),
            Some(json!([])),
            Some(json!(["other"])),
        ] {
            let error = confirmed_audience(&asked, answered.as_ref()).unwrap_err();
            assert_eq!(error.label(), "wrong_audience");
        }
        assert_eq!(
            confirmed_audience(&asked, Some(&json!(["https://kubernetes.default.svc"])))
                .unwrap_err()
                .to_string(),
            "permission denied: the API server did not confirm that the token is for one of \
             [\"pgwarden\"] (status.audiences: [\"https://kubernetes.default.svc\"])"
        );
    }
}
