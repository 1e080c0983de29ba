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
//!
//! Secrets live in [`secrecy`] types and appear in no `Debug` output or log line.

#![warn(missing_docs)]

mod credentials;
mod error;
mod token;

pub use credentials::{CredentialChain, Credentials, Env, REFRESH_BEFORE_EXPIRY};
pub use error::Error;
pub use token::{TOKEN_LIFETIME_SECONDS, rds_auth_token};
