//! RDS IAM authentication without the AWS SDK.
//!
//! - [`rds_auth_token`] makes the 15-minute password RDS accepts from a user granted `rds_iam`:
//!   a SigV4 presigned `connect` URL, byte-identical to botocore's `generate_db_auth_token`
//!   (checked against vectors botocore made, in `tests/vectors/`). The signature itself comes
//!   from the maintained `aws-sigv4` crate; this crate only builds the request botocore builds
//!   and writes the URL in botocore's parameter order with `DBUser` percent-encoded (the Rust
//!   SDK's own RDS helper leaves it raw).
//! - [`CredentialChain`] finds AWS credentials the way botocore does, for the sources pgwarden
//!   needs: environment variables, web identity (`AWS_ROLE_ARN` + `AWS_WEB_IDENTITY_TOKEN_FILE`,
//!   as EKS IRSA injects them, exchanged with STS `AssumeRoleWithWebIdentity`), and the shared
//!   config and credentials files with profiles. Credentials are cached and refreshed five
//!   minutes before they expire.
//! - [`plan`] writes the IRSA + RDS IAM setup for one service account and database user: the
//!   IAM trust and permissions policies, the annotated ServiceAccount and the SQL.
//!
//! Secrets live in [`secrecy`] types and appear in no `Debug` output or log line.

#![warn(missing_docs)]

mod credentials;
mod error;
mod plan;
mod token;

pub use credentials::{CredentialChain, Credentials, Env, REFRESH_BEFORE_EXPIRY};
pub use error::Error;
pub use plan::{
    MAX_ROLE_NAME, Plan, PlanError, PlanInput, PolicyDocument, PolicyStatement, STS_AUDIENCE,
    partition, plan,
};
pub use token::{TOKEN_LIFETIME_SECONDS, rds_auth_token};
