//! Web identity: a role (AWS_ROLE_ARN or a profile's `role_arn`) assumed with the token in a
//! file (AWS_WEB_IDENTITY_TOKEN_FILE or `web_identity_token_file`), as EKS IRSA injects them.
//! The file is read again at every refresh because the kubelet rotates it.

use super::{Credentials, Env, sts};
use crate::Error;
use secrecy::SecretString;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

/// Where and how to assume the role.
#[derive(Clone, Debug)]
pub(crate) struct Config {
    role_arn: String,
    token_file: PathBuf,
    session_name: String,
    endpoint: String,
}

impl Config {
    /// From AWS_ROLE_ARN, AWS_WEB_IDENTITY_TOKEN_FILE and AWS_ROLE_SESSION_NAME; `None` when
    /// neither of the first two is set, an error when only one is.
    pub(super) fn from_env(env: &Env) -> Result<Option<Config>, Error> {
        let incomplete = |problem: &str| Error::Incomplete {
            source_name: "web identity".to_string(),
            problem: problem.to_string(),
        };
        match (
            env.get("AWS_ROLE_ARN"),
            env.get("AWS_WEB_IDENTITY_TOKEN_FILE"),
        ) {
            (None, None) => Ok(None),
            (Some(_), None) => Err(incomplete(
                "AWS_ROLE_ARN is set but AWS_WEB_IDENTITY_TOKEN_FILE is not; set both or neither",
            )),
            (None, Some(_)) => Err(incomplete(
                "AWS_WEB_IDENTITY_TOKEN_FILE is set but AWS_ROLE_ARN is not; set both or neither",
            )),
            (Some(role_arn), Some(token_file)) => Ok(Some(Config::new(
                role_arn,
                PathBuf::from(token_file),
                env.get("AWS_ROLE_SESSION_NAME"),
                env,
            ))),
        }
    }

    /// A role to assume with the token in `token_file`, through the STS endpoint `env` selects.
    pub(super) fn new(
        role_arn: &str,
        token_file: PathBuf,
        session_name: Option<&str>,
        env: &Env,
    ) -> Config {
        let session_name = session_name.map_or_else(
            || {
                let now = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map_or(0, |elapsed| elapsed.as_secs());
                format!("pgwarden-session-{now}")
            },
            str::to_string,
        );
        Config {
            role_arn: role_arn.to_string(),
            token_file,
            session_name,
            endpoint: sts::endpoint(env),
        }
    }

    /// The role to assume.
    #[cfg(test)]
    pub(super) fn role_arn(&self) -> &str {
        &self.role_arn
    }

    /// The file holding the web identity token.
    #[cfg(test)]
    pub(super) fn token_file(&self) -> &Path {
        &self.token_file
    }

    /// Reads the token file and exchanges the token for credentials.
    pub(super) async fn fetch(&self, http: &reqwest::Client) -> Result<Credentials, Error> {
        let token = read_token(&self.token_file)?;
        let credentials = sts::assume_role_with_web_identity(
            http,
            &self.endpoint,
            &self.role_arn,
            &self.session_name,
            &token,
        )
        .await?;
        tracing::debug!(
            role_arn = %self.role_arn,
            session_name = %self.session_name,
            access_key_id = credentials.access_key_id(),
            "assumed role with web identity"
        );
        Ok(credentials.sourced_from("web identity"))
    }
}

/// The token, without surrounding whitespace.
fn read_token(path: &Path) -> Result<SecretString, Error> {
    let text = std::fs::read_to_string(path).map_err(|source| Error::ReadFile {
        what: "web identity token file (AWS_WEB_IDENTITY_TOKEN_FILE)",
        path: path.to_path_buf(),
        source,
    })?;
    let token = text.trim();
    if token.is_empty() {
        return Err(Error::Incomplete {
            source_name: "web identity".to_string(),
            problem: format!(
                "token file {} is empty; check the projected service-account token volume",
                path.display()
            ),
        });
    }
    Ok(SecretString::from(token))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_variables_or_neither() {
        assert!(Config::from_env(&Env::default()).expect("valid").is_none());
        let half = Env::from_pairs([("AWS_ROLE_ARN", "arn:aws:iam::1:role/r")]);
        let error = Config::from_env(&half).expect_err("half set").to_string();
        assert!(
            error.contains("AWS_WEB_IDENTITY_TOKEN_FILE is not"),
            "{error}"
        );
    }

    #[test]
    fn session_name_from_the_environment_or_made_up() {
        let env = Env::from_pairs([
            ("AWS_ROLE_ARN", "arn:aws:iam::1:role/r"),
            ("AWS_WEB_IDENTITY_TOKEN_FILE", "/var/run/token"),
            ("AWS_ROLE_SESSION_NAME", "mine"),
        ]);
        let config = Config::from_env(&env).expect("valid").expect("set");
        assert_eq!(config.session_name, "mine");
        let config = Config::new("arn", PathBuf::from("/t"), None, &Env::default());
        assert!(config.session_name.starts_with("pgwarden-session-"));
    }

    #[tokio::test]
    async fn missing_or_empty_token_file_is_named() {
        let dir = tempfile::tempdir().expect("temp dir");
        let missing = dir.path().join("missing");
        let error = read_token(&missing).expect_err("missing").to_string();
        assert!(error.contains("AWS_WEB_IDENTITY_TOKEN_FILE"), "{error}");
        let empty = dir.path().join("empty");
        std::fs::write(&empty, "\n").expect("write");
        let error = read_token(&empty).expect_err("empty").to_string();
        assert!(error.contains("is empty"), "{error}");
    }
}
