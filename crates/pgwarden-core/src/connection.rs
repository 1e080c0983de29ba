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
