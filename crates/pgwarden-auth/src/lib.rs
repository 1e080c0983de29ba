//! Turns login credentials into an [`Identity`](pgwarden_core::Identity): Kubernetes
//! service-account tokens (checked locally against the cluster's JWKS, or by the API server's
//! TokenReview) and OIDC/JWT tokens of people.

#![cfg_attr(
    not(test),
    deny(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::arithmetic_side_effects,
        clippy::indexing_slicing
    )
)]

mod error;
mod jwks;
mod jwt;
mod kubernetes;
mod oidc;
mod tokenreview;

pub use error::{AuthError, Check};
pub use jwks::{Jwks, KeySource};
pub use jwt::JwtRules;
pub use kubernetes::{KubernetesAuth, KubernetesRole, ServiceAccount, Validation};
pub use oidc::{JwtAuth, JwtRole};
pub use tokenreview::TokenReviewer;
