//! Credentials from AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY and AWS_SESSION_TOKEN (or the
//! older AWS_SECURITY_TOKEN), as botocore's `EnvProvider` reads them.

use super::{Credentials, Env};
use crate::Error;
use secrecy::SecretString;

/// The environment's keys; `None` when neither key variable is set.
pub(super) fn credentials(env: &Env) -> Result<Option<Credentials>, Error> {
    let incomplete = |problem: &str| Error::Incomplete {
        source_name: "environment".to_string(),
        problem: problem.to_string(),
    };
    match (
        env.get("AWS_ACCESS_KEY_ID"),
        env.get("AWS_SECRET_ACCESS_KEY"),
    ) {
        (None, None) => Ok(None),
        (Some(_), None) => Err(incomplete(
            "AWS_ACCESS_KEY_ID is set but AWS_SECRET_ACCESS_KEY is not; set both or neither",
        )),
        (None, Some(_)) => Err(incomplete(
            "AWS_SECRET_ACCESS_KEY is set but AWS_ACCESS_KEY_ID is not; set both or neither",
        )),
        (Some(id), Some(secret)) => {
            let token = env
                .get("AWS_SESSION_TOKEN")
                .or_else(|| env.get("AWS_SECURITY_TOKEN"))
                .map(SecretString::from);
            Ok(Some(Credentials::new(
                id,
                SecretString::from(secret),
                token,
            )))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::ExposeSecret;

    #[test]
    fn reads_keys_and_token() {
        let env = Env::from_pairs([
            ("AWS_ACCESS_KEY_ID", "AKID"),
            ("AWS_SECRET_ACCESS_KEY", "secret"),
            ("AWS_SECURITY_TOKEN", "legacy-token"),
        ]);
        let credentials = credentials(&env).expect("valid").expect("found");
        assert_eq!(credentials.access_key_id(), "AKID");
        assert_eq!(credentials.secret_access_key().expose_secret(), "secret");
        assert_eq!(
            credentials.session_token().map(|t| t.expose_secret()),
            Some("legacy-token")
        );
    }

    #[test]
    fn empty_counts_as_unset() {
        let env = Env::from_pairs([("AWS_ACCESS_KEY_ID", ""), ("AWS_SECRET_ACCESS_KEY", "")]);
        assert!(credentials(&env).expect("valid").is_none());
    }

    #[test]
    fn half_set_is_an_error_naming_the_missing_variable() {
        let env = Env::from_pairs([("AWS_ACCESS_KEY_ID", "AKID")]);
        let error = credentials(&env).expect_err("incomplete").to_string();
        assert!(error.contains("AWS_SECRET_ACCESS_KEY is not"), "{error}");
    }
}
