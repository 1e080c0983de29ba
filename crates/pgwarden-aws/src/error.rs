//! The crate's one error type: each message names the thing that failed and how to fix it.

use std::path::PathBuf;

/// Everything that can go wrong finding credentials or making a token.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No source in the chain had credentials.
    #[error(
        "no AWS credentials found; tried {tried}; set AWS_ACCESS_KEY_ID and \
         AWS_SECRET_ACCESS_KEY, or AWS_ROLE_ARN and AWS_WEB_IDENTITY_TOKEN_FILE, or a profile"
    )]
    NoCredentials {
        /// The sources looked at, in order, e.g. `environment (AWS_ACCESS_KEY_ID), …`.
        tried: String,
    },
    /// A source was half configured, e.g. an access key without its secret.
    #[error("{source_name}: {problem}")]
    Incomplete {
        /// Where the credentials were looked for, e.g. `environment` or `profile "dev" in …`.
        source_name: String,
        /// What is missing and how to supply it.
        problem: String,
    },
    /// A file of the chain (shared config, credentials, web identity token) could not be read.
    #[error("cannot read {what} {}: {source}", path.display())]
    ReadFile {
        /// What the file is for, e.g. `web identity token file (AWS_WEB_IDENTITY_TOKEN_FILE)`.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// Why reading failed.
        #[source]
        source: std::io::Error,
    },
    /// The requested profile is in neither shared file.
    #[error(
        "AWS profile {profile:?} not found in {files}; add it there or pick another with \
         AWS_PROFILE"
    )]
    ProfileNotFound {
        /// The profile name.
        profile: String,
        /// The files searched.
        files: String,
    },
    /// STS could not be reached or its answer could not be read.
    #[error("STS AssumeRoleWithWebIdentity at {endpoint}: {reason}")]
    Sts {
        /// The STS endpoint used (AWS_ENDPOINT_URL_STS or AWS_ENDPOINT_URL override it).
        endpoint: String,
        /// What went wrong, without any token.
        reason: String,
        /// The HTTP error underneath, if any.
        #[source]
        source: Option<reqwest::Error>,
    },
    /// STS answered with an error (e.g. `AccessDenied`, `InvalidIdentityToken`).
    #[error(
        "STS refused AssumeRoleWithWebIdentity for role {role_arn} (HTTP {status}): {code}: \
         {message}; check the role's trust policy and the token file's audience"
    )]
    StsRejected {
        /// The role asked for.
        role_arn: String,
        /// The HTTP status.
        status: u16,
        /// STS's error code.
        code: String,
        /// STS's message.
        message: String,
    },
    /// The request to sign was not valid (e.g. a hostname with spaces).
    #[error("cannot sign an RDS token for {hostname}:{port}: {reason}")]
    Signing {
        /// The database host.
        hostname: String,
        /// The database port.
        port: u16,
        /// Why signing failed.
        reason: String,
    },
}
