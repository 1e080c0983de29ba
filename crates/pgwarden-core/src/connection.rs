//! A connection to a target database, as `/v1/<mount>/config/<name>` or the config file defines it.

use crate::{CoreError, glob, role::validate_name};
use secrecy::SecretString;

/// The only Vault database plugin pgwarden speaks.
pub const POSTGRES_PLUGIN: &str = "postgresql-database-plugin";

/// A validated connection definition. The password never leaves this struct except to connect.
#[derive(Debug, Clone)]
pub struct ConnectionDef {
    /// The connection's name within its mount (what roles call `db_name`).
    pub name: String,
    /// `postgresql://{{username}}:{{password}}@host:port/db?...`; placeholders are optional.
    pub connection_url: String,
    /// The administrative user pgwarden connects as.
    pub username: String,
    /// That user's password.
    pub password: SecretString,
    /// Glob patterns of the roles that may use this connection; empty allows none (as in Vault).
    pub allowed_roles: Vec<String>,
    /// Whether to connect once when the definition is written.
    pub verify_connection: bool,
    /// How the administrative user proves who it is.
    pub auth: AdminAuth,
}

/// How pgwarden's administrative user authenticates to the target database.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum AdminAuth {
    /// With [`ConnectionDef::password`].
    #[default]
    Password,
    /// With an RDS IAM auth token, signed anew for each connection from the process's AWS
    /// credentials (`auth: rds_iam`); no password is stored.
    RdsIam {
        /// The region to sign for; `None` takes the AWS environment's (`AWS_REGION`, …).
        region: Option<String>,
    },
}

/// Splits a password written into `url` (`postgresql://user:secret@host/db` or
/// `?password=secret`) out of it, leaving the `{{password}}` placeholder in its place, so the
/// URL can be stored and shown without the secret. Returns the URL unchanged and `None` when
/// it holds no password (or already uses the placeholder).
pub fn take_url_password(url: &str) -> (String, Option<SecretString>) {
    const PLACEHOLDER: &str = "{{password}}";
    let decode = |s: &str| {
        SecretString::from(
            percent_encoding::percent_decode_str(s)
                .decode_utf8_lossy()
                .into_owned(),
        )
    };
    let Some((scheme, rest)) = url.split_once("://") else {
        return (url.to_string(), None);
    };
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    if let Some((userinfo, host)) = authority.rsplit_once('@')
        && let Some((user, password)) = userinfo.split_once(':')
        && password != PLACEHOLDER
    {
        return (
            format!("{scheme}://{user}:{PLACEHOLDER}@{host}{tail}"),
            Some(decode(password)),
        );
    }
    if let Some((path, query)) = tail.split_once('?') {
        let mut found = None;
        let params: Vec<String> = query
            .split('&')
            .map(|param| match param.strip_prefix("password=") {
                Some(value) if value != PLACEHOLDER => {
                    found = Some(decode(value));
                    format!("password={PLACEHOLDER}")
                }
                _ => param.to_string(),
            })
            .collect();
        if found.is_some() {
            return (
                format!("{scheme}://{authority}{path}?{}", params.join("&")),
                found,
            );
        }
    }
    (url.to_string(), None)
}

impl ConnectionDef {
    /// Checks the parts that need no network: the name and the URL's scheme.
    pub fn validate(&self) -> Result<(), CoreError> {
        validate_name(&self.name)?;
        let url = self.connection_url.trim();
        if !(url.starts_with("postgresql://") || url.starts_with("postgres://")) {
            return Err(CoreError::InvalidConnection {
                connection: self.name.clone(),
                reason: "connection_url must start with postgresql:// or postgres://".into(),
            });
        }
        Ok(())
    }

    /// Whether a role named `role` may use this connection.
    pub fn allows_role(&self, role: &str) -> bool {
        glob::any_match(&self.allowed_roles, role)
    }
}

#[cfg(test)]
mod tests {
    use super::take_url_password;
    use secrecy::ExposeSecret;

    fn split(url: &str) -> (String, Option<String>) {
        let (url, password) = take_url_password(url);
        (url, password.map(|p| p.expose_secret().to_string()))
    }

    #[test]
    fn passwords_leave_the_url_for_the_placeholder() {
        assert_eq!(
            split("postgresql://admin:s%40cret@db:5432/app?sslmode=require"),
            (
                "postgresql://admin:{{password}}@db:5432/app?sslmode=require".into(),
                Some("s@cret".into())
            )
        );
        assert_eq!(
            split("postgres://db/app?user=a&password=p%26w&sslmode=disable"),
            (
                "postgres://db/app?user=a&password={{password}}&sslmode=disable".into(),
                Some("p&w".into())
            )
        );
        for unchanged in [
            "postgresql://{{username}}:{{password}}@db/app",
            "postgresql://admin@db/app",
            "postgresql://db/app?password={{password}}",
            "not a url",
        ] {
            assert_eq!(split(unchanged), (unchanged.to_string(), None));
        }
    }
}
